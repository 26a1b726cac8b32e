"""One event class's spill ring: the mmap ring file, its writes and its recovery.

This module owns the ring file: creating, preallocating, zero-filling and
mapping it, where each record goes in the circle, the header writes that make
a push or a release durable, msync, and how a file is read back after a clean
stop, a kill -9, a power loss or plain corruption. What the bytes mean (the
file layout, header slots, records, checksums) is `format.py`'s, a pure module;
`SpillRing` is the only code that touches the file.

Promises:
- Nothing is ever written outside a file preallocated with posix_fallocate
  (FACTS: a sparse mapping dies by SIGBUS when the disk fills), and a new file
  is zero-filled once, so writes through the mapping never stall the loop on
  the filesystem converting unwritten extents (measured: up to 100 ms; see
  `SpillRing._zero_fill`).
- Opening never raises for bad data and never hangs: torn or corrupt records are
  skipped and counted, a torn header slot falls back to the other one, two bad
  slots make the ring "empty-but-scan". Work at open is linear: one walk over
  the records after a clean stop or a kill -9; on a damaged file at most three
  passes (walk, full scan, walk again from a later head) with the hashing of
  look-alike records capped.
- kill -9 loses nothing that `push_back`/`push_front` returned True for: the
  record and the header both sit in the MAP_SHARED mapping before the call
  returns, and the page cache outlives the process (FACTS). Records read but not
  released come back as unread; a record released a moment before the kill may
  come back once more only if the header slot write itself was cut (kill -9 in
  the middle of a ~100-byte memcpy).
- A power loss costs at most the records pushed since the last `flush()`
  (msync), and may bring back records released since then (duplicates). Pages
  reach the disk in any order, so the walk at open trusts no order: a header
  newer than its records, a half-written record, a record whose predecessor
  never made it - each is detected by checksum and sequence, counted, skipped.

# Invariant: every record ever written to a file has seq < the file's tail_seq
#   (tail_seq never decreases, push_front counts down from head_seq). A stale
#   record (released, or from an earlier lap) never sits at the position where
#   the walk expects its seq, because the walk demands exactly the next seq at
#   exactly the next position and a new record of that seq would have been
#   written there; a resync scans forward only and accepts only seq > last good,
#   and every stale record ahead of the walk has a lower seq. The record checksum
#   covers the seq, so no stale record can be relabelled by a partial write.
# Invariant: the live records are the seqs [head_seq, tail_seq) in the order of
#   `_read` then `_unread`; item boundaries are 0 or >= 48 bytes into the region,
#   so a skip item always fits in front of a boundary.
# Invariant: `head_pos` is the position of the oldest unreleased record (or the
#   tail when the ring is empty); the header in the mapping always matches the
#   in-memory head/tail after every public call returns.
"""

from __future__ import annotations

import dataclasses
import errno
import mmap
import os
from collections import deque
from collections.abc import Sequence

from agent.spill.format import (
    ALIGN,
    DATA_OFFSET,
    INITIAL_SEQ,
    KIND_BATCH,
    KIND_SKIP,
    MIN_DATA_BYTES,
    REC_HDR,
    RECORD_MAGIC,
    SLOT_BYTES,
    SLOT_ENCODED_BYTES,
    Buffer,
    RecordHeader,
    SlotState,
    choose_slot,
    decode_record_header,
    encode_slot,
    pack_record_header,
    record_crc_ok,
    record_span,
    seal_record,
)


class SpillError(Exception):
    """The disk failed us (no space, I/O error, permissions). The message names the path."""


# pwrite size when zero-filling a new ring: big enough for disk speed, small
# enough not to matter for memory.
_ZERO_FILL_STEP = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class RingRecord:
    payload: bytes
    count: int
    seq: int


@dataclasses.dataclass(frozen=True)
class RingStats:
    records: int  # on disk and not released (read or not)
    events: int
    bytes: int  # payload bytes of those records
    unread_records: int  # not yet handed out by read_next
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


