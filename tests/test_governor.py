"""agent/governor.py: adaptive capacity, the critical reserve and shrinking, on a
fake clock (`now` is an argument: no sleeps, no real time)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.governor import SHRINK_HEADROOM, BufferGovernor, GovernorState

KiB = 1024
BUDGET = 1000 * KiB
RESERVE = 100 * KiB
QUIET_S = 10.0
FLOOR = 50 * KiB

GROWING = GovernorState.GROWING
STEADY = GovernorState.STEADY
SHRINKING = GovernorState.SHRINKING
SPILLING = GovernorState.SPILLING
DRAINING = GovernorState.DRAINING


def governor(floor: int = FLOOR, quiet_s: float = QUIET_S) -> BufferGovernor:
    return BufferGovernor(
        budget_bytes=BUDGET,
        critical_reserve_bytes=RESERVE,
        shrink_after_s=quiet_s,
        floor_bytes=floor,
    )


# ------------------------------------------------------------- construction


@pytest.mark.parametrize("reserve", [-1, BUDGET, BUDGET + 1])
def test_invalid_reserve_raises(reserve: int) -> None:
    with pytest.raises(ValueError, match="reserve"):
        BufferGovernor(BUDGET, reserve, QUIET_S, FLOOR)


def test_zero_reserve_is_valid() -> None:
    g = BufferGovernor(BUDGET, 0, QUIET_S, FLOOR)
    assert g.noncritical_limit == BUDGET


def test_starts_steady_at_the_floor() -> None:
    g = governor()
    s = g.statistics()
    assert s == type(s)(FLOOR, BUDGET, RESERVE, STEADY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.capacity_bytes = 1  # type: ignore[misc]


def test_floor_is_capped_at_the_budget() -> None:
    assert governor(floor=2 * BUDGET).capacity_bytes == BUDGET


# ------------------------------------------------------ reserve, admission


def test_reserve_math() -> None:
    g = governor()
    assert g.noncritical_limit == BUDGET - RESERVE
    assert g.noncritical_excess(0) == 0
    assert g.noncritical_excess(BUDGET - RESERVE) == 0
    assert g.noncritical_excess(BUDGET - RESERVE + 1) == 1
    assert g.noncritical_excess(BUDGET) == RESERVE
    assert g.noncritical_excess(BUDGET + 7) == RESERVE + 7


def test_can_admit_up_to_the_budget_and_not_a_byte_more() -> None:
    g = governor()
    assert g.can_admit(0, BUDGET)
    assert g.can_admit(BUDGET - 10, 10)
    assert not g.can_admit(BUDGET - 10, 11)
    assert g.can_admit(BUDGET, 0)
    assert not g.can_admit(BUDGET + 1, 0)
    # Admission looks at the budget, not at the current adaptive capacity.
    assert g.capacity_bytes == FLOOR
    assert g.can_admit(FLOOR, 10 * FLOOR)


def test_burst_headroom_comes_off_the_noncritical_limit() -> None:
    burst = 30 * KiB
    g = BufferGovernor(BUDGET, RESERVE, QUIET_S, FLOOR, burst_bytes=burst)
    assert g.noncritical_limit == BUDGET - RESERVE - burst
    assert g.noncritical_excess(BUDGET - RESERVE - burst) == 0
    assert g.noncritical_excess(BUDGET - RESERVE) == burst
    # Never negative, however large the burst.
    huge = BufferGovernor(BUDGET, RESERVE, QUIET_S, FLOOR, burst_bytes=2 * BUDGET)
    assert huge.noncritical_limit == 0
    assert huge.noncritical_excess(5) == 5


def test_can_admit_defaults_to_one_burst() -> None:
    burst = 30 * KiB
    g = BufferGovernor(BUDGET, RESERVE, QUIET_S, FLOOR, burst_bytes=burst)
    assert g.can_admit(BUDGET - burst)
    assert not g.can_admit(BUDGET - burst + 1)
    assert g.can_admit(BUDGET - burst + 1, 0)  # an explicit size wins
    assert governor().can_admit(BUDGET)  # no burst configured: up to the budget


# ---------------------------------------------------------------- growing


def test_grows_with_allocation_and_caps_at_the_budget() -> None:
    g = governor()
    assert g.observe(0.0, 10 * KiB, FLOOR) is None  # not above capacity: no growth
    assert g.capacity_bytes == FLOOR
    for t, alloc in enumerate((100 * KiB, 300 * KiB, 900 * KiB)):
        assert g.observe(float(t), alloc, alloc) is None
        assert g.capacity_bytes == alloc
        assert g.state is GROWING
    assert g.observe(5.0, BUDGET, 2 * BUDGET) is None
    assert g.capacity_bytes == BUDGET


def test_smaller_allocation_does_not_lower_capacity_before_quiet() -> None:
    g = governor()
    g.observe(0.0, 500 * KiB, 500 * KiB)
    assert g.observe(1.0, 10 * KiB, 20 * KiB) is None
    assert g.capacity_bytes == 500 * KiB


# --------------------------------------------------------------- shrinking


def grown(in_use: int = 800 * KiB, at: float = 0.0) -> BufferGovernor:
    g = governor()
    g.observe(at, in_use, in_use)
    assert g.capacity_bytes == in_use
    return g


def test_no_shrink_before_the_quiet_period() -> None:
    g = grown()
    for t in (0.5, 5.0, QUIET_S - 0.001):
        assert g.observe(t, 100 * KiB, 800 * KiB) is None
        assert g.capacity_bytes == 800 * KiB


def test_shrinks_after_the_quiet_period_with_headroom() -> None:
    g = grown()
    in_use = 200 * KiB
    keep = g.observe(QUIET_S, in_use, 800 * KiB)
    target = int(in_use * SHRINK_HEADROOM)
    assert SHRINK_HEADROOM == 1.25
    assert target == 250 * KiB
    assert g.capacity_bytes == target
    assert keep == target - in_use  # pooled bytes the loop keeps: the headroom
    assert g.state is SHRINKING


def test_shrinks_to_the_floor_when_little_is_in_use() -> None:
    g = grown()
    keep = g.observe(QUIET_S + 3.0, 8 * KiB, 800 * KiB)
    assert g.capacity_bytes == FLOOR
    assert keep == FLOOR - 8 * KiB


def test_shrink_with_nothing_in_use_keeps_floor_worth_of_pool() -> None:
    g = grown()
    assert g.observe(QUIET_S, 0, 800 * KiB) == FLOOR
    assert g.capacity_bytes == FLOOR


def test_no_shrink_when_in_use_needs_the_capacity() -> None:
    g = grown()
    # 700 KiB * 1.25 > 800 KiB: nothing to give back.
    assert g.observe(QUIET_S + 1.0, 700 * KiB, 800 * KiB) is None
    assert g.capacity_bytes == 800 * KiB


def test_growth_resets_the_quiet_timer() -> None:
    g = grown(in_use=400 * KiB, at=0.0)
    g.observe(5.0, 600 * KiB, 600 * KiB)  # grows again at t=5
    assert g.observe(QUIET_S, 10 * KiB, 600 * KiB) is None  # only 5 s quiet
    assert g.capacity_bytes == 600 * KiB
    assert g.observe(5.0 + QUIET_S - 0.001, 10 * KiB, 600 * KiB) is None
    assert g.observe(5.0 + QUIET_S, 10 * KiB, 600 * KiB) == FLOOR - 10 * KiB
    assert g.capacity_bytes == FLOOR


def test_the_next_shrink_waits_another_quiet_period() -> None:
    g = grown()
    assert g.observe(QUIET_S, 400 * KiB, 800 * KiB) == 100 * KiB
    assert g.capacity_bytes == 500 * KiB
    # Usage falls further right away: no second shrink until quiet again.
    assert g.observe(QUIET_S + 1.0, 100 * KiB, 500 * KiB) is None
    assert g.capacity_bytes == 500 * KiB
    assert g.observe(2 * QUIET_S, 100 * KiB, 500 * KiB) == 25 * KiB
    assert g.capacity_bytes == 125 * KiB


def test_no_shrink_while_draining() -> None:
    g = grown()
    assert g.observe(QUIET_S + 1.0, 10 * KiB, 800 * KiB, draining=True) is None
    assert g.capacity_bytes == 800 * KiB
    assert g.observe(QUIET_S + 2.0, 10 * KiB, 800 * KiB) == FLOOR - 10 * KiB


# ------------------------------------------------------------------ states


def test_growing_then_steady() -> None:
    g = governor()
    assert g.state is STEADY
    g.observe(0.0, 100 * KiB, 100 * KiB)
    assert g.state is GROWING
    g.observe(0.1, 100 * KiB, 100 * KiB)
    assert g.state is STEADY
    g.observe(0.2, 200 * KiB, 200 * KiB)
    assert g.state is GROWING
    assert g.statistics().state is GROWING
    assert GROWING.value == "growing"


def test_shrinking_then_steady_once_quiet_again() -> None:
    g = grown()
    g.observe(QUIET_S, 10 * KiB, 800 * KiB)
    assert g.state is SHRINKING
    # Allocation now within the shrunk capacity and nothing left to give back.
    g.observe(3 * QUIET_S, 10 * KiB, FLOOR)
    assert g.state is STEADY


@pytest.mark.parametrize(
    ("spilling", "draining", "expected"),
    [(True, False, SPILLING), (False, True, DRAINING), (True, True, SPILLING)],
)
def test_spilling_and_draining_flags_override(
    spilling: bool, draining: bool, expected: GovernorState
) -> None:
    g = governor()
    # Even while growing...
    g.observe(0.0, 100 * KiB, 100 * KiB, spilling=spilling, draining=draining)
    assert g.state is expected
    # ... steady ...
    g.observe(0.1, 100 * KiB, 100 * KiB, spilling=spilling, draining=draining)
    assert g.state is expected
    # ... and quiet.
    g.observe(QUIET_S + 1, 100 * KiB, 100 * KiB, spilling=spilling, draining=draining)
    assert g.state is expected


@pytest.mark.parametrize("flag", ["spilling", "draining"])
def test_state_leaves_spilling_or_draining_once_the_flag_clears(flag: str) -> None:
    """The loop recomputes the flags on every tick; the reported state must follow
    them back down, or a technician reads "spilling" long after it stopped."""
    g = governor()
    g.observe(0.0, 100 * KiB, 100 * KiB)  # a spike grows the buffers
    g.observe(1.0, 100 * KiB, 100 * KiB, **{flag: True})
    assert g.state in (SPILLING, DRAINING)
    g.observe(2.0, 100 * KiB, 100 * KiB)  # spill/drain over, no growth, not yet quiet
    assert g.state is STEADY


# ---------------------------------------------------------------- property


observation = st.tuples(
    st.floats(0.0, 30.0),  # time step
    st.integers(0, 2 * BUDGET),  # in use
    st.integers(0, 2 * BUDGET),  # extra pooled
    st.booleans(),
    st.booleans(),
)


@given(st.lists(observation, max_size=40), st.integers(0, 2 * BUDGET))
def test_capacity_stays_between_floor_and_budget(
    steps: list[tuple[float, int, int, bool, bool]], floor: int
) -> None:
    g = governor(floor=floor)
    now = 0.0
    for dt, in_use, pooled, spilling, draining in steps:
        now += dt
        before = g.capacity_bytes
        keep = g.observe(now, in_use, in_use + pooled, spilling=spilling, draining=draining)
        assert min(floor, BUDGET) <= g.capacity_bytes <= BUDGET
        if keep is None:
            assert g.capacity_bytes >= before
        else:
            assert not draining
            assert keep >= 0
            assert g.capacity_bytes < before
            assert g.capacity_bytes == max(min(floor, BUDGET), int(in_use * SHRINK_HEADROOM))
            assert in_use + keep == g.capacity_bytes
        if spilling:
            assert g.state is SPILLING
        elif draining:
            assert g.state is DRAINING
