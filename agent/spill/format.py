"""The spill ring's on-disk format: header slots, records and where they go, as bytes.

Everything that decides what the bytes of a ring file mean lives in this module:
the file layout, the header slot encoding, the record and skip item encoding,
the checksums that tell a sound slot or record from a torn, corrupt or foreign
one, and the placement arithmetic (where the next record goes in the circle,
when it wraps behind a skip item). It is pure: bytes and numbers in, values and
bytes out. It opens no file, maps nothing and reads no clock; `ring.py`
(`SpillRing`) is the only code that puts these bytes in a file, `recover.py`
the code that walks a found (possibly damaged) file.

Seeds and granularity (format version 2): every checksum is seeded from the
installation's secret (`seeds_from_secret`, the store keeps it in the spill
dir), so a record planted by someone who can write the dir but never read the
secret fails its checksum. One spilled chunk is written as a *run* of small
records (pieces) of at most `PIECE_BYTES` payload each, every piece with its own
header and checksum: damage costs only the pieces it hits (a few KiB, ~30
events of 120 bytes), never the whole 256 KiB chunk. Version 1 (one record per
chunk, fixed seeds) is still decoded here, for the conversion at start
(store.py).

File layout (little-endian, every offset 8-byte aligned)::

    [0, 4096)      header slot A   } written alternately; the valid slot with the
    [4096, 8192)   header slot B   } highest generation wins (one page each, so a
                                     torn page write can only hit one slot)
    [8192, end)    data region: a circle of items, never split at its end
        batch item: a run of pieces back to back, each a 48-byte record header +
                    payload, padded to 8 bytes; `more` in a piece's header
                    says how many pieces of its run follow it
        skip item:  48-byte record header; the reader jumps over `length` more
                    bytes (a wrap marker when it reaches the end of the region,
                    or the hole push_front leaves at the start of the region)
        fewer than 48 bytes left before the end: an implicit wrap to offset 0

Promises:
- Decoding never raises for bad bytes: a torn, corrupt, foreign (another
  class's, another version's) or inconsistent slot or record header decodes to
  None, and a payload that fails its checksum makes `record_crc_ok` False.
- Every checksum is seeded, with a distinct seed per use (FACTS: the mmh3
  zero-seed trap), so all-zero bytes never validate and a slot never validates
  as a record header or the other way round.
- A record's crc covers its seq and every header field and is written last
  (`seal_record`), so a record cut short by a crash fails it and a partial write
  cannot relabel a stale record (recover.py's invariants rely on this).
- Hashing accepts a memoryview of the mapping and copies nothing.
"""

from __future__ import annotations

import bisect
import dataclasses
import struct
from collections.abc import Callable, Sequence

import mmh3

Buffer = bytes | bytearray | memoryview


def _hash32_mmh3_v4(key: Buffer, seed: int) -> int:  # pragma: no cover - mmh3 4.x
    return mmh3.hash_from_buffer(key, seed, signed=False)


# mmh3 5.x's buffer hash; mmh3 4.x (setup.cfg allows it) only has hash_from_buffer.
# Both accept a memoryview of the mapping, so hashing a record copies nothing
# (mmh3.hash itself refuses memoryviews).
_hash32: Callable[[Buffer, int], int] = getattr(mmh3, "mmh3_32_uintdigest", _hash32_mmh3_v4)


FORMAT_VERSION = 2
FORMAT_V1 = 1  # one record per chunk, fixed seeds: converted at start (store.py)
ALIGN = 8
SLOT_BYTES = 4096  # one page per header slot
DATA_OFFSET = 2 * SLOT_BYTES
# Smallest data region we accept: enough for a few records in tests; the store
# never asks for less than 64 KiB per ring.
MIN_DATA_BYTES = 4096
# Seqs start high so push_front (which counts down) can never go below zero.
INITIAL_SEQ = 1 << 32

