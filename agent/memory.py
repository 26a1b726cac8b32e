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
