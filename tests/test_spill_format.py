"""agent/spill/format.py: header slots, records and checksums as bytes, and the
placement arithmetic (where a record goes in the circle) against a byte model."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from agent.spill.format import (
    ALIGN,
    DATA_OFFSET,
    KIND_BATCH,
    REC_HDR,
    SLOT_ENCODED_BYTES,
    Placement,
    SlotState,
    choose_slot,
    data_size_for,
    decode_record_header,
    decode_slot,
    encode_record,
    encode_skip,
    encode_slot,
    max_span_for,
    normalize,
    place_back,
    place_front,
    record_crc_ok,
    record_span,
    used_bytes,
)

# ------------------------------------------------------------ slots and records

slot_states = st.builds(
    SlotState,
    class_index=st.integers(0, 3),
    generation=st.integers(1, 2**64 - 1),
    file_size=st.just(DATA_OFFSET + 65536),
    data_offset=st.just(DATA_OFFSET),
    data_size=st.just(65536),
    head_pos=st.integers(0, 8191).map(lambda x: x * 8),
    head_seq=st.integers(0, 2**40),
    tail_pos=st.integers(0, 8191).map(lambda x: x * 8),
    tail_seq=st.integers(2**40, 2**41),
    prepared=st.integers(0, 8192).map(lambda x: x * 8),
)


@given(slot_states)
def test_slot_round_trip(state: SlotState) -> None:
    encoded = encode_slot(state)
    assert len(encoded) == SLOT_ENCODED_BYTES
    assert decode_slot(encoded, state.class_index) == state
    assert decode_slot(encoded, (state.class_index + 1) % 4) is None  # another class's file


def test_every_single_byte_corruption_of_a_slot_is_detected() -> None:
    state = SlotState(2, 7, DATA_OFFSET + 65536, DATA_OFFSET, 65536, 800, 5000, 1600, 5009, 65536)
    good = encode_slot(state)
    for at in range(len(good)):
        for flip in range(1, 256):
            bad = bytearray(good)
            bad[at] ^= flip
            assert decode_slot(bytes(bad)) is None, (at, flip)


def test_zero_and_short_slots_are_invalid() -> None:
    assert decode_slot(bytes(SLOT_ENCODED_BYTES)) is None
    assert decode_slot(b"") is None
    assert choose_slot(b"", bytes(100)) == (None, 2)


def test_torn_slot_at_every_byte_offset_falls_back_to_the_other_slot() -> None:
    # Slot A held generation 5, slot B generation 6; generation 7 is being
    # written over slot A when the power goes: A holds a prefix of 7 and the rest
    # of 5. Whatever the cut, the result is a real state, never a mixture.
    def state(gen: int) -> SlotState:
        return SlotState(
            1, gen, DATA_OFFSET + 65536, DATA_OFFSET, 65536, gen * 64, gen, 4096, 100, 65536
        )

    old, other, new = encode_slot(state(5)), encode_slot(state(6)), encode_slot(state(7))
    for cut in range(SLOT_ENCODED_BYTES + 1):
        torn = new[:cut] + old[cut:]
        best, bad = choose_slot(torn, other, 1)
        if torn == new:
            assert best == state(7) and bad == 0
        else:
            assert best == state(6), cut
            assert bad == (0 if torn == old else 1), cut


@given(
    seq=st.integers(0, 2**64 - 1),
    count=st.integers(1, 2**32 - 1),
    cls=st.integers(0, 3),
    payload=st.binary(min_size=1, max_size=300),
)
def test_record_round_trip(seq: int, count: int, cls: int, payload: bytes) -> None:
    rec = encode_record(seq=seq, floor=seq, stamp=9, class_index=cls, count=count, payload=payload)
    assert len(rec) == record_span(len(payload)) and len(rec) % 8 == 0
    hdr = decode_record_header(rec, 0, cls)
    assert hdr is not None and record_crc_ok(rec, 0, hdr)
    assert (hdr.seq, hdr.count, hdr.length, hdr.kind) == (seq, count, len(payload), KIND_BATCH)
    assert rec[REC_HDR : REC_HDR + len(payload)] == payload
    assert decode_record_header(rec, 0, (cls + 1) % 4) is None


def test_every_single_byte_corruption_of_a_record_is_detected() -> None:
    payload = bytes(range(61))
    good = encode_record(seq=77, floor=70, stamp=3, class_index=0, count=5, payload=payload)
    covered = REC_HDR + len(payload)  # the padding after the payload carries nothing
    for at in range(covered):
        for flip in (0x01, 0x80, 0xFF, 0x5A):
            bad = bytearray(good)
            bad[at] ^= flip
            hdr = decode_record_header(bytes(bad), 0)
            assert hdr is None or not record_crc_ok(bytes(bad), 0, hdr), (at, flip)


def test_checksum_covers_the_seq() -> None:
    # A record from an earlier lap with its seq field rewritten to the one the
    # walk expects must not pass (the header crc and the record crc both cover it).
    rec = bytearray(encode_record(seq=10, floor=10, stamp=1, class_index=0, count=1, payload=b"x"))
    rec[8:16] = (11).to_bytes(8, "little")
    hdr = decode_record_header(bytes(rec), 0)
    assert hdr is None or not record_crc_ok(bytes(rec), 0, hdr)


def test_zero_bytes_and_zero_lengths_are_rejected() -> None:
    assert decode_record_header(bytes(REC_HDR), 0) is None
    skip = encode_skip(seq=5, stamp=1, class_index=0, skip=0)
    hdr = decode_record_header(skip, 0)
    assert hdr is not None and record_crc_ok(skip, 0, hdr)  # a skip of 0 bytes is legal


# ------------------------------------------------------------------ placement


def test_geometry_helpers() -> None:
    assert data_size_for(DATA_OFFSET + 65536) == 65536
    assert data_size_for(DATA_OFFSET + 65536 + 7) == 65536  # whole 8-byte units
    assert max_span_for(65536) == 65536 - REC_HDR
    assert normalize(4096, 4096 - REC_HDR) == 4096 - REC_HDR
    assert normalize(4096, 4096 - REC_HDR + 8) == 0  # no room for an item header: wrap
    assert normalize(4096, 4096) == 0
    assert used_bytes(4096, 800, 800, empty=True) == 0
    assert used_bytes(4096, 800, 800, empty=False) == 4096  # full
    assert used_bytes(4096, 800, 1600, empty=False) == 800
    assert used_bytes(4096, 1600, 800, empty=False) == 4096 - 800  # wrapped


def test_empty_ring_starts_over_at_zero() -> None:
    assert place_back(4096, 2048, 2048, 4000, empty=True) == Placement(0, -1, 0)


def test_back_wraps_behind_a_skip_or_an_implicit_wrap() -> None:
    # live [1600, 3000): a 1200-byte span does not fit before the end -> 0, with a
    # skip item at the old tail covering the rest of the region
    assert place_back(4096, 1600, 3000, 1200, empty=False) == Placement(0, 3000, 4096 - 3000 - 48)
    # fewer than REC_HDR bytes left after the tail: the wrap is implicit, no skip
    assert place_back(4096, 1000, 4056, 200, empty=False) == Placement(0, -1, 0)
    assert place_back(4096, 1000, 3000, 1200, empty=False) is None  # 1096 left, 1000 ahead
    # neither before the end nor in front of the head: no room
    assert place_back(4096, 500, 3000, 1200, empty=False) is None


def test_front_goes_below_the_head_or_to_the_end_of_the_region() -> None:
    assert place_front(4096, 2000, 3000, 1000) == Placement(1000, -1, 0)
    assert place_front(4096, 1000, 3000, 1000) == Placement(0, -1, 0)
    # below the head would leave a 16-byte boundary: at the end, [0, head) skipped
    assert place_front(4096, 1016, 2000, 1000) == Placement(3096, 0, 1016 - 48)
    assert place_front(4096, 1016, 3500, 1000) is None  # not enough at the end either
    # wrapped: only [tail, head) is free
    assert place_front(4096, 3000, 1000, 1500) == Placement(1500, -1, 0)
    assert place_front(4096, 3000, 1000, 2500) is None


class _Circle:
    """A byte model of the data region: which bytes live records and skip items hold."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.records: list[tuple[int, int]] = []  # (pos, span), oldest first
        self.head = self.tail = 0

    def covered(self) -> set[int]:
        return {b for pos, span in self.records for b in range(pos, pos + span)}

    def check_item(self, pos: int, length: int) -> None:
        assert pos % ALIGN == 0 and pos >= 0 and pos + length <= self.size
        assert not (set(range(pos, pos + length)) & self.covered()), "overwrites a live record"

    def check_boundaries(self) -> None:
        for pos, span in self.records:
            assert pos == 0 or pos >= REC_HDR
            end = normalize(self.size, pos + span)
            assert end == 0 or REC_HDR <= end <= self.size - REC_HDR


