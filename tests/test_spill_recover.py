"""agent/spill/recover.py: reading a ring file back, as a pure function of its bytes.

Images come from a model writer built on format.py alone (hypothesis against a
deque) and from real SpillRing files; every damage here is done to bytes in
memory, and `recover` runs on them without a file."""

from __future__ import annotations

import mmap
import random
from collections import deque

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from agent.spill.format import (
    DATA_OFFSET,
    INITIAL_SEQ,
    KIND_BATCH,
    MIN_DATA_BYTES,
    REC_HDR,
    SLOT_BYTES,
    SLOT_ENCODED_BYTES,
    SlotState,
    decode_record_header,
    decode_slot,
    encode_record,
    encode_skip,
    encode_slot,
    max_span_for,
    normalize,
    pack_record_header,
    place_back,
    place_front,
    record_crc_ok,
    record_span,
)
from agent.spill.recover import LiveRecord, Recovery, file_size_to_map, recover
from agent.spill.ring import SpillRing

from spill_images import (
    DATA,
    build_lapped_ring,
    damaged_by,
    deadline,
    drain,
    live_layout,
    payload_for,
    read_image,
    read_one,
)


def records_of(image: bytes | bytearray, found: Recovery) -> list[tuple[int, bytes, int]]:
    """(seq, payload, count) of every record `recover` adopted, read from the image."""
    out = []
    for r in found.records:
        at = DATA_OFFSET + r.pos + REC_HDR
        out.append((r.seq, bytes(image[at : at + r.length]), r.count))
    return out


def recovered(image: bytes | bytearray, class_index: int) -> list[tuple[int, bytes, int]]:
    with deadline(20):
        return records_of(image, recover(bytes(image), class_index))


# ------------------------------------------------------------ the model writer


class ImageWriter:
    """A ring writer over a bytearray made of format.py's functions alone, in the
    order SpillRing writes (record, its sealed crc, a skip, then a header slot).
    It keeps the model: the live records as a deque."""

    def __init__(self, data_size: int, class_index: int = 2) -> None:
        self.size = data_size
        self.cls = class_index
        self.image = bytearray(DATA_OFFSET + data_size)
        self.live: deque[tuple[int, int, bytes, int]] = deque()  # (pos, seq, payload, count)
        self.head_pos = self.tail_pos = 0
        self.head_seq = self.tail_seq = INITIAL_SEQ
        self.gen = 0
        self.write_header()
        self.write_header()

    def write_header(self) -> None:
        self.gen += 1
        state = SlotState(
            self.cls,
            self.gen,
            len(self.image),
            DATA_OFFSET,
            self.size,
            self.head_pos,
            self.head_seq,
            self.tail_pos,
            self.tail_seq,
            self.size,
        )
        off = (self.gen & 1) * SLOT_BYTES
        self.image[off : off + SLOT_ENCODED_BYTES] = encode_slot(state)

    def _put(self, pos: int, item: bytes) -> None:
        self.image[DATA_OFFSET + pos : DATA_OFFSET + pos + len(item)] = item

    def _set_head(self) -> None:
        if self.live:
            self.head_pos, self.head_seq = self.live[0][0], self.live[0][1]
        else:
            self.head_pos, self.head_seq = self.tail_pos, self.tail_seq

    def push_back(self, payload: bytes, count: int, *, header: bool = True) -> bool:
        span = record_span(len(payload))
        empty = not self.live
        place = place_back(self.size, self.head_pos, self.tail_pos, span, empty=empty)
        if place is None:
            return False
        seq = self.tail_seq
        floor = seq if empty else self.head_seq
        stamp = self.gen + 1
        self._put(
            place.pos,
            encode_record(
                seq=seq,
                floor=floor,
                stamp=stamp,
                class_index=self.cls,
                count=count,
                payload=payload,
            ),
        )
        if place.skip_at >= 0:
            skip = encode_skip(seq=seq, stamp=stamp, class_index=self.cls, skip=place.skip_length)
            self._put(place.skip_at, skip)
        self.tail_pos = normalize(self.size, place.pos + span)
        self.tail_seq = seq + 1
        self.live.append((place.pos, seq, payload, count))
        self._set_head()
        if header:
            self.write_header()
        return True

    def push_front(self, payload: bytes, count: int) -> bool:
        if not self.live:
            return self.push_back(payload, count)
        span = record_span(len(payload))
        place = place_front(self.size, self.head_pos, self.tail_pos, span)
        if place is None:
            return False
        seq = self.head_seq - 1
        stamp = self.gen + 1
        self._put(
            place.pos,
            encode_record(
                seq=seq, floor=seq, stamp=stamp, class_index=self.cls, count=count, payload=payload
            ),
        )
        if place.skip_at >= 0:
            skip = encode_skip(
                seq=self.head_seq, stamp=stamp, class_index=self.cls, skip=place.skip_length
            )
            self._put(place.skip_at, skip)
        self.live.appendleft((place.pos, seq, payload, count))
        self._set_head()
        self.write_header()
        return True

    def release(self, *, header: bool = True) -> None:
        self.live.popleft()
        self._set_head()
        if header:
            self.write_header()

    def model(self) -> list[tuple[int, bytes, int]]:
        return [(seq, payload, count) for _, seq, payload, count in self.live]


