"""Frozen snapshots of everything a person may ask about the agent.

The loop builds a `Snapshot` from its components' `statistics()` a few times a
second and hands it to the HTTP thread by swapping one reference; nothing else
crosses the thread boundary. `Snapshot.to_json()` is the only place that knows
the shape of `GET /api/v1/gateway/backpressure` (INTERFACE.md): the contract's
fields first, then what this agent adds. Pure: the clock readings are fields,
filled in by the loop.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from typing import Any

from agent.classes import CLASS_NAMES


@dataclasses.dataclass(frozen=True)
class ClassStats:
    received: int = 0  # valid events accepted since start
    queued: int = 0  # in memory now
    queued_bytes: int = 0
    spilled: int = 0  # ever written to the spill rings
    pending: int = 0  # on disk now, not yet drained back
    pending_bytes: int = 0
    delivered: int = 0  # handed to the upstream socket
    dropped: int = 0  # evicted when memory and disk were both full


@dataclasses.dataclass(frozen=True)
class BufferStats:
    used_bytes: int = 0  # event bytes held in memory now
    allocated_bytes: int = 0  # chunk memory mapped for them (>= used_bytes)
    capacity_bytes: int = 0  # the governor's current ceiling
    budget_bytes: int = 0  # the configured hard ceiling
    critical_reserve_bytes: int = 0
    state: str = "steady"  # growing | steady | shrinking | spilling | draining


@dataclasses.dataclass(frozen=True)
class WriteThroughStats:
    """One class's write-through state (INTERFACE.md, "Crash durability")."""

    enabled: bool = False
    written_events: int = 0  # written to the ring while queued, since start
    held_events: int = 0  # queued in memory and on disk now
    lagging_events: int = 0  # queued, not on disk yet (younger than the delay, or no room)


@dataclasses.dataclass(frozen=True)
class SpillStats:
    enabled: bool = False
    dir: str = ""
    spilled_events: int = 0
    pending_events: int = 0
    pending_bytes: int = 0
    recovered_events: int = 0
    file_bytes: int = 0
    corrupt_records: int = 0  # skipped at start-up scans
    flushes: int = 0
    drain_eta_s: float | None = None  # None: nothing pending, or no drain rate yet
    corrupt_events: int = 0  # events of damaged pieces whose header survived
    corrupt_bytes: int = 0  # bytes skipped over damage
    write_through: tuple[WriteThroughStats, ...] = ()  # indexed by class; () if not reported


@dataclasses.dataclass(frozen=True)
class LaneStats:
    """The alert lane's share of the ingest counters (INTERFACE.md, issue 9)."""

    configured: bool = False  # ingest.priority_bind / priority_connect given
    frames: int = 0  # frames read from the lane (also in IngestStats.frames)
    events: int = 0  # valid events from the lane (also in IngestStats.events)
    # Lane events whose class is not critical: a collector that sends more than
    # alerts there is misconfigured (it only buys them reading order).
    noncritical: int = 0


@dataclasses.dataclass(frozen=True)
class IngestStats:
    frames: int = 0  # both PULL sockets (bulk and lane)
    events: int = 0
    rejected_total: int = 0
    rejected_by_reason: tuple[tuple[str, int], ...] = ()
    # Connections that ended, our own max_peers refusals excepted: the
    # collector closed, ZeroMQ dropped it for a frame over max_frame_bytes or
    # a missed heartbeat, or its handshake failed. libzmq 4.3 reports these
    # alike (agent/peers.py), so they are one number.
    disconnects: int = 0
    paused: bool = False  # not reading: buffers full and nowhere to spill
    unauthorized: int = 0  # CURVE handshakes refused (issue 5)
    lane: LaneStats = LaneStats()
    peers: int = 0  # connections open now on both PULL sockets
    max_peers: int = 0  # ingest.max_peers: the cap per PULL socket
    peers_refused: int = 0  # connections closed at once: max_peers were open
    failed_handshakes: int = 0  # handshakes that failed (probes; CURVE refusals too)


