"""Telemetry: what the loop counts and measures, assembled into snapshots.

This module owns every counter a person may ask about that no component keeps
for itself: events per class (received, delivered, spilled, recovered,
dropped), ingest frames, events and rejects by reason, the alert lane's share
of them, collector disconnects and peers (from agent/peers.py's tables),
the critical-latency bookkeeping (arrival marks -> histogram), the drain rate
behind the technician's ETA, and the assembly of the frozen `Snapshot` from the
components' `statistics()`.

Pure (STYLE.md): no zmq, no threads, no clock; `now` (monotonic) and `wall`
(seconds since the epoch) are arguments. The loop and the buffer policy
(agent/pressure.py) call the counting methods; only the loop asks for
snapshots.

Promises:
- every event the policy moves is counted once under spilled, recovered or
  dropped; drops are also kept "unlogged" until `take_unlogged_drops()`, so
  the loop logs them once a second instead of per chunk;
- a critical latency is measured from the ingest burst that read the event to
  the hand-off time the caller passes (not the turn's start), and only while
  the marks are exact: once critical events went to disk their order against
  the marks is unknown, so measuring stops until the critical queue is empty.

# Invariant: sum of the marks in `_critical_arrivals` <= critical events in
#   memory that were never on disk; while `_arrivals_valid` is False the deque
#   is empty.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from agent.classes import CLASSES
from agent.stats import (
    BufferStats,
    ClassStats,
    IngestStats,
    LaneStats,
    LatencyRecorder,
    Snapshot,
    SpillStats,
    UpstreamStats,
    WriteThroughStats,
)

if TYPE_CHECKING:  # only the types: this module touches no file and no socket
    from agent.governor import GovernorStats
    from agent.peers import PeerStats
    from agent.queues import ClassQueues
    from agent.spill.store import SpillStoreStats


class WriteThroughLike(Protocol):
    """One class's write-through state (`agent.pressure.WriteThroughState`)."""

    enabled: bool
    held: int
    lagging: int


# The drain rate is smoothed over about this many seconds: long enough that
# one slow turn does not swing the ETA, short enough to follow a subscriber
# that speeds up or stalls.
DRAIN_RATE_SMOOTHING_S = 2.0
# Below one event a second the ETA would be a guess of hours: none shown.
MIN_RATE_FOR_ETA = 1.0


class ClassCounters:
    """Events of one class since start (the snapshot's per-class counters)."""

    __slots__ = ("received", "delivered", "spilled", "recovered", "dropped", "written_through")

    def __init__(self) -> None:
        self.received = 0
        self.delivered = 0
        self.spilled = 0
        self.recovered = 0
        self.dropped = 0
        self.written_through = 0  # also written to the ring while queued (write-through)


@dataclasses.dataclass(frozen=True)
class AgentIdentity:
    """What a snapshot says about the agent itself; fixed for a run."""

    agent_id: str
    version: str
    epoch: int
    started_at: float  # wall clock, seconds
    budget_bytes: int
    critical_reserve_bytes: int
    spill_dir: str
    lane_configured: bool = False  # an alert lane is configured
    ingest_path: str = "python"  # "compiled" | "python" (agent/fastpath.py)
    max_peers: int = 0  # ingest.max_peers, per PULL socket


