"""Reading a ring file back: which records are live, where the next one goes.

This module owns recovery: choosing the header slot, deciding the geometry a
found file is mapped with, the walk over the records from the durable head, the
resync past damage, the full scan when both header slots are lost, and what is
adopted. It is pure: it takes the file's bytes (bytes, bytearray, an mmap or a
memoryview of one; nothing is copied) and returns a frozen `Recovery`; it opens
nothing and writes nothing. `SpillRing.open` (ring.py) maps the file with
ringfile.py, calls `recover` and takes the result as its index.

Promises:
- Never raises for bad bytes and never hangs: every input, however damaged,
  gives a `Recovery` whose records are real records of this class (each passed
  its checksum), in increasing seq order, lying wholly inside the data region
  and not overlapping.
- Linear work: one walk after a clean stop or a kill -9; on a damaged file at
  most three passes (walk, full scan, walk again from a later head), and the
  hashing of look-alike records claiming long bodies is capped at 4x the region
  per pass (`_Budget`), so crafted event bytes cannot make it quadratic.
- What is lost is counted by seq (`corrupt_records`): records the header or the
  chain says existed and that did not come back.

The unit of damage is one piece (format.py, at most 4 KiB of payload): each has
its own crc, and the walk goes piece by piece, so damage costs the pieces it
hit and the walk resynchronises at the next sound one. Pieces are gathered into
runs (what one push wrote, `more` in the header says how many follow); a run
cut by damage comes back as two runs, the second rebased by the reader (its
first piece's prefix says where in the run it starts). What was skipped is
counted by seq (pieces), by events where a piece's header survived, and by bytes,
with where the damage starts (`Recovery.damage`) for the log.

# Invariant (kept by the writer, relied on here): every record ever written to
#   a file has seq < the file's tail_seq; a record's crc covers its seq. So a
#   stale record (released, or from an earlier lap) never sits where the walk
#   demands exactly the next seq, and a resync that scans forward only and
#   accepts only seq > last good can never adopt one (see ring.py's header).
"""

from __future__ import annotations

import dataclasses
import mmap
import re

from agent.spill.format import (
    ALIGN,
    DATA_OFFSET,
    FIXED_SEEDS,
    FORMAT_VERSION,
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
    Seeds,
    SlotState,
    choose_slot,
    data_size_for,
    decode_record_header,
    normalize,
    record_crc_ok,
    record_span,
)

# The record magic found at C speed inside a memoryview (an mmap's own find()
# would do too, but a memoryview has none): re over a 256 MiB region took
# 100 ms here, mmap.find 125 ms.
_MAGIC = re.compile(re.escape(RECORD_MAGIC))
# What recovery reads: a copy of the file, or the mapping itself (nothing copied).
Image = bytes | bytearray | memoryview | mmap.mmap
# Bytes a resync may hash per pass, in units of the region: bounds look-alike
# headers inside payloads that claim long bodies.
_HASH_BUDGET_REGIONS = 4
# Damage places kept for the log (the counts cover all of them).
_DAMAGE_KEPT = 16


@dataclasses.dataclass(frozen=True, slots=True)
class LiveRecord:
    """One live run of pieces (one push): the ring's index entry."""

    pos: int  # of its first piece, relative to the data region
    seq: int  # of its first piece; the run's pieces are seq .. seq + pieces - 1
    count: int  # events, all pieces together
    length: int  # payload bytes, all pieces together
    pieces: int = 1
    span: int = 0  # bytes it occupies in the region (0: one record of `length`)

    @property
    def end_seq(self) -> int:
        return self.seq + self.pieces

    @property
    def bytes_held(self) -> int:
        return self.span or record_span(self.length)


@dataclasses.dataclass(frozen=True)
class Recovery:
    """What a ring file holds, as found."""

    records: tuple[LiveRecord, ...]  # the live records, oldest first
    tail_pos: int  # where the next record goes
    tail_seq: int  # the next record's seq; above every seq that may be left in the file
    generation: int  # header generation to continue from: above every stamp found
    prepared: int  # data bytes zero-filled at creation, as far as known
    corrupt_records: int  # pieces missing or damaged (counted by seq)
    torn_header_slots: int  # 0..2
    header_lost: bool  # both slots invalid: found by scanning the data region
    corrupt_events: int = 0  # events of damaged pieces whose header survived
    corrupt_bytes: int = 0  # bytes of the region skipped by resyncs
    damage: tuple[tuple[int, int], ...] = ()  # (file offset, bytes skipped), the first few

    @property
    def head_pos(self) -> int:
        return self.records[0].pos if self.records else self.tail_pos

    @property
    def head_seq(self) -> int:
        return self.records[0].seq if self.records else self.tail_seq

    @property
    def events(self) -> int:
        return sum(r.count for r in self.records)

    @property
    def bytes(self) -> int:
        return sum(r.length for r in self.records)


