"""Spill to disk: one preallocated mmap ring per event class under a locked directory.

`store.SpillStore` is what the loop uses; `ring.SpillRing` is one class's ring
file (mmap, writes, recovery); `format` is what its bytes mean (header slots,
records, checksums; pure). See their module headers for the on-disk format and
the durability promises.
"""

from agent.spill.ring import RingRecord, RingStats, SpillError, SpillRing
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
    "RingRecord",
    "RingStats",
    "SpillError",
    "SpillRing",
    "SpillStore",
    "SpillStoreStats",
    "SpilledBatch",
    "next_epoch",
    "ring_sizes",
]
