"""The spill rings of all four event classes under one directory.

This module owns the spill directory: creating it (mode 0700), checking it
(owned by the agent's user, not writable by group or others), the exclusive lock
on it, the installation's checksum secret (file `seed`), the conversion of
version-1 ring files, the one spill budget (`SpillBudget`: `[spill] max_bytes`
shared by the classes), the check that the disk can hold that much before
anything is allocated, and the batch payload encoding.

One spill budget (issue 11), the layout chosen: still one ring file per class
(so priority, FIFO per class, drain order, recovery and the damage rule are the
ring's, unchanged), but each ring is a *sparse* circle as large as the whole
budget, of which only the window from its head to its tail is allocated. The
ring allocates (posix_fallocate, then zeros written with pwrite, 1 MiB at a
time, ~0.5-1 ms) just ahead of its tail and punches (FALLOC_FL_PUNCH_HOLE)
what its head has passed; the budget decides whether it may take more. What no
ring holds is kept allocated in the file `pool`, so `max_bytes` stays reserved
on the disk as before (the pool shrinks by what a ring takes, grows by what it
gives back). Any class may take free space; critical and high each keep 1/16
of the budget that no other class can take. When the budget is full the policy
(agent/pressure.py) makes room lowest class first, oldest first: a lower class's
oldest run on disk is dropped (its head moves, its pages are punched and return
to the pool), so a higher class claims space a lower one held. Chosen over
fixed-size segments shared by the classes (a new on-disk format and recovery)
and over rings that grow and shrink in place (a ring cannot give back space at
its front without moving its data). One ring is `ring.py`'s (`SpillRing`); its on-disk
format `format.py`'s, its recovery `recover.py`'s, its file mechanics
`ringfile.py`'s.

Batch payload (one in-memory chunk = one run of pieces, format.py)::

    each piece: base  u32: the run offset where the piece's first event starts
                ends  count x u32 little-endian: cumulative end offset of each
                      event, relative to the run's start
                blob  the events' bytes, back to back, exactly as received

An intact run reads back as the chunk's own ends array and blob (no rebasing);
a run that lost pieces to damage is rebased piece by piece from `base`.

The spill dir as possibly hostile (issue 13): it must be a directory owned by
the agent's user and not writable by group or others, or the open fails naming
it and what is wrong (created 0700 when missing). Every file in it is opened
without following symlinks and must be a regular file; `epoch.tmp` is created
exclusively. Checksums are seeded from a random secret created exclusively (0600)
in the dir at the first start: records planted by someone who cannot read it
fail their checksums.

Version 1 ring files (fixed seeds, one record per chunk) are converted at the
open, never discarded: the old file is renamed `<ring>.v1`, a new ring is
created, every record found in the old one is written into it as a run, then
the old file is deleted. A conversion cut short (crash, full disk) starts over
from the `.v1` file at the next open.

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
- The rings' windows and the pool never hold more than `max_bytes` (plus one
  page per ring's header and rounding), and no byte is written through a
  mapping before it was allocated (the SIGBUS rule, ringfile.py).
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
import logging
import mmap
import os
import stat
import sys
import weakref
from array import array
from collections.abc import Sequence

from agent.classes import CLASS_NAMES
from agent.spill.format import (
    DATA_OFFSET,
    FIXED_SEEDS,
    FORMAT_V1,
    PIECE_PREFIX,
    REC_HDR,
    SECRET_BYTES,
    Buffer,
    Seeds,
    choose_slot,
    piece_bounds,
    seeds_from_secret,
)
from agent.spill.recover import recover
from agent.spill.ring import Piece, RingStats, SpillError, SpillRing
from agent.spill.ringfile import fsync_dir, open_private, read_head

log = logging.getLogger("agent.spill")

# The fixed shares of max_bytes of the rings before the one budget, in eighths
# (critical, high, normal, low). Kept only as the smallest max_bytes check
# (`ring_sizes`, and config.py's SPILL_MIN_BYTES, which is derived from it).
RING_SHARES = (1, 1, 3, 3)
_SHARE_UNIT = sum(RING_SHARES)
# Smallest ring we create: 64 KiB of data holds a few 16 KiB chunks; less than
# that is a configuration mistake, not a ring.
MIN_RING_BYTES = DATA_OFFSET + 64 * 1024
_PAGE = mmap.PAGESIZE
_ENDS_ITEM = 4  # bytes per event in the ends array (u32)
_LITTLE = sys.byteorder == "little"
LOCK_NAME = "LOCK"
SEED_NAME = "seed"
V1_SUFFIX = ".v1"


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


POOL_NAME = "pool"
# Guaranteed minimum of the budget for critical and for high (the others can
# never take it): 1/16 each, 128 MiB of the default 2 GiB, ~1M 120-byte alerts.
# Small enough that the usual mix (92% normal) fills ~89% of max_bytes before
# anything is evicted.
GUARANTEED_SHARE = 16
GUARANTEED_CLASSES = (0, 1)


class SpillBudget:
    """One budget for the data of all four rings: `max_bytes`, less the rings'
    header pages. Any class may allocate what is free, except the part of the
    guaranteed minimum of critical and of high that they do not use yet. What
    no ring holds stays allocated in the file `pool`, so the space stays
    reserved on the disk (another program cannot take it): a ring that takes
    bytes shrinks the pool first, a ring that gives them back grows it again.

    # Invariant: sum(used) + pool bytes == data budget (unless the disk refused
    #   to give the pool back its blocks: logged, and the budget is unchanged).
    """

    def __init__(self, dir: str, max_bytes: int, rings: int) -> None:
        self.path = os.path.join(dir, POOL_NAME)
        self.total = max_bytes - rings * DATA_OFFSET
        self.used = [0] * rings
        self.minimum = [
            self.total // GUARANTEED_SHARE if c in GUARANTEED_CLASSES else 0 for c in range(rings)
        ]
        self._fd = open_private(
            self.path, os.O_RDWR | os.O_CREAT, f"spill pool {self.path}: cannot open"
        )
        self._pool = os.fstat(self._fd).st_size
        self._warned = False

    def available(self, cls: int) -> int:
        """Bytes class `cls` may still take."""
        reserved = sum(
            max(0, self.minimum[c] - self.used[c]) for c in GUARANTEED_CLASSES if c != cls
        )
        return max(0, self.total - sum(self.used) - reserved)

    def take(self, cls: int, nbytes: int, *, force: bool = False) -> bool:
        if not force and nbytes > self.available(cls):
            return False
        self.used[cls] += nbytes
        self.settle()
        return True

    def give(self, cls: int, nbytes: int) -> None:
        self.used[cls] -= nbytes
        self.settle()

    def settle(self) -> None:
        """The pool file at what no ring holds."""
        target = max(0, self.total - sum(self.used))
        try:
            if target < self._pool:
                os.ftruncate(self._fd, target)
            elif target > self._pool:
                os.posix_fallocate(self._fd, self._pool, target - self._pool)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning(
                    "spill pool %s: cannot resize to %d bytes (%s): the spill budget is "
                    "no longer reserved on the disk",
                    self.path,
                    target,
                    exc.strerror,
                )
            return
        self._pool = target

    @property
    def pool_bytes(self) -> int:
        return self._pool

    def for_class(self, cls: int) -> _ClassBudget:
        return _ClassBudget(self, cls)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _ClassBudget:
    """One ring's view of the budget (ring.RingBudget)."""

    __slots__ = ("budget", "cls")

    def __init__(self, budget: SpillBudget, cls: int) -> None:
        self.budget = budget
        self.cls = cls

    def take(self, nbytes: int, *, force: bool = False) -> bool:
        return self.budget.take(self.cls, nbytes, force=force)

    def give(self, nbytes: int) -> None:
        self.budget.give(self.cls, nbytes)


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
    file_bytes: int  # allocated on the disk for this class (its window and header)
    free_bytes: int
    corrupt_records: int  # pieces found missing or damaged (at open or read back)
    torn_header_slots: int
    header_lost: bool
    corrupt_events: int = 0  # events of damaged pieces whose header survived
    corrupt_bytes: int = 0  # bytes skipped over damage
    written_through_events: int = 0  # pushed while also held in memory (write-through)
    converted_events: int = 0  # found in a version-1 file at open and carried over


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
    corrupt_events: int = 0
    corrupt_bytes: int = 0
    written_through_events: int = 0


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

    def __init__(
        self,
        dir: str,
        rings: list[SpillRing],
        lock_fd: int,
        converted: Sequence[int] = (),
        budget: SpillBudget | None = None,
    ) -> None:
        self.dir = dir
        self._rings = rings
        self.budget = budget
        self._spilled = [0] * len(rings)
        self._recovered = [0] * len(rings)
        self._dropped = [0] * len(rings)
        self._written_through = [0] * len(rings)
        self._converted = list(converted) or [0] * len(rings)
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
        ring_sizes(max_bytes)  # the smallest max_bytes that works: ValueError below it
        circle = (max_bytes - DATA_OFFSET) // _PAGE * _PAGE + DATA_OFFSET
        _make_private_dir(dir)
        check_private_dir(dir)
        lock_fd = _lock_dir(dir)
        rings: list[SpillRing] = []
        converted: list[int] = []
        budget: SpillBudget | None = None
        try:
            paths = [os.path.join(dir, ring_file_name(c)) for c in range(len(CLASS_NAMES))]
            _check_space(dir, [*paths, os.path.join(dir, POOL_NAME)], max_bytes)
            seeds = _load_seeds(dir, paths)
            budget = SpillBudget(dir, max_bytes, len(paths))
            for c, path in enumerate(paths):
                ring, moved = _open_ring(path, circle, c, seeds, budget)
                rings.append(ring)
                converted.append(moved)
                _log_damage(ring)
            budget.settle()
        except BaseException:
            for ring in rings:
                ring.close()
            if budget is not None:
                budget.close()
            os.close(lock_fd)
            raise
        return cls(dir, rings, lock_fd, converted, budget)

    # ------------------------------------------------------------- writing

    def max_batch_bytes(self, cls: int) -> int:
        """The largest blob + 4 bytes per event one batch of this class may carry
        (what is left of a run's largest span after its pieces' headers and
        prefixes, counted for pieces as small as half of PIECE_BYTES)."""
        span = self._rings[cls].max_span_bytes
        return span * 2048 // (2048 + REC_HDR + PIECE_PREFIX + 8)

    def push_back(self, cls: int, blob: Buffer, ends: Sequence[int]) -> bool:
        """Spill a batch behind everything the class has on disk. False: no room."""
        pieces, count = _encode(blob, ends)
        if not self._rings[cls].push_back_run(pieces):
            return False
        self._spilled[cls] += count
        return True

    def push_front(self, cls: int, blob: Buffer, ends: Sequence[int]) -> bool:
        """Spill a batch ahead of everything the class has on disk (SIGTERM, newest
        first). Only while nothing of the class is read but unreleased. False: no room."""
        pieces, count = _encode(blob, ends)
        if not self._rings[cls].push_front_run(pieces):
            return False
        self._spilled[cls] += count
        return True

    def write_through(self, cls: int, blob: Buffer, ends: Sequence[int]) -> bool:
        """Write a batch that stays held in memory (write-through): it is on disk
        as a run read but not released, released like one read back
        (`release_read`, oldest first) once all of it was delivered. Only while
        nothing of the class is unread. False: no room (nothing written)."""
        pieces, count = _encode(blob, ends)
        if not self._rings[cls].push_back_run(pieces, read=True):
            return False
        self._written_through[cls] += count
        return True

    # ------------------------------------------------------------- reading

    def read_next(self, cls: int) -> SpilledBatch | None:
        """The next batch of the class not yet read back (the loop's drain); it
        stays on disk until `release_read`. None: nothing left to read. A batch
        whose every piece was found damaged has count 0 (still to be released)."""
        pieces = self._rings[cls].read_next_run()
        if pieces is None:
            return None
        blob, ends = _decode(pieces)
        self._recovered[cls] += len(ends)
        return SpilledBatch(blob, ends, len(ends))

    def release_read(self, cls: int) -> None:
        """The oldest batch read back (or written through) was delivered: free it on disk."""
        self._rings[cls].release_read()

    def read_batches(self, cls: int) -> int:
        """Batches of the class read back or written through and not yet released."""
        return self._rings[cls].read_runs

    def unread_all(self, cls: int) -> int:
        """Every batch read back or written through and not yet released becomes
        unread again, in order (the caller dropped its memory copies: the drain
        brings them back). Returns the events moved."""
        return self._rings[cls].unread_all()

    def drop_front(self, cls: int) -> int:
        """Evict the class's oldest batch (memory and disk full); its events, 0 if none."""
        dropped = self._rings[cls].drop_front()
        self._dropped[cls] += dropped
        return dropped

    @property
    def shared_budget(self) -> bool:
        """One budget for all classes (a run dropped in one class makes room for any)."""
        return self.budget is not None

    def room_bytes(self, cls: int) -> int:
        """Bytes of the spill budget the class may still take (what a push may
        use, less what the wrap wastes)."""
        free = self._rings[cls].statistics().free_bytes
        if self.budget is None:
            return free
        return min(free, self.budget.available(cls))

    @staticmethod
    def run_bytes(nbytes: int, events: int) -> int:
        """At most the ring bytes a batch of `events` events, `nbytes` bytes, takes:
        its ends array and, per piece (pieces at least half full), a header,
        prefix and padding."""
        payload = nbytes + _ENDS_ITEM * events
        pieces = payload // 2048 + 1
        return payload + pieces * (REC_HDR + PIECE_PREFIX + 8)

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
                if self.budget is not None:
                    self.budget.close()
            finally:
                self._unlock()

    def statistics(self) -> SpillStoreStats:
        per = tuple(
            _class_stats(
                r.statistics(),
                self._spilled[c],
                self._recovered[c],
                self._dropped[c],
                self._written_through[c],
                self._converted[c],
                r.allocated_bytes + DATA_OFFSET,
            )
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
            # What the spill holds on the disk: the rings' windows and the pool.
            file_bytes=sum(s.file_bytes for s in per)
            + (self.budget.pool_bytes if self.budget is not None else 0),
            corrupt_records=sum(s.corrupt_records for s in per),
            flushes=self._flushes,
            corrupt_events=sum(s.corrupt_events for s in per),
            corrupt_bytes=sum(s.corrupt_bytes for s in per),
            written_through_events=sum(s.written_through_events for s in per),
        )


