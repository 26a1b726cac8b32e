"""The spill rings of all four event classes under one directory.

This module owns the spill directory: creating it (mode 0700), the exclusive
lock on it, the split of `[spill] max_bytes` across the classes, the check that
the disk can hold that much before anything is allocated, and the batch payload
encoding. One ring is `ring.py`'s (`SpillRing`); its on-disk format `format.py`'s,
its recovery `recover.py`'s, its file mechanics `ringfile.py`'s.

Batch payload (one in-memory chunk = one ring record)::

    ends  count x u32 little-endian: cumulative end offset of each event in blob
    blob  the events' bytes, back to back, exactly as received

The count is the record's own count field, so the payload carries nothing else;
both parts are copied once into the mapping on the way in and once out of it on
the way back (no intermediate concatenation).

Promises:
- One agent per directory: a second `SpillStore.open` on a locked directory
  fails at once with SpillError naming the directory and the holder's pid.
  flock (not fcntl record locks) because it conflicts between two opens in the
  same process too and is not dropped when some other fd of the file is closed.
  The lock also keeps another agent from truncating our mapped files (FACTS:
  truncation of a mapped file is the second SIGBUS source).
- Priority survives the spill: each class has its own ring, so a drain can take
  critical data first and eviction can take the lowest class first (NiFi lost
  priority order across swap, FACTS).
- The store never calls the loop; every operation returns at once.

# Invariant: spilled_events - dropped_events - released == events on disk, per
#   class since open (plus what was found at open); `pending(cls)` counts the
#   unread part of that in O(1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import sys
import weakref
from array import array
from collections.abc import Sequence

from agent.classes import CLASS_NAMES
from agent.spill.format import DATA_OFFSET, Buffer
from agent.spill.ring import RingStats, SpillError, SpillRing

# Shares of max_bytes, in eighths, indexed by class (critical, high, normal, low).
# Critical is ~1% of a brownout's events and drained first: 1/8 of the default
# 2 GiB is 256 MiB, about two million 120-byte alerts, far beyond the ~50,000 of a
# 10 s spike at 500,000 events/s. Normal and low carry the bulk of a spike and are
# what memory pressure pushes out first, so they get 3/8 each; high (restores,
# tamper) is rare like critical.
RING_SHARES = (1, 1, 3, 3)
_SHARE_UNIT = sum(RING_SHARES)
# Smallest ring we create: 64 KiB of data holds a few 16 KiB chunks; less than
# that is a configuration mistake, not a ring.
MIN_RING_BYTES = DATA_OFFSET + 64 * 1024
_PAGE = 4096
_ENDS_ITEM = 4  # bytes per event in the ends array (u32)
_LITTLE = sys.byteorder == "little"
LOCK_NAME = "LOCK"


def ring_file_name(class_index: int) -> str:
    return f"{class_index}-{CLASS_NAMES[class_index]}.ring"


def ring_sizes(max_bytes: int) -> tuple[int, ...]:
    """File size of each class ring: its share of max_bytes, whole pages, sum <= max_bytes."""
    sizes = tuple((max_bytes * share // _SHARE_UNIT) // _PAGE * _PAGE for share in RING_SHARES)
    if min(sizes) < MIN_RING_BYTES:
        raise ValueError(
            f"spill max_bytes {max_bytes} is too small: each class ring needs at least "
            f"{MIN_RING_BYTES} bytes (max_bytes >= {MIN_RING_BYTES * _SHARE_UNIT})"
        )
    return sizes


@dataclasses.dataclass(frozen=True, slots=True)
class SpilledBatch:
    blob: bytes
    ends: array[int]  # array('I'), cumulative end offsets into blob
    count: int


@dataclasses.dataclass(frozen=True)
class ClassSpillStats:
    pending_events: int  # on disk, not yet read back
    pending_bytes: int  # event bytes of those
    unreleased_events: int  # read back into memory, not yet released (still on disk)
    unreleased_bytes: int
    spilled_events: int  # pushed (back or front) since open
    recovered_events: int  # read back into memory since open
    dropped_events: int  # evicted by drop_front since open
    resumed_events: int  # found on disk at open, left by the previous run
    file_bytes: int
    free_bytes: int
    corrupt_records: int  # found missing or damaged at open
    torn_header_slots: int
    header_lost: bool


@dataclasses.dataclass(frozen=True)
class SpillStoreStats:
    dir: str
    classes: tuple[ClassSpillStats, ...]  # indexed by class
    pending_events: int
    pending_bytes: int
    unreleased_events: int
    unreleased_bytes: int
    spilled_events: int
    recovered_events: int
    dropped_events: int
    resumed_events: int
    file_bytes: int
    corrupt_records: int
    flushes: int  # store flushes that had something to msync


class SpillStore:
    """The four class rings under one locked directory. Not thread-safe: the loop owns it.

    How the loop stops (agent/loop.py `_stop`, `_park_in_memory_events`), per
    class: a batch whose events were all delivered was released when its last
    event went out; every batch read back and still in memory (delivered in part
    or not at all) is released now, oldest first as read, and its undelivered
    events are put back with `push_front` together with everything memory held
    ahead of the ring, newest first (push_front refuses while anything is read
    but unreleased); then what memory queued behind the ring goes in with
    `push_back`; then `flush()`, and `close()` as the agent exits. A push that
    finds no room evicts the class's oldest batch with `drop_front` (back side,
    never critical) or counts the batch as lost. A kill -9 after those releases
    and before the push_front of their rest costs those events; at any other
    moment it costs only what was still in memory (the ring's promises).
    """

    def __init__(self, dir: str, rings: list[SpillRing], lock_fd: int) -> None:
        self.dir = dir
        self._rings = rings
        self._spilled = [0] * len(rings)
        self._recovered = [0] * len(rings)
        self._dropped = [0] * len(rings)
        self._flushes = 0
        self._closed = False
        # Releases the lock if the store is dropped without close() (tests that
        # simulate a crash in-process); a real crash releases it with the process.
        self._unlock = weakref.finalize(self, os.close, lock_fd)

    @classmethod
    def open(cls, dir: str, max_bytes: int) -> SpillStore:
        """Create or recover the store. SpillError: the directory cannot be made or
        locked, the disk cannot hold max_bytes, a ring cannot be allocated or mapped.
        Bad data inside the rings never fails the open (it is counted).

        Time: creating the rings writes max_bytes of zeros once (see
        `SpillRing._zero_fill`): 1-5 s for 2 GiB here, disk speed in general.
        Recovering a full 512 MiB ring takes ~0.2-0.6 s (bench/bench_spill.py)."""
        sizes = ring_sizes(max_bytes)
        _make_private_dir(dir)
        lock_fd = _lock_dir(dir)
        rings: list[SpillRing] = []
        try:
            paths = [os.path.join(dir, ring_file_name(c)) for c in range(len(sizes))]
            _check_space(dir, paths, sizes, max_bytes)
            for c, (path, size) in enumerate(zip(paths, sizes, strict=True)):
                rings.append(SpillRing.open(path, size, c))
        except BaseException:
            for ring in rings:
                ring.close()
            os.close(lock_fd)
            raise
        return cls(dir, rings, lock_fd)

    # ------------------------------------------------------------- writing

    def max_batch_bytes(self, cls: int) -> int:
        """The largest blob + 4 bytes per event one batch of this class may carry."""
        return self._rings[cls].max_payload_bytes

    def push_back(self, cls: int, blob: Buffer, ends: Sequence[int]) -> bool:
        """Spill a batch behind everything the class has on disk. False: no room."""
        parts, count = _encode(blob, ends)
        if not self._rings[cls].push_back_parts(parts, count):
            return False
        self._spilled[cls] += count
        return True

    def push_front(self, cls: int, blob: Buffer, ends: Sequence[int]) -> bool:
        """Spill a batch ahead of everything the class has on disk (SIGTERM, newest
        first). Only while nothing of the class is read but unreleased. False: no room."""
        parts, count = _encode(blob, ends)
        if not self._rings[cls].push_front_parts(parts, count):
            return False
        self._spilled[cls] += count
        return True

    # ------------------------------------------------------------- reading

    def read_next(self, cls: int) -> SpilledBatch | None:
        """The next batch of the class not yet read back (the loop's drain); it
        stays on disk until `release_read`. None: nothing left to read."""
        got = self._rings[cls].read_next_split(_ENDS_ITEM)
        if got is None:
            return None
        prefix, blob, count, _seq = got
        ends = array("I")
        ends.frombytes(prefix)
        if not _LITTLE:
            ends.byteswap()
        self._recovered[cls] += count
        return SpilledBatch(blob, ends, count)

    def release_read(self, cls: int) -> None:
        """The oldest batch read back was delivered: free it on disk."""
        self._rings[cls].release_read()

    def drop_front(self, cls: int) -> int:
        """Evict the class's oldest batch (memory and disk full); its events, 0 if none."""
        dropped = self._rings[cls].drop_front()
        self._dropped[cls] += dropped
        return dropped

    def pending(self, cls: int) -> int:
        """Events of the class on disk not yet read back. O(1)."""
        return self._rings[cls].unread_events

    # ------------------------------------------------------------- the rest

    def flush(self, max_bytes: int | None = None) -> bool:
        """msync every ring's changes (the bounded interval of the durability
        promise). With `max_bytes`, at most about that many bytes this call, so
        the loop bounds its pause (~0.5 ms per MiB here, see SpillRing.flush) and
        calls again next turn; critical first. True when everything is synced."""
        before = sum(r.flushes for r in self._rings)
        budget = max_bytes
        clean = True
        for ring in self._rings:
            if budget is not None and budget <= 0:
                clean = False
                break
            dirty = ring.dirty_bytes
            clean = ring.flush(budget) and clean
            if budget is not None:
                budget -= dirty - ring.dirty_bytes
        if sum(r.flushes for r in self._rings) != before:
            self._flushes += 1
        return clean

    def close(self) -> None:
        """Flush, unmap, unlock. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        finally:
            try:
                for ring in self._rings:
                    ring.close()
            finally:
                self._unlock()

    def statistics(self) -> SpillStoreStats:
        per = tuple(
            _class_stats(r.statistics(), self._spilled[c], self._recovered[c], self._dropped[c])
            for c, r in enumerate(self._rings)
        )
        return SpillStoreStats(
            dir=self.dir,
            classes=per,
            pending_events=sum(s.pending_events for s in per),
            pending_bytes=sum(s.pending_bytes for s in per),
            unreleased_events=sum(s.unreleased_events for s in per),
            unreleased_bytes=sum(s.unreleased_bytes for s in per),
            spilled_events=sum(s.spilled_events for s in per),
            recovered_events=sum(s.recovered_events for s in per),
            dropped_events=sum(s.dropped_events for s in per),
            resumed_events=sum(s.resumed_events for s in per),
            file_bytes=sum(s.file_bytes for s in per),
            corrupt_records=sum(s.corrupt_records for s in per),
            flushes=self._flushes,
        )


def _class_stats(rs: RingStats, spilled: int, recovered: int, dropped: int) -> ClassSpillStats:
    read_events = rs.events - rs.unread_events
    read_bytes = rs.bytes - rs.unread_bytes
    return ClassSpillStats(
        # Payload bytes minus the ends array: the events' own bytes.
        pending_events=rs.unread_events,
        pending_bytes=rs.unread_bytes - _ENDS_ITEM * rs.unread_events,
        unreleased_events=read_events,
        unreleased_bytes=read_bytes - _ENDS_ITEM * read_events,
        spilled_events=spilled,
        recovered_events=recovered,
        dropped_events=dropped,
        resumed_events=rs.recovered_events,
        file_bytes=rs.file_bytes,
        free_bytes=rs.free_bytes,
        corrupt_records=rs.corrupt_records,
        torn_header_slots=rs.torn_header_slots,
        header_lost=rs.header_lost,
    )


def _encode(blob: Buffer, ends: Sequence[int]) -> tuple[tuple[memoryview, memoryview], int]:
    """The payload parts of a batch: (ends as u32 LE, blob up to the last end)."""
    count = len(ends)
    if count == 0:
        raise ValueError("a spilled batch needs at least one event")
    view = memoryview(blob)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    used = ends[-1]
    if used > view.nbytes or used <= 0:
        raise ValueError(f"batch ends at {used} but its blob holds {view.nbytes} bytes")
    if isinstance(ends, array) and ends.typecode == "I" and ends.itemsize == 4 and _LITTLE:
        ends_view = memoryview(ends).cast("B")  # the chunk's own array: no copy
    else:
        packed = array("I", ends)
        if packed.itemsize != _ENDS_ITEM:  # pragma: no cover - no such Linux ABI today
            raise RuntimeError("array('I') is not 32-bit on this platform")
        if not _LITTLE:
            packed.byteswap()
        ends_view = memoryview(packed).cast("B")
    return (ends_view, view[:used]), count


def _make_private_dir(dir: str) -> None:
    """Create dir and any missing parents with mode 0700 (spilled events are private)."""
    missing: list[str] = []
    path = os.path.abspath(dir)
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    try:
        for path in reversed(missing):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue  # created meanwhile by someone else: theirs, leave its mode
            os.chmod(path, 0o700)  # mkdir's mode goes through the umask; make it exact
        if not os.path.isdir(dir):
            raise SpillError(f"spill dir {dir} exists but is not a directory")
    except OSError as exc:
        raise SpillError(f"spill dir {dir}: cannot create: {exc.strerror}") from exc


def _lock_dir(dir: str) -> int:
    path = os.path.join(dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SpillError(f"spill dir {dir}: cannot open {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = "?"
        with contextlib.suppress(OSError):  # the pid is only decoration on the message
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise SpillError(
                f"spill dir {dir} is in use by another edge-agent (pid {holder})"
            ) from exc
        raise SpillError(f"spill dir {dir}: cannot lock {path}: {exc.strerror}") from exc
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError as exc:
        os.close(fd)
        raise SpillError(f"spill dir {dir}: cannot write {path}: {exc.strerror}") from exc
    return fd


def _check_space(dir: str, paths: list[str], sizes: Sequence[int], max_bytes: int) -> None:
    """Fail before allocating anything when the filesystem cannot hold the rings.

    Counts only what is not allocated yet (existing ring files keep their blocks)
    and only the space an unprivileged user may take (f_bavail): the reserved
    blocks stay for the system's own emergencies."""
    need = 0
    for path, size in zip(paths, sizes, strict=True):
        try:
            allocated = os.stat(path).st_blocks * 512
        except FileNotFoundError:
            allocated = 0
        except OSError as exc:
            raise SpillError(f"spill ring {path}: cannot stat: {exc.strerror}") from exc
        need += max(0, size - allocated)
    try:
        st = os.statvfs(dir)
    except OSError as exc:
        raise SpillError(f"spill dir {dir}: cannot statvfs: {exc.strerror}") from exc
    available = st.f_bavail * st.f_frsize
    if need > available:
        raise SpillError(
            f"spill dir {dir}: [spill] max_bytes {max_bytes} needs {need} more bytes "
            f"preallocated but only {available} bytes are available on its filesystem"
        )


def next_epoch(spill_dir: str, now_ms: int) -> int:
    """A new epoch, larger than every earlier one on this box.

    Wall-clock milliseconds, but never below the last epoch + 1 recorded in the
    spill dir (file `epoch`, replaced atomically after an fsync): a gateway
    without an RTC can boot with its clock in 1970 and the head-end must still
    see a new epoch.
    """
    path = os.path.join(spill_dir, "epoch")
    last = 0
    with contextlib.suppress(FileNotFoundError, ValueError), open(path, encoding="ascii") as f:
        last = int(f.read().strip() or 0)
    epoch = max(now_ms, last + 1)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{epoch}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return epoch
