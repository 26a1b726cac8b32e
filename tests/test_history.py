"""agent/history.py: the ring against a deque, rates from one window, the chart columns."""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.classes import CLASS_NAMES
from agent.history import (
    CAPACITY,
    History,
    Sample,
    interval_latency,
    rates,
    sample_from_document,
    series,
    window,
)

from samples import busy_snapshot, running


def sample(mono: float, **fields: Any) -> Sample:
    """A sample at `mono` (wall = 1.7e9 + mono), every counter zero unless given."""
    zeros = (0, 0, 0, 0)
    base = Sample(
        mono=mono,
        wall=1.7e9 + mono,
        received=zeros,
        delivered=zeros,
        dropped=zeros,
        queued=zeros,
        pending_events=0,
        pending_bytes=0,
        spilled_events=0,
        used_bytes=0,
        capacity_bytes=0,
        budget_bytes=0,
        frames=0,
        rejected=0,
        blocked=0,
        subscribers=1,
        paused=False,
        latency_buckets=(),
        latency_count=0,
    )
    return dataclasses.replace(base, **fields)


# ---------------------------------------------------------------- the ring


@given(
    capacity=st.integers(2, 20),
    steps=st.lists(st.floats(0.0, 3.0, allow_nan=False), max_size=80),
)
def test_the_ring_keeps_the_newest_like_a_bounded_deque(capacity: int, steps: list[float]) -> None:
    ring = History(capacity=capacity, every_s=1.0)
    model: collections.deque[float] = collections.deque(maxlen=capacity)
    now = 0.0
    doc = running("gw", started=1.7e9).to_json()
    for step in steps:
        now += step
        kept = ring.record(doc, now)
        # Kept exactly when a second has passed since the last kept sample.
        assert kept == (not model or now >= model[-1] + 1.0)
        if kept:
            model.append(now)
        assert [s.mono for s in ring.samples()] == list(model)


def test_a_reader_holds_an_unchanging_tuple() -> None:
    ring = History(capacity=3)
    for t in range(3):
        ring.add(sample(float(t)))
    held = ring.samples()
    ring.add(sample(3.0))
    assert [s.mono for s in held] == [0.0, 1.0, 2.0]
    assert [s.mono for s in ring.samples()] == [1.0, 2.0, 3.0]


def test_the_default_ring_is_ten_minutes_of_seconds() -> None:
    ring = History()
    assert ring.capacity * ring.every_s == 600 == CAPACITY


def test_samples_must_move_forward_and_bounds_are_checked() -> None:
    ring = History()
    ring.add(sample(5.0))
    with pytest.raises(ValueError, match="not after the last one"):
        ring.add(sample(5.0))
    with pytest.raises(ValueError, match="capacity"):
        History(capacity=1)
    with pytest.raises(ValueError, match="every_s"):
        History(every_s=0)


def test_a_snapshot_is_read_only_when_a_sample_is_due() -> None:
    calls = []

    class Snap:
        def to_json(self) -> dict[str, Any]:
            calls.append(1)
            return running("gw", started=1.7e9).to_json()

    ring = History()
    assert ring.record(Snap(), 10.0)
    assert not ring.record(Snap(), 10.25)
    assert not ring.record(Snap(), 10.5)
    assert ring.record(Snap(), 11.0)
    assert len(calls) == 2


# ---------------------------------------------------------------- reading documents


def test_a_sample_of_the_busy_agent() -> None:
    doc = busy_snapshot(3).to_json()
    s = sample_from_document(doc, 42.0)
    assert s.mono == 42.0 and s.wall == doc["agent"]["taken_at"]
    assert s.received == tuple(doc["priorities"][c]["received"] for c in CLASS_NAMES)
    assert (
        s.backlog
        == sum(doc["priorities"][c]["queued"] for c in CLASS_NAMES)
        + (doc["spill"]["pending_events"])
    )
    assert s.latency_count == doc["latency"]["critical"]["count"]
    # The lane's and the upstream's counters are in every Snapshot: zero here.
    assert s.lane_noncritical == 0
    assert s.stalled is False and s.stuck_dropped_messages == 0