# Checksum seeds: any non-zero values (FACTS: mmh3.hash(b"", 0) == 0, so an
# all-zero slot or record would pass an unseeded checksum). Distinct per use so a
# slot can never validate as a record header or the other way round.
SLOT_SEED = 0x3C6E_F372
RECORD_SEED = 0x9E37_79B9
RECORD_HEADER_SEED = 0x7F4A_7C15

# A piece's payload at most (its ends array and event bytes): damage costs one
# piece, so this is the granularity of loss. 4 KiB: one flash page; the 48-byte
# header costs 1.2% of the disk; a 256 KiB chunk is a run of ~64 pieces. A piece
# holds at least one event, so one larger event is a piece of its own.
PIECE_BYTES = 4096
# A piece's payload starts with the run offset of its first event (u32): the
# ends that follow are relative to the run's start, so an intact run reads back
# without rebasing, and a run cut by damage is rebased from it.
PIECE_PREFIX = 4
# `more` is a u16: a run has at most this many pieces.
MAX_RUN_PIECES = 0x1_0000


@dataclasses.dataclass(frozen=True, slots=True)
class Seeds:
    """The three checksum seeds of one installation (or the fixed ones of version 1)."""

    slot: int
    record: int
    header: int


# Version 1's seeds, and the default of the pure functions (tests, tools).
FIXED_SEEDS = Seeds(SLOT_SEED, RECORD_SEED, RECORD_HEADER_SEED)
SECRET_BYTES = 16


def seeds_from_secret(secret: bytes) -> Seeds:
    """Seeds derived from an installation's random secret; never zero, all distinct."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a spill seed secret is {SECRET_BYTES} bytes, got {len(secret)}")
    got: list[int] = []
    for base in (SLOT_SEED, RECORD_SEED, RECORD_HEADER_SEED):
        seed = _hash32(secret, base) or 1
        while seed in got:
            seed = (seed + 1) & 0xFFFF_FFFF or 1
        got.append(seed)
    return Seeds(*got)


# ---------------------------------------------------------------- header slot

SLOT_MAGIC = b"EAGSPILL"
# magic, version, class, generation, file_size, data_offset, data_size,
# head_pos, head_seq, tail_pos, tail_seq, prepared; then the u32 checksum of all that.
_SLOT = struct.Struct("<8sIIQQQQQQQQQ")
_U32 = struct.Struct("<I")
SLOT_ENCODED_BYTES = _SLOT.size + _U32.size  # 92


@dataclasses.dataclass(frozen=True)
class SlotState:
    """What one header slot says: the ring's geometry and its durable front."""

    class_index: int
    generation: int  # +1 per header write; the newest valid slot wins
    file_size: int
    data_offset: int
    data_size: int
    head_pos: int  # oldest unreleased record, relative to data_offset
    head_seq: int
    tail_pos: int  # a hint: the walk at open finds the real tail
    tail_seq: int  # every record ever written has seq < tail_seq
    prepared: int  # data bytes zero-filled at creation (< data_size: creation was cut short)


def encode_slot(
    state: SlotState, seeds: Seeds = FIXED_SEEDS, version: int = FORMAT_VERSION
) -> bytes:
    body = _SLOT.pack(
        SLOT_MAGIC,
        version,
        state.class_index,
        state.generation,
        state.file_size,
        state.data_offset,
        state.data_size,
        state.head_pos,
        state.head_seq,
        state.tail_pos,
        state.tail_seq,
        state.prepared,
    )
    return body + _U32.pack(_hash32(body, seeds.slot))


