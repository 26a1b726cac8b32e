"""The spill rings of all four event classes under one directory.

This module owns the store the loop uses: the four class rings opened together
under the spill directory, the one spill budget (`SpillBudget`: `[spill]
max_bytes` shared by the classes), and the counts per class. What must be true
of the directory before anything is read from it (mode, owner, lock, seed,
free space, the epoch file) is spilldir.py's; the conversion of version-1 ring
files convert.py's; the batch payload encoding payload.py's.

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

Promises:
- One agent per directory: a second `SpillStore.open` on a locked directory
  fails at once with SpillError naming the directory and the holder's pid
  (the lock is spilldir.py's).
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

import dataclasses
import logging
import mmap
import os
import weakref
from array import array
from collections.abc import Sequence

from agent.classes import CLASS_NAMES
from agent.spill.convert import open_ring
from agent.spill.format import DATA_OFFSET, PIECE_PREFIX, REC_HDR, Buffer
from agent.spill.payload import ENDS_ITEM, decode_run, encode_run
from agent.spill.ring import RingStats, SpillRing
from agent.spill.ringfile import open_private
from agent.spill.spilldir import (
    check_private_dir,
    check_space,
    load_seeds,
    lock_dir,
    make_private_dir,
)

log = logging.getLogger("agent.spill")

# The fixed shares of max_bytes of the rings before the one budget, in eighths
# (critical, high, normal, low). Kept only as the smallest max_bytes check
# (`ring_sizes`, and agent/sizing.py's SPILL_MIN_BYTES, which is derived from it).
RING_SHARES = (1, 1, 3, 3)
_SHARE_UNIT = sum(RING_SHARES)
# Smallest ring we create: 64 KiB of data holds a few 16 KiB chunks; less than
# that is a configuration mistake, not a ring.
MIN_RING_BYTES = DATA_OFFSET + 64 * 1024
_PAGE = mmap.PAGESIZE


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
    """One ring's view of the budget (window.RingBudget)."""

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
        make_private_dir(dir)
        check_private_dir(dir)
        lock_fd = lock_dir(dir)
        rings: list[SpillRing] = []
        converted: list[int] = []
        budget: SpillBudget | None = None
        try:
            paths = [os.path.join(dir, ring_file_name(c)) for c in range(len(CLASS_NAMES))]
            check_space(dir, [*paths, os.path.join(dir, POOL_NAME)], max_bytes)
            seeds = load_seeds(dir, paths)
            budget = SpillBudget(dir, max_bytes, len(paths))
            for c, path in enumerate(paths):
                ring, moved = open_ring(path, circle, c, seeds, budget.for_class(c))
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
        pieces, count = encode_run(blob, ends)
        if not self._rings[cls].push_back_run(pieces):
            return False
        self._spilled[cls] += count
        return True

    def push_front(self, cls: int, blob: Buffer, ends: Sequence[int]) -> bool:
        """Spill a batch ahead of everything the class has on disk (SIGTERM, newest
        first). Only while nothing of the class is read but unreleased. False: no room."""
        pieces, count = encode_run(blob, ends)
        if not self._rings[cls].push_front_run(pieces):
            return False
        self._spilled[cls] += count
        return True

    def write_through(self, cls: int, blob: Buffer, ends: Sequence[int]) -> bool:
        """Write a batch that stays held in memory (write-through): it is on disk
        as a run read but not released, released like one read back
        (`release_read`, oldest first) once all of it was delivered. Only while
        nothing of the class is unread. False: no room (nothing written)."""
        pieces, count = encode_run(blob, ends)
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
        blob, ends = decode_run(pieces)
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
        payload = nbytes + ENDS_ITEM * events
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
        - ENDS_ITEM * rs.unread_events
        - PIECE_PREFIX * rs.unread_pieces,
        unreleased_events=read_events,
        unreleased_bytes=read_bytes - ENDS_ITEM * read_events - PIECE_PREFIX * read_pieces,
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