ops = st.lists(
    st.tuples(
        st.sampled_from(["back", "back", "front", "release"]),
        st.integers(1, 3000),
        st.integers(1, 1000),
    ),
    max_size=80,
)


def run_ops(w: ImageWriter, steps: list[tuple[str, int, int]]) -> None:
    for n, (op, size, count) in enumerate(steps):
        payload = payload_for(n, min(size, max_span_for(w.size) - REC_HDR))
        if op == "back":
            w.push_back(payload, count)
        elif op == "front":
            w.push_front(payload, count)
        elif w.live:
            w.release()


@given(data_size=st.sampled_from([4096, 6144, 12288]), steps=ops)
def test_recovery_of_a_clean_image_is_exactly_the_model(
    data_size: int, steps: list[tuple[str, int, int]]
) -> None:
    """A clean stop or a kill -9 between calls: every live record, in order, and
    the next record goes exactly where the writer would have put it."""
    w = ImageWriter(data_size)
    run_ops(w, steps)
    image = bytes(w.image)
    found = recover(image, 2)
    assert records_of(image, found) == w.model()
    assert (found.tail_pos, found.tail_seq) == (w.tail_pos, w.tail_seq)
    assert (found.head_pos, found.head_seq) == (w.head_pos, w.head_seq)
    assert found.corrupt_records == 0 and found.torn_header_slots == 0
    assert not found.header_lost
    assert found.generation > w.gen  # above every stamp written
    assert found.events == sum(c for _, _, c in w.model())
    assert found.bytes == sum(len(p) for _, p, _ in w.model())


@given(data_size=st.sampled_from([4096, 12288]), steps=ops, last=st.sampled_from(["back", "rel"]))
def test_a_push_or_release_whose_header_never_landed(
    data_size: int, steps: list[tuple[str, int, int]], last: str
) -> None:
    """kill -9 after a record was written but before the header slot was: the ring
    comes back as before the call or as after it, nothing counted as lost."""
    w = ImageWriter(data_size)
    run_ops(w, steps)
    before = w.model()
    if last == "back":
        if not w.push_back(payload_for(999, 200), 7, header=False):
            return
    elif w.live:
        w.release(header=False)
    found = recover(bytes(w.image), 2)
    assert records_of(w.image, found) in (before, w.model())
    assert found.corrupt_records == 0