def decode_slot(
    buf: Buffer,
    class_index: int | None = None,
    seeds: Seeds = FIXED_SEEDS,
    version: int = FORMAT_VERSION,
) -> SlotState | None:
    """The slot's state, or None when it is torn, corrupt, foreign (another class,
    installation or version) or inconsistent."""
    if len(buf) < SLOT_ENCODED_BYTES:
        return None
    body = bytes(buf[: _SLOT.size])
    (crc,) = _U32.unpack_from(buf, _SLOT.size)
    if _hash32(body, seeds.slot) != crc:
        return None
    magic, ver, cls, gen, fsize, doff, dsize, hpos, hseq, tpos, tseq, prep = _SLOT.unpack(body)
    if magic != SLOT_MAGIC or ver != version or gen == 0:
        return None
    if class_index is not None and cls != class_index:
        return None
    if doff != DATA_OFFSET or dsize < MIN_DATA_BYTES or dsize % ALIGN or fsize < doff + dsize:
        return None
    if hpos >= dsize or tpos >= dsize or hpos % ALIGN or tpos % ALIGN or hseq > tseq:
        return None
    if prep > dsize:
        return None
    return SlotState(cls, gen, fsize, doff, dsize, hpos, hseq, tpos, tseq, prep)


def choose_slot(
    slot_a: Buffer,
    slot_b: Buffer,
    class_index: int | None = None,
    seeds: Seeds = FIXED_SEEDS,
    version: int = FORMAT_VERSION,
) -> tuple[SlotState | None, int]:
    """(newest valid slot or None, number of invalid slots)."""
    states = [
        decode_slot(slot_a, class_index, seeds, version),
        decode_slot(slot_b, class_index, seeds, version),
    ]
    valid = [s for s in states if s is not None]
    best = max(valid, key=lambda s: s.generation) if valid else None
    return best, 2 - len(valid)


# --------------------------------------------------------------------- records

RECORD_MAGIC = b"\xf7sR\x01"  # 0xf7 (CBOR "undefined") keeps it rare in event bytes
KIND_BATCH = 1
KIND_SKIP = 2
# magic, crc, seq, floor, stamp, length, count, class, kind, more, hcrc
#   crc   covers [8, 48 + payload) - the seq and every header field included
#   floor the ring's head seq when the record was written (used only when both
#         header slots are lost, to tell live records from released ones)
#   stamp the header generation that follows this write (newest write wins)
#   more  pieces of the same run that follow this one (version 1: always 0)
#   hcrc  covers [8, 44): lets a resync reject a look-alike header without
#         hashing the length it claims
_REC = struct.Struct("<4sIQQQIIBBHI")
REC_HDR = _REC.size  # 48
_HCRC_AT = 44
_CRC_AT = 4
_COVER_FROM = 8


@dataclasses.dataclass(frozen=True, slots=True)
class RecordHeader:
    seq: int
    floor: int
    stamp: int
    length: int  # payload bytes (batch) or bytes skipped after the header (skip)
    count: int  # events in the batch; 0 for a skip
    class_index: int
    kind: int
    crc: int
    more: int = 0  # pieces of the same run after this one


def record_span(length: int) -> int:
    """Bytes a batch record with `length` payload bytes occupies in the ring."""
    return (REC_HDR + length + ALIGN - 1) & ~(ALIGN - 1)


def pack_record_header(
    buf: memoryview | bytearray,
    off: int,
    *,
    seq: int,
    floor: int,
    stamp: int,
    length: int,
    count: int,
    class_index: int,
    kind: int,
    more: int = 0,
    seeds: Seeds = FIXED_SEEDS,
) -> None:
    """Writes a record header with its hcrc; the crc stays 0 until `seal_record`."""
    _REC.pack_into(
        buf, off, RECORD_MAGIC, 0, seq, floor, stamp, length, count, class_index, kind, more, 0
    )
    hcrc = _hash32(buf[off + _COVER_FROM : off + _HCRC_AT], seeds.header)
    _U32.pack_into(buf, off + _HCRC_AT, hcrc)


def seal_record(
    buf: memoryview | bytearray, off: int, covered: int, seeds: Seeds = FIXED_SEEDS
) -> None:
    """Writes the crc over the header fields and `covered` payload bytes. Written last,
    so a record cut short by a crash fails its checksum."""
    crc = _hash32(buf[off + _COVER_FROM : off + REC_HDR + covered], seeds.record)
    _U32.pack_into(buf, off + _CRC_AT, crc)


