"""agent/telemetry.py: counters, critical latency, drain rate and snapshot
assembly, on a fake clock (`now` and `wall` are arguments)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.classes import CLASSES, EventClass
from agent.governor import GovernorState, GovernorStats
from agent.queues import ClassQueues
from agent.stats import Snapshot, UpstreamStats
from agent.telemetry import AgentIdentity, Telemetry

C, H, N, L = (int(c) for c in EventClass)
IDENTITY = AgentIdentity(
    agent_id="gw-7",
    version="9.9",
    epoch=1234,
    started_at=1_700_000_000.0,
    budget_bytes=64 << 20,
    critical_reserve_bytes=4 << 20,
    spill_dir="/var/spill",
)


def store_stats(pending: tuple[int, ...] = (0, 0, 0, 0)) -> Any:
    """What the snapshot reads of SpillStoreStats (the spill store's own
    fields are its business: tests/test_spill_store.py)."""
    per = tuple(SimpleNamespace(pending_events=p, pending_bytes=100 * p) for p in pending)
    return SimpleNamespace(
        classes=per,
        pending_events=sum(pending),
        pending_bytes=100 * sum(pending),
        file_bytes=4 << 20,
        corrupt_records=2,
        flushes=5,
        corrupt_events=7,
        corrupt_bytes=4096,
    )


def snapshot(t: Telemetry, now: float = 10.0, pending: tuple[int, ...] = (0, 0, 0, 0)) -> Snapshot:
    return t.snapshot(
        now,
        1_700_000_100.0,
        state="running",
        queues=ClassQueues(),
        store=store_stats(pending),
        governor=GovernorStats(8 << 20, 64 << 20, 4 << 20, GovernorState.SPILLING),
        upstream=UpstreamStats(subscribers=1, messages=3, events=30, blocked=0, unauthorized=2),
        ingest_unauthorized=4,
        paused=True,
    )


# ---------------------------------------------------------------- counters


def test_policy_moves_are_counted_per_class_and_drops_logged_once() -> None:
    t = Telemetry(IDENTITY)
    t.spilled(N, 10)
    t.recovered(N, 4)
    t.dropped(L, 7)
    t.dropped(L, 3)
    t.dropped(H, 1)
    assert (t.classes[N].spilled, t.classes[N].recovered) == (10, 4)
    assert [c.dropped for c in t.classes] == [0, 1, 0, 10]
    assert t.take_unlogged_drops() == [0, 1, 0, 10]
    assert t.take_unlogged_drops() == [0, 0, 0, 0]
    assert t.classes[L].dropped == 10  # the counter itself stays


def test_ingest_counters_and_rejects_by_reason() -> None:
    t = Telemetry(IDENTITY)
    t.ingested(5, 40, {"bad_cbor": 2})
    t.ingested(3, 9, {"bad_cbor": 1, "too_deep": 1})
    t.reject("multipart", 2)
    t.disconnected()
    ingest = snapshot(t).ingest
    assert (ingest.frames, ingest.events, ingest.disconnects) == (8, 49, 1)
    assert ingest.rejected_by_reason == (("bad_cbor", 3), ("multipart", 2), ("too_deep", 1))
    assert ingest.rejected_total == 6


# ---------------------------------------------------------- critical latency


def test_latency_is_measured_to_the_hand_off_time_passed_in() -> None:
    """`_observe_critical` used to overwrite its `now` with the clock; the
    caller's hand-off time is what counts."""
    t = Telemetry(IDENTITY)
    t.critical_arrived(3, 1.000)
    t.critical_arrived(2, 1.010)
    t.critical_delivered(4, 1.020, queue_empty=False)  # 3 from the first burst, 1 of the second
    h = t.latency.snapshot()
    assert h.count == 4
    assert h.sum_s == pytest.approx(3 * 0.020 + 0.010)
    t.critical_delivered(1, 1.105, queue_empty=True)
    h = t.latency.snapshot()
    assert h.count == 5 and h.sum_s == pytest.approx(0.070 + 0.095)
    assert dict(h.buckets)[0.1] == 5 and dict(h.buckets)[0.05] == 4


