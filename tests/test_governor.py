"""agent/governor.py: adaptive capacity, the critical reserve and shrinking, on a
fake clock (`now` is an argument: no sleeps, no real time)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.governor import ACTIVITY_SHOWS_S, SHRINK_HEADROOM, BufferGovernor, GovernorState

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


def test_can_admit_up_to_the_budget_and_not_a_byte_more() -> None:
    g = governor()  # no burst configured: up to the budget
    assert g.can_admit(0)
    assert g.can_admit(BUDGET)
    assert not g.can_admit(BUDGET + 1)
    # Admission looks at the budget, not at the current adaptive capacity.
    assert g.capacity_bytes == FLOOR
    assert g.can_admit(10 * FLOOR)


def test_burst_headroom_comes_off_the_noncritical_limit() -> None:
    burst = 30 * KiB
    g = BufferGovernor(BUDGET, RESERVE, QUIET_S, FLOOR, burst_bytes=burst)
    assert g.noncritical_limit == BUDGET - RESERVE - burst
    # Never negative, however large the burst.
    huge = BufferGovernor(BUDGET, RESERVE, QUIET_S, FLOOR, burst_bytes=2 * BUDGET)
    assert huge.noncritical_limit == 0


def test_can_admit_keeps_room_for_one_burst() -> None:
    burst = 30 * KiB
    g = BufferGovernor(BUDGET, RESERVE, QUIET_S, FLOOR, burst_bytes=burst)
    assert g.can_admit(BUDGET - burst)
    assert not g.can_admit(BUDGET - burst + 1)


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
    g.drained(QUIET_S + 0.5)
    assert g.observe(QUIET_S + 1.0, 10 * KiB, 800 * KiB) is None
    assert g.capacity_bytes == 800 * KiB
    assert g.state is DRAINING
    # The drain stopped (nothing read back for a while): shrink.
    at = QUIET_S + 0.5 + ACTIVITY_SHOWS_S
    assert g.observe(at, 10 * KiB, 800 * KiB) == FLOOR - 10 * KiB


def test_events_lying_on_disk_do_not_block_shrink() -> None:
    """An outage: events wait on disk for a subscriber, nothing is read back.
    That is not "draining" and must not keep the memory (issue 8)."""
    g = grown()
    g.drained(0.5)  # a drain, long ago, before the subscriber went away
    g.spilled(1.0)
    assert g.observe(QUIET_S, 10 * KiB, 800 * KiB) == FLOOR - 10 * KiB
    assert g.state is SHRINKING


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
    ("spilled", "drained", "expected"),
    [(True, False, SPILLING), (False, True, DRAINING), (True, True, SPILLING)],
)
def test_spilling_and_draining_override_while_recent(
    spilled: bool, drained: bool, expected: GovernorState
) -> None:
    g = governor()

    def observe(now: float, alloc: int) -> None:
        if spilled:
            g.spilled(now)
        if drained:
            g.drained(now)
        g.observe(now, alloc, alloc)

    observe(0.0, 100 * KiB)  # even while growing...
    assert g.state is expected
    observe(0.1, 100 * KiB)  # ... steady ...
    assert g.state is expected
    observe(QUIET_S + 1, 100 * KiB)  # ... and quiet.
    assert g.state is expected


@pytest.mark.parametrize("activity", ["spilled", "drained"])
def test_state_leaves_spilling_or_draining_once_the_activity_stops(activity: str) -> None:
    """The reported state must follow the activity back down, or a technician
    reads "spilling" long after it stopped."""
    g = governor()
    g.observe(0.0, 100 * KiB, 100 * KiB)  # a spike grows the buffers
    getattr(g, activity)(1.0)
    g.observe(1.0, 100 * KiB, 100 * KiB)
    assert g.state in (SPILLING, DRAINING)
    g.observe(1.0 + ACTIVITY_SHOWS_S, 100 * KiB, 100 * KiB)  # over, not yet quiet
    assert g.state is STEADY


def test_a_sustained_spill_does_not_flicker_between_snapshots() -> None:
    """The loop spills a chunk every few turns, observes every 0.25 s: a spill
    between two snapshots but not in the snapshot's own turn still shows."""
    g = governor()
    now = 0.0
    states = []
    for turn in range(400):  # 4 s of 10 ms turns
        now = turn * 0.01
        if turn % 7 == 3:  # a chunk goes to disk every 70 ms
            g.spilled(now)
        if turn % 25 == 0:  # the 250 ms snapshot
            g.observe(now, 100 * KiB, 100 * KiB)
            states.append(g.state)
    assert states[1:] == [SPILLING] * (len(states) - 1)


# ---------------------------------------------------------------- property


observation = st.tuples(
    st.floats(0.0, 30.0),  # time step
    st.integers(0, 2 * BUDGET),  # in use
    st.integers(0, 2 * BUDGET),  # extra pooled
    st.booleans(),  # spilled at this step
    st.booleans(),  # drained at this step
)


@given(st.lists(observation, max_size=40), st.integers(0, 2 * BUDGET))
def test_capacity_stays_between_floor_and_budget(
    steps: list[tuple[float, int, int, bool, bool]], floor: int
) -> None:
    g = governor(floor=floor)
    now = 0.0
    last_spill = last_drain = None
    for dt, in_use, pooled, spilled, drained in steps:
        now += dt
        if spilled:
            g.spilled(now)
            last_spill = now
        if drained:
            g.drained(now)
            last_drain = now
        spilling = last_spill is not None and now - last_spill < ACTIVITY_SHOWS_S
        draining = last_drain is not None and now - last_drain < ACTIVITY_SHOWS_S
        before = g.capacity_bytes
        keep = g.observe(now, in_use, in_use + pooled)
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
