"""One event class's spill ring: the FIFO of records in one mapped ring file.

This module owns one ring's state and the order of its steps: head and tail,
where each run goes (`format.place_back`/`place_front`), the header writes that
make a push or a release durable, what a push, a read, a release or a drop does
and in which order, and the steps that open, resize and close a ring. The rest
sits beside it:
- `format.py` (pure): what the bytes mean - layout, header slots, records,
  checksums - and the placement arithmetic;
- `recover.py` (pure): how a found file is read back - the walk, the resync,
  the scan, what is adopted;
- `index.py` (pure): the live runs in order, the read cursor, their totals;
- `runs.py` (pure over a buffer): checking, writing and re-reading one run;
- `window.py`: a sparse ring's allocated window and its share of the budget;
- `mapping.py`: the mapping's dirty span, msync, dropping used pages;
- `ringfile.py`: the file mechanics - open, posix_fallocate, zero-fill, fsync,
  mmap.
`SpillRing` alone decides what is written into a ring's mapping, and where.

Promises:
- Nothing is ever written outside what posix_fallocate allocated (FACTS: a
  sparse mapping dies by SIGBUS when the disk fills), and it is zero-filled
  before the mapping writes it, so writes through the mapping never stall the
  loop on the filesystem converting unwritten extents (measured: up to 100 ms;
  see `SpillRing._zero_fill`). A fixed ring (`open`) does both once at
  creation; a sparse ring (`open_sparse`, the one spill budget) has its window
  covered (window.py) before each write, and punched behind its head.
- Opening never raises for bad data and never hangs (recover.py's promises):
  torn or corrupt records are skipped and counted, a torn header slot falls
  back to the other one, two bad slots make the ring "empty-but-scan".
- kill -9 loses nothing that `push_back`/`push_front` returned True for: the
  record and the header both sit in the MAP_SHARED mapping before the call
  returns, and the page cache outlives the process (FACTS). Records read but not
  released come back as unread; a record released a moment before the kill may
  come back once more only if the header slot write itself was cut (kill -9 in
  the middle of a ~100-byte memcpy).
- A power loss costs at most the records pushed since the last `flush()`
  (msync), and may bring back records released since then (duplicates). Pages
  reach the disk in any order, so recovery trusts no order: a header newer
  than its records, a half-written record, a record whose predecessor never
  made it - each is detected by checksum and sequence, counted, skipped.

# Invariant: every record ever written to a file has seq < the file's tail_seq
#   (tail_seq never decreases, push_front counts down from head_seq). A stale
#   record (released, or from an earlier lap) never sits at the position where
#   the walk expects its seq, because the walk demands exactly the next seq at
#   exactly the next position and a new record of that seq would have been
#   written there; a resync scans forward only and accepts only seq > last good,
#   and every stale record ahead of the walk has a lower seq. The record checksum
#   covers the seq, so no stale record can be relabelled by a partial write.
# Invariant: the live records are the seqs [head_seq, tail_seq) in the order of
#   the index's `read` then `unread` (index.py); item boundaries are 0 or >= 48
#   bytes into the region, so a skip item always fits in front of a boundary.
# Invariant: `head_pos` is the position of the oldest unreleased record (or the
#   tail when the ring is empty); the header in the mapping always matches the
#   in-memory head/tail after every public call returns.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
from collections.abc import Sequence

from agent.spill.format import (
    ALIGN,
    DATA_OFFSET,
    FIXED_SEEDS,
    INITIAL_SEQ,
    MIN_DATA_BYTES,
    REC_HDR,
    SLOT_BYTES,
    SLOT_ENCODED_BYTES,
    Buffer,
    Seeds,
    SlotState,
    data_size_for,
    encode_slot,
    max_span_for,
    normalize,
    place_back,
    place_front,
    used_bytes,
)
from agent.spill.index import RunIndex
from agent.spill.mapping import RingMapping
from agent.spill.recover import LiveRecord, Recovery, file_size_to_map, recover
from agent.spill.ringfile import (
    SpillError,
    fsync_dir,
    map_fd,
    map_file,
    open_sparse,
    read_head,
    zero_fill,
)
from agent.spill.runs import Piece, PreparedRun, prepare_run, read_run, write_run, write_skip
from agent.spill.window import RingBudget, SparseWindow

__all__ = ["Piece", "RingStats", "SpillError", "SpillRing"]


_PAGE = mmap.PAGESIZE


@dataclasses.dataclass(frozen=True)
class RingStats:
    records: int  # runs on disk and not released (read or not)
    events: int
    bytes: int  # payload bytes of those runs
    unread_records: int  # not yet handed out by read_next_split
    unread_events: int
    unread_bytes: int
    file_bytes: int
    data_bytes: int  # size of the data region
    free_bytes: int  # data region not held by unreleased records
    corrupt_records: int  # records found missing or damaged at open
    torn_header_slots: int  # header slots found invalid at open (0..2)
    header_lost: bool  # both slots were invalid: recovered by scanning the data
    recovered_records: int  # records found at open
    recovered_events: int
    flushes: int  # msync calls that had something to write
    pieces: int = 0  # pieces of the runs on disk (read or not)
    unread_pieces: int = 0
    corrupt_events: int = 0  # events of damaged pieces whose header survived
    corrupt_bytes: int = 0  # bytes skipped over damage
    damage: tuple[tuple[int, int], ...] = ()  # (file offset, bytes), the first few


class SpillRing:
    """A FIFO of batch records in one preallocated, memory-mapped file.

    Reading is two-phase so a record drained into memory is freed only once it
    was delivered: `read_next_split` moves a read cursor, `release_read` frees
    the oldest read record for good (advancing the durable head). Records read
    and not released when the process ends come back as unread at the next open.
    Not thread-safe: the loop owns it.

    Records are never split at the end of the data region: a record that does
    not fit before the end is written at offset 0 behind a skip item (the wrap
    marker). A record larger than `max_payload_bytes` can never be stored
    (ValueError: the caller's chunks must fit the ring).
    """

    def __init__(
        self,
        path: str,
        class_index: int,
        mm: mmap.mmap,
        file_size: int,
        seeds: Seeds = FIXED_SEEDS,
    ) -> None:
        self.path = path
        self.class_index = class_index
        self.seeds = seeds
        self._map = RingMapping(path, mm, file_size)
        self._data_size = data_size_for(file_size)
        # Records never exceed this, so every boundary is 0 or >= REC_HDR and a
        # skip item always fits in front of one (see the module invariants).
        self._max_span = max_span_for(self._data_size)
        self._head_pos = 0
        self._head_seq = INITIAL_SEQ
        self._tail_pos = 0
        self._tail_seq = INITIAL_SEQ
        self._prepared = 0  # see _zero_fill
        self._gen = 0
        self._index = RunIndex()
        self._corrupt = 0
        self._corrupt_events = 0
        self._corrupt_bytes = 0
        self._damage: tuple[tuple[int, int], ...] = ()
        self._torn_slots = 0
        self._header_lost = False
        self._recovered_records = 0
        self._recovered_events = 0
        # Sparse rings (a shared budget): the allocated window of the data region
        # and the file's descriptor (window.py). Invariant: the window covers
        # every live run and skip item; nothing outside it is allocated.
        self._window: SparseWindow | None = None

    # ------------------------------------------------------------- opening

    @classmethod
    def open(
        cls, path: str, size_bytes: int, class_index: int, seeds: Seeds = FIXED_SEEDS
    ) -> SpillRing:
        """Create (preallocated) or recover the ring file at `path`.

        `size_bytes` is the whole file, header included. An existing file keeps
        the geometry its valid header states even when `size_bytes` differs (its
        records were written for that geometry) - unless it recovers empty, in
        which case it is resized to `size_bytes` now. A file with no valid header
        keeps its own size if that is a plausible ring size. A file shorter than
        its header says (truncated) is extended with posix_fallocate first, so no
        page of the mapping is ever beyond the end of the file (SIGBUS). A new
        (or resized, or never completely prepared) ring is zero-filled before
        this returns: see `_zero_fill` for why and what it costs.
        Raises SpillError for disk problems, never for bad data.
        """
        if size_bytes < DATA_OFFSET + MIN_DATA_BYTES:
            raise ValueError(
                f"spill ring {path}: {size_bytes} bytes is below the minimum "
                f"({DATA_OFFSET + MIN_DATA_BYTES})"
            )
        requested = size_bytes & ~(ALIGN - 1)
        on_disk, slot_a, slot_b = read_head(path)
        file_size, fresh = file_size_to_map(on_disk, slot_a, slot_b, class_index, requested, seeds)
        ring = cls(path, class_index, map_file(path, file_size, sync=fresh), file_size, seeds)
        if fresh:
            ring._format(INITIAL_SEQ)
            ring.flush()
            fsync_dir(path)
        else:
            ring._adopt(recover(ring._map.mv, class_index, seeds))
        if ring._index.empty:
            if ring._map.file_size != requested:
                ring._resize(requested)
            elif ring._prepared < ring._data_size:
                ring._zero_fill()
        return ring

    @classmethod
    def open_sparse(
        cls,
        path: str,
        size_bytes: int,
        class_index: int,
        seeds: Seeds,
        budget: RingBudget,
    ) -> SpillRing:
        """Create or recover the ring file at `path` as a sparse circle of
        `size_bytes` (the whole spill budget) of which only the window between
        head and tail is allocated, drawn from `budget` (store.py's one spill
        budget). Nothing is zero-filled up front: each range is allocated and
        zero-filled as the tail reaches it, and punched once the head has
        passed it. Raises SpillError for disk problems, never for bad data."""
        requested = size_bytes - size_bytes % _PAGE
        if requested < DATA_OFFSET + MIN_DATA_BYTES:
            raise ValueError(f"spill ring {path}: {size_bytes} bytes is below the minimum")
        existed = os.path.lexists(path)
        fd = open_sparse(path, requested)
        try:
            on_disk = os.fstat(fd).st_size
            slot_a = os.pread(fd, SLOT_ENCODED_BYTES, 0)
            slot_b = os.pread(fd, SLOT_ENCODED_BYTES, SLOT_BYTES)
            file_size, fresh = file_size_to_map(
                on_disk, slot_a, slot_b, class_index, requested, seeds
            )
            if file_size < on_disk and not fresh and file_size % _PAGE:
                file_size = on_disk  # a version-2 fixed ring grown sparse: keep its geometry
            fresh = fresh or not existed
            if fresh:
                file_size = requested
            if file_size > on_disk:
                os.ftruncate(fd, file_size)
            mm = map_fd(fd, path, file_size)
        except OSError as exc:
            os.close(fd)
            raise SpillError(f"spill ring {path}: cannot open: {exc.strerror}") from exc
        except BaseException:
            os.close(fd)
            raise
        ring = cls(path, class_index, mm, file_size, seeds)
        ring._window = SparseWindow(fd, ring._data_size, budget)
        ring._prepared = ring._data_size  # allocation zero-fills as it goes
        if fresh:
            ring._format(INITIAL_SEQ)
            ring.flush()
            fsync_dir(path)
        else:
            ring._adopt(recover(ring._map.mv, class_index, seeds))
        last = ring._index.last()
        end = last.pos + last.bytes_held if last is not None else None
        ring._window.adopt(ring._head_pos, end)
        return ring

    @property
    def allocated_bytes(self) -> int:
        """Data bytes allocated for this ring (its window; all of it when not sparse)."""
        return self._window.allocated if self._window is not None else self._data_size

    def _release_window(self) -> None:
        """The head moved forward (or the ring emptied): punch what it passed."""
        if self._window is not None:
            self._window.release(self._head_pos, empty=self._index.empty)

    def _adopt(self, found: Recovery) -> None:
        """Take what recovery found as the index, and rewrite both header slots
        (which heals a torn slot at once)."""
        self._index.adopt(found.records)
        self._recovered_events = found.events
        self._recovered_records = len(found.records)
        self._tail_pos, self._tail_seq = found.tail_pos, found.tail_seq
        self._set_head()
        self._gen = found.generation
        self._prepared = found.prepared
        self._corrupt = found.corrupt_records
        self._corrupt_events = found.corrupt_events
        self._corrupt_bytes = found.corrupt_bytes
        self._damage = found.damage
        self._torn_slots = found.torn_header_slots
        self._header_lost = found.header_lost
        self._write_header()
        self._write_header()

    def _format(self, seq: int) -> None:
        """An empty ring at offset 0 whose next record gets `seq`."""
        self._head_pos = self._tail_pos = 0
        self._head_seq = self._tail_seq = seq
        self._write_header()
        self._write_header()  # both slots valid from the start

    def _resize(self, size: int) -> None:
        """Re-create an empty ring at `size` bytes; seqs and generations carry on so
        nothing left in the old bytes can be taken for a new record."""
        seq, gen = self._tail_seq, self._gen
        self._map.close()
        self._map.reopen(map_file(self.path, size, sync=True, shrink=True), size)
        self._data_size = data_size_for(size)
        self._max_span = max_span_for(self._data_size)
        self._gen = gen
        self._prepared = 0
        self._format(seq)
        self._zero_fill()

    def _zero_fill(self) -> None:
        """Write real zeros over the data region from `_prepared` on, once per file.

        posix_fallocate leaves *unwritten* extents: the first write fault on each
        page then has to convert its extent, which goes through the filesystem
        journal. Measured here (ext4, 256 KiB chunks written through the mapping
        at 60 MB/s, the brownout's whole offered rate): p99 23-25 ms, max 27-102 ms
        per chunk into a fresh file; once its blocks had been written, p99 0.2-0.6
        ms, max 0.4-1 ms. A spill stalling the one loop thread for 100 ms would
        break the critical-latency bound, so the cost is paid once, at creation,
        with pwrite + fsync (1-5 s for 2 GiB here, more on slow flash). The zero
        pages are left in the page cache: dropping them (fadvise DONTNEED) made
        the first spill read them back on every write fault (p99 ~2 ms, max 33 ms
        vs p99 0.4 ms, max 4-8 ms); they are clean, so the kernel evicts them for
        free when it needs the memory. Only called on an empty ring: nothing live
        can be zeroed. Resumes where a cut-short creation stopped."""
        if self._prepared >= self._data_size:
            return
        zero_fill(self.path, DATA_OFFSET + self._prepared, DATA_OFFSET + self._data_size)
        self._prepared = self._data_size
        self._write_header()
        self._write_header()
        self.flush()

    # ------------------------------------------------------------- writing

    @property
    def max_payload_bytes(self) -> int:
        """The largest payload one single-piece record may carry in this ring."""
        return self._max_span - REC_HDR

    @property
    def max_span_bytes(self) -> int:
        """The most bytes one run may occupy (all its pieces with their headers)."""
        return self._max_span

    def push_back(self, payload: Buffer, count: int) -> bool:
        """Append a record of `count` events. False: no room now (not an error)."""
        return self.push_back_run((((payload,), count),))

    def push_front(self, payload: Buffer, count: int) -> bool:
        """Prepend a record (it becomes the oldest). Only while nothing is read but
        unreleased; used on SIGTERM to put back, newest first, what memory held
        ahead of the ring. False: no room now."""
        return self.push_front_run((((payload,), count),))

    def push_back_parts(self, parts: Sequence[Buffer], count: int) -> bool:
        """`push_back` of the concatenation of `parts`, copied once into the mapping."""
        return self.push_back_run(((parts, count),))

    def push_front_parts(self, parts: Sequence[Buffer], count: int) -> bool:
        """`push_front` of the concatenation of `parts`."""
        return self.push_front_run(((parts, count),))

    def push_back_run(self, pieces: Sequence[Piece], *, read: bool = False) -> bool:
        """Append one run of pieces (written back to back, never split at the end
        of the region). False: no room now (nothing written).

        `read`: the run is at the same time held in memory by the caller (write-
        through): it goes to the read-but-unreleased side at once, released like a
        record read back. Only while nothing is unread (it must stay behind every
        read record and ahead of every unread one)."""
        if read and self._index.unread:
            raise RuntimeError(f"write-through push on {self.path} with records unread")
        run = prepare_run(self.path, pieces, self._max_span)
        span = run.span
        empty = self._index.empty
        place = place_back(self._data_size, self._head_pos, self._tail_pos, span, empty=empty)
        if place is None:
            return False
        window = self._window
        if window is not None and not window.room_back(place, span, self._head_pos, empty=empty):
            return False
        seq = self._tail_seq
        floor = seq if empty else self._head_seq
        pos = place.pos
        self._write_run(pos, run, seq, floor)
        if place.skip_at >= 0:  # the wrap marker, after the run
            self._write_skip(place.skip_at, place.skip_length, seq)
        n = len(pieces)
        entry = LiveRecord(pos, seq, run.count, run.length, n, span)
        self._tail_pos = normalize(self._data_size, pos + span)
        self._tail_seq = seq + n
        self._index.append(entry, read=read)
        if self._index.records == 1:
            self._head_pos, self._head_seq = pos, seq
        self._write_header()
        return True

    def push_front_run(self, pieces: Sequence[Piece]) -> bool:
        """`push_front` of one run: it becomes the oldest. False: no room now."""
        if self._index.read:
            raise RuntimeError(f"push_front on {self.path} with records read but unreleased")
        if not self._index.unread:
            return self.push_back_run(pieces)
        run = prepare_run(self.path, pieces, self._max_span)
        span = run.span
        place = place_front(self._data_size, self._head_pos, self._tail_pos, span)
        if place is None:
            return False
        if self._window is not None and not self._window.room_front(place, self._tail_pos):
            return False
        n = len(pieces)
        seq = self._head_seq - n
        pos = place.pos
        self._write_run(pos, run, seq, seq)
        if place.skip_at >= 0:  # the hole [0, old head) in front of the new run
            self._write_skip(place.skip_at, place.skip_length, self._head_seq)
        entry = LiveRecord(pos, seq, run.count, run.length, n, span)
        self._index.prepend(entry)
        self._head_pos, self._head_seq = pos, seq
        self._write_header()
        return True

    def _write_run(self, pos: int, run: PreparedRun, seq: int, floor: int) -> None:
        """The run's pieces at `pos` (runs.write_run); the pages are dropped once written."""
        start = DATA_OFFSET + pos
        end = write_run(
            self._map.mv,
            start,
            run,
            seq=seq,
            floor=floor,
            stamp=self._gen + 1,
            class_index=self.class_index,
            seeds=self.seeds,
        )
        self._map.mark_dirty(start, end)
        self._map.drop_pages(start, end)

    def _write_skip(self, pos: int, skip: int, seq: int) -> None:
        off = DATA_OFFSET + pos
        write_skip(
            self._map.mv,
            off,
            skip=skip,
            seq=seq,
            stamp=self._gen + 1,
            class_index=self.class_index,
            seeds=self.seeds,
        )
        self._map.mark_dirty(off, off + REC_HDR)

    def _write_header(self) -> None:
        self._gen += 1
        state = SlotState(
            class_index=self.class_index,
            generation=self._gen,
            file_size=self._map.file_size,
            data_offset=DATA_OFFSET,
            data_size=self._data_size,
            head_pos=self._head_pos,
            head_seq=self._head_seq,
            tail_pos=self._tail_pos,
            tail_seq=self._tail_seq,
            prepared=self._prepared,
        )
        off = (self._gen & 1) * SLOT_BYTES
        self._map.mm[off : off + SLOT_ENCODED_BYTES] = encode_slot(state, self.seeds)
        self._map.mark_header()

    def _set_head(self) -> None:
        first = self._index.first()
        if first is None:
            self._head_pos, self._head_seq = self._tail_pos, self._tail_seq
        else:
            self._head_pos, self._head_seq = first.pos, first.seq

    # ------------------------------------------------------------- reading

    def read_next_run(self) -> list[tuple[int, bytes]] | None:
        """The next run after the read cursor as its sound pieces, each (events,
        payload) copied once out of the mapping; None when every run is read.
        Advances only the cursor: the run stays on disk until `release_read`.

        Every piece is checked again (the disk may have damaged it since the
        open): a piece that fails is skipped and counted in `corrupt_records`
        and `corrupt_events`, and the rest of the run is found by the same
        resync as at the open. The list may be empty (all of it damaged)."""
        entry = self._advance_cursor()
        if entry is None:
            return None
        data = self._map.mv[DATA_OFFSET : DATA_OFFSET + self._data_size]
        try:
            found = read_run(data, entry, self.class_index, self.seeds)
        finally:
            data.release()
        self._corrupt += found.corrupt
        self._corrupt_events += found.corrupt_events
        self._corrupt_bytes += found.corrupt_bytes
        at = DATA_OFFSET
        out = [(n, self._map.mm[at + pos : at + pos + length]) for n, pos, length in found.pieces]
        self._map.drop_pages(DATA_OFFSET + entry.pos, DATA_OFFSET + entry.pos + entry.bytes_held)
        return out

    def read_next_split(self, prefix_per_event: int) -> tuple[bytes, bytes, int, int] | None:
        """The next run as one payload (its pieces' payloads back to back) cut after
        `prefix_per_event` bytes per event: (prefix, rest, count, seq). For runs of
        one piece, as version 1's records were; `read_next_run` is the general
        read. None when every run is read."""
        seq = self._index.unread[0].seq if self._index.unread else 0
        pieces = self.read_next_run()
        if pieces is None:
            return None
        payload = b"".join(p for _, p in pieces)
        count = sum(n for n, _ in pieces)
        cut = min(prefix_per_event * count, len(payload))
        return payload[:cut], payload[cut:], count, seq

    def _advance_cursor(self) -> LiveRecord | None:
        if self._map.closed:
            raise ValueError(f"spill ring {self.path} is closed")
        return self._index.advance()

    def release_read(self) -> None:
        """Free the oldest read-but-unreleased run; the durable head moves past it."""
        if not self._index.read:
            raise RuntimeError(f"release_read on {self.path} with nothing read")
        self._index.release()
        self._set_head()
        self._write_header()
        self._release_window()

    @property
    def read_runs(self) -> int:
        """Runs read (or written through) and not yet released."""
        return len(self._index.read)

    def unread_all(self) -> int:
        """Every read-but-unreleased run becomes unread again, in order, ahead of
        the unread ones: the caller dropped its memory copies (they come back
        through the drain). Nothing on disk changes. Returns the events moved."""
        return self._index.unread_all()

    def drop_front(self) -> int:
        """Evict the oldest run (memory and disk full); its event count, 0 if empty."""
        if self._index.read:
            raise RuntimeError(f"drop_front on {self.path} with records read but unreleased")
        if not self._index.unread:
            return 0
        entry = self._index.drop_front()
        self._set_head()
        self._write_header()
        self._release_window()
        return entry.count

    # ------------------------------------------------------------- the rest

    @property
    def unread_events(self) -> int:
        """Events on disk not yet read (O(1): the loop asks every turn)."""
        return self._index.events - self._index.read_events

    @property
    def unread_bytes(self) -> int:
        return self._index.bytes - self._index.read_bytes

    @property
    def flushes(self) -> int:
        """msync calls that had something to write, since open."""
        return self._map.flushes

    def _used(self) -> int:
        return used_bytes(self._data_size, self._head_pos, self._tail_pos, empty=self._index.empty)

    @property
    def dirty_bytes(self) -> int:
        """Bytes of the data region written since they were last synced (a span:
        it may include clean pages between two dirty ones)."""
        return self._map.dirty_bytes

    def flush(self, max_bytes: int | None = None) -> bool:
        """msync what changed since the last flush: data first, then the header.
        `max_bytes` bounds the data synced per call (msync blocks: 3-47 ms for
        4-64 MiB measured; see mapping.py). Returns True when nothing is left
        unsynced."""
        return self._map.flush(max_bytes)

    def close(self) -> None:
        """Flush and unmap. Idempotent."""
        if self._map.closed:
            return
        try:
            self.flush()
        finally:
            self._map.close()
            if self._window is not None:
                self._window.close()

    def statistics(self) -> RingStats:
        index = self._index
        return RingStats(
            records=index.records,
            events=index.events,
            bytes=index.bytes,
            unread_records=len(index.unread),
            unread_events=index.events - index.read_events,
            unread_bytes=index.bytes - index.read_bytes,
            file_bytes=self._map.file_size,
            data_bytes=self._data_size,
            free_bytes=self._data_size - self._used(),
            corrupt_records=self._corrupt,
            torn_header_slots=self._torn_slots,
            header_lost=self._header_lost,
            recovered_records=self._recovered_records,
            recovered_events=self._recovered_events,
            flushes=self._map.flushes,
            pieces=index.pieces,
            unread_pieces=index.pieces - index.read_pieces,
            corrupt_events=self._corrupt_events,
            corrupt_bytes=self._corrupt_bytes,
            damage=self._damage,
        )
