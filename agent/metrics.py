"""`GET /metrics`: one `Snapshot` in the Prometheus text exposition format 0.0.4.

This module owns the metric names, types, labels and help texts, and the
mapping from snapshot fields to samples. It promises:

- Every sample of one scrape comes from the one `Snapshot` it was given, so a
  scrape is as consistent as the JSON endpoint (same object, same numbers).
- Names carry the `edge_agent_` prefix and base units (bytes, seconds);
  counters end in `_total`. A total that is the sum of a labelled family is
  not exposed again under another name (Prometheus' "writing exporters" advice:
  `sum without (class)` gives it, and dashboards cannot double count).
- Label sets are fixed from the first scrape: every class, every known reject
  reason and every governor state appears at zero, so `rate()` and
  `increase()` see a series' first increment instead of its birth.

Why the client library, and how it fits the single loop
-------------------------------------------------------
prometheus_client's usual model is mutable metric objects (`Counter().inc()`)
updated where things happen. That does not fit here: the counters live in
the loop thread, which must not take the library's locks per event, and they
reach the HTTP thread only as an immutable `Snapshot`. Its other model does
fit exactly: a custom collector whose `collect()` yields metric *families*
built at scrape time. `render()` wraps one snapshot in such a collector and
lets the library's `generate_latest` write the text, so nothing is mutable,
no global registry is touched, and the loop knows nothing about Prometheus.

The cost on a small ARM box: one pure-Python wheel (64 KiB, 650 KiB
installed, no dependencies of its own; 0.26 measured here), ~40 ms of import
and ~2 MiB of RSS on this x86 machine, paid once at start-up. Against it: no
escaping, number formatting (`+Inf`, `NaN`, integers as floats), HELP/TYPE
munging or histogram-bucket rules of our own to get wrong and keep right as
the format moves (1.0.0 and OpenMetrics exist already; the library follows
them). Writing it by hand is ~100 lines, but it is exactly the kind of
code whose bugs (an unescaped `"` in an agent id, a `le` label written `1e-3`
on one side and `0.001` on the other) only a real Prometheus finds, in the
field. The library earned its place.

We pin the wire format to 0.0.4 (`CONTENT_TYPE`) whatever the scraper's
Accept header says: every Prometheus since 2.0 reads it, and recent
prometheus_client releases moved `CONTENT_TYPE_LATEST` to 1.0.0, so we do not
use that constant. Only API present since 0.17 is used (the suite passes on
0.17.0 and 0.26.0). Importing the library registers its process and GC
collectors on its global REGISTRY; we never expose that registry (no thread,
no cost beyond the import), so /metrics shows exactly what is listed here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from agent.alarms import CATALOGUE, Alarm
from agent.classes import CLASS_NAMES
from agent.codec import MULTIPART, REASONS
from agent.governor import GovernorState
from agent.stats import LatencyHistogram, Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

PREFIX = "edge_agent_"

# Reject reasons that always appear (at 0 until seen): the decoder's codes and
# the loop's "multipart" (a message of more than one frame, rejected whole
# before decoding). A reason the snapshot reports beyond these is shown too.
KNOWN_REASONS: tuple[str, ...] = (*REASONS, MULTIPART)

# BufferStats.state values; an unknown one is shown as well.
GOVERNOR_STATES: tuple[str, ...] = tuple(s.value for s in GovernorState)
# Snapshot.state values (loop.py).
AGENT_STATES: tuple[str, ...] = ("starting", "running", "stopping")


def render(
    snap: Snapshot,
    *,
    loop_age_s: float | None = None,
    alarms: Sequence[Alarm] | None = None,
    document: Mapping[str, Any] | None = None,
) -> bytes:
    """The exposition text of one snapshot (UTF-8).

    `loop_age_s`: seconds since the loop built `snap` (the HTTP side knows the
    clock); exposed so a stuck loop, whose counters merely look flat, can be
    alerted on. Left out when None. `alarms`: the alarms that hold now
    (agent/alarms.py), one 0/1 series per known alarm; left out when None.
    `document`: `snap.to_json()` when the caller has it already (it is
    built here otherwise), read for the fields shown only when an agent
    reports them (`_reported`).
    """
    return generate_latest(_SnapshotCollector(snap, loop_age_s, alarms, document))


class _SnapshotCollector(Collector):
    """A collector over one frozen snapshot; lives for one scrape."""

    def __init__(
        self,
        snap: Snapshot,
        loop_age_s: float | None,
        alarms: Sequence[Alarm] | None,
        document: Mapping[str, Any] | None,
    ) -> None:
        self._snap = snap
        self._loop_age_s = loop_age_s
        self._alarms = alarms
        self._document = document

    def collect(self) -> Iterator[Metric]:
        yield from families(
            self._snap, loop_age_s=self._loop_age_s, alarms=self._alarms, document=self._document
        )


def families(
    snap: Snapshot,
    *,
    loop_age_s: float | None = None,
    alarms: Sequence[Alarm] | None = None,
    document: Mapping[str, Any] | None = None,
) -> Iterator[Metric]:
    """Every metric family of one snapshot, in exposition order."""
    yield from _agent(snap, loop_age_s)
    yield from _classes(snap)
    yield from _buffer(snap)
    yield from _spill(snap)
    yield from _ingest(snap)
    yield from _upstream(snap)
    yield _latency(snap.critical_latency)
    yield from _reported(document if document is not None else snap.to_json())
    if alarms is not None:
        yield _alarms(alarms)


# ---------------------------------------------------------------- families


def _agent(snap: Snapshot, loop_age_s: float | None) -> Iterator[Metric]:
    yield InfoMetricFamily(
        PREFIX[:-1],
        "The agent's identity: version and configured id (value always 1).",
        value={"version": snap.version, "agent_id": snap.agent_id},
    )
    # Epoch is wall-clock milliseconds (~1.7e12): exact in a float64 (< 2**53).
    yield _gauge("epoch", "Upstream epoch of this run; new at every start.", snap.epoch)
    yield _gauge(
        "start_time_seconds", "Wall-clock start of this run, Unix seconds.", snap.started_at
    )
    yield _stateset("state", "Life cycle state of the agent.", AGENT_STATES, snap.state)
    if loop_age_s is not None:
        yield _gauge(
            "loop_age_seconds",
            "Seconds since the event loop last published its state; grows while it is stuck.",
            loop_age_s,
        )


# (metric name without prefix, type, ClassStats field, help), each labelled `class`.
CLASS_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("events_received", "counter", "received", "Valid events accepted."),
    ("events_delivered", "counter", "delivered", "Events handed to the upstream socket."),
    ("events_spilled", "counter", "spilled", "Events ever written to the spill files."),
    (
        "events_dropped",
        "counter",
        "dropped",
        "Events evicted because memory and disk were both full.",
    ),
    ("queued_events", "gauge", "queued", "Events held in memory now."),
    ("queued_bytes", "gauge", "queued_bytes", "Event bytes held in memory now."),
    ("spill_pending_events", "gauge", "pending", "Events on disk not yet drained back."),
    ("spill_pending_bytes", "gauge", "pending_bytes", "Event bytes on disk not yet drained back."),
)


def _classes(snap: Snapshot) -> Iterator[Metric]:
    for name, kind, field, doc in CLASS_METRICS:
        family = _family(kind, name, doc, ["class"])
        for class_name, stats in zip(CLASS_NAMES, snap.classes, strict=True):
            family.add_metric([class_name], getattr(stats, field))
        yield family


def _buffer(snap: Snapshot) -> Iterator[Metric]:
    b = snap.buffer
    yield _gauge("buffer_used_bytes", "Event bytes held in the memory buffers now.", b.used_bytes)
    yield _gauge(
        "buffer_allocated_bytes",
        "Chunk memory allocated for the buffers (>= used).",
        b.allocated_bytes,
    )
    yield _gauge(
        "buffer_capacity_bytes",
        "The governor's current ceiling for the buffers (adaptive, <= budget).",
        b.capacity_bytes,
    )
    yield _gauge("buffer_budget_bytes", "Configured hard ceiling for the buffers.", b.budget_bytes)
    yield _gauge(
        "buffer_critical_reserve_bytes",
        "Part of the budget kept for critical events.",
        b.critical_reserve_bytes,
    )
    yield _stateset("buffer_state", "State of the buffer governor.", GOVERNOR_STATES, b.state)


def _spill(snap: Snapshot) -> Iterator[Metric]:
    s = snap.spill
    # Spilled and pending are by class (_classes): their totals are sums.
    yield _gauge("spill_file_bytes", "Size of all spill files together.", s.file_bytes)
    yield _counter(
        "spill_recovered_events", "Events drained back from disk into memory.", s.recovered_events
    )
    yield _counter(
        "spill_corrupt_records",
        "Spill records skipped as corrupt by start-up scans.",
        s.corrupt_records,
    )
    yield _counter("spill_flushes", "Flushes (msync) of the spill files.", s.flushes)


def _ingest(snap: Snapshot) -> Iterator[Metric]:
    i = snap.ingest
    rejected = CounterMetricFamily(
        PREFIX + "ingest_rejected",
        "Events or frames rejected as bad input, by reason.",
        labels=["reason"],
    )
    by_reason = dict(i.rejected_by_reason)
    for reason in (*KNOWN_REASONS, *sorted(by_reason.keys() - set(KNOWN_REASONS))):
        rejected.add_metric([reason], by_reason.get(reason, 0))
    yield rejected
    yield _counter("ingest_frames", "Frames (ZeroMQ messages) read from ingest.", i.frames)
    yield _counter("ingest_events", "Valid events decoded from ingest frames.", i.events)
    yield _counter(
        "ingest_disconnects",
        "Ingest connections that ended, for any reason: a collector closed or went "
        "away, ZeroMQ dropped it for a frame over ingest.max_frame_bytes, or a "
        "refused CURVE handshake ended.",
        i.disconnects,
    )
    yield _gauge(
        "ingest_paused",
        "1 while ingest is not read: buffers full and nowhere to spill.",
        int(i.paused),
    )
    unauthorized = CounterMetricFamily(
        PREFIX + "unauthorized_peers",
        "CURVE handshakes refused (unknown key or plaintext peer), by socket.",
        labels=["socket"],
    )
    unauthorized.add_metric(["ingest"], i.unauthorized)
    unauthorized.add_metric(["upstream"], snap.upstream.unauthorized)
    yield unauthorized


def _upstream(snap: Snapshot) -> Iterator[Metric]:
    u = snap.upstream
    yield _gauge(
        "upstream_subscribers",
        "Live subscriptions on the upstream socket; 0 means nothing reaches the head-end.",
        u.subscribers,
    )
    yield _counter("upstream_messages", "Messages sent upstream.", u.messages)
    yield _counter("upstream_events", "Events sent upstream.", u.events)
    yield _counter(
        "upstream_blocked",
        "Upstream sends refused by a full subscriber pipe (a slow subscriber).",
        u.blocked,
    )


def _latency(h: LatencyHistogram) -> Metric:
    # The snapshot holds finite bounds only (JSON, which carries the same
    # object, has no Infinity): the +Inf bucket is `count`.
    buckets: list[tuple[str, float]] = [(floatToGoString(le), n) for le, n in h.buckets]
    buckets.append(("+Inf", h.count))
    return HistogramMetricFamily(
        PREFIX + "critical_latency_seconds",
        "Critical events: arrival in the agent's loop to hand-off to the upstream socket.",
        buckets=buckets,
        sum_value=h.sum_s,
    )


def _alarms(alarms: Sequence[Alarm]) -> Metric:
    # Every known alarm at 0 or 1 (fixed label set, like the classes), so an
    # alert rule can say `edge_agent_alarm{alarm="SLOW SUBSCRIBER"} == 1`
    # with the same name the page and `edge-agent status` print.
    family = GaugeMetricFamily(
        PREFIX + "alarm",
        "1 while the named alarm holds (the status page's alarms; README, Alarms).",
        labels=["alarm"],
    )
    active = {a.name for a in alarms}
    for name in (*CATALOGUE, *sorted(active - set(CATALOGUE))):
        family.add_metric([name], int(name in active))
    return family


def _reported(doc: Mapping[str, Any]) -> Iterator[Metric]:
    """Families for endpoint fields an agent may or may not report (the alert
    lane, the ingest path, stuck-subscriber handling, write-through): read
    from the JSON document, so each appears exactly when the agent reports it."""
    lane = _section(doc, "ingest", "lane")
    if lane is not None:
        configured = lane.get("configured")
        if isinstance(configured, bool):
            yield _gauge(
                "lane_configured", "1 when an alert lane (priority_bind) is set.", int(configured)
            )
        for key, name, help_text in (
            ("frames", "lane_frames", "Frames read from the alert lane."),
            ("events", "lane_events", "Valid events read from the alert lane."),
            (
                "noncritical",
                "lane_noncritical_events",
                "Events on the alert lane that were not critical (a misconfigured collector).",
            ),
        ):
            if _is_count(lane.get(key)):
                yield _counter(name, help_text, lane[key])
    agent = _section(doc, "agent") or {}
    path = agent.get("ingest_path")
    if isinstance(path, str) and path:
        yield _stateset(
            "ingest_path",
            "Which ingest decoder runs: the compiled fast path or the Python reference.",
            ("compiled", "python"),
            path,
        )
    upstream = _section(doc, "upstream") or {}
    if _is_count(upstream.get("peers")):
        yield _gauge("upstream_peers", "Peers connected to the upstream socket.", upstream["peers"])
    if isinstance(upstream.get("stalled"), bool):
        yield _gauge(
            "upstream_stalled",
            "1 while a subscriber that stopped reading is being dropped for.",
            int(upstream["stalled"]),
        )
    for key, help_text in (
        ("stuck_dropped_messages", "Upstream messages dropped for a stuck subscriber."),
        ("stuck_dropped_events", "Events in upstream messages dropped for a stuck subscriber."),
    ):
        if _is_count(upstream.get(key)):
            yield _counter("upstream_" + key, help_text, upstream[key])
    write_through = _write_through(doc)
    if write_through:
        family = GaugeMetricFamily(
            PREFIX + "spill_write_through",
            "1 for a class whose events are written through to the spill files.",
            labels=["class"],
        )
        for name, on in write_through.items():
            family.add_metric([name], int(on))
        yield family


def _section(doc: Mapping[str, Any], *keys: str) -> Mapping[str, Any] | None:
    node: Any = doc
    for key in keys:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node if isinstance(node, Mapping) else None


def _is_count(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _write_through(doc: Mapping[str, Any]) -> dict[str, bool]:
    """Class -> write-through on/off, from `spill.write_through` (a list of
    classes, a class -> bool map, or class -> {"enabled": bool, ...}), or
    {} when the agent does not report it."""
    spill = _section(doc, "spill") or {}
    value = spill.get("write_through")
    if isinstance(value, list):
        return {name: name in value for name in CLASS_NAMES}
    if isinstance(value, Mapping):
        found = {}
        for name in CLASS_NAMES:
            state = value.get(name)
            if isinstance(state, Mapping):
                state = state.get("enabled", state.get("on"))
            if isinstance(state, bool):
                found[name] = state
        return found
    return {}


# ---------------------------------------------------------------- helpers


def _family(
    kind: str, name: str, doc: str, labels: Iterable[str]
) -> CounterMetricFamily | GaugeMetricFamily:
    """A labelled counter or gauge family. Counter names are given without `_total`:
    the library appends it in the text format."""
    if kind == "counter":
        return CounterMetricFamily(PREFIX + name, doc, labels=list(labels))
    return GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))


def _gauge(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> Metric:
    return CounterMetricFamily(PREFIX + name, doc, value=value)


def _stateset(name: str, doc: str, states: Sequence[str], current: str) -> Metric:
    # One gauge per state, 1 for the current one (`..._state{state="running"} 1`):
    # the 0.0.4 text form of an OpenMetrics stateset, with a plain label name.
    # The current state is shown even when it is not one this module knows.
    family = GaugeMetricFamily(PREFIX + name, doc, labels=["state"])
    for state in (*states, *([current] if current not in states else [])):
        family.add_metric([state], int(state == current))
    return family