def decode_record_header(
    buf: Buffer, off: int, class_index: int | None = None, seeds: Seeds = FIXED_SEEDS
) -> RecordHeader | None:
    """The header at `off` if it is structurally sound and its hcrc matches (the
    payload crc is checked separately by `record_crc_ok`)."""
    if off < 0 or off + REC_HDR > len(buf):
        return None
    magic, crc, seq, floor, stamp, length, count, cls, kind, more, hcrc = _REC.unpack_from(buf, off)
    if magic != RECORD_MAGIC:
        return None
    if class_index is not None and cls != class_index:
        return None
    if kind == KIND_BATCH:
        # Zero lengths are rejected (FACTS: the mmh3 zero-seed trap makes empty
        # things dangerous), and a batch was always written at or after the head.
        if length == 0 or count == 0 or floor > seq:
            return None
    elif kind != KIND_SKIP or count != 0 or more != 0:
        return None
    if _hash32(buf[off + _COVER_FROM : off + _HCRC_AT], seeds.header) != hcrc:
        return None
    return RecordHeader(seq, floor, stamp, length, count, cls, kind, crc, more)


def record_crc_ok(buf: Buffer, off: int, hdr: RecordHeader, seeds: Seeds = FIXED_SEEDS) -> bool:
    covered = hdr.length if hdr.kind == KIND_BATCH else 0
    end = off + REC_HDR + covered
    if end > len(buf):
        return False
    return _hash32(buf[off + _COVER_FROM : end], seeds.record) == hdr.crc


def encode_record(
    *,
    seq: int,
    floor: int,
    stamp: int,
    class_index: int,
    count: int,
    payload: Buffer,
    more: int = 0,
    seeds: Seeds = FIXED_SEEDS,
) -> bytes:
    """A whole batch record, padded to its span (what `SpillRing` writes in place)."""
    length = len(payload)
    buf = bytearray(record_span(length))
    pack_record_header(
        buf,
        0,
        seq=seq,
        floor=floor,
        stamp=stamp,
        length=length,
        count=count,
        class_index=class_index,
        kind=KIND_BATCH,
        more=more,
        seeds=seeds,
    )
    buf[REC_HDR : REC_HDR + length] = payload
    seal_record(buf, 0, length, seeds)
    return bytes(buf)


def encode_skip(
    *, seq: int, stamp: int, class_index: int, skip: int, seeds: Seeds = FIXED_SEEDS
) -> bytes:
    """A skip item's header; the reader continues `skip` bytes after it."""
    buf = bytearray(REC_HDR)
    pack_record_header(
        buf,
        0,
        seq=seq,
        floor=seq,
        stamp=stamp,
        length=skip,
        count=0,
        class_index=class_index,
        kind=KIND_SKIP,
        seeds=seeds,
    )
    seal_record(buf, 0, 0, seeds)
    return bytes(buf)


# ------------------------------------------------------------------- placement
#
# Where items go in the data region's circle, as arithmetic on positions
# relative to the data region (`SpillRing` calls these and writes the bytes).
# Invariant kept by every placement: an item boundary is 0 or >= REC_HDR bytes
# into the region, and no record is split at the end of the region, so a skip
# item always fits in front of a boundary and a reader never needs to wrap
# inside an item.


def data_size_for(file_size: int) -> int:
    """The data region of a file of `file_size` bytes (whole 8-byte units)."""
    return (file_size - DATA_OFFSET) & ~(ALIGN - 1)


def max_span_for(data_size: int) -> int:
    """The largest record span a region holds: one header short of the region, so
    that a region never holds a single record that leaves no room for a skip."""
    return data_size - REC_HDR


