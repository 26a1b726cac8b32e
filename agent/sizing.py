"""Whether the buffer budget and the spill size have room for the frame size.

This module owns the two config rules that relate sizes across tables: the
buffer budget must hold the critical reserve, a max-size frame and the loop's
working room (`buffer.budget_bytes`), and the smallest spill ring must hold two
chunks (`spill.max_bytes`). agent/config.py reads the values and calls
`check_buffer_room` / `check_spill_room` once every table is read. Pure.

Promises:
- An error names the key to change and every key involved, says which values
  are defaults, and gives the smallest value that would work with the others
  as they are (`smallest_budget`, exact: the rules only loosen as it grows).
"""

from __future__ import annotations

from agent.configtable import Table
from agent.queues import CHUNK_BYTES
from agent.settings import (
    BufferSettings,
    IngestSettings,
    SpillSettings,
    default_critical_reserve,
)

__all__ = [
    "SPILL_MIN_BYTES",
    "WORKING_ROOM",
    "check_buffer_room",
    "check_spill_room",
    "smallest_budget",
]

KiB = 1024
MiB = 1024 * KiB


# Bytes the non-critical classes need besides the critical reserve and a
# max-size frame. The loop (agent/loop.py, _open_state) keeps one ingest burst
# free below the non-critical limit: 64 KiB + a max-size frame + a 256 KiB
# chunk per class (~1.06 MiB + the frame). What is left of the working room,
# ~1.94 MiB or 7 chunks, is what the non-critical classes fill, publish from and
# drain spilled data back into (a drain needs 2 chunks below the limit). Below
# this the agent could spill but never drain.
WORKING_ROOM = 3 * MiB


def _buffer_fits(budget: int, reserve: int | None, frame: int) -> bool:
    """The two rules a budget must meet. `reserve` None: the scaled default."""
    if reserve is None:
        reserve = default_critical_reserve(budget)
    # Under half the budget, so the other three classes keep at least half.
    return reserve * 2 < budget and budget >= reserve + frame + WORKING_ROOM


def smallest_budget(reserve: int | None, frame: int) -> int:
    """The smallest `buffer.budget_bytes` that fits `reserve` (None: the scaled
    default) and a `frame`-byte max frame. Both rules only loosen as the budget
    grows (the default reserve grows by 1/32 of it), so a bisection is exact."""
    lo, hi = 1, 2 * (frame + WORKING_ROOM) + 4 * (reserve or 0) + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if _buffer_fits(mid, reserve, frame):
            hi = mid
        else:
            lo = mid + 1
    return max(lo, 4 * MiB)


def check_buffer_room(t: Table, buffer: BufferSettings, ingest: IngestSettings) -> None:
    """The budget must hold the critical reserve, a max-size frame, one ingest
    burst and the working room: what the loop's governor relies on. The error
    names every key involved, says which values are defaults, and gives the
    smallest budget that would work with the others as they are."""
    budget, reserve, frame = (
        buffer.budget_bytes,
        buffer.critical_reserve_bytes,
        ingest.max_frame_bytes,
    )
    given_reserve = t.has("critical_reserve_bytes")
    if _buffer_fits(budget, reserve if given_reserve else None, frame):
        return
    least = smallest_budget(reserve if given_reserve else None, frame)
    budget_src = "" if t.has("budget_bytes") else " (the default)"
    reserve_src = "" if given_reserve else " (the default: 1/32 of the budget, at most 16 MiB)"
    # The ingest table is not at hand here: a frame size equal to the default
    # is called the default, which is right unless it was written out.
    frame_src = " (the default)" if frame == IngestSettings().max_frame_bytes else ""
    fix = f"the smallest buffer.budget_bytes that works with these is {least}"
    if reserve * 2 >= budget:
        t.fail(
            "critical_reserve_bytes",
            f"must be less than half of buffer.budget_bytes: got {reserve}{reserve_src} "
            f"with buffer.budget_bytes = {budget}{budget_src} (limit {(budget - 1) // 2}); "
            f"{fix}, or lower buffer.critical_reserve_bytes",
        )
    need = reserve + frame + WORKING_ROOM
    t.fail(
        "budget_bytes",
        f"{budget}{budget_src} is too small: it must hold buffer.critical_reserve_bytes "
        f"= {reserve}{reserve_src} + ingest.max_frame_bytes = {frame}{frame_src} + "
        f"{WORKING_ROOM} (working room) = {need}; {fix}, or lower "
        f"ingest.max_frame_bytes" + (" or buffer.critical_reserve_bytes" if given_reserve else ""),
    )


# The smallest class ring gets 1/8 of spill.max_bytes (agent/spill/store.py)
# and must hold at least two in-memory chunks (CHUNK_BYTES, 256 KiB, or one
# max-size frame), or that class could never spill at all. The 64 KiB beyond
# them is the 8 KiB header (DATA_OFFSET, agent/spill/format.py) of each eighth.
SPILL_MIN_CHUNKS = 16
SPILL_HEADERS_BYTES = 64 * KiB
# The least spill.max_bytes any config can have (frames up to one chunk):
# 4,259,840 bytes. Larger frames need more (check_spill_room).
SPILL_MIN_BYTES = SPILL_MIN_CHUNKS * CHUNK_BYTES + SPILL_HEADERS_BYTES


def check_spill_room(t: Table, spill: SpillSettings, ingest: IngestSettings) -> None:
    frame = ingest.max_frame_bytes
    need = SPILL_MIN_CHUNKS * max(CHUNK_BYTES, frame) + SPILL_HEADERS_BYTES
    if spill.max_bytes < need:
        frame_src = " (the default)" if frame == IngestSettings().max_frame_bytes else ""
        t.fail(
            "max_bytes",
            f"must be at least {SPILL_MIN_CHUNKS} x max({CHUNK_BYTES}, ingest.max_frame_bytes "
            f"= {frame}{frame_src}) + {SPILL_HEADERS_BYTES} = {need} (the smallest class ring "
            f"must hold two chunks), got {spill.max_bytes}; raise spill.max_bytes to {need}"
            + ("" if frame <= CHUNK_BYTES else " or lower ingest.max_frame_bytes"),
        )