@given(data_size=st.sampled_from([4096, 12288]), steps=ops)
def test_both_slots_lost_brings_back_every_live_record(
    data_size: int, steps: list[tuple[str, int, int]]
) -> None:
    """With both header slots zeroed the scan finds every live record; records
    released since the newest write may come back (duplicates, never a loss)."""
    w = ImageWriter(data_size)
    run_ops(w, steps)
    image = bytearray(w.image)
    image[:DATA_OFFSET] = bytes(DATA_OFFSET)
    found = recover(bytes(image), 2)
    got = records_of(image, found)
    seqs = [s for s, _, _ in got]
    assert seqs == sorted(set(seqs))
    assert set(w.model()) <= set(got)
    assert found.header_lost and found.torn_header_slots == 2
    assert found.tail_seq >= w.tail_seq or not w.live


def test_any_buffer_type_gives_the_same_recovery() -> None:
    w = ImageWriter(8192)
    for n in range(12):
        if not w.push_back(payload_for(n, 700), n + 1):
            w.release()
    image = bytes(w.image)
    expected = recover(image, 2)
    assert recover(bytearray(image), 2) == expected
    assert recover(memoryview(image), 2) == expected
    mm = mmap.mmap(-1, len(image))
    mm[:] = image
    assert recover(mm, 2) == expected
    mm.close()  # recover released every view of the mapping


def test_another_class_sees_nothing_of_this_one() -> None:
    w = ImageWriter(8192, class_index=1)
    w.push_back(b"one", 1)
    found = recover(bytes(w.image), 2)
    assert found.records == () and found.header_lost


def test_all_zero_and_random_images_are_empty() -> None:
    for image in (bytes(DATA_OFFSET + DATA), random.Random(5).randbytes(DATA_OFFSET + DATA)):
        with deadline(20):
            found = recover(image, 0)
        assert found.records == () and found.header_lost and found.torn_header_slots == 2
        assert (found.tail_pos, found.tail_seq) == (0, INITIAL_SEQ)


# -------------------------------------------------------------- the geometry


def test_file_size_to_map() -> None:
    state = SlotState(2, 3, DATA_OFFSET + 8192, DATA_OFFSET, 8192, 0, 9, 0, 9, 8192)
    slot = encode_slot(state)
    requested = DATA_OFFSET + 65536
    # a valid header's geometry wins, whatever is on disk (a truncated file too)
    assert file_size_to_map(100, slot, b"", 2, requested) == (DATA_OFFSET + 8192, False)
    assert file_size_to_map(10**9, b"", slot, 2, requested) == (DATA_OFFSET + 8192, False)
    # another class's header is no header
    assert file_size_to_map(0, slot, slot, 1, requested) == (requested, True)
    # no header: a plausible ring keeps its own size (whole 8-byte units) ...
    big = DATA_OFFSET + MIN_DATA_BYTES + 13
    assert file_size_to_map(big, b"", b"", 2, requested) == (big - 5, False)
    # ... anything shorter is no ring at all
    assert file_size_to_map(DATA_OFFSET + 100, b"", b"", 2, requested) == (requested, True)
    assert file_size_to_map(0, b"", b"", 2, requested) == (requested, True)


# ------------------------------------------------- damaged real ring files


def lapped(tmp_path, rng: random.Random) -> tuple[bytes, dict[int, bytes]]:
    path = str(tmp_path / "2-normal.ring")
    live = build_lapped_ring(path, rng)
    return read_image(path), live


def check_recovery(
    image: bytes | bytearray, live: dict[int, bytes], damaged: set[int]
) -> list[tuple[int, bytes, int]]:
    with deadline(20):
        found = recover(bytes(image), 2)
    got = records_of(image, found)
    seqs = [s for s, _, _ in got]
    assert seqs == sorted(set(seqs)), "records out of order or repeated"
    for seq, payload, _ in got:
        assert live.get(seq) == payload, f"record {seq} is not one that was live"
    kept = set(seqs)
    assert set(live) - damaged <= kept, "an intact record was lost"
    assert not (kept & damaged), "a damaged record was accepted"
    assert found.corrupt_records == len(damaged)
    return got