def test_after_a_critical_spill_nothing_is_measured_until_the_queue_empties() -> None:
    t = Telemetry(IDENTITY)
    t.critical_arrived(5, 0.0)
    t.critical_spilled()
    t.critical_arrived(5, 1.0)  # ignored: order against the marks unknown
    t.critical_delivered(5, 2.0, queue_empty=False)
    assert t.latency.snapshot().count == 0
    t.critical_delivered(5, 2.0, queue_empty=True)
    t.critical_arrived(1, 3.0)  # measuring again
    t.critical_delivered(1, 3.5, queue_empty=True)
    assert t.latency.snapshot().count == 1 and t.latency.snapshot().sum_s == 0.5


@given(st.lists(st.tuples(st.integers(1, 50), st.integers(0, 60)), max_size=30))
def test_never_more_latencies_than_events_marked(steps: list[tuple[int, int]]) -> None:
    t = Telemetry(IDENTITY)
    marked = 0
    for now, (arrived, delivered) in enumerate(steps):
        t.critical_arrived(arrived, float(now))
        marked += arrived
        t.critical_delivered(delivered, now + 0.5, queue_empty=False)
        assert t.latency.snapshot().count <= marked


# ----------------------------------------------------------------- drain rate


def test_drain_rate_and_eta() -> None:
    t = Telemetry(IDENTITY)
    t.update_drain_rate(0.0)
    assert t.drain_eta_s(1000) is None  # no rate yet
    t.recovered(N, 1000)
    t.update_drain_rate(1.0)
    assert t.drain_rate == 1000.0  # the first measurement as is
    assert t.drain_eta_s(5000) == 5.0
    assert t.drain_eta_s(0) is None
    t.update_drain_rate(2.0)  # nothing drained for 1 s: halfway to 0 (~2 s smoothing)
    assert t.drain_rate == pytest.approx(500.0)
    t.update_drain_rate(2.0)  # no time passed: unchanged
    assert t.drain_rate == pytest.approx(500.0)


def test_no_eta_below_one_event_a_second() -> None:
    t = Telemetry(IDENTITY)
    t.update_drain_rate(0.0)
    t.recovered(L, 1)
    t.update_drain_rate(10.0)
    assert t.drain_eta_s(100) is None


# ------------------------------------------------------------------ snapshot


def test_snapshot_assembles_every_component() -> None:
    t = Telemetry(IDENTITY)
    t.classes[C].received = 5
    t.classes[C].delivered = 4
    t.spilled(N, 10)
    t.recovered(N, 6)
    t.dropped(L, 2)
    t.update_drain_rate(0.0)
    t.recovered(N, 100)
    t.update_drain_rate(1.0)
    snap = snapshot(t, now=42.0, pending=(0, 0, 200, 0))
    assert (snap.agent_id, snap.version, snap.epoch) == ("gw-7", "9.9", 1234)
    assert (snap.state, snap.loop_monotonic, snap.taken_at) == ("running", 42.0, 1_700_000_100.0)
    assert snap.started_at == IDENTITY.started_at
    assert snap.classes[C].received == 5 and snap.classes[C].delivered == 4
    assert snap.classes[N].pending == 200 and snap.classes[N].pending_bytes == 20000
    assert snap.classes[L].dropped == 2
    assert snap.buffer.state == "spilling" and snap.buffer.budget_bytes == 64 << 20
    assert snap.spill.spilled_events == 10 and snap.spill.recovered_events == 106
    assert snap.spill.dir == "/var/spill" and snap.spill.corrupt_records == 2
    assert snap.spill.drain_eta_s == 2.0  # 200 pending at 100 events/s
    assert snap.ingest.paused and snap.ingest.unauthorized == 4
    assert snap.upstream.unauthorized == 2
    assert len(snap.classes) == len(CLASSES)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.state = "x"  # type: ignore[misc]
    assert snap.to_json()["priorities"]["critical"]["received"] == 5
