"""The process's memory hygiene: making freed memory reach the OS.

Event bytes live in anonymous-mmap chunks (queues.py) and return to the OS on
release. What remains is transient large `bytes` objects: a chunk copied out for
a spill record, a record read back, a burst joined for decoding (up to 256 KiB
each, thousands per second in a spike). glibc serves allocations above
M_MMAP_THRESHOLD (128 KiB) with mmap, but raises that threshold dynamically the
first time such a block is freed, after which they come from the heap and stay
there: a brownout with a 64 MiB budget measured RSS 89 MiB 30 s after the spike
drained, against 36 MiB before it. Fixing the threshold keeps large transient
blocks on mmap; `trim()` hands the heap's free tail back (FACTS.md, "Memory":
64 KiB chunks, 1% kept, 306 MB -> 15 MB after malloc_trim(0)).

glibc only, through ctypes; elsewhere (musl) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Protocol

log = logging.getLogger("agent.memory")

_M_MMAP_THRESHOLD = -3  # glibc malloc.h
# glibc's default starting value; fixing it disables the dynamic increase.
MMAP_THRESHOLD_BYTES = 128 * 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    return libc


_LIBC = _libc()


def fix_mmap_threshold() -> bool:
    """Keep blocks >= 128 KiB on mmap for the life of the process. True if applied."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def trim() -> bool:
    """Return free heap memory to the OS (malloc_trim(0)). True if any was."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))


class Pool(Protocol):
    """What a shrink needs of queues.ChunkPool."""

    @property
    def pooled_bytes(self) -> int: ...

    def trim(self, keep_bytes: int = 0, max_bytes: int | None = None) -> int: ...


# A shrink returns pooled chunks to the OS in steps of this many bytes, one
# step a loop turn: unmapping touched chunks costs ~0.23 ms per MiB here, so
# the 450 MiB a brownout leaves took 105 ms in one go (an alert waited 132 ms
# behind it, bench/brownout.py); 8 MiB steps are ~2 ms each.
SHRINK_STEP_BYTES = 8 * 1024 * 1024


class Shrink:
    """Giving the governor's surplus back in bounded steps. `start(keep)` when
    the governor says so; while `active`, the loop calls `step(pool)` once a
    turn; the last step also returns the heap's free tail (`trim()`) and
    answers the bytes freed in all (None before that)."""

    def __init__(self, step_bytes: int = SHRINK_STEP_BYTES) -> None:
        self.step_bytes = step_bytes
        self.keep: int | None = None
        self._freed = 0

    @property
    def active(self) -> bool:
        return self.keep is not None

    def start(self, keep_bytes: int) -> None:
        self.keep = keep_bytes

    def step(self, pool: Pool) -> int | None:
        assert self.keep is not None
        self._freed += pool.trim(self.keep, self.step_bytes)
        if pool.pooled_bytes > self.keep:
            return None
        trim()
        freed, self._freed, self.keep = self._freed, 0, None
        return freed
