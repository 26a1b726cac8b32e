"""The last ten minutes: a bounded ring of samples, for the pictures and the rates.

This module owns what the agent remembers of its own recent past, and every
number derived from more than one moment: the rates the status page and
`edge-agent status` show (`rates()`), and the series the page draws
(`series()`). The alarms that need a trend (agent/alarms.py) read the same
samples. It promises:

- Pure: no clock, no thread, no socket. The loop hands in the backpressure
  document of the snapshot it just published and its own monotonic `now`;
  `record()` keeps one sample per `SAMPLE_EVERY_S` of that clock and ignores
  the calls in between (the loop publishes 4 times a second).
- Bounded: at most `CAPACITY` samples (600 x 1 s = the 10 minutes the page
  draws); the oldest goes first. A sample is ~40 numbers and the latency
  histogram's ~15 bucket counts: ~1 MiB at worst for the full ring.
- One writer, any number of readers: the loop thread records; the HTTP threads
  read `samples()`, a tuple the writer replaces whole (copy-on-write, ~600
  references once a second), so a reader never sees a half-written ring and
  takes no lock.
- Read from the JSON document, not the typed snapshot, so the fields other
  components add (the alert lane, stuck subscribers) are remembered when an
  agent reports them and simply absent when it does not.
- Rates come from two samples of the one ring: every rate shown at one moment
  (per class in and out, their totals, frames, rejects) covers the same
  interval, so they agree with each other by construction. A total is the sum
  of its per-class rates, never a second count over another window.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from agent.classes import CLASS_NAMES

# One sample per second: the page's charts are ~300-1000 px wide for 10
# minutes, so 600 points are about one per pixel; finer would only cost memory.
SAMPLE_EVERY_S = 1.0
# 10 minutes of samples (issue 12, "Pictures": the last 10 minutes).
CAPACITY = 600
# The rates shown as "now": the last 5 s, long enough to smooth the loop's
# batching (5 ms linger, 256-event batches), short enough to follow a change.
RATE_WINDOW_S = 5.0
# Critical latency "now": the last minute, enough alerts for a p99 to mean
# something at a few a second, short enough to show a new problem.
LATENCY_WINDOW_S = 60.0
# A rate needs at least this much time between its two samples: a shorter
# interval (the agent just started) would turn one burst into a silly figure.
MIN_RATE_INTERVAL_S = 0.5


@dataclasses.dataclass(frozen=True)
class Sample:
    """What the agent reported at one moment. Counters are cumulative since
    start (as in the document); `None` means the agent does not report it."""

    mono: float  # the loop's monotonic clock (spacing, windows)
    wall: float  # agent.taken_at, Unix seconds (what a person reads on an axis)
    received: tuple[int, ...]  # per class, CLASS_NAMES order
    delivered: tuple[int, ...]
    dropped: tuple[int, ...]
    queued: tuple[int, ...]  # in memory now, per class
    pending_events: int  # on disk now
    pending_bytes: int
    spilled_events: int
    used_bytes: int
    capacity_bytes: int
    budget_bytes: int
    frames: int
    rejected: int
    blocked: int  # upstream sends refused by a full pipe
    subscribers: int
    paused: bool
    latency_buckets: tuple[tuple[float, int], ...]  # critical, cumulative (le, n)
    latency_count: int
    lane_noncritical: int | None = None  # ingest.lane.noncritical
    stuck_dropped_messages: int | None = None  # upstream.stuck_dropped_messages
    stuck_dropped_events: int | None = None
    stalled: bool | None = None  # upstream.stalled

    @property
    def backlog(self) -> int:
        """Events waiting for a subscriber: in memory and on disk."""
        return sum(self.queued) + self.pending_events


def sample_from_document(doc: Mapping[str, Any], mono: float) -> Sample:
    """One sample of a backpressure document (Snapshot.to_json() or its JSON)."""

    def per_class(field: str) -> tuple[int, ...]:
        return tuple(_int(doc, "priorities", name, field) for name in CLASS_NAMES)

    buckets = _get(doc, "latency", "critical", "buckets")
    latency: tuple[tuple[float, int], ...] = ()
    if isinstance(buckets, list | tuple):
        latency = tuple(
            (float(b[0]), int(b[1]))
            for b in buckets
            if isinstance(b, list | tuple) and len(b) == 2 and _is_number(b[0])
        )
    return Sample(
        mono=mono,
        wall=float(_num(doc, "agent", "taken_at") or 0.0),
        received=per_class("received"),
        delivered=per_class("delivered"),
        dropped=per_class("dropped"),
        queued=per_class("queued"),
        pending_events=_int(doc, "spill", "pending_events"),
        pending_bytes=_int(doc, "spill", "pending_bytes"),
        spilled_events=_int(doc, "spill", "spilled_events"),
        used_bytes=_int(doc, "buffer", "used_bytes"),
        capacity_bytes=_int(doc, "buffer", "capacity_bytes"),
        budget_bytes=_int(doc, "buffer", "budget_bytes"),
        frames=_int(doc, "ingest", "frames"),
        rejected=_int(doc, "rejected", "total"),
        blocked=_int(doc, "upstream", "blocked"),
        subscribers=_int(doc, "upstream", "subscribers"),
        paused=_get(doc, "ingest", "paused") is True,
        latency_buckets=latency,
        latency_count=_int(doc, "latency", "critical", "count"),
        lane_noncritical=_opt_int(doc, "ingest", "lane", "noncritical"),
        stuck_dropped_messages=_opt_int(doc, "upstream", "stuck_dropped_messages"),
        stuck_dropped_events=_opt_int(doc, "upstream", "stuck_dropped_events"),
        stalled=_opt_bool(doc, "upstream", "stalled"),
    )


class _Documented(Protocol):
    def to_json(self) -> Mapping[str, Any]: ...


class History:
    """The ring. `record()` from the loop, `samples()` from anywhere."""

    __slots__ = ("_capacity", "_every_s", "_samples")

    def __init__(self, capacity: int = CAPACITY, every_s: float = SAMPLE_EVERY_S) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2 samples, not {capacity}")
        if not every_s > 0:
            raise ValueError(f"every_s must be > 0, not {every_s}")
        self._capacity = capacity
        self._every_s = every_s
        # Invariant: oldest first, strictly increasing `mono`, at most
        # `capacity` long; replaced whole, never mutated (readers hold it).
        self._samples: tuple[Sample, ...] = ()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def every_s(self) -> float:
        return self._every_s

    def due(self, now: float) -> bool:
        """Whether record() at `now` would keep a sample (the loop may skip
        building the document when not)."""
        samples = self._samples
        return not samples or now >= samples[-1].mono + self._every_s

    def record(self, source: Mapping[str, Any] | _Documented, now: float) -> bool:
        """Keep a sample of `source` if one is due at `now`; True when kept.

        `source` is a backpressure document, or a Snapshot (anything with
        `to_json()`), whose document is then built only when a sample is due.
        """
        if not self.due(now):
            return False
        doc = source if isinstance(source, Mapping) else source.to_json()
        self.add(sample_from_document(doc, now))
        return True

    def add(self, sample: Sample) -> None:
        """Append one sample (its `mono` after the last one's), dropping the oldest when full."""
        samples = self._samples
        if samples and sample.mono <= samples[-1].mono:
            raise ValueError(
                f"sample at {sample.mono} is not after the last one ({samples[-1].mono})"
            )
        kept = samples[1:] if len(samples) >= self._capacity else samples
        self._samples = (*kept, sample)

    def samples(self) -> tuple[Sample, ...]:
        """Every sample kept, oldest first (an immutable copy: safe from any thread)."""
        return self._samples


# ---------------------------------------------------------------- derived numbers


def window(samples: Sequence[Sample], seconds: float) -> tuple[Sample, Sample] | None:
    """(oldest, newest) of the samples within `seconds` before the newest, or
    None when there are not two of them at least MIN_RATE_INTERVAL_S apart."""
    if len(samples) < 2:
        return None
    newest = samples[-1]
    # Half a sample of slack: samples land up to one loop turn late, and a
    # 5 s window must still find the sample taken ~5 s ago.
    cutoff = newest.mono - seconds - 0.5 * _spacing(samples)
    for old in samples[:-1]:
        if old.mono >= cutoff:
            if newest.mono - old.mono < MIN_RATE_INTERVAL_S:
                return None
            return old, newest
    return None


def _spacing(samples: Sequence[Sample]) -> float:
    if len(samples) < 2:
        return 0.0
    return (samples[-1].mono - samples[0].mono) / (len(samples) - 1)


def rates(samples: Sequence[Sample], seconds: float = RATE_WINDOW_S) -> dict[str, Any] | None:
    """Per-second rates over the last `seconds` (None: not enough history yet).

    Every figure comes from the same two samples; `events_in` is the sum of the
    per-class `in` rates and `events_out` of the `out` rates.
    """
    pair = window(samples, seconds)
    if pair is None:
        return None
    old, new = pair
    dt = new.mono - old.mono

    def per_s(a: int, b: int) -> float:
        # A counter never goes back within one process; if it did (a bug), 0
        # rather than a negative rate on a technician's screen.
        return round(max(0, b - a) / dt, 1)

    classes = {
        name: {
            "in": per_s(old.received[i], new.received[i]),
            "out": per_s(old.delivered[i], new.delivered[i]),
            "dropped": per_s(old.dropped[i], new.dropped[i]),
        }
        for i, name in enumerate(CLASS_NAMES)
    }
    return {
        "window_s": round(dt, 3),
        "events_in": round(sum(c["in"] for c in classes.values()), 1),
        "events_out": round(sum(c["out"] for c in classes.values()), 1),
        "frames_in": per_s(old.frames, new.frames),
        "rejected": per_s(old.rejected, new.rejected),
        "blocked": per_s(old.blocked, new.blocked),
        "classes": classes,
        "critical_latency": critical_latency(samples),
    }


def critical_latency(
    samples: Sequence[Sample], seconds: float = LATENCY_WINDOW_S
) -> dict[str, Any] | None:
    """Critical latency over the last `seconds`: the events measured and the
    bucket bounds holding p50, p99 and the max (None: no history yet).

    A quantile beyond the histogram's last bound is given as that bound and
    named in `beyond` (JSON has no Infinity); a quantile is None when no
    critical event was measured in the window.
    """
    pair = window(samples, seconds)
    if pair is None:
        return None
    old, new = pair
    out: dict[str, Any] = {
        "window_s": round(new.mono - old.mono, 3),
        "count": max(0, new.latency_count - old.latency_count),
        "beyond": [],
    }
    last = new.latency_buckets[-1][0] if new.latency_buckets else None
    for key, q in (("p50_s", 0.5), ("p99_s", 0.99), ("max_s", 1.0)):
        bound = interval_latency(old, new, q)
        if bound == math.inf:
            out["beyond"].append(key)
            bound = last
        out[key] = bound
    return out


def _quantile(buckets: Sequence[tuple[float, int]], total: int, q: float) -> float:
    """The smallest bound whose cumulative count reaches q * total ("p99 <=
    bound"); math.inf when the quantile lies beyond the last bound."""
    for le, n in buckets:
        if n >= q * total:
            return le
    return math.inf


def interval_latency(old: Sample, new: Sample, q: float) -> float | None:
    """The q-quantile bound of the critical latencies measured between two
    samples; math.inf beyond the last bound; None when none was measured (or
    the histograms' bounds differ)."""
    total = new.latency_count - old.latency_count
    if total <= 0 or len(old.latency_buckets) != len(new.latency_buckets):
        return None
    deltas = [
        (le, n - o[1]) for (le, n), o in zip(new.latency_buckets, old.latency_buckets, strict=True)
    ]
    return _quantile(deltas, total, q)


def series(samples: Sequence[Sample], *, since: float | None = None) -> dict[str, Any]:
    """The page's charts as columns: one entry per sample after the first (a
    rate needs the sample before it), optionally only those with `wall` > since.

    `in`/`out`: events/s per class over the interval ending at `t[i]`;
    `latency_p99_s`/`latency_max_s`: critical latency bucket bounds over that
    interval (None: no critical event in it; a bound past the histogram's
    last is given as that last bound, flagged in `latency_over`).
    """
    cols: dict[str, Any] = {
        "t": [],
        "in": {name: [] for name in CLASS_NAMES},
        "out": {name: [] for name in CLASS_NAMES},
        "used_bytes": [],
        "capacity_bytes": [],
        "budget_bytes": [],
        "pending_events": [],
        "pending_bytes": [],
        "latency_p99_s": [],
        "latency_max_s": [],
        "latency_count": [],
    }
    first = 1
    if since is not None:
        # Walk back from the newest: a poll for the last few seconds costs a
        # few samples, not the whole ring.
        first = len(samples)
        while first > 1 and samples[first - 1].wall > since:
            first -= 1
    for i in range(first, len(samples)):
        old, new = samples[i - 1], samples[i]
        dt = new.mono - old.mono
        cols["t"].append(round(new.wall, 3))
        for i, name in enumerate(CLASS_NAMES):
            cols["in"][name].append(round(max(0, new.received[i] - old.received[i]) / dt, 1))
            cols["out"][name].append(round(max(0, new.delivered[i] - old.delivered[i]) / dt, 1))
        cols["used_bytes"].append(new.used_bytes)
        cols["capacity_bytes"].append(new.capacity_bytes)
        cols["budget_bytes"].append(new.budget_bytes)
        cols["pending_events"].append(new.pending_events)
        cols["pending_bytes"].append(new.pending_bytes)
        last = new.latency_buckets[-1][0] if new.latency_buckets else None
        for key, q in (("latency_p99_s", 0.99), ("latency_max_s", 1.0)):
            bound = interval_latency(old, new, q)
            # JSON has no Infinity: "beyond the last bound" is drawn at it.
            cols[key].append(last if bound == math.inf else bound)
        cols["latency_count"].append(max(0, new.latency_count - old.latency_count))
    return cols


# ---------------------------------------------------------------- reading the document


def _get(doc: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _num(doc: Any, *keys: str) -> float | None:
    value = _get(doc, *keys)
    return float(value) if _is_number(value) and math.isfinite(value) else None


def _int(doc: Any, *keys: str) -> int:
    value = _num(doc, *keys)
    return int(value) if value is not None else 0


def _opt_int(doc: Any, *keys: str) -> int | None:
    value = _num(doc, *keys)
    return int(value) if value is not None else None


def _opt_bool(doc: Any, *keys: str) -> bool | None:
    value = _get(doc, *keys)
    return value if isinstance(value, bool) else None