class _Entry:
    """The index of one live record (the ring never re-parses its own writes)."""

    __slots__ = ("count", "length", "pos", "seq")

    def __init__(self, pos: int, seq: int, count: int, length: int) -> None:
        self.pos = pos
        self.seq = seq
        self.count = count
        self.length = length


def _as_bytes_view(part: Buffer) -> memoryview:
    view = memoryview(part)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _available_bytes(path: str) -> int | None:
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _preallocate(fd: int, path: str, size: int) -> None:
    """posix_fallocate or SpillError: never leave a sparse file to be mapped (FACTS)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        avail = _available_bytes(path)
        avail_txt = f"{avail} bytes available" if avail is not None else "free space unknown"
        raise SpillError(
            f"spill ring {path}: cannot preallocate {size} bytes "
            f"({errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror}); "
            f"{avail_txt} on its filesystem"
        ) from exc


class SpillRing:
    """A FIFO of batch records in one preallocated, memory-mapped file.

    Reading is two-phase so a record drained into memory is freed only once it
    was delivered: `read_next` moves a read cursor, `release_read` frees the
    oldest read record for good (advancing the durable head), `unread_all` puts
    the cursor back. Not thread-safe: the loop owns it.

    Records are never split at the end of the data region: a record that does
    not fit before the end is written at offset 0 behind a skip item (the wrap
    marker). A record larger than `max_payload_bytes` can never be stored
    (ValueError: the caller's chunks must fit the ring).
    """

    def __init__(self, path: str, class_index: int, mm: mmap.mmap, file_size: int) -> None:
        self.path = path
        self.class_index = class_index
        self._mm = mm
        self._mv = memoryview(mm)
        self._file_size = file_size
        self._data_size = (file_size - DATA_OFFSET) & ~(ALIGN - 1)
        # Records never exceed this, so every boundary is 0 or >= REC_HDR and a
        # skip item always fits in front of one (see the module invariants).
        self._max_span = self._data_size - REC_HDR
        self._head_pos = 0
        self._head_seq = INITIAL_SEQ
        self._tail_pos = 0
        self._tail_seq = INITIAL_SEQ
        self._prepared = 0  # see _zero_fill
        self._gen = 0
        self._read: deque[_Entry] = deque()  # read, not released (oldest first)
        self._unread: deque[_Entry] = deque()
        self._events = 0
        self._bytes = 0
        self._read_events = 0
        self._read_bytes = 0
        self._dirty_lo = self._file_size
        self._dirty_hi = 0
        self._header_dirty = False
        self._flushes = 0
        self._corrupt = 0
        self._torn_slots = 0
        self._header_lost = False
        self._recovered_records = 0
        self._recovered_events = 0
        self._closed = False

    # ------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: str, size_bytes: int, class_index: int) -> SpillRing:
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
            raise ValueError(f"spill ring {path}: {size_bytes} bytes is below the minimum")
        requested = size_bytes & ~(ALIGN - 1)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SpillError(f"spill ring {path}: cannot open: {exc.strerror}") from exc
        try:
            try:
                on_disk = os.fstat(fd).st_size
                if on_disk >= DATA_OFFSET:
                    slot_a = os.pread(fd, SLOT_ENCODED_BYTES, 0)
                    slot_b = os.pread(fd, SLOT_ENCODED_BYTES, SLOT_BYTES)
                else:
                    slot_a = slot_b = b""
            except OSError as exc:
                raise SpillError(f"spill ring {path}: cannot read: {exc.strerror}") from exc
            state, bad_slots = choose_slot(slot_a, slot_b, class_index)
            fresh = on_disk < DATA_OFFSET + MIN_DATA_BYTES and state is None
            if state is not None:
                file_size = state.file_size
            elif not fresh:
                file_size = on_disk & ~(ALIGN - 1)
            else:
                file_size = requested
            _preallocate(fd, path, file_size)
            try:
                if fresh:
                    # The allocation must be durable before an msync means anything.
                    os.fsync(fd)
                mm = mmap.mmap(fd, file_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as exc:
                raise SpillError(f"spill ring {path}: cannot map: {exc.strerror}") from exc
        finally:
            os.close(fd)
        ring = cls(path, class_index, mm, file_size)
        if fresh:
            ring._format(INITIAL_SEQ)
            ring.flush()
            _fsync_dir(path)
        else:
            ring._recover(state, bad_slots)
        if not (ring._read or ring._unread):
            if ring._file_size != requested:
                ring._resize(requested)
            elif ring._prepared < ring._data_size:
                ring._zero_fill()
        return ring

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
        self._unmap()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise SpillError(f"spill ring {self.path}: cannot reopen: {exc.strerror}") from exc
        try:
            try:
                if size < os.fstat(fd).st_size:
                    os.ftruncate(fd, size)
            except OSError as exc:
                raise SpillError(f"spill ring {self.path}: cannot shrink: {exc.strerror}") from exc
            _preallocate(fd, self.path, size)
            try:
                os.fsync(fd)
                mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as exc:
                raise SpillError(f"spill ring {self.path}: cannot map: {exc.strerror}") from exc
        finally:
            os.close(fd)
        self._mm = mm
        self._mv = memoryview(mm)
        self._file_size = size
        self._data_size = (size - DATA_OFFSET) & ~(ALIGN - 1)
        self._max_span = self._data_size - REC_HDR
        self._dirty_lo, self._dirty_hi = size, 0
        self._gen = gen
        self._closed = False
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
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SpillError(f"spill ring {self.path}: cannot reopen: {exc.strerror}") from exc
        try:
            zeros = bytes(_ZERO_FILL_STEP)
            at = self._prepared
            while at < self._data_size:
                n = min(_ZERO_FILL_STEP, self._data_size - at)
                os.pwrite(fd, zeros if n == _ZERO_FILL_STEP else zeros[:n], DATA_OFFSET + at)
                at += n
            os.fsync(fd)
        except OSError as exc:
            raise SpillError(
                f"spill ring {self.path}: cannot write {self._data_size} bytes of zeros: "
                f"{exc.strerror}"
            ) from exc
        finally:
            os.close(fd)
        self._prepared = self._data_size
        self._write_header()
        self._write_header()
        self.flush()

    def _recover(self, state: SlotState | None, bad_slots: int) -> None:
        self._torn_slots = bad_slots
        start: tuple[int, int] | None
        if state is not None:
            self._prepared = state.prepared
            # +2: a record written just before a kill carries stamp generation+1.
            self._gen = state.generation + 2
            start = (state.head_pos, state.head_seq)
            hint_seq = state.tail_seq
        else:
            self._header_lost = True
            start, hint_seq = self._start_without_header()
            # Unknown; if records turn up the file was in use, so assume it was
            # prepared (an empty ring is zero-filled again, which is always safe).
            self._prepared = 0 if start is None else self._data_size
        if start is None:
            self._format(hint_seq)
            return
        troubled = self._walk(start[0], start[1], hint_seq, header_valid=state is not None)
        if troubled and state is not None:
            # After a power loss the header may be older than the records around
            # it (pages reach the disk in any order): its head can then sit in the
            # middle of a newer lap, and walking from there would skip live
            # records. The newest surviving write knows a later head (its floor).
            found = self._scan_records()
            if found:
                newer, newer_hint = self._start_from(found)
                newest = max(f[1].stamp for f in found)
                if newest > state.generation and newer[1] > state.head_seq:
                    self._reset_index()
                    self._gen = max(self._gen, newest + 2)
                    self._walk(newer[0], newer[1], max(hint_seq, newer_hint), header_valid=False)
        self._recovered_records = len(self._unread)
        self._recovered_events = self._events
        self._write_header()
        self._write_header()  # heals a torn slot at once

    def _start_without_header(self) -> tuple[tuple[int, int] | None, int]:
        """Both slots lost: find where the live records start by scanning."""
        found = self._scan_records()
        if not found:
            return None, INITIAL_SEQ
        self._gen = max(f[1].stamp for f in found) + 2
        return self._start_from(found)

    def _scan_records(self) -> list[tuple[int, RecordHeader]]:
        """Every valid batch record in the data region, in file order (one pass)."""
        found: list[tuple[int, RecordHeader]] = []
        budget = [4 * self._data_size]
        pos = 0
        while pos < self._data_size:
            hit = self._find_valid(pos, self._data_size - pos, -1, budget)
            if hit is None:
                break
            rel, hdr = hit
            found.append((rel, hdr))
            pos = rel + record_span(hdr.length)
        return found

    @staticmethod
    def _start_from(found: list[tuple[int, RecordHeader]]) -> tuple[tuple[int, int], int]:
        """Where a walk over scanned records starts, and a tail seq hint above them all.

        The newest write (highest stamp) knew the head at its time (its floor):
        the walk starts at the first valid record at or after that floor. Records
        released after that write come back once more (duplicates, never a loss)."""
        newest = max(found, key=lambda f: f[1].stamp)[1]
        live = [f for f in found if f[1].seq >= newest.floor]
        rel, hdr = min(live, key=lambda f: (f[1].seq, -f[1].stamp))
        return (rel, hdr.seq), max(f[1].seq for f in found) + 1

    def _reset_index(self) -> None:
        self._unread.clear()
        self._read.clear()
        self._events = self._bytes = self._read_events = self._read_bytes = 0

    def _walk(self, head_pos: int, head_seq: int, hint_seq: int, *, header_valid: bool) -> bool:
        """Rebuild the index from the durable head, one pass at most.

        Demands exactly the expected seq at exactly the next position. Where that
        fails for a reason other than the clean end of the chain (the header said
        more records follow, the record there is torn, or the header was lost), it
        resynchronises by scanning forward for the next valid record with a seq
        beyond the last good one, and counts what it skipped by seq. Returns
        whether it had to (the file was not as a clean stop or kill -9 leaves it)."""
        size = self._data_size
        mv = self._mv
        pos, expect = head_pos, head_seq
        last_good = head_seq - 1
        traveled = 0  # distance from head_pos around the circle: the walk stops at size
        budget = [4 * size]  # bytes a resync may hash (bounds look-alikes inside payloads)
        scan_complete = True
        troubled = False
        lost = 0
        while traveled < size:
            if size - pos < REC_HDR:
                traveled += size - pos
                pos = 0
                continue
            hdr = decode_record_header(mv, DATA_OFFSET + pos, self.class_index)
            torn = False
            if hdr is not None and hdr.seq == expect:
                if hdr.kind == KIND_SKIP:
                    step = REC_HDR + hdr.length
                    fits = pos + step <= size and traveled + step <= size
                    if fits and record_crc_ok(mv, DATA_OFFSET + pos, hdr):
                        traveled += step
                        pos = 0 if pos + step == size else pos + step
                        continue
                else:
                    span = record_span(hdr.length)
                    fits = pos + span <= size and traveled + span <= size
                    if fits and record_crc_ok(mv, DATA_OFFSET + pos, hdr):
                        self._adopt(pos, hdr)
                        traveled += span
                        pos += span
                        expect = last_good = hdr.seq
                        expect += 1
                        continue
                torn = True  # the record we expected is here but damaged
            if not (torn or expect < hint_seq or not header_valid):
                break  # the clean end of the chain: the header's tail hint is exact
            troubled = True
            window = size - traveled
            hit = self._find_valid(pos, window, last_good, budget)
            if hit is None:
                scan_complete = budget[0] > 0
                break
            rel, hdr = hit
            lost += hdr.seq - expect
            span = record_span(hdr.length)
            traveled += (rel - pos) % size + span
            self._adopt(rel, hdr)
            pos = rel + span
            expect = last_good = hdr.seq
            expect += 1
        if size - pos < REC_HDR:
            pos = 0
        if expect < hint_seq:
            lost += hint_seq - expect
            troubled = True
        self._corrupt = lost
        self._tail_pos = pos
        # Reusing seqs below the hint is safe only when a complete scan proved that
        # no valid record with such a seq is left anywhere in the free space.
        if header_valid and scan_complete:
            self._tail_seq = expect
        else:
            self._tail_seq = max(expect, hint_seq)
        self._set_head()
        return troubled

    def _adopt(self, pos: int, hdr: RecordHeader) -> None:
        self._unread.append(_Entry(pos, hdr.seq, hdr.count, hdr.length))
        self._events += hdr.count
        self._bytes += hdr.length

    def _find_valid(
        self, start: int, window: int, last_good: int, budget: list[int]
    ) -> tuple[int, RecordHeader] | None:
        """First valid batch record with seq > last_good lying wholly within the
        `window` bytes that follow `start` around the circle. The magic is found at C
        speed (mmap.find); only 8-aligned hits with a sound header are hashed."""
        size = self._data_size
        segments = [(start, min(size, start + window))]
        if start + window > size:
            segments.append((0, start + window - size))
        for lo, hi in segments:
            i = lo
            while i + REC_HDR <= hi:
                j = self._mm.find(RECORD_MAGIC, DATA_OFFSET + i, DATA_OFFSET + hi)
                if j < 0:
                    break
                rel = j - DATA_OFFSET
                if rel % ALIGN:
                    i = rel - rel % ALIGN + ALIGN
                    continue
                i = rel + ALIGN
                hdr = decode_record_header(self._mv, j, self.class_index)
                if hdr is None or hdr.kind != KIND_BATCH or hdr.seq <= last_good:
                    continue
                if rel + record_span(hdr.length) > hi:
                    continue
                if budget[0] < hdr.length:
                    budget[0] = 0
                    return None
                budget[0] -= hdr.length
                if record_crc_ok(self._mv, j, hdr):
                    return rel, hdr
        return None

    # ------------------------------------------------------------- writing

    @property
    def max_payload_bytes(self) -> int:
        """The largest payload a record may carry in this ring."""
        return self._max_span - REC_HDR

    def push_back(self, payload: Buffer, count: int) -> bool:
        """Append a record of `count` events. False: no room now (not an error)."""
        return self.push_back_parts((payload,), count)

    def push_front(self, payload: Buffer, count: int) -> bool:
        """Prepend a record (it becomes the oldest). Only while nothing is read but
        unreleased; used on SIGTERM to put back, newest first, what memory held
        ahead of the ring. False: no room now."""
        return self.push_front_parts((payload,), count)

    def push_back_parts(self, parts: Sequence[Buffer], count: int) -> bool:
        """`push_back` of the concatenation of `parts`, copied once into the mapping."""
        views = [_as_bytes_view(p) for p in parts]
        length, span = self._check_record(views, count)
        size = self._data_size
        if not (self._read or self._unread):
            self._head_pos = self._tail_pos = 0  # an empty ring starts over at 0
        head, tail = self._head_pos, self._tail_pos
        skip_at = -1
        if (self._read or self._unread) and tail <= head:  # wrapped (or full): room is [tail, head)
            if head - tail < span:
                return False
            pos = tail
        elif size - tail >= span:  # room is [tail, size) + [0, head)
            pos = tail
        elif head >= span:
            pos = 0
            skip_at = tail  # the wrap marker (implicit when fewer than REC_HDR bytes are left)
        else:
            return False
        seq = self._tail_seq
        floor = self._head_seq if (self._read or self._unread) else seq
        self._write_record(pos, views, length, count, seq, floor)
        if skip_at >= 0 and size - skip_at >= REC_HDR:
            self._write_skip(skip_at, size - skip_at - REC_HDR, seq)
        self._tail_pos = self._norm(pos + span)
        self._tail_seq = seq + 1
        self._unread.append(_Entry(pos, seq, count, length))
        self._events += count
        self._bytes += length
        if len(self._read) + len(self._unread) == 1:
            self._head_pos, self._head_seq = pos, seq
        self._write_header()
        return True

    def push_front_parts(self, parts: Sequence[Buffer], count: int) -> bool:
        """`push_front` of the concatenation of `parts`."""
        if self._read:
            raise RuntimeError(f"push_front on {self.path} with records read but unreleased")
        if not self._unread:
            return self.push_back_parts(parts, count)
        views = [_as_bytes_view(p) for p in parts]
        length, span = self._check_record(views, count)
        size = self._data_size
        head, tail = self._head_pos, self._tail_pos
        below = head - span  # where the record would start right in front of the head
        skip_hole = False
        if tail <= head:  # wrapped (or full): room is [tail, head)
            if below < tail or 0 < below < REC_HDR:
                return False
            pos = below
        elif below == 0 or below >= REC_HDR:  # room is [tail, size) + [0, head)
            pos = below
        elif size - span >= tail:
            # Not enough room in front of the head: the record goes at the very end
            # of the region (implicit wrap after it) and [0, head) becomes a skip.
            pos = size - span
            skip_hole = head > 0
            if skip_hole and head < REC_HDR:  # cannot happen (boundaries are 0 or >= REC_HDR)
                return False
        else:
            return False
        seq = self._head_seq - 1
        self._write_record(pos, views, length, count, seq, seq)
        if skip_hole:
            self._write_skip(0, head - REC_HDR, self._head_seq)
        self._unread.appendleft(_Entry(pos, seq, count, length))
        self._events += count
        self._bytes += length
        self._head_pos, self._head_seq = pos, seq
        self._write_header()
        return True

    def _check_record(self, views: list[memoryview], count: int) -> tuple[int, int]:
        length = sum(v.nbytes for v in views)
        if length <= 0 or count <= 0:
            raise ValueError(f"spill ring {self.path}: a record needs bytes and events")
        if count > 0xFFFF_FFFF or length > self.max_payload_bytes:
            raise ValueError(
                f"spill ring {self.path}: record of {length} bytes exceeds the ring's "
                f"largest ({self.max_payload_bytes})"
            )
        return length, record_span(length)

    def _write_record(
        self, pos: int, views: list[memoryview], length: int, count: int, seq: int, floor: int
    ) -> None:
        off = DATA_OFFSET + pos
        mv = self._mv
        pack_record_header(
            mv,
            off,
            seq=seq,
            floor=floor,
            stamp=self._gen + 1,
            length=length,
            count=count,
            class_index=self.class_index,
            kind=KIND_BATCH,
        )
        at = off + REC_HDR
        for v in views:
            mv[at : at + v.nbytes] = v
            at += v.nbytes
        seal_record(mv, off, length)
        self._mark_dirty(off, off + record_span(length))
        self._unmap_pages(off, off + record_span(length))

    def _write_skip(self, pos: int, skip: int, seq: int) -> None:
        off = DATA_OFFSET + pos
        pack_record_header(
            self._mv,
            off,
            seq=seq,
            floor=seq,
            stamp=self._gen + 1,
            length=skip,
            count=0,
            class_index=self.class_index,
            kind=KIND_SKIP,
        )
        seal_record(self._mv, off, 0)
        self._mark_dirty(off, off + REC_HDR)

    def _write_header(self) -> None:
        self._gen += 1
        state = SlotState(
            class_index=self.class_index,
            generation=self._gen,
            file_size=self._file_size,
            data_offset=DATA_OFFSET,
            data_size=self._data_size,
            head_pos=self._head_pos,
            head_seq=self._head_seq,
            tail_pos=self._tail_pos,
            tail_seq=self._tail_seq,
            prepared=self._prepared,
        )
        off = (self._gen & 1) * SLOT_BYTES
        self._mm[off : off + SLOT_ENCODED_BYTES] = encode_slot(state)
        self._header_dirty = True

    def _mark_dirty(self, lo: int, hi: int) -> None:
        self._dirty_lo = min(self._dirty_lo, lo)
        self._dirty_hi = max(self._dirty_hi, hi)

    def _norm(self, pos: int) -> int:
        return 0 if self._data_size - pos < REC_HDR else pos

    def _set_head(self) -> None:
        first = self._read[0] if self._read else (self._unread[0] if self._unread else None)
        if first is None:
            self._head_pos, self._head_seq = self._tail_pos, self._tail_seq
        else:
            self._head_pos, self._head_seq = first.pos, first.seq

    # ------------------------------------------------------------- reading

    def read_next(self) -> RingRecord | None:
        """The next record after the read cursor (a copy); advances only the cursor."""
        entry = self._advance_cursor()
        if entry is None:
            return None
        at = DATA_OFFSET + entry.pos + REC_HDR
        return RingRecord(self._mm[at : at + entry.length], entry.count, entry.seq)

    def read_next_split(self, prefix_per_event: int) -> tuple[bytes, bytes, int, int] | None:
        """`read_next` for payloads that start with `prefix_per_event` bytes per event
        (the store's ends array): (prefix, rest, count, seq), each copied once."""
        entry = self._advance_cursor()
        if entry is None:
            return None
        at = DATA_OFFSET + entry.pos + REC_HDR
        cut = at + min(prefix_per_event * entry.count, entry.length)
        end = at + entry.length
        got = self._mm[at:cut], self._mm[cut:end], entry.count, entry.seq
        self._unmap_pages(at - REC_HDR, end)
        return got

    def _unmap_pages(self, lo: int, hi: int) -> None:
        """Drop the pages of [lo, hi) from this process's page tables.

        Spill pages touched through a MAP_SHARED mapping count in the agent's
        RSS (RssFile) until unmapped: a brownout with a 64 MiB budget measured
        139 MiB peak and still 94 MiB 30 s after the spill drained. For a shared
        file mapping MADV_DONTNEED keeps the data: dirty pages go to the page
        cache (written back as usual, and msync(MS_SYNC) still syncs the file
        range), and a later access faults them back in from there (madvise(2)).
        """
        start = lo - lo % mmap.PAGESIZE
        end = min(self._file_size, -(-hi // mmap.PAGESIZE) * mmap.PAGESIZE)
        if end > start:
            self._mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def _advance_cursor(self) -> _Entry | None:
        if self._closed:
            raise ValueError(f"spill ring {self.path} is closed")
        if not self._unread:
            return None
        entry = self._unread.popleft()
        self._read.append(entry)
        self._read_events += entry.count
        self._read_bytes += entry.length
        return entry

    def release_read(self) -> None:
        """Free the oldest read-but-unreleased record; the durable head moves past it."""
        if not self._read:
            raise RuntimeError(f"release_read on {self.path} with nothing read")
        entry = self._read.popleft()
        self._read_events -= entry.count
        self._read_bytes -= entry.length
        self._events -= entry.count
        self._bytes -= entry.length
        self._set_head()
        self._write_header()

    def unread_all(self) -> None:
        """Read cursor back to the durable head: read records become unread again."""
        if self._read:
            self._unread.extendleft(reversed(self._read))
            self._read.clear()
            self._read_events = self._read_bytes = 0

    def drop_front(self) -> int:
        """Evict the oldest record (memory and disk full); its event count, 0 if empty."""
        if self._read:
            raise RuntimeError(f"drop_front on {self.path} with records read but unreleased")
        if not self._unread:
            return 0
        entry = self._unread.popleft()
        self._events -= entry.count
        self._bytes -= entry.length
        self._set_head()
        self._write_header()
        return entry.count

    # ------------------------------------------------------------- the rest

    @property
    def unread_events(self) -> int:
        """Events on disk not yet read (O(1): the loop asks every turn)."""
        return self._events - self._read_events

    @property
    def unread_bytes(self) -> int:
        return self._bytes - self._read_bytes

    @property
    def flushes(self) -> int:
        """msync calls that had something to write, since open."""
        return self._flushes

    @property
    def read_events(self) -> int:
        """Events read but not yet released (in memory now, still on disk)."""
        return self._read_events

    def _used(self) -> int:
        if not (self._read or self._unread):
            return 0
        used = (self._tail_pos - self._head_pos) % self._data_size
        return used or self._data_size

    @property
    def dirty_bytes(self) -> int:
        """Bytes of the data region written since they were last synced (a span:
        it may include clean pages between two dirty ones)."""
        return max(0, self._dirty_hi - self._dirty_lo)

    def flush(self, max_bytes: int | None = None) -> bool:
        """msync what changed since the last flush: data first, then the header.

        msync blocks the calling thread until the disk has the bytes: measured
        here 3-5 ms for 4-8 MiB dirty, 7-12 ms for 16 MiB, 21-47 ms for 32-64 MiB
        (FACTS: ~10 ms for 16 MB). With `max_bytes` one call syncs at most that
        much of the data region, so the loop can bound the pause and call again
        next turn; the header is synced once the data is. Returns True when
        nothing is left unsynced. (The kernel may write the header page back
        earlier on its own; the walk at open does not rely on any order.)"""
        if self._closed:
            return True
        did = False
        try:
            if self._dirty_hi > self._dirty_lo:
                lo = self._dirty_lo - self._dirty_lo % mmap.PAGESIZE
                hi = self._dirty_hi
                if max_bytes is not None:
                    hi = min(hi, lo + max(mmap.PAGESIZE, max_bytes))
                self._mm.flush(lo, hi - lo)
                did = True
                if hi >= self._dirty_hi:
                    self._dirty_lo, self._dirty_hi = self._file_size, 0
                else:
                    self._dirty_lo = hi
            if self._dirty_hi <= self._dirty_lo and self._header_dirty:
                self._mm.flush(0, DATA_OFFSET)
                self._header_dirty = False
                did = True
        except OSError as exc:
            raise SpillError(f"spill ring {self.path}: msync failed: {exc.strerror}") from exc
        if did:
            self._flushes += 1
        return self._dirty_hi <= self._dirty_lo and not self._header_dirty

    def close(self) -> None:
        """Flush and unmap. Idempotent."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._unmap()

    def _unmap(self) -> None:
        self._closed = True
        self._mv.release()
        self._mm.close()

    def statistics(self) -> RingStats:
        records = len(self._read) + len(self._unread)
        return RingStats(
            records=records,
            events=self._events,
            bytes=self._bytes,
            unread_records=len(self._unread),
            unread_events=self._events - self._read_events,
            unread_bytes=self._bytes - self._read_bytes,
            file_bytes=self._file_size,
            data_bytes=self._data_size,
            free_bytes=self._data_size - self._used(),
            corrupt_records=self._corrupt,
            torn_header_slots=self._torn_slots,
            header_lost=self._header_lost,
            recovered_records=self._recovered_records,
            recovered_events=self._recovered_events,
            flushes=self._flushes,
        )


def _fsync_dir(path: str) -> None:
    """Make a new file's directory entry durable (once, at creation)."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise SpillError(f"spill ring {path}: cannot open its directory: {exc.strerror}") from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        raise SpillError(
            f"spill ring {path}: fsync of its directory failed: {exc.strerror}"
        ) from exc
    finally:
        os.close(fd)