@dataclasses.dataclass(frozen=True)
class UpstreamStats:
    subscribers: int = 0  # distinct subscribed topic prefixes; 0 = nobody listening
    messages: int = 0
    events: int = 0
    blocked: int = 0  # sends refused by XPUB_NODROP (a slow subscriber)
    unauthorized: int = 0  # CURVE handshakes refused (issue 5)
    peers: int = 0  # connected subscribers (handshake done), from the socket monitor
    stalled: bool = False  # a refusal lasted STALL_S, or a stuck peer was cut off lately
    stuck_dropped_messages: int = 0  # lost to subscribers cut off as stuck (estimate)
    stuck_dropped_events: int = 0


# Upper bounds (s) of the critical latency histogram: dense around the
# contract's 100 ms (INTERFACE.md "Events out"; IEC 61850-5 TT3), coarse beyond
# (an alert that waited for a subscriber, or on disk). The +Inf bucket is `count`.
CRITICAL_LATENCY_BOUNDS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    5.0,
    30.0,
    300.0,
)


@dataclasses.dataclass(frozen=True)
class LatencyHistogram:
    """Critical events from arrival in the loop (the turn that read their frame)
    to hand-off to the upstream socket. Cumulative like Prometheus: buckets[i] =
    (upper bound s, events <= it); `count` is the +Inf bucket."""

    buckets: tuple[tuple[float, int], ...] = tuple((b, 0) for b in CRITICAL_LATENCY_BOUNDS_S)
    sum_s: float = 0.0
    count: int = 0


class LatencyRecorder:
    """The loop's side of the histogram: observe() per hand-off, snapshot() per turn."""

    __slots__ = ("_bounds", "_counts", "_sum_s", "_count")

    def __init__(self, bounds: tuple[float, ...] = CRITICAL_LATENCY_BOUNDS_S) -> None:
        self._bounds = bounds
        self._counts = [0] * len(bounds)  # per bucket; beyond the last bound: count only
        self._sum_s = 0.0
        self._count = 0

    def observe(self, latency_s: float, events: int = 1) -> None:
        i = bisect.bisect_left(self._bounds, latency_s)  # on a bound counts in it (le)
        if i < len(self._counts):
            self._counts[i] += events
        self._sum_s += latency_s * events
        self._count += events

    def snapshot(self) -> LatencyHistogram:
        cumulative = itertools.accumulate(self._counts)
        return LatencyHistogram(
            tuple(zip(self._bounds, cumulative, strict=True)), self._sum_s, self._count
        )