def normalize(data_size: int, pos: int) -> int:
    """`pos` as the next item's start: fewer than REC_HDR bytes before the end of
    the region is an implicit wrap to 0."""
    return 0 if data_size - pos < REC_HDR else pos


def used_bytes(data_size: int, head: int, tail: int, *, empty: bool) -> int:
    """Bytes of the region held by live records (and the skips between them).
    head == tail means full unless the ring is empty."""
    if empty:
        return 0
    return (tail - head) % data_size or data_size


@dataclasses.dataclass(frozen=True, slots=True)
class Placement:
    """Where a new record goes, and the skip item that must accompany it."""

    pos: int  # the record's position
    skip_at: int  # a skip item's position, or -1 for none
    skip_length: int  # bytes the skip item jumps over after its own header


def place_back(data_size: int, head: int, tail: int, span: int, *, empty: bool) -> Placement | None:
    """Where a record of `span` bytes appended behind `tail` goes; None: no room now.

    Live bytes are [head, tail) around the circle (all of it when head == tail and
    the ring is not empty). An empty ring starts over at 0. A record that does not
    fit before the end of the region goes to 0 behind a skip item at the old tail
    (the wrap marker; implicit when fewer than REC_HDR bytes are left)."""
    if empty:
        head = tail = 0
    if not empty and tail <= head:  # wrapped (or full): room is [tail, head)
        if head - tail < span:
            return None
        return Placement(tail, -1, 0)
    if data_size - tail >= span:  # room is [tail, size) + [0, head)
        return Placement(tail, -1, 0)
    if head >= span:
        if data_size - tail >= REC_HDR:
            return Placement(0, tail, data_size - tail - REC_HDR)
        return Placement(0, -1, 0)
    return None


def place_front(data_size: int, head: int, tail: int, span: int) -> Placement | None:
    """Where a record of `span` bytes prepended in front of `head` goes (the ring is
    not empty); None: no room now.

    Right in front of the head when that leaves a legal boundary; otherwise, when
    the ring has not wrapped, at the very end of the region (an implicit wrap
    follows it) with [0, head) turned into a skip item."""
    below = head - span
    if tail <= head:  # wrapped (or full): room is [tail, head)
        if below < tail or 0 < below < REC_HDR:
            return None
        return Placement(below, -1, 0)
    if below == 0 or below >= REC_HDR:  # room is [tail, size) + [0, head)
        return Placement(below, -1, 0)
    if data_size - span >= tail:
        if head == 0:
            return Placement(data_size - span, -1, 0)
        if head < REC_HDR:  # cannot happen (boundaries are 0 or >= REC_HDR)
            return None
        return Placement(data_size - span, 0, head - REC_HDR)
    return None


# ---------------------------------------------------------------------- pieces


def piece_bounds(ends: Sequence[int], piece_bytes: int = PIECE_BYTES) -> list[int]:
    """Where the pieces of a run end, as event indexes: pieces are events
    [0, b0), [b0, b1), ..., each with a payload (prefix, 4 bytes per event, the
    events' bytes) of at most `piece_bytes`, or of one event when that alone is
    larger. `ends` are cumulative event end offsets (a chunk's ends array)."""
    n = len(ends)
    total = ends[-1] if n else 0
    # Never more pieces than `more` can count: a huge run gets larger pieces.
    piece_bytes = max(piece_bytes, -(-(total + (PIECE_PREFIX + 4) * n) // (MAX_RUN_PIECES // 2)))
    room = piece_bytes - PIECE_PREFIX
    out: list[int] = []
    a = 0
    base = 0
    while a < n:
        # The largest b with 4 (b - a) + ends[b-1] - base <= room, or near it:
        # the first guess ignores all but one ends entry, the second is feasible.
        b = bisect.bisect_right(ends, base + room - 4, a)
        b = bisect.bisect_right(ends, base + room - 4 * (b - a), a, b)
        b = max(b, a + 1)
        out.append(b)
        base = ends[b - 1]
        a = b
    return out