def _class_stats(
    rs: RingStats,
    spilled: int,
    recovered: int,
    dropped: int,
    written_through: int = 0,
    converted: int = 0,
    file_bytes: int | None = None,
) -> ClassSpillStats:
    read_events = rs.events - rs.unread_events
    read_bytes = rs.bytes - rs.unread_bytes
    read_pieces = rs.pieces - rs.unread_pieces
    return ClassSpillStats(
        # Payload bytes minus the ends arrays and piece prefixes: the events' own bytes.
        pending_events=rs.unread_events,
        pending_bytes=rs.unread_bytes
        - _ENDS_ITEM * rs.unread_events
        - PIECE_PREFIX * rs.unread_pieces,
        unreleased_events=read_events,
        unreleased_bytes=read_bytes - _ENDS_ITEM * read_events - PIECE_PREFIX * read_pieces,
        spilled_events=spilled,
        recovered_events=recovered,
        dropped_events=dropped,
        resumed_events=rs.recovered_events,
        file_bytes=rs.file_bytes if file_bytes is None else file_bytes,
        free_bytes=rs.free_bytes,
        corrupt_records=rs.corrupt_records,
        torn_header_slots=rs.torn_header_slots,
        header_lost=rs.header_lost,
        corrupt_events=rs.corrupt_events,
        corrupt_bytes=rs.corrupt_bytes,
        written_through_events=written_through,
        converted_events=converted,
    )


