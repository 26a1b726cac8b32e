"""The buffer governor: how much memory the event buffers may use right now.

This module owns the adaptive capacity of the in-memory buffers and the rules
that keep them inside `[buffer] budget_bytes`:

- capacity grows with demand while a spike fills the buffers, up to the budget
  and never beyond;
- a slice of the budget (`critical_reserve_bytes`) is only for critical events,
  so a buffer full of low-priority data never delays an alert: non-critical
  classes must leave it free (the loop spills or evicts them first);
- after `shrink_after_s` without growth, capacity falls back towards what is in
  use and the pooled chunks above it are released, so the shrink shows in RSS.

The state a technician reads says what the buffers did lately, not what one
turn did: "spilling" while events went to disk within the last
`ACTIVITY_SHOWS_S`, "draining" while events came back from disk within it.
Events merely lying on disk (an outage with no subscriber) are neither, and do
not keep capacity from shrinking; a drain in progress does, because what it
reads back needs the memory.

Pure: the loop passes `now` and the byte counts in and applies the decision;
the buffer policy (agent/pressure.py) reports spills and drains with their time.
"""

from __future__ import annotations

import dataclasses
import enum

# Headroom kept above what is in use when shrinking: a quiet agent that gets a
# small burst should not have to mmap fresh chunks for it.
SHRINK_HEADROOM = 1.25
# "spilling"/"draining" show for this long after the last spill/drain. The
# snapshot is taken every 0.25 s and a sustained spill moves a chunk every few
# turns, not every turn: one second spans four snapshots, so the state holds
# steady through a spill instead of flickering between snapshots.
ACTIVITY_SHOWS_S = 1.0


class GovernorState(str, enum.Enum):
    GROWING = "growing"
    STEADY = "steady"
    SHRINKING = "shrinking"
    SPILLING = "spilling"
    DRAINING = "draining"


@dataclasses.dataclass(frozen=True)
class GovernorStats:
    capacity_bytes: int
    budget_bytes: int
    critical_reserve_bytes: int
    state: GovernorState


class BufferGovernor:
    def __init__(
        self,
        budget_bytes: int,
        critical_reserve_bytes: int,
        shrink_after_s: float,
        floor_bytes: int,
        burst_bytes: int = 0,
    ) -> None:
        if not 0 <= critical_reserve_bytes < budget_bytes:
            raise ValueError("critical reserve must be smaller than the budget")
        self.budget_bytes = budget_bytes
        self.critical_reserve_bytes = critical_reserve_bytes
        self.shrink_after_s = shrink_after_s
        # The most one ingest burst can add before the loop looks again: the
        # non-critical classes keep that much free below their limit, so a
        # burst never has to eat into the critical reserve.
        self.burst_bytes = burst_bytes
        self.floor_bytes = min(floor_bytes, budget_bytes)
        self.capacity_bytes = self.floor_bytes
        self._last_growth: float | None = None
        self._shrunk_at: float | None = None
        # growing / steady / shrinking, before the spilling/draining overlay.
        self._base_state = GovernorState.STEADY
        self.state = GovernorState.STEADY
        self._spilled_at: float | None = None
        self._drained_at: float | None = None

    @property
    def noncritical_limit(self) -> int:
        """In-memory bytes the non-critical classes may hold together (after a
        turn's spilling), leaving the critical reserve and one burst free."""
        return max(0, self.budget_bytes - self.critical_reserve_bytes - self.burst_bytes)

    def can_admit(self, allocated_bytes: int) -> bool:
        """May the loop read one more burst without passing the budget?"""
        return allocated_bytes + self.burst_bytes <= self.budget_bytes

    def spilled(self, now: float) -> None:
        """Events went to disk at `now`."""
        self._spilled_at = now

    def drained(self, now: float) -> None:
        """Events came back from disk at `now`."""
        self._drained_at = now

    def spilling(self, now: float) -> bool:
        return self._spilled_at is not None and now - self._spilled_at < ACTIVITY_SHOWS_S

    def draining(self, now: float) -> bool:
        return self._drained_at is not None and now - self._drained_at < ACTIVITY_SHOWS_S

    def observe(self, now: float, in_use_bytes: int, allocated_bytes: int) -> int | None:
        """Update capacity and state. Returns how many pooled bytes to keep when
        memory should be given back (the loop trims the pool to it), else None."""
        trim_to: int | None = None
        spilling = self.spilling(now)
        draining = self.draining(now)
        if allocated_bytes > self.capacity_bytes:
            self.capacity_bytes = min(self.budget_bytes, allocated_bytes)
            self._last_growth = now
            self._base_state = GovernorState.GROWING
        elif self._last_growth is None or now - self._last_growth >= self.shrink_after_s:
            target = max(self.floor_bytes, int(in_use_bytes * SHRINK_HEADROOM))
            if target < self.capacity_bytes and not draining:
                self.capacity_bytes = target
                self._shrunk_at = now
                self._last_growth = now  # the next shrink waits another quiet period
                trim_to = max(0, target - in_use_bytes)
                self._base_state = GovernorState.SHRINKING
            elif self._shrunk_at is None or now - self._shrunk_at >= 1.0:
                self._base_state = GovernorState.STEADY
        elif self._base_state is GovernorState.GROWING:
            self._base_state = GovernorState.STEADY
        elif self._base_state is GovernorState.SHRINKING and now - (self._shrunk_at or now) >= 1.0:
            # "shrinking" shows for about a second after a shrink, then steady.
            self._base_state = GovernorState.STEADY
        if spilling:
            self.state = GovernorState.SPILLING
        elif draining:
            self.state = GovernorState.DRAINING
        else:
            self.state = self._base_state
        return trim_to

    def statistics(self) -> GovernorStats:
        return GovernorStats(
            capacity_bytes=self.capacity_bytes,
            budget_bytes=self.budget_bytes,
            critical_reserve_bytes=self.critical_reserve_bytes,
            state=self.state,
        )