@pytest.mark.parametrize("seed", range(12))
def test_bit_flips(tmp_path, seed: int) -> None:
    rng = random.Random(seed)
    clean, live = lapped(tmp_path, rng)
    layout = live_layout(clean, set(live), 2)
    image = bytearray(clean)
    damaged: set[int] = set()
    for _ in range(rng.randrange(1, 8)):
        at = rng.randrange(DATA)
        image[DATA_OFFSET + at] ^= 1 << rng.randrange(8)
        damaged |= damaged_by(layout, at, at + 1)
    check_recovery(image, live, damaged)


@pytest.mark.parametrize("seed", range(8))
def test_zeroed_pages(tmp_path, seed: int) -> None:
    rng = random.Random(100 + seed)
    clean, live = lapped(tmp_path, rng)
    layout = live_layout(clean, set(live), 2)
    image = bytearray(clean)
    damaged: set[int] = set()
    for _ in range(rng.randrange(1, 4)):
        page = rng.randrange(DATA // 4096) * 4096
        image[DATA_OFFSET + page : DATA_OFFSET + page + 4096] = bytes(4096)
        damaged |= damaged_by(layout, page, page + 4096)
    check_recovery(image, live, damaged)


@pytest.mark.parametrize("seed", range(6))
def test_garbage_and_look_alike_records_in_free_space(tmp_path, seed: int) -> None:
    """Stale records from earlier laps are already everywhere; add valid records
    with old seqs right at the tail and at random places, fake magics, and one
    damaged live record so that the walk has to resync past them."""
    rng = random.Random(300 + seed)
    clean, live = lapped(tmp_path, rng)
    layout = live_layout(clean, set(live), 2)
    tail = recover(clean, 2).tail_pos  # where the next record would go
    lo_seq = min(live)
    stale = encode_record(
        seq=lo_seq - 1, floor=lo_seq - 1, stamp=1, class_index=2, count=1, payload=b"stale"
    )
    victim = rng.choice(sorted(live))
    vpos, _ = layout[victim]
    image = bytearray(clean)

    def put(at: int, data: bytes) -> None:
        image[DATA_OFFSET + at : DATA_OFFSET + at + len(data)] = data

    if DATA - tail >= len(stale):
        put(tail, stale)
    for _ in range(20):
        put(rng.randrange(0, DATA - 64, 8), b"\xf7sR\x01" + rng.randbytes(44))
    for _ in range(5):  # magics off the 8-byte grid are never record starts
        put(rng.randrange(0, DATA - 64, 8) + rng.randrange(1, 8), b"\xf7sR\x01")
    put(vpos + REC_HDR, b"\x00\x01\x02")
    damaged = set(live) - set(live_layout(bytes(image), set(live), 2))
    assert victim in damaged
    check_recovery(image, live, damaged)


def test_look_alike_headers_cannot_make_the_walk_unbounded(tmp_path) -> None:
    """Headers that pass every cheap check but claim huge bodies (as crafted event
    bytes could): the resync hashes a bounded amount, then gives up on the rest."""
    path = str(tmp_path / "2-normal.ring")
    ring = SpillRing.open(path, DATA_OFFSET + DATA, 2)
    for i in range(3):
        ring.push_back(payload_for(i, 1000), 1)
    ring.close()
    image = bytearray(read_image(path))
    tail = recover(bytes(image), 2).tail_pos
    image[DATA_OFFSET + 2 * record_span(1000) + REC_HDR] ^= 0xFF  # damage the last record
    for pos in range(tail, DATA - REC_HDR, 64):
        pack_record_header(
            image,
            DATA_OFFSET + pos,
            seq=INITIAL_SEQ + 10,
            floor=INITIAL_SEQ,
            stamp=1,
            length=DATA - pos - REC_HDR,
            count=1,
            class_index=2,
            kind=KIND_BATCH,
        )  # never sealed: the body crc fails after hashing up to the whole window
    with deadline(20):
        found = recover(bytes(image), 2)
    assert [p for _, p, _ in records_of(image, found)] == [payload_for(i, 1000) for i in (0, 1)]
    assert found.corrupt_records == 1
    # the damaged record's seq is never reused; the next record goes where it was
    assert (found.tail_pos, found.tail_seq) == (2 * record_span(1000), INITIAL_SEQ + 3)


def test_torn_header_slot_at_every_offset(tmp_path) -> None:
    """The last header write (a release) is cut at every byte: the ring comes back
    either as before the release or as after it, never broken."""
    path = str(tmp_path / "1-high.ring")
    ring = SpillRing.open(path, DATA_OFFSET + 8192, 1)
    for i in range(4):
        ring.push_back(payload_for(i, 300), 1)
    ring.close()
    before = read_image(path)
    ring = SpillRing.open(path, DATA_OFFSET + 8192, 1)
    assert read_one(ring) is not None
    ring.release_read()
    ring.close()  # the slots written by open and release differ from `before`
    after = read_image(path)
    changed = [
        s
        for s in (0, SLOT_BYTES)
        if before[s : s + SLOT_ENCODED_BYTES] != after[s : s + SLOT_ENCODED_BYTES]
    ]
    assert changed

    def generation(s: int) -> int:
        state = decode_slot(after[s : s + SLOT_ENCODED_BYTES])
        assert state is not None
        return state.generation

    newest = max(changed, key=generation)
    for cut in range(SLOT_ENCODED_BYTES + 1):
        image = bytearray(after)
        image[newest + cut : newest + SLOT_ENCODED_BYTES] = before[
            newest + cut : newest + SLOT_ENCODED_BYTES
        ]
        found = recover(bytes(image), 1)
        assert [p for _, p, _ in records_of(image, found)] in (
            [payload_for(i, 300) for i in range(4)],
            [payload_for(i, 300) for i in range(1, 4)],
        )
        assert found.corrupt_records == 0 and not found.header_lost


@pytest.mark.parametrize("seed", range(8))
def test_power_loss_mixes_old_and_new_pages(tmp_path, seed: int) -> None:
    """After a power loss the file holds, page by page, either what the last flush
    wrote or something newer, in no particular order. Whatever the mix: no
    exception, nothing that is not a real record, and every record that was
    flushed and still live at the end comes back."""
    rng = random.Random(400 + seed)
    path = str(tmp_path / "2-normal.ring")
    payloads: dict[int, bytes] = {}
    ring = SpillRing.open(path, DATA_OFFSET + DATA, 2)
    order: deque[int] = deque()

    def push(n: int) -> None:
        payload = payload_for(n, rng.choice([100, 900, 2500, 6000]))
        while not ring.push_back(payload, 1):
            assert read_one(ring) is not None
            ring.release_read()
            order.popleft()
        seq = INITIAL_SEQ + len(payloads)  # seqs count up from INITIAL_SEQ
        payloads[seq] = payload
        order.append(seq)

    for n in range(rng.randrange(20, 60)):
        push(n)
    ring.flush()
    flushed = read_image(path)
    live_at_flush = set(order)
    for n in range(100, 100 + rng.randrange(3, 25)):
        push(n)
    for _ in range(rng.randrange(0, 4)):
        if read_one(ring) is not None:
            ring.release_read()
            order.popleft()
    current = read_image(path)
    survivors = live_at_flush & set(order)
    ring.close()
    for trial in range(4):
        image = bytearray(current)
        for page in range(0, len(image), 4096):
            if rng.random() < 0.5:
                image[page : page + 4096] = flushed[page : page + 4096]
        got = recovered(image, 2)
        seqs = [s for s, _, _ in got]
        assert seqs == sorted(set(seqs)), trial
        for s, p, _ in got:
            assert payloads[s] == p, (trial, s)
        assert survivors <= set(seqs), (trial, sorted(survivors - set(seqs)))


@pytest.mark.parametrize("wrap", [False, True])
def test_kill_9_in_the_middle_of_a_push(tmp_path, wrap: bool) -> None:
    """A push cut at any byte of its writes (record header, payload, checksum,
    wrap marker, header slot - in that order) leaves the ring as before the
    push or as after it."""
    path = str(tmp_path / "0-critical.ring")
    ring = SpillRing.open(path, DATA_OFFSET + 8192, 0)
    for i in range(4 if not wrap else 6):
        assert ring.push_back(payload_for(i, 1000), 1)
    if wrap:  # free the front so that the next record wraps to offset 0
        for _ in range(3):
            read_one(ring)
            ring.release_read()
    before_records = [p for _, p, _ in drain(ring)]
    ring.close()
    before = read_image(path)
    ring = SpillRing.open(path, DATA_OFFSET + 8192, 0)
    after_open = read_image(path)  # open rewrote the header slots
    new = payload_for(99, 2500)
    assert ring.push_back(new, 1)
    ring.close()
    after = read_image(path)
    assert before[DATA_OFFSET:] == after_open[DATA_OFFSET:]
    rpos = next(
        off
        for off in range(DATA_OFFSET, len(after) - REC_HDR, 8)
        if (hdr := decode_record_header(after, off)) is not None
        and record_crc_ok(after, off, hdr)
        and after[off + REC_HDR : off + REC_HDR + hdr.length] == new
    )
    assert (rpos == DATA_OFFSET) == wrap
    record = range(rpos, rpos + REC_HDR + len(new))
    crc = range(rpos + 4, rpos + 8)  # sealed last
    changed = [i for i in range(DATA_OFFSET, len(after)) if after[i] != after_open[i]]
    order_of_writes = [i for i in changed if i in record and i not in crc]
    order_of_writes += [i for i in changed if i in crc]
    order_of_writes += [i for i in changed if i not in record]  # the wrap marker
    order_of_writes += [i for i in range(DATA_OFFSET) if after[i] != after_open[i]]
    cuts = sorted(set(range(0, len(order_of_writes) + 1, 97)) | {len(order_of_writes)})
    for cut in cuts:
        image = bytearray(after_open)
        for i in order_of_writes[:cut]:
            image[i] = after[i]
        found = recover(bytes(image), 0)
        got = [p for _, p, _ in records_of(image, found)]
        assert got in (before_records, [*before_records, new]), cut
        assert found.corrupt_records == 0, cut


@pytest.fixture(scope="module")
def lapped_image(tmp_path_factory) -> tuple[bytes, dict[int, bytes]]:
    return lapped(tmp_path_factory.mktemp("lapped"), random.Random(99))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    patches=st.lists(
        st.tuples(st.integers(0, DATA_OFFSET + DATA - 1), st.binary(min_size=1, max_size=64)),
        min_size=1,
        max_size=6,
    )
)
def test_arbitrary_damage_anywhere_never_raises(lapped_image, patches) -> None:
    """Any bytes anywhere, headers included: recover returns, and what it returns is
    real records in order, inside the region, not overlapping."""
    image, live = lapped_image
    damaged = bytearray(image)
    for at, data in patches:
        damaged[at : at + len(data)] = data[: len(damaged) - at]
    with deadline(20):
        found = recover(bytes(damaged), 2)
    got = records_of(damaged, found)
    seqs = [s for s, _, _ in got]
    assert seqs == sorted(set(seqs))
    for seq, payload, _ in got:
        assert live.get(seq, payload) == payload  # released records may come back
    spans = sorted((r.pos, r.pos + record_span(r.length)) for r in found.records)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert all(lo >= 0 and hi <= DATA for lo, hi in spans)
    assert all(isinstance(r, LiveRecord) for r in found.records)
