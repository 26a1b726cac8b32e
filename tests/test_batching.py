"""agent/batching.py: when a class is due, with a fake clock (waited_s is an argument),
and how large a message may be (message_events, DrainMeter on a fake clock)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.batching import (
    SUBSCRIBER_RCVBUF_BYTES,
    SUBSCRIBER_RCVHWM,
    BatchPolicy,
    DrainMeter,
    InFlight,
    in_flight,
    message_events,
)
from agent.classes import CLASSES, EventClass

C, H, N, L = EventClass.CRITICAL, EventClass.HIGH, EventClass.NORMAL, EventClass.LOW
NON_CRITICAL = (H, N, L)

POLICY = BatchPolicy(max_events=10, max_bytes=1000, linger_s=0.005)


@pytest.mark.parametrize("cls", CLASSES)
def test_nothing_queued_is_none(cls: EventClass) -> None:
    assert POLICY.wait_s(cls, 0, 0, 0.0) is None
    assert POLICY.wait_s(cls, 0, 0, 99.0) is None
    assert not POLICY.due(cls, 0, 0, 99.0)


def test_critical_is_due_at_once() -> None:
    assert POLICY.wait_s(C, 1, 1, 0.0) == 0.0
    assert POLICY.due(C, 1, 1, 0.0)


@pytest.mark.parametrize("cls", NON_CRITICAL)
def test_full_batch_by_count_is_due(cls: EventClass) -> None:
    assert not POLICY.due(cls, 9, 9, 0.0)
    assert POLICY.wait_s(cls, 10, 10, 0.0) == 0.0
    assert POLICY.due(cls, 11, 11, 0.0)


@pytest.mark.parametrize("cls", NON_CRITICAL)
def test_full_batch_by_bytes_is_due(cls: EventClass) -> None:
    assert not POLICY.due(cls, 1, 999, 0.0)
    assert POLICY.wait_s(cls, 1, 1000, 0.0) == 0.0
    assert POLICY.due(cls, 2, 5000, 0.0)


@pytest.mark.parametrize("cls", NON_CRITICAL)
def test_partial_batch_lingers_then_is_due(cls: EventClass) -> None:
    # Fake clock readings; the oldest event became publishable at `since`.
    since = 1000.0
    assert POLICY.wait_s(cls, 3, 30, 1000.0 - since) == 0.005
    assert POLICY.wait_s(cls, 3, 30, 1000.002 - since) == pytest.approx(0.003)
    assert not POLICY.due(cls, 3, 30, 1000.002 - since)
    assert not POLICY.due(cls, 3, 30, 1000.0049 - since)
    assert POLICY.wait_s(cls, 3, 30, 1000.006 - since) == 0.0
    assert POLICY.due(cls, 3, 30, 1000.006 - since)
    # Waited far longer: still 0, never negative.
    assert POLICY.wait_s(cls, 3, 30, 1010.0 - since) == 0.0


@pytest.mark.parametrize("cls", NON_CRITICAL)
def test_due_exactly_at_linger(cls: EventClass) -> None:
    assert POLICY.due(cls, 1, 1, POLICY.linger_s)


def test_defaults() -> None:
    p = BatchPolicy()
    assert (p.max_events, p.max_bytes, p.linger_s) == (256, 64 * 1024, 0.005)
    assert p.due(N, 256, 1, 0.0)
    assert p.due(N, 1, 64 * 1024, 0.0)
    assert not p.due(N, 255, 64 * 1024 - 1, 0.0)


def test_zero_linger_makes_everything_due() -> None:
    p = BatchPolicy(max_events=10, max_bytes=1000, linger_s=0.0)
    for cls in CLASSES:
        assert p.wait_s(cls, 1, 1, 0.0) == 0.0


@given(
    cls=st.sampled_from(CLASSES),
    events=st.integers(0, 50),
    nbytes=st.integers(0, 5000),
    waited=st.floats(0.0, 1.0),
)
def test_wait_s_is_bounded_and_due_agrees(
    cls: EventClass, events: int, nbytes: int, waited: float
) -> None:
    w = POLICY.wait_s(cls, events, nbytes, waited)
    if events == 0:
        assert w is None
        return
    assert w is not None
    assert 0.0 <= w <= POLICY.linger_s
    assert POLICY.due(cls, events, nbytes, waited) == (w == 0.0)
    if cls == C or events >= POLICY.max_events or nbytes >= POLICY.max_bytes:
        assert w == 0.0


# ------------------------------------------------- the adaptive message size

FLIGHT = InFlight(messages=6, kernel_bytes=16 * 1024)


def test_full_size_while_the_subscriber_keeps_up() -> None:
    assert message_events(None, 120.0, FLIGHT, 0.005, 256) == 256


def test_a_fast_drain_keeps_messages_large() -> None:
    # 500k events/s: 2,500 events fit in 5 ms, more than 6 x 256 + the kernel's.
    assert message_events(500_000.0, 120.0, FLIGHT, 0.005, 256) == 256


def test_a_slow_drain_makes_messages_small_down_to_the_floor() -> None:
    floor = int(FLIGHT.kernel_bytes / FLIGHT.messages / 120.0)
    # 30k events/s: 150 events in 5 ms, less than the kernel alone holds.
    assert message_events(30_000.0, 120.0, FLIGHT, 0.005, 256) == floor
    assert message_events(0.0, 120.0, FLIGHT, 0.005, 256) == floor


def test_between_the_floor_and_the_maximum_in_flight_time_is_the_target() -> None:
    rate = 200_000.0
    n = message_events(rate, 120.0, FLIGHT, 0.005, 256)
    in_flight_events = FLIGHT.messages * n + FLIGHT.kernel_bytes / 120.0
    assert in_flight_events / rate <= 0.005
    assert (FLIGHT.messages * (n + 1) + FLIGHT.kernel_bytes / 120.0) / rate > 0.005


def test_in_flight_counts_the_shallow_subscriber() -> None:
    f = in_flight(2, 4096)
    assert f.messages == 2 + SUBSCRIBER_RCVHWM
    assert f.kernel_bytes == 2 * (4096 + SUBSCRIBER_RCVBUF_BYTES)


@given(
    rate=st.one_of(st.none(), st.floats(0, 1e7)),
    event_bytes=st.floats(0, 1e6),
    messages=st.integers(1, 1000),
    kernel=st.integers(0, 1 << 24),
    target=st.floats(0, 1),
    max_events=st.integers(1, 65535),
)
def test_message_events_is_within_one_and_the_maximum(
    rate: float | None,
    event_bytes: float,
    messages: int,
    kernel: int,
    target: float,
    max_events: int,
) -> None:
    n = message_events(rate, event_bytes, InFlight(messages, kernel), target, max_events)
    assert 1 <= n <= max_events
    if rate is None:
        assert n == max_events


@given(rates=st.lists(st.floats(1, 1e6), min_size=2, max_size=20))
def test_message_events_grows_with_the_drain_rate(rates: list[float]) -> None:
    sizes = [message_events(r, 120.0, FLIGHT, 0.005, 256) for r in sorted(rates)]
    assert sizes == sorted(sizes)


def test_drain_meter_keeps_up_without_refusals() -> None:
    m = DrainMeter(window_s=0.05)
    t = 0.0
    for _ in range(10):
        m.sent(t, 256, 256 * 120)
        t += 0.01
    assert m.rate(t) is None


def test_drain_meter_a_first_refusal_means_smallest_at_once() -> None:
    m = DrainMeter(window_s=0.05)
    m.sent(0.001, 10, 1200)
    m.refused(0.002)
    assert m.rate(0.003) == 0.0


def test_drain_meter_measures_events_per_second_over_refused_windows() -> None:
    m = DrainMeter(window_s=0.05, smoothing=1.0)
    t = 0.0
    # 30 events every ms, a refusal between: 30,000 events/s.
    while t < 0.2:
        m.sent(t, 30, 30 * 100)
        m.refused(t + 0.0005)
        t += 0.001
    rate = m.rate(t)
    assert rate is not None
    assert rate == pytest.approx(30_000, rel=0.05)
    assert m.event_bytes == pytest.approx(100)


def test_drain_meter_returns_to_full_size_after_clear_windows() -> None:
    m = DrainMeter(window_s=0.05, keep_up_windows=2)
    m.sent(0.0, 30, 3000)
    m.refused(0.01)
    assert m.rate(0.06) is not None
    # Sends go through, nothing refused, for two whole windows.
    m.sent(0.07, 30, 3000)
    m.sent(0.12, 30, 3000)
    assert m.rate(0.17) is None


@pytest.mark.parametrize("cls", NON_CRITICAL)
def test_a_smaller_message_size_makes_a_smaller_batch_due(cls: EventClass) -> None:
    assert not POLICY.due(cls, 4, 40, 0.0)
    assert POLICY.due(cls, 4, 40, 0.0, max_events=4)
    assert POLICY.wait_s(cls, 3, 30, 0.0, max_events=4) == POLICY.linger_s


def test_drain_meter_measures_afresh_after_keeping_up() -> None:
    # A slow subscriber measured, then a stretch of keeping up: the next
    # bottleneck starts from its own first window, not the old rate.
    # (Whole seconds: exact window edges.)
    m = DrainMeter(window_s=1.0, keep_up_windows=2, smoothing=0.5)
    m.sent(0.0, 10, 1000)
    m.refused(0.5)
    assert m.rate(1.0) == 10.0
    for t in (2.0, 3.0, 4.0):
        m.sent(t, 10, 1000)
    assert m.rate(5.0) is None
    m.refused(5.5)
    assert m.rate(5.6) == 0.0  # the first refusal: smallest at once
    m.sent(5.7, 5000, 500_000)
    assert m.rate(6.0) == 5000.0  # not smoothed with the old 10/s