@settings(max_examples=300)
@given(
    size=st.sampled_from([4096, 6144, 12288]),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["back", "front", "release"]),
            # spans of 512 and 1024 tile the regions exactly: tight fits and full rings
            st.one_of(st.sampled_from([464, 976, 1976]), st.integers(1, 12000)),
        ),
        max_size=60,
    ),
)
def test_placements_never_overlap_live_bytes(size: int, ops: list[tuple[str, int]]) -> None:
    """Any sequence of appends, prepends and releases: a placement never overlaps a
    live record, stays inside the region, keeps every boundary legal, and says
    "no room" only when the free bytes really are too few (or too fragmented)."""
    c = _Circle(size)
    for op, length in ops:
        span = record_span(min(length, max_span_for(size) - REC_HDR))
        empty = not c.records
        free = size - used_bytes(size, c.head, c.tail, empty=empty)
        if op == "release":
            if c.records:
                c.records.pop(0)
                c.head = c.records[0][0] if c.records else c.tail
            continue
        if op == "front" and not empty:
            place = place_front(size, c.head, c.tail, span)
            if place is None:
                assert free < 2 * span + REC_HDR
                continue
            c.check_item(place.pos, span)
            if place.skip_at >= 0:
                assert place.skip_at == 0 and place.skip_length == c.head - REC_HDR
                c.check_item(place.skip_at, REC_HDR + place.skip_length)
                assert normalize(size, place.pos + span) == 0  # at the very end
            c.records.insert(0, (place.pos, span))
            c.head = place.pos
        else:
            place = place_back(size, c.head, c.tail, span, empty=empty)
            if place is None:
                assert c.records and free < 2 * span
                continue
            c.check_item(place.pos, span)
            if place.skip_at >= 0:
                assert place.pos == 0 and place.skip_at == c.tail
                assert place.skip_at + REC_HDR + place.skip_length == size  # to the end
                c.check_item(place.skip_at, REC_HDR + place.skip_length)
            elif place.pos == 0 and not empty:
                assert size - c.tail < REC_HDR or c.tail == 0  # implicit wrap
            c.records.append((place.pos, span))
            c.tail = normalize(size, place.pos + span)
            if empty:
                c.head = place.pos
        c.check_boundaries()
        assert used_bytes(size, c.head, c.tail, empty=False) >= sum(s for _, s in c.records)


def test_the_largest_span_fits_an_empty_ring_and_nothing_fits_a_full_one() -> None:
    for size in (4096, 65536):
        span = max_span_for(size)
        assert place_back(size, 0, 0, span, empty=True) == Placement(0, -1, 0)
        assert place_back(size, 800, 800, 8, empty=False) is None  # head == tail: full
        assert place_front(size, 800, 800, 8) is None