class Telemetry:
    def __init__(self, identity: AgentIdentity) -> None:
        self.identity = identity
        # Indexed by EventClass. The loop bumps received/delivered directly on
        # its hot path (one attribute add per batch); the policy goes through
        # the methods below.
        self.classes: tuple[ClassCounters, ...] = tuple(ClassCounters() for _ in CLASSES)
        self.frames = 0
        self.events_in = 0
        self.rejected: dict[str, int] = {}
        self.disconnects = 0
        # The alert lane's share of frames / events, and its events that were
        # not critical (a misconfigured collector shows here).
        self.lane_frames = 0
        self.lane_events = 0
        self.lane_noncritical = 0
        self.latency = LatencyRecorder()
        # [events, arrival time] per ingest burst of critical events still in
        # memory, in queue order (see the invariant in the module header).
        self._critical_arrivals: collections.deque[list[float]] = collections.deque()
        self._arrivals_valid = True
        self._dropped_unlogged = [0] * len(CLASSES)
        self._drain_rate = 0.0  # events/s recovered, smoothed, for the ETA
        self._rate_at: float | None = None
        self._rate_recovered = 0

    # -- ingest ----------------------------------------------------------------

    def ingested(self, frames: int, accepted: int, rejected: Mapping[str, int]) -> None:
        """One decoded burst: its frames, accepted events and rejects by reason."""
        self.frames += frames
        self.events_in += accepted
        for reason, n in rejected.items():
            self.reject(reason, n)

    def lane_ingested(self, frames: int, accepted: int, critical: int) -> None:
        """Of a burst already counted by `ingested`: it came from the alert
        lane, and `critical` of its `accepted` events are critical."""
        self.lane_frames += frames
        self.lane_events += accepted
        self.lane_noncritical += accepted - critical

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + n

    def disconnected(self) -> None:
        """A collector went away (or ZeroMQ dropped it for an oversize frame).
        The loop counts through agent/peers.py instead (passed to snapshot)."""
        self.disconnects += 1

    # -- the buffer policy's moves --------------------------------------------

    def spilled(self, cls: int, n: int) -> None:
        self.classes[cls].spilled += n

    def written_through(self, cls: int, n: int) -> None:
        self.classes[cls].written_through += n

    def recovered(self, cls: int, n: int) -> None:
        self.classes[cls].recovered += n

    def dropped(self, cls: int, n: int) -> None:
        self.classes[cls].dropped += n
        # Logged once a second by the loop, not per chunk: at 500k events/s
        # per-chunk warnings would be hundreds of lines a second.
        self._dropped_unlogged[cls] += n

    def take_unlogged_drops(self) -> list[int]:
        """Drops per class since the last call (the loop logs them)."""
        out = self._dropped_unlogged
        self._dropped_unlogged = [0] * len(CLASSES)
        return out

    # -- critical latency --------------------------------------------------------

    def critical_arrived(self, events: int, at: float) -> None:
        """`events` critical events of one burst, read at `at`, queued in memory
        at the publishable end (not behind the ring)."""
        if self._arrivals_valid:
            self._critical_arrivals.append([events, at])

    def critical_spilled(self) -> None:
        """Critical events went to disk: the marks no longer match the queue."""
        self._critical_arrivals.clear()
        self._arrivals_valid = False

    def critical_delivered(self, count: int, handed_at: float, queue_empty: bool) -> None:
        """`count` critical events were handed to ZeroMQ at `handed_at` (the
        hand-off itself, not the turn's start); `queue_empty`: none left in memory."""
        arrivals = self._critical_arrivals
        while count and arrivals:
            mark = arrivals[0]
            n = min(count, int(mark[0]))
            self.latency.observe(handed_at - mark[1], n)
            count -= n
            mark[0] -= n
            if not mark[0]:
                arrivals.popleft()
        if queue_empty:
            arrivals.clear()
            self._arrivals_valid = True

    # -- drain rate ----------------------------------------------------------------

    @property
    def recovered_total(self) -> int:
        return sum(c.recovered for c in self.classes)

    def update_drain_rate(self, now: float) -> None:
        """Events read back from disk per second, smoothed over ~2 s, for the
        technician's drain ETA. Zero while nothing drains (no subscriber)."""
        recovered = self.recovered_total
        if self._rate_at is not None and now > self._rate_at:
            rate = (recovered - self._rate_recovered) / (now - self._rate_at)
            # The first measurement is taken as is; then smoothed.
            elapsed = now - self._rate_at
            alpha = 1.0 if not self._drain_rate else min(1.0, elapsed / DRAIN_RATE_SMOOTHING_S)
            self._drain_rate += alpha * (rate - self._drain_rate)
        self._rate_at = now
        self._rate_recovered = recovered

    @property
    def drain_rate(self) -> float:
        return self._drain_rate

    def drain_eta_s(self, pending_events: int) -> float | None:
        """Seconds until `pending_events` are read back at the current rate;
        None when nothing is pending or nothing drains."""
        if not pending_events or self._drain_rate < MIN_RATE_FOR_ETA:
            return None
        return round(pending_events / self._drain_rate, 1)

    # -- snapshots -----------------------------------------------------------------

    def snapshot(
        self,
        now: float,
        wall: float,
        *,
        state: str,
        queues: ClassQueues,
        store: SpillStoreStats,
        governor: GovernorStats,
        upstream: UpstreamStats,
        ingest_unauthorized: int,
        paused: bool,
        peers: Sequence[PeerStats] = (),
        write_through: Sequence[WriteThroughLike] = (),
    ) -> Snapshot:
        """Everything a person may ask, from each component's statistics().
        `peers`: the PeerTable statistics of each PULL socket (bulk, lane)."""
        ident = self.identity
        classes = tuple(
            ClassStats(
                received=c.received,
                queued=q.events,
                queued_bytes=q.bytes,
                spilled=c.spilled,
                pending=per.pending_events,
                pending_bytes=per.pending_bytes,
                delivered=c.delivered,
                dropped=c.dropped,
            )
            for c, q, per in zip(self.classes, queues.by_class, store.classes, strict=True)
        )
        return Snapshot(
            agent_id=ident.agent_id,
            version=ident.version,
            epoch=ident.epoch,
            state=state,
            started_at=ident.started_at,
            taken_at=wall,
            loop_monotonic=now,
            classes=classes,
            buffer=BufferStats(
                used_bytes=queues.used_bytes,
                allocated_bytes=queues.pool.allocated_bytes,
                capacity_bytes=governor.capacity_bytes,
                budget_bytes=ident.budget_bytes,
                critical_reserve_bytes=ident.critical_reserve_bytes,
                state=governor.state.value,
            ),
            spill=SpillStats(
                enabled=True,
                dir=ident.spill_dir,
                spilled_events=sum(c.spilled for c in self.classes),
                pending_events=store.pending_events,
                pending_bytes=store.pending_bytes,
                recovered_events=self.recovered_total,
                file_bytes=store.file_bytes,
                corrupt_records=store.corrupt_records,
                flushes=store.flushes,
                drain_eta_s=self.drain_eta_s(store.pending_events),
                corrupt_events=store.corrupt_events,
                corrupt_bytes=store.corrupt_bytes,
                write_through=tuple(
                    WriteThroughStats(
                        enabled=w.enabled,
                        written_events=c.written_through,
                        held_events=w.held,
                        lagging_events=w.lagging,
                    )
                    for w, c in zip(write_through, self.classes, strict=True)
                )
                if write_through
                else (),
            ),
            ingest=IngestStats(
                frames=self.frames,
                events=self.events_in,
                rejected_total=sum(self.rejected.values()),
                rejected_by_reason=tuple(sorted(self.rejected.items())),
                disconnects=self.disconnects + sum(p.disconnects for p in peers),
                paused=paused,
                unauthorized=ingest_unauthorized,
                lane=LaneStats(
                    configured=ident.lane_configured,
                    frames=self.lane_frames,
                    events=self.lane_events,
                    noncritical=self.lane_noncritical,
                ),
                peers=sum(p.connected for p in peers),
                max_peers=ident.max_peers,
                peers_refused=sum(p.refused for p in peers),
                failed_handshakes=sum(p.failed_handshakes for p in peers),
            ),
            upstream=upstream,
            critical_latency=self.latency.snapshot(),
            ingest_path=ident.ingest_path,
        )