def _encode(blob: Buffer, ends: Sequence[int]) -> tuple[list[Piece], int]:
    """The pieces of a batch's run (format.py): each (base, its ends, its events'
    bytes), the ends and bytes as views of the caller's arrays where possible."""
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
    pieces: list[Piece] = []
    a = 0
    base = 0
    for b in piece_bounds(ends):
        end = ends[b - 1]
        prefix = base.to_bytes(PIECE_PREFIX, "little")
        parts = (prefix, ends_view[a * _ENDS_ITEM : b * _ENDS_ITEM], view[base:end])
        pieces.append((parts, b - a))
        a, base = b, end
    return pieces, count


def _decode(pieces: list[tuple[int, bytes]]) -> tuple[bytes, array[int]]:
    """A run's sound pieces back as one blob and its ends (relative to the blob).
    An intact run's ends are already relative to its start; after a piece lost
    to damage (or a run that starts mid-way) the rest is shifted by the gap."""
    ends = array("I")
    parts: list[bytes] = []
    size = 0
    for count, payload in pieces:
        base = int.from_bytes(payload[:PIECE_PREFIX], "little")
        cut = PIECE_PREFIX + _ENDS_ITEM * count
        mine = array("I")
        mine.frombytes(payload[PIECE_PREFIX:cut])
        if not _LITTLE:
            mine.byteswap()
        if base != size:
            shift = size - base
            mine = array("I", (e + shift for e in mine))
        ends.extend(mine)
        part = payload[cut:]
        parts.append(part)
        size += len(part)
    return b"".join(parts), ends


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


