"""Spill to disk: one preallocated mmap ring per event class under a locked directory.

`store.SpillStore` is what the loop uses; `ring.SpillRing` is one class's ring
(its index, writes, reads, msync); `format` is what its bytes mean (header slots,
records, checksums, placement; pure); `recover` reads a found file back (pure,
over its bytes); `ringfile` opens, preallocates and maps the file. See their
module headers for the on-disk format and the durability promises.
"""

from agent.spill.ring import RingStats, SpillError, SpillRing
from agent.spill.store import (
    ClassSpillStats,
    SpilledBatch,
    SpillStore,
    SpillStoreStats,
    next_epoch,
    ring_sizes,
)

__all__ = [
    "ClassSpillStats",
    "RingStats",
    "SpillError",
    "SpillRing",
    "SpillStore",
    "SpillStoreStats",
    "SpilledBatch",
    "next_epoch",
    "ring_sizes",
]
