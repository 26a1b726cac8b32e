"""Sample snapshots, and serving them on loopback, for the endpoint tests.

The JSON endpoint, /metrics, the status page and `edge-agent status` all read
one `Snapshot`; their tests share the agents built here instead of each
keeping its own copy:

- `running()`: an agent in state "running", every counter zero unless given.
- `busy_snapshot(n)`: a busy agent that keeps up, `n` seconds (of its own
  clock) after the first look: spilling, a low-class drop, rejects, a critical
  latency histogram. Its numbers are the ones the status page test reads off
  the screen and docs/status-page.png shows.
- `spilling()`: spill statistics whose totals are the sums over the classes.

And the HTTP side: `FakeLoop` (the loop's snapshot reference and clock, set by
the test), `serving()` (an `HttpServer` on 127.0.0.1 port 0), `fetch()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from agent.classes import CLASS_NAMES
from agent.http import HttpServer
from agent.stats import (
    BufferStats,
    ClassStats,
    IngestStats,
    LatencyHistogram,
    Snapshot,
    SpillStats,
    UpstreamStats,
    empty_snapshot,
)

MiB = 1 << 20
GiB = 1 << 30

# No proxy: a test machine's http_proxy must not see loopback requests.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

VERSION = "0.1.0"
SPILL_DIR = "/var/lib/edge-agent/spill"


def running(
    agent_id: str,
    *,
    started: float,
    uptime_s: float = 0.0,
    loop_monotonic: float = 0.0,
    **fields: Any,
) -> Snapshot:
    """An agent "running" for `uptime_s` since `started` (wall clock); `fields`
    are any other `Snapshot` fields, everything not given is at zero."""
    return dataclasses.replace(
        empty_snapshot(agent_id, VERSION, now=started),
        state="running",
        taken_at=started + uptime_s,
        loop_monotonic=loop_monotonic,
        **fields,
    )


def spilling(classes: Sequence[ClassStats], **fields: Any) -> SpillStats:
    """Spill enabled, its totals the sums of the classes' (as the loop reports them)."""
    return SpillStats(
        enabled=True,
        dir=SPILL_DIR,
        spilled_events=sum(c.spilled for c in classes),
        pending_events=sum(c.pending for c in classes),
        pending_bytes=sum(c.pending_bytes for c in classes),
        **fields,
    )


# ---------------------------------------------------------------- the busy agent

AGENT_ID = "gw-north-07"
STARTED_AT = 1_764_000_000.0
# Events per second by class: received and delivered (a busy, keeping-up agent).
RATES = {"critical": 40, "high": 300, "normal": 5200, "low": 900}
# What each class holds, the same at every look (the rates move, not the queues).
QUEUED = {"critical": 3, "high": 812, "normal": 48_210, "low": 9_120}
QUEUED_BYTES = {"critical": 420, "high": 113_000, "normal": 6_700_000, "low": 1_200_000}
PENDING = {"critical": 0, "high": 0, "normal": 182_344, "low": 96_001}
PENDING_BYTES = {"critical": 0, "high": 0, "normal": 25_300_000, "low": 13_400_000}
SPILLED = {"critical": 0, "high": 0, "normal": 1_250_000, "low": 640_000}
DROPPED = {"critical": 0, "high": 0, "normal": 0, "low": 1_200}
LATENCY_BOUNDS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
# Critical events per second, by bucket (not cumulative): most within 5 ms,
# a tail to 25 ms, nothing near the 100 ms bound.
LATENCY_PER_S = (2, 9, 14, 10, 3, 2, 0, 0, 0, 0, 0)


def busy_snapshot(n: int = 0, *, subscribers: int = 2) -> Snapshot:
    """What a busy agent publishes `n` seconds (of its own clock) after the first look."""
    classes = []
    for i, name in enumerate(CLASS_NAMES):
        received = 1_000_000 * (i + 1) + RATES[name] * n
        # With nobody subscribed nothing leaves (the rest of the picture stays
        # put: the page shows rates, not a model of the queues).
        sent = received if subscribers else 1_000_000 * (i + 1)
        classes.append(
            ClassStats(
                received=received,
                queued=QUEUED[name],
                queued_bytes=QUEUED_BYTES[name],
                spilled=SPILLED[name],
                pending=PENDING[name],
                pending_bytes=PENDING_BYTES[name],
                delivered=sent - QUEUED[name] - PENDING[name] - DROPPED[name],
                dropped=DROPPED[name],
            )
        )
    events_in = sum(RATES.values())
    # As if the agent had been up 1,250 s before the first look.
    per_bucket = [c * (1_250 + n) for c in LATENCY_PER_S]
    cumulative = [sum(per_bucket[: i + 1]) for i in range(len(per_bucket))]
    return running(
        AGENT_ID,
        started=STARTED_AT,
        uptime_s=3 * 86400 + 4000 + n,
        loop_monotonic=1000.0 + n,
        epoch=1_764_000_000_123,
        classes=tuple(classes),
        buffer=BufferStats(
            used_bytes=301 * MiB,
            allocated_bytes=320 * MiB,
            capacity_bytes=384 * MiB,
            budget_bytes=512 * MiB,
            critical_reserve_bytes=32 * MiB,
            state="spilling",
        ),
        spill=spilling(
            classes,
            recovered_events=1_611_655,
            file_bytes=2048 * MiB,
            flushes=9_000 + n,
            drain_eta_s=412.0,
        ),
        ingest=IngestStats(
            frames=400_000 + 64 * n,
            events=10_000_000 + events_in * n,
            rejected_total=1_544 + 2 * n,
            rejected_by_reason=(
                ("bad_field_type", 12),
                ("malformed", 52),
                ("missing_field", 1_480 + 2 * n),
            ),
            disconnects=3,
        ),
        upstream=UpstreamStats(
            subscribers=subscribers,
            peers=subscribers,
            messages=90_000 + 30 * n,
            events=9_000_000 + (events_in if subscribers else 0) * n,
            blocked=17,
        ),
        critical_latency=LatencyHistogram(
            buckets=tuple(zip(LATENCY_BOUNDS_S, cumulative, strict=True)),
            sum_s=cumulative[-1] * 0.0031,
            count=cumulative[-1],
        ),
    )


# ---------------------------------------------------------------- over HTTP


class FakeLoop:
    """What the loop would publish: one snapshot reference and a clock, both set
    by the test. The clock starts `age_s` after the loop turn that built `snap`."""

    def __init__(self, snap: Snapshot, *, age_s: float = 0.0) -> None:
        self.snap = snap
        self.now = snap.loop_monotonic + age_s

    def snapshot(self) -> Snapshot:
        return self.snap

    def clock(self) -> float:
        return self.now


def failing_snapshot() -> Snapshot:
    """A loop that cannot build its answer: every request that needs one is a 500."""
    raise RuntimeError("boom")


@contextlib.contextmanager
def serving(snapshot: Callable[[], Snapshot], **options: Any) -> Iterator[HttpServer]:
    """An `HttpServer` on 127.0.0.1 port 0 (parallel-safe) for the `with` block;
    `options` are HttpServer's keywords (`clock`, `stale_after_s`)."""
    srv = HttpServer("127.0.0.1", 0, snapshot, **options)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def base_url(srv: HttpServer, path: str = "") -> str:
    host, port = srv.address
    return f"http://{host}:{port}{path}"


def fetch(target: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body; an HTTP error status is returned, not raised."""
    data = b"{}" if method in ("POST", "PUT") else None
    req = urllib.request.Request(target, data=data, method=method)
    try:
        with OPENER.open(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()