@dataclasses.dataclass(frozen=True)
class Walk:
    """The result of one walk from a head."""

    records: tuple[LiveRecord, ...]
    tail_pos: int
    tail_seq: int
    corrupt_records: int
    troubled: bool  # had to resync: the file was not as a clean stop or kill -9 leaves it
    corrupt_events: int = 0
    corrupt_bytes: int = 0
    damage: tuple[tuple[int, int], ...] = ()


class _Budget:
    """Bytes a pass may still hash for look-alike records (shared by its resyncs)."""

    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left


# ------------------------------------------------------------- the geometry


def file_size_to_map(
    on_disk: int,
    slot_a: Buffer,
    slot_b: Buffer,
    class_index: int,
    requested: int,
    seeds: Seeds = FIXED_SEEDS,
    version: int = FORMAT_VERSION,
) -> tuple[int, bool]:
    """(bytes to map, fresh) for a ring file found `on_disk` bytes long.

    A valid header's geometry wins (its records were written for it), even over a
    truncated file (the caller extends it first). A file with no valid header
    keeps its own size if that is a plausible ring. Fresh: no ring here at all
    (a new or tiny file without a header), format it at `requested` bytes."""
    state, _bad = choose_slot(slot_a, slot_b, class_index, seeds, version)
    if state is not None:
        return state.file_size, False
    if on_disk < DATA_OFFSET + MIN_DATA_BYTES:
        return requested, True
    return on_disk & ~(ALIGN - 1), False


# ------------------------------------------------------------------ recovery


def recover(
    image: Image, class_index: int, seeds: Seeds = FIXED_SEEDS, version: int = FORMAT_VERSION
) -> Recovery:
    """The live records of the ring file whose whole mapping is `image`.

    Starts at the newest valid header slot's head and walks. After a power loss
    the header may be older than the records around it (pages reach the disk in
    any order): if the walk had trouble, a scan finds the newest surviving write,
    which knew a later head (its floor), and the walk starts again from there.
    With both slots lost the scan alone finds where the live records start."""
    with memoryview(image) as whole:
        view = whole if whole.format == "B" and whole.ndim == 1 else whole.cast("B")
        state, bad_slots = choose_slot(
            view[:SLOT_ENCODED_BYTES],
            view[SLOT_BYTES : SLOT_BYTES + SLOT_ENCODED_BYTES],
            class_index,
            seeds,
            version,
        )
        data_size = data_size_for(len(view))
        data = view[DATA_OFFSET : DATA_OFFSET + data_size]
        try:
            return _recover(data, class_index, state, bad_slots, seeds)
        finally:
            data.release()
            if view is not whole:
                view.release()


def _recover(
    data: memoryview, class_index: int, state: SlotState | None, bad_slots: int, seeds: Seeds
) -> Recovery:
    if state is None:
        found = scan_records(data, class_index, seeds)
        if not found:
            return Recovery((), 0, INITIAL_SEQ, 0, 0, 0, bad_slots, True)
        (head_pos, head_seq), hint_seq = start_from(found)
        generation = max(f[1].stamp for f in found) + 2
        got = walk(data, class_index, head_pos, head_seq, hint_seq, header_valid=False, seeds=seeds)
        # Unknown; records turned up, so the file was in use: assume it was
        # prepared (an empty ring is zero-filled again, which is always safe).
        return _result(got, generation, len(data), bad_slots, header_lost=True)
    # +2: a record written just before a kill carries stamp generation + 1.
    generation = state.generation + 2
    got = walk(
        data,
        class_index,
        state.head_pos,
        state.head_seq,
        state.tail_seq,
        header_valid=True,
        seeds=seeds,
        hint_pos=state.tail_pos,
    )
    if got.troubled:
        # Headers first (their own checksum), payloads hashed only for the few
        # records the choice depends on: hashing every payload doubled the open
        # of a damaged 2 GiB spill (bench/bench_spill.py). Same result as
        # start_from over the fully checked scan.
        cands = scan_records(data, class_index, seeds, payloads=False)
        lazily = _start_lazily(data, cands, seeds)
        if lazily is not None:
            newer, newer_hint, newest = lazily
            if newest > state.generation and newer[1] > state.head_seq:
                generation = max(generation, newest + 2)
                hint = max(state.tail_seq, newer_hint)
                got = walk(
                    data, class_index, newer[0], newer[1], hint, header_valid=False, seeds=seeds
                )
    return _result(got, generation, state.prepared, bad_slots, header_lost=False)


