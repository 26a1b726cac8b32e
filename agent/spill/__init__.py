"""Spill to disk: one sparse mmap ring per event class, one shared budget, a locked directory.

`store.SpillStore` is what the loop uses; `spilldir` owns the directory (what
must be true of it before anything is read from it: mode, owner, lock, seed,
free space, the epoch file); `convert` carries version-1 ring files over;
`payload` encodes a batch as a run's pieces and back (pure); `ring.SpillRing` is
one class's ring (head, tail, placement, the order of push/read/release), with
`window` (its allocated span in the shared budget), `runs` (one run's bytes,
written and read back; pure), `index` (its records in order; pure) and
`mapping` (the mmap, dirty span, msync); `format` is what its bytes
mean (header slots, records, checksums, placement; pure); `recover` reads a
found file back (pure, over its bytes); `ringfile` opens, preallocates and maps
the file. See their module headers for the on-disk format and the durability
promises.
"""

from agent.spill.ring import RingStats, SpillError, SpillRing
from agent.spill.spilldir import next_epoch
from agent.spill.store import (
    ClassSpillStats,
    SpilledBatch,
    SpillStore,
    SpillStoreStats,
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
