"""agent/spill/format.py and ring.py: the record format (pure), the ring against a
deque model, and recovery from torn headers, crashes and corrupt files."""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import signal
import tempfile
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from agent.spill.format import (
    DATA_OFFSET,
    INITIAL_SEQ,
    KIND_BATCH,
    REC_HDR,
    SLOT_BYTES,
    SLOT_ENCODED_BYTES,
    SlotState,
    choose_slot,
    decode_record_header,
    decode_slot,
    encode_record,
    encode_skip,
    encode_slot,
    pack_record_header,
    record_crc_ok,
    record_span,
)
from agent.spill.ring import SpillError, SpillRing

# ------------------------------------------------------------------ helpers


def payload_for(n: int, size: int) -> bytes:
    """Distinct, checkable bytes for the n-th payload of the test."""
    stamp = n.to_bytes(4, "little")
    return (stamp * (size // 4 + 1))[:size]


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the suite) if recovery ever loops."""

    def _boom(signum: int, frame: object) -> None:
        raise TimeoutError(f"no result within {seconds} s: recovery hangs")

    old = signal.signal(signal.SIGALRM, _boom)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def drain(ring: SpillRing) -> list[tuple[int, bytes, int]]:
    out = []
    while (rec := ring.read_next()) is not None:
        out.append((rec.seq, rec.payload, rec.count))
    ring.unread_all()
    return out


def live_layout(path: str, seqs: set[int], class_index: int) -> dict[int, tuple[int, int]]:
    """{seq: (position in the data region, bytes covered by its checksum)} of the
    valid records with those seqs, found with the public format functions."""
    with open(path, "rb") as f:
        data = f.read()
    out: dict[int, tuple[int, int]] = {}
    for off in range(DATA_OFFSET, len(data) - REC_HDR + 1, 8):
        hdr = decode_record_header(data, off, class_index)
        if hdr and hdr.kind == KIND_BATCH and hdr.seq in seqs and record_crc_ok(data, off, hdr):
            out[hdr.seq] = (off - DATA_OFFSET, REC_HDR + hdr.length)
    return out


# ------------------------------------------------------------ pure format

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


def test_ring_refuses_empty_and_oversized_records(tmp_path) -> None:
    ring = SpillRing.open(str(tmp_path / "r.ring"), DATA_OFFSET + 4096, 0)
    with pytest.raises(ValueError):
        ring.push_back(b"", 1)
    with pytest.raises(ValueError):
        ring.push_back(b"x", 0)
    with pytest.raises(ValueError):
        ring.push_back(bytes(ring.max_payload_bytes + 1), 1)
    assert ring.push_back(bytes(ring.max_payload_bytes), 1)
    ring.close()


# -------------------------------------------------------------- the model


class RingMachine(RuleBasedStateMachine):
    """SpillRing against a deque: (payload, count) of every unreleased record, and
    how many of them are read but unreleased."""

    base_dir = ""  # set by the test function to its tmp_path

    @initialize(data_size=st.sampled_from([4096, 6144, 12288]))
    def start(self, data_size: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="ring-model-", dir=self.base_dir or None)
        self.path = os.path.join(self.dir, "2-normal.ring")
        self.size = DATA_OFFSET + data_size
        self.ring = SpillRing.open(self.path, self.size, 2)
        self.model: deque[tuple[bytes, int]] = deque()
        self.read = 0
        self.n = 0
        self.crashed: list[SpillRing] = []  # mappings of "killed" processes, still alive

    def teardown(self) -> None:
        if hasattr(self, "ring"):
            self.ring.close()
            for old in self.crashed:
                old.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _payload(self, size: int) -> bytes:
        self.n += 1
        return payload_for(self.n, min(size, self.ring.max_payload_bytes))

    sizes = st.one_of(st.integers(1, 300), st.integers(301, 2500), st.integers(3000, 12000))

    @rule(size=sizes, count=st.integers(1, 1000))
    def push_back(self, size: int, count: int) -> None:
        payload = self._payload(size)
        free = self.ring.statistics().free_bytes
        if self.ring.push_back(payload, count):
            self.model.append((payload, count))
        else:
            # No room is only ever for lack of (contiguous) space.
            assert self.model
            assert free < 2 * record_span(len(payload))

    @precondition(lambda self: self.read == 0)
    @rule(size=sizes, count=st.integers(1, 1000))
    def push_front(self, size: int, count: int) -> None:
        payload = self._payload(size)
        free = self.ring.statistics().free_bytes
        if self.ring.push_front(payload, count):
            self.model.appendleft((payload, count))
        else:
            assert self.model
            assert free < 2 * record_span(len(payload)) + REC_HDR

    @rule()
    def read_next(self) -> None:
        rec = self.ring.read_next()
        if self.read == len(self.model):
            assert rec is None
        else:
            assert rec is not None
            assert (rec.payload, rec.count) == self.model[self.read]
            self.read += 1

    @precondition(lambda self: self.read > 0)
    @rule()
    def release_read(self) -> None:
        self.ring.release_read()
        self.model.popleft()
        self.read -= 1

    @rule()
    def unread_all(self) -> None:
        self.ring.unread_all()
        self.read = 0

    @precondition(lambda self: self.read == 0)
    @rule()
    def drop_front(self) -> None:
        expected = self.model.popleft()[1] if self.model else 0
        assert self.ring.drop_front() == expected

    @rule()
    def flush(self) -> None:
        self.ring.flush()

    @rule()
    def close_and_reopen(self) -> None:
        self.ring.close()
        self.ring = SpillRing.open(self.path, self.size, 2)
        self.read = 0
        assert self.ring.statistics().corrupt_records == 0

    @rule()
    def crash_and_reopen(self) -> None:
        # kill -9: no close, no flush; the old mapping stays alive (the page cache
        # outlives the process), a new "process" opens the same file.
        self.crashed.append(self.ring)
        self.ring = SpillRing.open(self.path, self.size, 2)
        self.read = 0
        stats = self.ring.statistics()
        assert stats.corrupt_records == 0 and stats.torn_header_slots == 0

    @invariant()
    def counters_match(self) -> None:
        if not hasattr(self, "ring"):
            return
        s = self.ring.statistics()
        assert s.records == len(self.model)
        assert s.events == sum(c for _, c in self.model)
        assert s.bytes == sum(len(p) for p, _ in self.model)
        assert s.unread_records == len(self.model) - self.read
        assert s.unread_events == self.ring.unread_events
        assert s.unread_events == sum(c for _, c in list(self.model)[self.read :])
        assert 0 <= s.free_bytes <= s.data_bytes
        if not self.model:
            assert s.free_bytes == s.data_bytes


def test_ring_against_a_deque_model(tmp_path) -> None:
    RingMachine.base_dir = str(tmp_path)
    run_state_machine_as_test(
        RingMachine,
        # Every example creates a ring (fsync, zero-fill): on a busy shared disk
        # that dominates, so fewer, longer runs.
        settings=settings(
            max_examples=60,
            stateful_step_count=80,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_push_front_and_wrap_keep_fifo_order(tmp_path) -> None:
    """The SIGTERM pattern on a ring whose head sits near the start of the region:
    records put back in front wrap behind the end of the region."""
    path = str(tmp_path / "r.ring")
    ring = SpillRing.open(path, DATA_OFFSET + 4096, 1)
    for i in range(3):
        assert ring.push_back(payload_for(i, 500), 1)
    rec = ring.read_next()
    assert rec is not None
    ring.release_read()  # head now ~560 bytes into the region
    for i in (10, 11):
        assert ring.push_front(payload_for(i, 900), 2)  # neither fits below the head
    ring.close()
    ring = SpillRing.open(path, DATA_OFFSET + 4096, 1)
    assert [p for _, p, _ in drain(ring)] == [
        payload_for(11, 900),
        payload_for(10, 900),
        payload_for(1, 500),
        payload_for(2, 500),
    ]
    ring.close()


def test_crash_after_read_brings_unreleased_records_back(tmp_path) -> None:
    path = str(tmp_path / "r.ring")
    ring = SpillRing.open(path, DATA_OFFSET + 65536, 3)
    for i in range(5):
        ring.push_back(payload_for(i, 1000), i + 1)
    ring.read_next()
    ring.release_read()  # delivered
    ring.read_next()
    ring.read_next()  # in memory, not delivered
    crashed = ring  # no close: like kill -9
    ring = SpillRing.open(path, DATA_OFFSET + 65536, 3)
    assert [c for _, _, c in drain(ring)] == [2, 3, 4, 5]
    assert ring.statistics().recovered_records == 4
    ring.close()
    crashed.close()


def test_size_mismatch_keeps_geometry_unless_empty(tmp_path) -> None:
    path = str(tmp_path / "r.ring")
    ring = SpillRing.open(path, DATA_OFFSET + 8192, 0)
    ring.push_back(b"abc", 1)
    ring.close()
    ring = SpillRing.open(path, DATA_OFFSET + 65536, 0)  # asked for more, has data
    assert ring.statistics().file_bytes == DATA_OFFSET + 8192
    assert drain(ring)[0][1] == b"abc"
    assert ring.read_next() is not None
    ring.release_read()
    ring.close()
    ring = SpillRing.open(path, DATA_OFFSET + 65536, 0)  # empty now: takes the new size
    assert ring.statistics().file_bytes == DATA_OFFSET + 65536
    assert os.path.getsize(path) == DATA_OFFSET + 65536
    assert ring.push_back(b"def", 1)
    ring.close()
    ring = SpillRing.open(path, DATA_OFFSET + 16384, 0)
    assert [p for _, p, _ in drain(ring)] == [b"def"]
    ring.read_next()
    ring.release_read()
    ring.close()
    ring = SpillRing.open(path, DATA_OFFSET + 16384, 0)  # empty again: shrinks
    assert os.path.getsize(path) == DATA_OFFSET + 16384
    assert ring.push_back(b"ghi", 1)
    ring.close()
    ring = SpillRing.open(path, DATA_OFFSET + 16384, 0)
    assert [p for _, p, _ in drain(ring)] == [b"ghi"]
    ring.close()


def test_fallocate_failure_is_a_spill_error_naming_path_and_sizes(tmp_path) -> None:
    path = str(tmp_path / "huge.ring")
    with pytest.raises(SpillError) as err:
        SpillRing.open(path, 1 << 60, 0)  # EFBIG or ENOSPC: either way, up front
    msg = str(err.value)
    assert path in msg and str(1 << 60) in msg and "available" in msg


# ------------------------------------------------------- corrupt ring files

DATA = 65536


def build_lapped_ring(path: str, rng: random.Random) -> dict[int, bytes]:
    """A ring that went round several times (stale records everywhere in its free
    space) and still holds some records; {seq: payload} of the live ones."""
    ring = SpillRing.open(path, DATA_OFFSET + DATA, 2)
    live: dict[int, bytes] = {}
    order: deque[int] = deque()
    for n in range(1, 401):
        payload = payload_for(n, rng.choice([40, 300, 1200, 3000, 7000]))
        while not ring.push_back(payload, n % 50 + 1):
            rec = ring.read_next()
            assert rec is not None
            ring.release_read()
            del live[order.popleft()]
        seq = INITIAL_SEQ + n - 1
        live[seq] = payload
        order.append(seq)
    for _ in range(rng.randrange(0, 4)):  # free a few more at the front
        if ring.read_next() is not None:
            ring.release_read()
            del live[order.popleft()]
    ring.close()
    return live


def reopen_and_check(
    path: str, live: dict[int, bytes], damaged: set[int], *, exact: bool = True
) -> SpillRing:
    with deadline(20):
        ring = SpillRing.open(path, DATA_OFFSET + DATA, 2)
    got = drain(ring)
    seqs = [s for s, _, _ in got]
    assert seqs == sorted(set(seqs)), "records out of order or repeated"
    for seq, payload, _ in got:
        assert live.get(seq) == payload, f"record {seq} is not one that was live"
    kept = set(seqs)
    assert set(live) - damaged <= kept, "an intact record was lost"
    assert not (kept & damaged), "a damaged record was accepted"
    stats = ring.statistics()
    assert stats.recovered_records == len(got)
    if exact:
        assert stats.corrupt_records == len(damaged)
    return ring


def damaged_by(layout: dict[int, tuple[int, int]], lo: int, hi: int) -> set[int]:
    """Live records whose checksummed bytes overlap the data-region range [lo, hi)."""
    return {seq for seq, (pos, n) in layout.items() if pos < hi and lo < pos + n}


@pytest.mark.parametrize("seed", range(12))
def test_bit_flips(tmp_path, seed: int) -> None:
    rng = random.Random(seed)
    path = str(tmp_path / "2-normal.ring")
    live = build_lapped_ring(path, rng)
    layout = live_layout(path, set(live), 2)
    damaged: set[int] = set()
    with open(path, "r+b") as f:
        for _ in range(rng.randrange(1, 8)):
            at = rng.randrange(DATA)
            f.seek(DATA_OFFSET + at)
            byte = f.read(1)[0]
            f.seek(DATA_OFFSET + at)
            f.write(bytes([byte ^ (1 << rng.randrange(8))]))
            damaged |= damaged_by(layout, at, at + 1)
    reopen_and_check(path, live, damaged).close()


@pytest.mark.parametrize("seed", range(8))
def test_zeroed_pages(tmp_path, seed: int) -> None:
    rng = random.Random(100 + seed)
    path = str(tmp_path / "2-normal.ring")
    live = build_lapped_ring(path, rng)
    layout = live_layout(path, set(live), 2)
    damaged: set[int] = set()
    with open(path, "r+b") as f:
        for _ in range(rng.randrange(1, 4)):
            page = rng.randrange(DATA // 4096) * 4096
            f.seek(DATA_OFFSET + page)
            f.write(bytes(4096))
            damaged |= damaged_by(layout, page, page + 4096)
    reopen_and_check(path, live, damaged).close()


@pytest.mark.parametrize("seed", range(6))
def test_truncated_tail(tmp_path, seed: int) -> None:
    rng = random.Random(200 + seed)
    path = str(tmp_path / "2-normal.ring")
    live = build_lapped_ring(path, rng)
    layout = live_layout(path, set(live), 2)
    cut = rng.randrange(0, DATA, 8)
    os.truncate(path, DATA_OFFSET + cut)
    ring = reopen_and_check(path, live, damaged_by(layout, cut, DATA))
    assert os.path.getsize(path) == DATA_OFFSET + DATA  # extended again, preallocated
    ring.close()


@pytest.mark.parametrize("seed", range(6))
def test_garbage_and_look_alike_records_in_free_space(tmp_path, seed: int) -> None:
    """Stale records from earlier laps are already everywhere; add valid records
    with old seqs right at the tail and at random places, fake magics, and one
    damaged live record so that the walk has to resync past them."""
    rng = random.Random(300 + seed)
    path = str(tmp_path / "2-normal.ring")
    live = build_lapped_ring(path, rng)
    layout = live_layout(path, set(live), 2)
    ring = SpillRing.open(path, DATA_OFFSET + DATA, 2)
    tail = ring._tail_pos  # white-box: where the next record would go
    ring.close()
    lo_seq = min(live)
    stale = encode_record(
        seq=lo_seq - 1, floor=lo_seq - 1, stamp=1, class_index=2, count=1, payload=b"stale"
    )
    victim = rng.choice(sorted(live))
    vpos, _ = layout[victim]
    with open(path, "r+b") as f:
        if DATA - tail >= len(stale):
            f.seek(DATA_OFFSET + tail)
            f.write(stale)
        for _ in range(20):
            f.seek(DATA_OFFSET + rng.randrange(0, DATA - 64, 8))
            f.write(b"\xf7sR\x01" + rng.randbytes(44))
        for _ in range(5):  # magics off the 8-byte grid are never record starts
            f.seek(DATA_OFFSET + rng.randrange(0, DATA - 64, 8) + rng.randrange(1, 8))
            f.write(b"\xf7sR\x01")
        f.seek(DATA_OFFSET + vpos + REC_HDR)
        f.write(b"\x00\x01\x02")
    layout_after = live_layout(path, set(live), 2)
    damaged = set(live) - set(layout_after)
    assert victim in damaged
    reopen_and_check(path, live, damaged).close()


def test_look_alike_headers_cannot_make_recovery_unbounded(tmp_path) -> None:
    """Headers that pass every cheap check but claim huge bodies (as crafted event
    bytes could): the resync hashes a bounded amount, then gives up on the rest."""
    path = str(tmp_path / "2-normal.ring")
    ring = SpillRing.open(path, DATA_OFFSET + DATA, 2)
    for i in range(3):
        ring.push_back(payload_for(i, 1000), 1)
    tail = ring._tail_pos  # white-box: the free space starts here
    ring.close()
    with open(path, "rb") as f:
        image = bytearray(f.read())
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
    with open(path, "wb") as f:
        f.write(image)
    with deadline(20):
        ring = SpillRing.open(path, DATA_OFFSET + DATA, 2)
    assert [p for _, p, _ in drain(ring)] == [payload_for(0, 1000), payload_for(1, 1000)]
    assert ring.statistics().corrupt_records == 1
    assert ring.push_back(b"new", 1)  # and the ring goes on
    ring.close()
    ring = SpillRing.open(path, DATA_OFFSET + DATA, 2)
    assert drain(ring)[-1][1] == b"new"
    ring.close()


def test_both_header_slots_lost_recovers_by_scanning(tmp_path) -> None:
    rng = random.Random(7)
    path = str(tmp_path / "2-normal.ring")
    live = build_lapped_ring(path, rng)
    with open(path, "r+b") as f:
        f.seek(0)
        f.write(bytes(2 * SLOT_BYTES))
    with deadline(20):
        ring = SpillRing.open(path, DATA_OFFSET + DATA, 2)
    got = drain(ring)
    seqs = [s for s, _, _ in got]
    assert seqs == sorted(set(seqs))
    assert set(live) <= set(seqs)  # nothing live lost; released ones may come back
    stats = ring.statistics()
    assert stats.header_lost and stats.torn_header_slots == 2
    ring.close()
    # The header was rewritten: the next open is a normal one.
    ring = SpillRing.open(path, DATA_OFFSET + DATA, 2)
    assert not ring.statistics().header_lost
    assert [s for s, _, _ in drain(ring)] == seqs
    ring.close()


def test_all_zero_and_random_files_open_empty(tmp_path) -> None:
    for name, content in [
        ("zero", bytes(DATA_OFFSET + DATA)),
        ("rand", os.urandom(DATA_OFFSET + DATA)),
    ]:
        path = str(tmp_path / f"{name}.ring")
        with open(path, "wb") as f:
            f.write(content)
        with deadline(20):
            ring = SpillRing.open(path, DATA_OFFSET + DATA, 0)
        stats = ring.statistics()
        assert stats.records == 0 and stats.header_lost
        assert ring.push_back(b"after", 1)
        ring.close()
        ring = SpillRing.open(path, DATA_OFFSET + DATA, 0)
        assert [p for _, p, _ in drain(ring)] == [b"after"]
        ring.close()


def test_torn_header_slot_at_every_offset_in_a_real_file(tmp_path) -> None:
    """The last header write (a release) is cut at every byte: the ring comes back
    either as before the release or as after it, never broken."""
    path = str(tmp_path / "1-high.ring")
    ring = SpillRing.open(path, DATA_OFFSET + 8192, 1)
    for i in range(4):
        ring.push_back(payload_for(i, 300), 1)
    ring.close()
    with open(path, "rb") as f:
        before = f.read()
    ring = SpillRing.open(path, DATA_OFFSET + 8192, 1)
    assert ring.read_next() is not None
    ring.release_read()
    ring.close()  # the slots written by open and release differ from `before`
    with open(path, "rb") as f:
        after = f.read()
    changed = [
        s
        for s in (0, SLOT_BYTES)
        if before[s : s + SLOT_ENCODED_BYTES] != after[s : s + SLOT_ENCODED_BYTES]
    ]
    assert changed
    newest = max(changed, key=lambda s: decode_slot(after[s : s + SLOT_ENCODED_BYTES]).generation)  # type: ignore[union-attr]
    for cut in range(SLOT_ENCODED_BYTES + 1):
        image = bytearray(after)
        image[newest + cut : newest + SLOT_ENCODED_BYTES] = before[
            newest + cut : newest + SLOT_ENCODED_BYTES
        ]
        with open(path, "wb") as f:
            f.write(image)
        ring = SpillRing.open(path, DATA_OFFSET + 8192, 1)
        got = [p for _, p, _ in drain(ring)]
        assert got in (
            [payload_for(i, 300) for i in range(4)],
            [payload_for(i, 300) for i in range(1, 4)],
        )
        stats = ring.statistics()
        assert stats.corrupt_records == 0 and not stats.header_lost
        ring.close()


def newest_slot(path: str) -> tuple[int, SlotState]:
    with open(path, "rb") as f:
        head = f.read(DATA_OFFSET)
    slots = [(off, decode_slot(head[off : off + SLOT_ENCODED_BYTES])) for off in (0, SLOT_BYTES)]
    off, state = max(((o, s) for o, s in slots if s), key=lambda x: x[1].generation)
    return off, state


def rewrite_prepared(path: str, prepared: int) -> None:
    """Both slots say the creation's zero-fill stopped at `prepared`."""
    _, state = newest_slot(path)
    with open(path, "r+b") as f:
        for i, off in enumerate((0, SLOT_BYTES)):
            gen = state.generation + 1 + i
            f.seek(off)
            f.write(encode_slot(dataclasses.replace(state, generation=gen, prepared=prepared)))


def test_new_ring_is_zero_filled_once(tmp_path) -> None:
    path = str(tmp_path / "r.ring")
    SpillRing.open(path, DATA_OFFSET + 65536, 0).close()
    assert newest_slot(path)[1].prepared == 65536
    # A creation cut short (prepared < data size) over leftover bytes: the next
    # open of the (empty) ring finishes the fill.
    with open(path, "r+b") as f:
        f.seek(DATA_OFFSET + 40000)
        f.write(b"\xaa" * 1000)
    rewrite_prepared(path, 32768)
    ring = SpillRing.open(path, DATA_OFFSET + 65536, 0)
    ring.close()
    assert newest_slot(path)[1].prepared == 65536
    with open(path, "rb") as f:
        assert f.read()[DATA_OFFSET + 32768 :] == bytes(32768)


def test_zero_fill_never_touches_a_ring_with_records(tmp_path) -> None:
    path = str(tmp_path / "r.ring")
    ring = SpillRing.open(path, DATA_OFFSET + 65536, 0)
    for i in range(40):
        ring.push_back(payload_for(i, 1000), 1)
    ring.close()
    rewrite_prepared(path, 0)
    ring = SpillRing.open(path, DATA_OFFSET + 65536, 0)
    assert [p for _, p, _ in drain(ring)] == [payload_for(i, 1000) for i in range(40)]
    ring.close()


def read_image(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_image(path: str, image: bytes | bytearray) -> None:
    with open(path, "wb") as f:
        f.write(image)


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
            assert ring.read_next() is not None
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
        if ring.read_next() is not None:
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
        write_image(path, image)
        with deadline(20):
            ring = SpillRing.open(path, DATA_OFFSET + DATA, 2)
        got = drain(ring)
        seqs = [s for s, _, _ in got]
        assert seqs == sorted(set(seqs)), trial
        for s, p, _ in got:
            assert payloads[s] == p, (trial, s)
        assert survivors <= set(seqs), (trial, sorted(survivors - set(seqs)))
        ring.close()


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
            ring.read_next()
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
        write_image(path, image)
        ring = SpillRing.open(path, DATA_OFFSET + 8192, 0)
        got = [p for _, p, _ in drain(ring)]
        assert got in (before_records, [*before_records, new]), cut
        assert ring.statistics().corrupt_records == 0, cut
        ring.close()


@pytest.fixture(scope="module")
def lapped_image(tmp_path_factory) -> tuple[bytes, dict[int, bytes]]:
    path = str(tmp_path_factory.mktemp("lapped") / "2-normal.ring")
    live = build_lapped_ring(path, random.Random(99))
    return read_image(path), live


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    patches=st.lists(
        st.tuples(st.integers(0, DATA_OFFSET + DATA - 1), st.binary(min_size=1, max_size=64)),
        min_size=1,
        max_size=6,
    )
)
def test_arbitrary_damage_anywhere_never_raises(lapped_image, patches, tmp_path_factory) -> None:
    """Any bytes anywhere, headers included: open returns, and what it returns is
    real records in order."""
    image, live = lapped_image
    damaged = bytearray(image)
    for at, data in patches:
        damaged[at : at + len(data)] = data[: len(damaged) - at]
    path = str(tmp_path_factory.mktemp("fuzz") / "2-normal.ring")
    write_image(path, damaged)
    with deadline(20):
        ring = SpillRing.open(path, DATA_OFFSET + DATA, 2)
    got = drain(ring)
    seqs = [s for s, _, _ in got]
    assert seqs == sorted(set(seqs))
    for seq, payload, _ in got:
        assert live.get(seq, payload) == payload  # released records may come back
    ring.close()


def test_bounded_flush_syncs_in_steps(tmp_path) -> None:
    path = str(tmp_path / "r.ring")
    ring = SpillRing.open(path, DATA_OFFSET + 1024 * 1024, 0)
    assert ring.flush()  # nothing to do
    flushes = ring.statistics().flushes
    for i in range(20):
        ring.push_back(payload_for(i, 30000), 1)
    assert ring.dirty_bytes >= 20 * 30000
    steps = 0
    while not ring.flush(max_bytes=128 * 1024):
        steps += 1
        assert steps < 100
    assert steps >= 4 and ring.dirty_bytes == 0
    assert ring.statistics().flushes == flushes + steps + 1
    ring.close()