@dataclasses.dataclass(frozen=True)
class Snapshot:
    agent_id: str
    version: str
    epoch: int
    state: str  # starting | running | stopping
    started_at: float  # wall clock, seconds
    taken_at: float  # wall clock, seconds
    loop_monotonic: float  # time.monotonic() of the loop turn that built this
    classes: tuple[ClassStats, ...]  # indexed by EventClass
    buffer: BufferStats
    spill: SpillStats
    ingest: IngestStats
    upstream: UpstreamStats
    critical_latency: LatencyHistogram = LatencyHistogram()
    ingest_path: str = "python"  # "compiled" | "python": the ingest core that runs (issue 10)

    def to_json(self) -> dict[str, Any]:
        b = self.buffer
        s = self.spill
        utilization = b.used_bytes / b.budget_bytes if b.budget_bytes else 0.0
        return {
            "buffer": {
                "used_bytes": b.used_bytes,
                "capacity_bytes": b.capacity_bytes,
                "budget_bytes": b.budget_bytes,
                "utilization": round(utilization, 6),
                "allocated_bytes": b.allocated_bytes,
                "critical_reserve_bytes": b.critical_reserve_bytes,
                "state": b.state,
            },
            "spill": {
                "spilled_events": s.spilled_events,
                "pending_events": s.pending_events,
                "pending_bytes": s.pending_bytes,
                "recovered_events": s.recovered_events,
                "file_bytes": s.file_bytes,
                "enabled": s.enabled,
                "dir": s.dir,
                "corrupt_records": s.corrupt_records,
                "flushes": s.flushes,
                "drain_eta_s": s.drain_eta_s,
                "pending_by_class": {
                    name: {"events": c.pending, "bytes": c.pending_bytes}
                    for name, c in zip(CLASS_NAMES, self.classes, strict=True)
                },
                "corrupt_events": s.corrupt_events,
                "corrupt_bytes": s.corrupt_bytes,
                "write_through": {
                    name: {
                        "enabled": w.enabled,
                        "written_events": w.written_events,
                        "held_events": w.held_events,
                        "lagging_events": w.lagging_events,
                    }
                    for name, w in zip(
                        CLASS_NAMES,
                        s.write_through or (WriteThroughStats(),) * len(CLASS_NAMES),
                        strict=True,
                    )
                },
            },
            "priorities": {
                name: {
                    "received": c.received,
                    "queued": c.queued,
                    "spilled": c.spilled,
                    "delivered": c.delivered,
                    "dropped": c.dropped,
                    "queued_bytes": c.queued_bytes,
                    "pending": c.pending,
                }
                for name, c in zip(CLASS_NAMES, self.classes, strict=True)
            },
            "rejected": {
                "total": self.ingest.rejected_total,
                "by_reason": dict(self.ingest.rejected_by_reason),
            },
            "ingest": {
                "frames": self.ingest.frames,
                "events": self.ingest.events,
                "disconnects": self.ingest.disconnects,
                "paused": self.ingest.paused,
                "unauthorized": self.ingest.unauthorized,
                "lane": {
                    "configured": self.ingest.lane.configured,
                    "frames": self.ingest.lane.frames,
                    "events": self.ingest.lane.events,
                    "noncritical": self.ingest.lane.noncritical,
                },
                "peers": {
                    "connected": self.ingest.peers,
                    "max": self.ingest.max_peers,
                    "refused": self.ingest.peers_refused,
                    "failed_handshakes": self.ingest.failed_handshakes,
                },
            },
            "upstream": {
                "subscribers": self.upstream.subscribers,
                "connected": self.upstream.subscribers > 0,
                "messages": self.upstream.messages,
                "events": self.upstream.events,
                "blocked": self.upstream.blocked,
                "unauthorized": self.upstream.unauthorized,
                "peers": self.upstream.peers,
                "stalled": self.upstream.stalled,
                "stuck_dropped_messages": self.upstream.stuck_dropped_messages,
                "stuck_dropped_events": self.upstream.stuck_dropped_events,
            },
            "latency": {
                "critical": {
                    "count": self.critical_latency.count,
                    "sum_s": round(self.critical_latency.sum_s, 6),
                    "buckets": [[le, n] for le, n in self.critical_latency.buckets],
                }
            },
            "agent": {
                "id": self.agent_id,
                "version": self.version,
                "epoch": self.epoch,
                "state": self.state,
                "started_at": self.started_at,
                "taken_at": self.taken_at,
                "uptime_s": round(self.taken_at - self.started_at, 3),
                "ingest_path": self.ingest_path,
            },
        }


def empty_snapshot(agent_id: str = "", version: str = "", *, now: float = 0.0) -> Snapshot:
    """A snapshot with every counter at zero, for start-up and tests."""
    return Snapshot(
        agent_id=agent_id,
        version=version,
        epoch=0,
        state="starting",
        started_at=now,
        taken_at=now,
        loop_monotonic=0.0,
        classes=tuple(ClassStats() for _ in CLASS_NAMES),
        buffer=BufferStats(),
        spill=SpillStats(),
        ingest=IngestStats(),
        upstream=UpstreamStats(),
    )