def _result(
    got: Walk, generation: int, prepared: int, bad_slots: int, *, header_lost: bool
) -> Recovery:
    return Recovery(
        records=got.records,
        tail_pos=got.tail_pos,
        tail_seq=got.tail_seq,
        generation=generation,
        prepared=prepared,
        corrupt_records=got.corrupt_records,
        torn_header_slots=bad_slots,
        header_lost=header_lost,
        corrupt_events=got.corrupt_events,
        corrupt_bytes=got.corrupt_bytes,
        damage=tuple((DATA_OFFSET + pos, n) for pos, n in got.damage),
    )


def _start_lazily(
    data: memoryview, cands: list[tuple[int, RecordHeader]], seeds: Seeds
) -> tuple[tuple[int, int], int, int] | None:
    """`start_from` and the newest stamp over the records of `cands` whose payload
    is sound, hashing only until each answer is found. None: no sound record."""
    checked: dict[int, bool] = {}

    def sound(i: int) -> bool:
        if i not in checked:
            rel, hdr = cands[i]
            checked[i] = record_crc_ok(data, rel, hdr, seeds)
        return checked[i]

    order = range(len(cands))
    newest_i = next((i for i in sorted(order, key=lambda i: -cands[i][1].stamp) if sound(i)), None)
    if newest_i is None:
        return None
    newest = cands[newest_i][1]
    live = sorted(
        (i for i in order if cands[i][1].seq >= newest.floor),
        key=lambda i: (cands[i][1].seq, -cands[i][1].stamp),
    )
    start_i = next(i for i in live if sound(i))  # the newest itself is live and sound
    top_i = next(i for i in sorted(order, key=lambda i: -cands[i][1].seq) if sound(i))
    rel, hdr = cands[start_i]
    return (rel, hdr.seq), cands[top_i][1].seq + 1, newest.stamp


def scan_records(
    data: memoryview, class_index: int, seeds: Seeds = FIXED_SEEDS, *, payloads: bool = True
) -> list[tuple[int, RecordHeader]]:
    """Every valid batch piece in the data region, in file order (one pass).
    `payloads=False`: a sound header is enough (the payload is not hashed)."""
    found: list[tuple[int, RecordHeader]] = []
    size = len(data)
    budget = _Budget(_HASH_BUDGET_REGIONS * size)
    pos = 0
    while pos < size:
        hit = find_valid(data, class_index, pos, size - pos, -1, budget, seeds, payloads=payloads)
        if hit is None:
            break
        rel, hdr = hit
        found.append((rel, hdr))
        # Unchecked, its payload may be torn and hide sound records: look
        # inside it too (the full check steps past a record it proved sound).
        pos = rel + record_span(hdr.length) if payloads else rel + ALIGN
    return found


def start_from(found: list[tuple[int, RecordHeader]]) -> tuple[tuple[int, int], int]:
    """Where a walk over scanned records starts (pos, seq), and a tail seq hint above
    them all.

    The newest write (highest stamp) knew the head at its time (its floor): the
    walk starts at the first valid record at or after that floor. Records
    released after that write come back once more (duplicates, never a loss)."""
    newest = max(found, key=lambda f: f[1].stamp)[1]
    live = [f for f in found if f[1].seq >= newest.floor]
    rel, hdr = min(live, key=lambda f: (f[1].seq, -f[1].stamp))
    return (rel, hdr.seq), max(f[1].seq for f in found) + 1


class _Runs:
    """Pieces gathered into runs as the walk accepts them."""

    __slots__ = ("out", "pos", "seq", "count", "length", "pieces", "span", "open")

    def __init__(self) -> None:
        self.out: list[LiveRecord] = []
        self.open = False
        self.pos = self.seq = self.count = self.length = self.pieces = self.span = 0

    def add(self, pos: int, hdr: RecordHeader, span: int) -> None:
        """A sound piece with the expected seq at the expected position."""
        if not self.open:
            self.pos, self.seq = pos, hdr.seq
            self.count = self.length = self.pieces = self.span = 0
            self.open = True
        self.count += hdr.count
        self.length += hdr.length
        self.pieces += 1
        self.span += span
        if hdr.more == 0:
            self.close()

    def close(self) -> None:
        if self.open:
            self.out.append(
                LiveRecord(self.pos, self.seq, self.count, self.length, self.pieces, self.span)
            )
            self.open = False