def test_fields_other_components_add_are_read_when_present() -> None:
    doc = running("gw", started=1.7e9).to_json()
    doc["ingest"]["lane"] = {"configured": True, "frames": 5, "events": 9, "noncritical": 2}
    doc["upstream"].update(stalled=True, stuck_dropped_messages=7, stuck_dropped_events=70)
    s = sample_from_document(doc, 1.0)
    assert (s.lane_noncritical, s.stalled, s.stuck_dropped_messages, s.stuck_dropped_events) == (
        2,
        True,
        7,
        70,
    )


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_any_document_gives_a_sample(doc: Any) -> None:
    # An odd document (another version, a bug) must not break the loop's timer.
    sample_from_document(doc if isinstance(doc, dict) else {"x": doc}, 1.0)


# ---------------------------------------------------------------- rates


def test_rates_come_from_one_window_and_totals_are_sums() -> None:
    samples = [
        sample(
            float(t),
            received=(4 * t, 30 * t, 520 * t, 90 * t),
            delivered=(4 * t, 30 * t, 500 * t, 0),
            frames=64 * t,
            rejected=2 * t,
            blocked=t,
        )
        for t in range(10)
    ]
    r = rates(samples, 5.0)
    assert r is not None
    assert r["window_s"] == 5.0
    assert r["classes"]["normal"] == {"in": 520.0, "out": 500.0, "dropped": 0.0}
    assert r["events_in"] == 4 + 30 + 520 + 90
    assert r["events_out"] == sum(c["out"] for c in r["classes"].values())
    assert (r["frames_in"], r["rejected"], r["blocked"]) == (64.0, 2.0, 1.0)


def test_no_rate_before_two_samples_far_enough_apart() -> None:
    assert rates([]) is None
    assert rates([sample(0.0)]) is None
    assert rates([sample(0.0), sample(0.2)]) is None
    assert rates([sample(0.0), sample(1.0)]) is not None


def test_the_window_takes_the_sample_about_its_length_ago() -> None:
    samples = [sample(float(t)) for t in range(20)]
    pair = window(samples, 5.0)
    assert pair is not None and (pair[0].mono, pair[1].mono) == (14.0, 19.0)
    # Less history than the window: the oldest there is.
    pair = window(samples[:3], 5.0)
    assert pair is not None and pair[0].mono == 0.0


# ---------------------------------------------------------------- latency and series


BOUNDS = (0.001, 0.01, 0.1, 1.0)


def lat(mono: float, per_bucket: tuple[int, ...]) -> Sample:
    cumulative = tuple(sum(per_bucket[: i + 1]) for i in range(len(BOUNDS)))
    return sample(
        mono,
        latency_buckets=tuple(zip(BOUNDS, cumulative, strict=True)),
        latency_count=sum(per_bucket),
    )


def test_interval_latency_reads_bucket_deltas() -> None:
    a = lat(0.0, (10, 0, 0, 0))
    b = lat(1.0, (10 + 98, 2, 0, 0))  # 100 events in between: 98 <= 1 ms, 2 <= 10 ms
    assert interval_latency(a, b, 0.5) == 0.001
    assert interval_latency(a, b, 0.99) == 0.01
    assert interval_latency(a, a, 0.99) is None  # nothing measured in between
    over = dataclasses.replace(b, latency_count=b.latency_count + 5)  # 5 beyond 1 s
    assert interval_latency(a, over, 1.0) == math.inf
    assert interval_latency(a, sample(1.0, latency_count=3), 0.5) is None  # bounds differ