def check_private_dir(dir: str) -> None:
    """SpillError naming `dir` and what is wrong unless it is a directory owned by
    this process's user and not writable by group or others (issue 13: whoever
    can write the dir could plant links or records, or truncate mapped files)."""
    try:
        st = os.stat(dir)
    except OSError as exc:
        raise SpillError(f"spill dir {dir}: cannot stat: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SpillError(f"spill dir {dir} exists but is not a directory")
    uid = os.geteuid()
    if st.st_uid != uid:
        raise SpillError(
            f"spill dir {dir} is owned by uid {st.st_uid}, not by the agent's user "
            f"(uid {uid}): refused (chown it to the agent's user)"
        )
    if st.st_mode & 0o022:
        raise SpillError(
            f"spill dir {dir} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): refused (chmod 0700 it)"
        )


def _load_seeds(dir: str, ring_paths: Sequence[str]) -> Seeds:
    """The installation's checksum seeds, from the secret in `dir`/seed, created
    exclusively (0600) with 16 random bytes at the first start. A seed file that
    is not exactly that is refused (naming it): the rings cannot be verified
    without it, and a new secret would silently orphan every record."""
    path = os.path.join(dir, SEED_NAME)
    try:
        fd = open_private(path, os.O_RDONLY, f"spill seed {path}: cannot open")
    except SpillError:
        if os.path.lexists(path):
            raise
        fd = -1
    if fd >= 0:
        try:
            secret = os.pread(fd, SECRET_BYTES + 1, 0)
        except OSError as exc:
            raise SpillError(f"spill seed {path}: cannot read: {exc.strerror}") from exc
        finally:
            os.close(fd)
        if len(secret) != SECRET_BYTES:
            raise SpillError(
                f"spill seed {path} holds {len(secret)} bytes, not {SECRET_BYTES}: refused "
                "(restore it; without it the ring files cannot be verified)"
            )
        return seeds_from_secret(secret)
    for ring in ring_paths:
        with contextlib.suppress(OSError):
            if os.lstat(ring).st_size and not os.path.lexists(ring + V1_SUFFIX):
                on_disk, a, b = read_head(ring)
                if choose_slot(a, b, None, FIXED_SEEDS, FORMAT_V1)[0] is None:
                    log.warning(
                        "spill seed %s was missing: a new one is created, and what %s "
                        "holds cannot be verified with it (counted as corrupt)",
                        path,
                        ring,
                    )
    secret = os.urandom(SECRET_BYTES)
    fd = open_private(
        path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, f"spill seed {path}: cannot create"
    )
    try:
        os.write(fd, secret)
        os.fsync(fd)
    except OSError as exc:
        raise SpillError(f"spill seed {path}: cannot write: {exc.strerror}") from exc
    finally:
        os.close(fd)
    fsync_dir(path)
    return seeds_from_secret(secret)


def _open_ring(
    path: str, size: int, cls: int, seeds: Seeds, budget: SpillBudget
) -> tuple[SpillRing, int]:
    """The class's ring, converted from version 1 first if that is what is found
    (or a conversion was cut short). Returns (ring, events converted)."""
    old = path + V1_SUFFIX

    def sparse() -> SpillRing:
        return SpillRing.open_sparse(path, size, cls, seeds, budget.for_class(cls))

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
        moved, lost = _convert_v1(old, ring, cls)
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


def _convert_v1(old: str, ring: SpillRing, cls: int) -> tuple[int, int]:
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
            ends.frombytes(payload[: _ENDS_ITEM * rec.count])
            if not _LITTLE:
                ends.byteswap()
            pieces, count = _encode(payload[_ENDS_ITEM * rec.count :], ends)
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


def _log_damage(ring: SpillRing) -> None:
    """Once per ring file at the open: what damage cost, and where it starts."""
    st = ring.statistics()
    if not (st.corrupt_records or st.corrupt_bytes):
        return
    where = ", ".join(f"offset {off} ({n} bytes)" for off, n in st.damage[:4])
    log.warning(
        "spill ring %s: damage skipped: %d pieces (%d events known, %d bytes) at %s",
        ring.path,
        st.corrupt_records,
        st.corrupt_events,
        st.corrupt_bytes,
        where or "the end of the chain",
    )


def _lock_dir(dir: str) -> int:
    path = os.path.join(dir, LOCK_NAME)
    fd = open_private(path, os.O_RDWR | os.O_CREAT, f"spill dir {dir}: cannot open {path}")
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


def _check_space(dir: str, paths: list[str], max_bytes: int) -> None:
    """Fail before allocating anything when the filesystem cannot hold the spill
    budget (the rings' windows and the pool together).

    Counts only what is not allocated yet (existing files keep their blocks)
    and only the space an unprivileged user may take (f_bavail): the reserved
    blocks stay for the system's own emergencies."""
    allocated = 0
    for path in paths:
        try:
            allocated += os.lstat(path).st_blocks * 512
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SpillError(f"spill file {path}: cannot stat: {exc.strerror}") from exc
    need = max(0, max_bytes - allocated)
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
    if os.path.lexists(path):
        fd = open_private(path, os.O_RDONLY, f"spill dir {spill_dir}: cannot open {path}")
        try:
            with contextlib.suppress(ValueError):
                last = int(os.read(fd, 64).decode("ascii", "replace").strip() or 0)
        finally:
            os.close(fd)
    epoch = max(now_ms, last + 1)
    tmp = path + ".tmp"
    # Exclusively: a leftover (a crash between create and rename) or a planted
    # link is removed first (unlink removes a link, never its target).
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = open_private(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, f"spill dir {spill_dir}: cannot create {tmp}"
    )
    try:
        os.write(fd, f"{epoch}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return epoch
