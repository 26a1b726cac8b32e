"""agent/batching.py: when a class is due, with a fake clock (waited_s is an argument)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.batching import BatchPolicy
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
