"""agent/spill/ring.py: the ring against a deque model, its writes, its geometry on
reopen, the zero-fill, msync, and how it adopts what recovery finds in damaged
files (the recovery itself is tested over bytes in test_spill_recover.py)."""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import tempfile
from collections import deque

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
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
    decode_slot,
    encode_slot,
    pack_record_header,
    record_span,
)
from agent.spill.recover import recover
from agent.spill.ring import SpillError, SpillRing

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


def test_ring_refuses_empty_and_oversized_records(tmp_path) -> None:
    ring = SpillRing.open(str(tmp_path / "r.ring"), DATA_OFFSET + 4096, 0)
    with pytest.raises(ValueError):
        ring.push_back(b"", 1)
    with pytest.raises(ValueError):
        ring.push_back(b"x", 0)
    with pytest.raises(ValueError, match=rf"{ring.max_payload_bytes + 1} bytes exceeds"):
        ring.push_back(bytes(ring.max_payload_bytes + 1), 1)
    assert ring.push_back(bytes(ring.max_payload_bytes), 1)
    ring.close()


def test_too_many_events_are_reported_as_events_not_bytes(tmp_path) -> None:
    """A record's event count is a u32: a count beyond it is named as a count (it
    was once reported as a byte size, "record of 1 bytes exceeds ...")."""
    path = str(tmp_path / "r.ring")
    ring = SpillRing.open(path, DATA_OFFSET + 4096, 0)
    with pytest.raises(ValueError) as err:
        ring.push_back(b"x", 2**32)
    assert str(err.value) == (
        f"spill ring {path}: record of {2**32} events exceeds the most a record "
        f"can count ({2**32 - 1})"
    )
    assert ring.push_back(b"x", 2**32 - 1)
    assert drain(ring) == [(INITIAL_SEQ, b"x", 2**32 - 1)]
    ring.close()


def test_read_next_split_cuts_the_prefix_and_keeps_the_record_until_released(tmp_path) -> None:
    path = str(tmp_path / "r.ring")
    ring = SpillRing.open(path, DATA_OFFSET + 4096, 0)
    assert ring.push_back(b"AAAABBBBpayload", 2)
    assert ring.push_back(b"CCCCxy", 1)
    assert ring.read_next_split(4) == (b"AAAABBBB", b"payload", 2, INITIAL_SEQ)
    assert ring.read_next_split(100) == (b"CCCCxy", b"", 1, INITIAL_SEQ + 1)  # prefix capped
    assert ring.read_next_split(4) is None
    s = ring.statistics()
    assert (s.events, s.unread_events, ring.unread_events) == (3, 0, 0)
    ring.release_read()
    ring.close()
    ring = SpillRing.open(path, DATA_OFFSET + 4096, 0)  # read, not released: unread again
    assert drain(ring) == [(INITIAL_SEQ + 1, b"CCCCxy", 1)]
    ring.close()
    with pytest.raises(ValueError, match="closed"):
        ring.read_next_split(0)


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
    def read_next_split(self) -> None:
        rec = read_one(self.ring)
        if self.read == len(self.model):
            assert rec is None
        else:
            assert rec is not None
            assert (rec[1], rec[2]) == self.model[self.read]
            self.read += 1

    @precondition(lambda self: self.read > 0)
    @rule()
    def release_read(self) -> None:
        self.ring.release_read()
        self.model.popleft()
        self.read -= 1

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
    assert read_one(ring) is not None
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
    read_one(ring)
    ring.release_read()  # delivered
    read_one(ring)
    read_one(ring)  # in memory, not delivered
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
    ring.release_read()  # drain read it
    ring.close()
    ring = SpillRing.open(path, DATA_OFFSET + 65536, 0)  # empty now: takes the new size
    assert ring.statistics().file_bytes == DATA_OFFSET + 65536
    assert os.path.getsize(path) == DATA_OFFSET + 65536
    assert ring.push_back(b"def", 1)
    ring.close()
    ring = SpillRing.open(path, DATA_OFFSET + 16384, 0)
    assert [p for _, p, _ in drain(ring)] == [b"def"]
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


@pytest.mark.parametrize("seed", range(6))
def test_truncated_tail(tmp_path, seed: int) -> None:
    rng = random.Random(200 + seed)
    path = str(tmp_path / "2-normal.ring")
    live = build_lapped_ring(path, rng)
    layout = live_layout(read_image(path), set(live), 2)
    cut = rng.randrange(0, DATA, 8)
    os.truncate(path, DATA_OFFSET + cut)
    ring = reopen_and_check(path, live, damaged_by(layout, cut, DATA))
    assert os.path.getsize(path) == DATA_OFFSET + DATA  # extended again, preallocated
    ring.close()


def test_look_alike_headers_cannot_make_recovery_unbounded(tmp_path) -> None:
    """Headers that pass every cheap check but claim huge bodies (as crafted event
    bytes could): the resync hashes a bounded amount, then gives up on the rest."""
    path = str(tmp_path / "2-normal.ring")
    ring = SpillRing.open(path, DATA_OFFSET + DATA, 2)
    for i in range(3):
        ring.push_back(payload_for(i, 1000), 1)
    ring.close()
    image = bytearray(read_image(path))
    tail = recover(bytes(image), 2).tail_pos  # the free space starts here
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
