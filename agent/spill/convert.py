"""Version-1 ring files converted at the open, never discarded.

This module owns the conversion of a class's ring file from format version 1
(fixed seeds, one record per chunk) to the current format. The old file is
renamed `<ring>.v1`, a new ring is created, every record found in the old one
is written into it as a run, then the old file is deleted.

Promises:
- A conversion cut short (crash, full disk) starts over from the `.v1` file at
  the next open; the old file is deleted only after the new ring is flushed.
- Events that do not fit in the new ring are counted and logged as LOST, never
  dropped silently; damaged version-1 records are skipped and logged.
"""

from __future__ import annotations

import logging
import mmap
import os
import sys
from array import array

from agent.spill.format import DATA_OFFSET, FIXED_SEEDS, FORMAT_V1, REC_HDR, Seeds, choose_slot
from agent.spill.payload import ENDS_ITEM, encode_run
from agent.spill.recover import recover
from agent.spill.ring import RingBudget, SpillError, SpillRing
from agent.spill.ringfile import fsync_dir, open_private, read_head
from agent.spill.spilldir import V1_SUFFIX

log = logging.getLogger("agent.spill")
_LITTLE = sys.byteorder == "little"


def open_ring(
    path: str, size: int, cls: int, seeds: Seeds, budget: RingBudget
) -> tuple[SpillRing, int]:
    """The class's ring, converted from version 1 first if that is what is found
    (or a conversion was cut short), drawing on `budget` (the class's
    share of the spill budget). Returns (ring, events converted)."""
    old = path + V1_SUFFIX

    def sparse() -> SpillRing:
        return SpillRing.open_sparse(path, size, cls, seeds, budget)

    if not os.path.lexists(old):
        if not os.path.lexists(path):
            return sparse(), 0
        _on_disk, a, b = read_head(path)
        if choose_slot(a, b, cls, FIXED_SEEDS, FORMAT_V1)[0] is None:
            return sparse(), 0
        os.replace(path, old)
        fsync_dir(path)
    elif os.path.lexists(path):
        os.unlink(path)  # a conversion cut short: start it over from the old file
    ring = sparse()
    try:
        moved, lost = convert_v1(old, ring, cls)
    except BaseException:
        ring.close()
        raise
    ring.flush()
    os.unlink(old)
    fsync_dir(path)
    if lost:
        log.error(
            "spill ring %s: converted from format version 1: %d events carried over, "
            "%d LOST (the new ring is smaller)",
            path,
            moved,
            lost,
        )
    else:
        log.info("spill ring %s: converted from format version 1: %d events", path, moved)
    return ring, moved


def convert_v1(old: str, ring: SpillRing, cls: int) -> tuple[int, int]:
    """Every record of the version-1 file `old`, oldest first, pushed into `ring`.
    Returns (events carried over, events that did not fit)."""
    fd = open_private(old, os.O_RDONLY, f"spill ring {old}: cannot open")
    try:
        size = os.fstat(fd).st_size
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) if size else None
    except OSError as exc:
        raise SpillError(f"spill ring {old}: cannot map: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if mm is None:
        return 0, 0
    moved = lost = 0
    try:
        found = recover(mm, cls, FIXED_SEEDS, FORMAT_V1)
        for rec in found.records:
            at = DATA_OFFSET + rec.pos + REC_HDR
            payload = mm[at : at + rec.length]
            ends = array("I")
            ends.frombytes(payload[: ENDS_ITEM * rec.count])
            if not _LITTLE:
                ends.byteswap()
            pieces, count = encode_run(payload[ENDS_ITEM * rec.count :], ends)
            if ring.push_back_run(pieces):
                moved += count
            else:
                lost += count
        if found.corrupt_records:
            log.warning(
                "spill ring %s: %d damaged version-1 records skipped while converting",
                old,
                found.corrupt_records,
            )
    finally:
        mm.close()
    return moved, lost