def test_the_rates_carry_the_last_minutes_critical_latency() -> None:
    samples = [lat(float(t), (9 * t, t, 0, 0)) for t in range(90)]
    r = rates(samples)
    assert r is not None
    latency = r["critical_latency"]
    assert latency["window_s"] == 60.0 and latency["count"] == 600
    assert (latency["p50_s"], latency["p99_s"], latency["max_s"]) == (0.001, 0.01, 0.01)
    assert latency["beyond"] == []
    beyond = [
        dataclasses.replace(s, latency_count=s.latency_count + int(s.mono) // 30) for s in samples
    ]
    latency = rates(beyond)["critical_latency"]  # type: ignore[index]
    assert latency["max_s"] == 1.0 and latency["beyond"] == ["max_s"]
    idle = rates([sample(float(t)) for t in range(5)])
    assert idle is not None and idle["critical_latency"]["p99_s"] is None


def test_series_has_one_column_entry_per_interval() -> None:
    samples = [
        dataclasses.replace(
            lat(float(t), (t * 10, 0, 0, 0)),
            received=(t, 2 * t, 3 * t, 4 * t),
            delivered=(t, 2 * t, 3 * t, 0),
            used_bytes=100 * t,
            budget_bytes=1000,
            pending_events=7 * t,
        )
        for t in range(5)
    ]
    cols = series(samples)
    assert cols["t"] == [1.7e9 + t for t in range(1, 5)]
    assert cols["in"]["low"] == [4.0] * 4 and cols["out"]["low"] == [0.0] * 4
    assert cols["used_bytes"] == [100, 200, 300, 400]
    assert cols["pending_events"] == [7, 14, 21, 28]
    assert cols["latency_p99_s"] == [0.001] * 4 and cols["latency_count"] == [10] * 4
    assert series(samples, since=1.7e9 + 3)["t"] == [1.7e9 + 4]
    assert series(samples[:1])["t"] == []


def test_a_latency_beyond_the_last_bound_is_drawn_at_it() -> None:
    a, b = lat(0.0, (0, 0, 0, 0)), lat(1.0, (0, 0, 0, 0))
    b = dataclasses.replace(b, latency_count=4)  # all four beyond 1 s
    assert series([a, b])["latency_p99_s"] == [1.0]


def test_series_of_a_real_snapshot_sequence() -> None:
    ring = History()
    for n in range(3):
        ring.record(busy_snapshot(n), 1000.0 + n)
    cols = series(ring.samples())
    assert cols["in"]["normal"] == [5200.0, 5200.0]
    # 40 critical events a second, the slowest 2 in the 25 ms bucket.
    assert cols["latency_p99_s"] == [0.025, 0.025] and cols["latency_count"] == [40, 40]


# ---------------------------------------------------------------- the real agent


@pytest.mark.e2e
def test_the_running_agent_keeps_its_history_and_serves_it(make_agent: Any, zctx: Any) -> None:
    """The loop feeds the ring once a second; the endpoint serves rates, the
    alarms and the chart columns from it."""
    import zmq

    from harness import event, wait_for

    agent = make_agent().start()
    push = zctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.connect(agent.ingest)
    for i in range(300):
        push.send(event(i, "reading"))
    doc = agent.wait_state(lambda d: d["rates"] is not None, what="rates from two samples")
    assert doc["rates"]["window_s"] >= 0.5
    # Nobody subscribed and 300 events wait: the alarm says so, with its action.
    doc = agent.wait_state(lambda d: d["priorities"]["normal"]["received"] == 300)
    assert doc["alarms"][0]["name"] == "NOT CONNECTED" and doc["alarms"][0]["level"] == "bad"
    assert doc["alarms"][0]["action"]
    # A second wave, after the ring has samples: a later point shows it arriving.
    for i in range(300):
        push.send(event(i, "reading"))
    series = wait_for(
        lambda: (lambda h: h if sum(h["series"]["in"]["normal"]) >= 200 else None)(
            agent.get("/api/v1/gateway/history")
        ),
        10.0,
        what="the second wave in the chart columns",
    )["series"]
    assert series["budget_bytes"][-1] == 64 * 1024 * 1024