def walk(
    data: memoryview,
    class_index: int,
    head_pos: int,
    head_seq: int,
    hint_seq: int,
    *,
    header_valid: bool,
    seeds: Seeds = FIXED_SEEDS,
    hint_pos: int | None = None,
) -> Walk:
    """The live runs from the durable head, one pass at most.

    Demands exactly the expected seq at exactly the next position, piece by
    piece. Where that fails for a reason other than the clean end of the chain
    (the header said more pieces follow, the piece there is torn, or the header
    was lost), it resynchronises by scanning forward for the next valid piece
    with a seq beyond the last good one, and counts what it skipped by seq, by
    events where the damaged piece's header survived, and by bytes."""
    size = len(data)
    runs = _Runs()
    pos, expect = head_pos, head_seq
    last_good = head_seq - 1
    traveled = 0  # distance from head_pos around the circle: the walk stops at size
    budget = _Budget(_HASH_BUDGET_REGIONS * size)
    scan_complete = True
    troubled = False
    lost = lost_events = lost_bytes = 0
    damage: list[tuple[int, int]] = []
    while traveled < size:
        if size - pos < REC_HDR:
            runs.close()
            traveled += size - pos
            pos = 0
            continue
        hdr = decode_record_header(data, pos, class_index, seeds)
        torn = False
        if hdr is not None and hdr.seq == expect:
            if hdr.kind == KIND_SKIP:
                step = REC_HDR + hdr.length
                fits = pos + step <= size and traveled + step <= size
                if fits and record_crc_ok(data, pos, hdr, seeds):
                    runs.close()
                    traveled += step
                    pos = 0 if pos + step == size else pos + step
                    continue
            else:
                span = record_span(hdr.length)
                fits = pos + span <= size and traveled + span <= size
                if fits and record_crc_ok(data, pos, hdr, seeds):
                    runs.add(pos, hdr, span)
                    traveled += span
                    pos += span
                    expect = last_good = hdr.seq
                    expect += 1
                    continue
                lost_events += hdr.count
            torn = True  # the piece we expected is here but damaged
        if not (torn or expect < hint_seq or not header_valid):
            break  # the clean end of the chain: the header's tail hint is exact
        troubled = True
        runs.close()
        hit = find_valid(data, class_index, pos, size - traveled, last_good, budget, seeds)
        if hit is None:
            scan_complete = budget.left > 0
            if expect < hint_seq:
                # Nothing sound up to the tail the header knew: count those bytes.
                gap = (hint_pos - pos) % size if hint_pos is not None else 0
                lost_bytes += gap
                if len(damage) < _DAMAGE_KEPT:
                    damage.append((pos, gap))
            break
        rel, hdr = hit
        lost += hdr.seq - expect
        gap = (rel - pos) % size
        lost_bytes += gap
        if len(damage) < _DAMAGE_KEPT:
            damage.append((pos, gap))
        span = record_span(hdr.length)
        traveled += gap + span
        runs.add(rel, hdr, span)
        pos = rel + span
        expect = last_good = hdr.seq
        expect += 1
    runs.close()
    pos = normalize(size, pos)
    if expect < hint_seq:
        lost += hint_seq - expect
        troubled = True
    # Reusing seqs below the hint is safe only when a complete scan proved that
    # no valid record with such a seq is left anywhere in the free space.
    tail_seq = expect if header_valid and scan_complete else max(expect, hint_seq)
    return Walk(
        tuple(runs.out), pos, tail_seq, lost, troubled, lost_events, lost_bytes, tuple(damage)
    )


def find_valid(
    data: memoryview,
    class_index: int,
    start: int,
    window: int,
    last_good: int,
    budget: _Budget,
    seeds: Seeds = FIXED_SEEDS,
    *,
    payloads: bool = True,
) -> tuple[int, RecordHeader] | None:
    """First valid batch piece with seq > last_good lying wholly within the
    `window` bytes that follow `start` around the circle. The magic is found at C
    speed; only 8-aligned hits with a sound header are hashed, and a hit whose
    body would exceed what `budget` has left ends the search (budget.left = 0)."""
    size = len(data)
    segments = [(start, min(size, start + window))]
    if start + window > size:
        segments.append((0, start + window - size))
    for lo, hi in segments:
        i = lo
        while i + REC_HDR <= hi:
            match = _MAGIC.search(data, i, hi)
            if match is None:
                break
            rel = match.start()
            del match  # it holds the view: the mapping cannot close while it lives
            if rel % ALIGN:
                i = rel - rel % ALIGN + ALIGN
                continue
            i = rel + ALIGN
            hdr = decode_record_header(data, rel, class_index, seeds)
            if hdr is None or hdr.kind != KIND_BATCH or hdr.seq <= last_good:
                continue
            if rel + record_span(hdr.length) > hi:
                continue
            if not payloads:
                return rel, hdr
            if budget.left < hdr.length:
                budget.left = 0
                return None
            budget.left -= hdr.length
            if record_crc_ok(data, rel, hdr, seeds):
                return rel, hdr
    return None
