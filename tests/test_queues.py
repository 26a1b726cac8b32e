"""agent/queues.py: one ClassQueue against a list model (front, spill ring, back),
plus chunk boundaries, pool reuse and trim, and the promise that a shrink shows
in RSS."""

from __future__ import annotations

import array
import itertools
from collections import deque
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from agent.classes import EventClass
from agent.queues import CHUNK_BYTES, Chunk, ChunkPool, ClassQueue, ClassQueues

MiB = 1024 * 1024
# Small chunks so a handful of events crosses chunk boundaries and a single
# event can exceed a chunk.
SMALL_CHUNK = 64
ALL_OF_FRONT = 10_000  # more batches than the machine can ever hold


# ------------------------------------------------------------------ helpers


def chunk_events(chunk: Chunk) -> list[bytes]:
    """The events of `chunk` not yet handed out, one bytes each."""
    blob, ends = chunk.remaining()
    return split(blob, ends)


def split(blob: bytes, ends: array.array[int] | list[int]) -> list[bytes]:
    starts = [0, *ends[:-1]] if len(ends) else []
    return [blob[s:e] for s, e in zip(starts, ends, strict=True)]


def lane_events(lane: deque[Chunk]) -> list[bytes]:
    return [ev for chunk in lane for ev in chunk_events(chunk)]


def drain_front(q: ClassQueue) -> list[bytes]:
    """Publish everything publishable as the loop does; returns the events."""
    out: list[bytes] = []
    while q.front_events:
        body, count = q.peek_batch(1 << 30, 1 << 40)
        chunk = q.front[0]
        ends = chunk.ends[chunk.head : chunk.head + count]
        out.extend(split(body, [e - chunk.start for e in ends]))
        emptied = q.consume(count)
        if emptied is not None:
            q.recycle(emptied)
    return out


def vm_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# -------------------------------------------------------------- the model


@dataclass(frozen=True)
class Ev:
    id: int  # position in the order of acceptance
    data: bytes
    token: object | None = None  # the ring record it was drained back from


event_bytes = st.one_of(
    st.binary(min_size=1, max_size=24),
    st.binary(min_size=SMALL_CHUNK - 4, max_size=2 * SMALL_CHUNK + 8),
)


class QueueMachine(RuleBasedStateMachine):
    """One ClassQueue against three lists: `front`, the spill ring (a deque of
    records, each the events of one spilled chunk, oldest first) and `back`,
    with `hold_back`. A second queue on the same pool keeps the pool honest.

    The test plays the loop: it owns the "ring" (records written from
    `chunk.remaining()` at spill time) and the tokens of drained records.
    """

    def __init__(self) -> None:
        super().__init__()
        self.queues = ClassQueues(chunk_bytes=SMALL_CHUNK)
        self.pool = self.queues.pool
        self.q = self.queues[EventClass.NORMAL]
        self.other = self.queues[EventClass.LOW]
        self.front: list[Ev] = []
        self.ring: deque[list[Ev]] = deque()
        self.back: list[Ev] = []
        self.hold_back = False
        # What the loop wrote to the ring file: (blob, ends) per record.
        self.disk: deque[tuple[bytes, array.array[int]]] = deque()
        # Ledger: every event ever accepted, and the ids consumed or evicted.
        self.accepted: list[bytes] = []
        self.gone: set[int] = set()
        self.other_events: list[bytes] = []

    # -- rules -------------------------------------------------------------------

    @initialize(events=st.lists(event_bytes, min_size=4, max_size=30))
    def fill(self, events: list[bytes]) -> None:
        # Start every run with a few chunks' worth, so that short runs spill,
        # drain and publish too instead of mostly pushing into an empty queue.
        self.push_many(events)

    @rule(events=st.lists(event_bytes, max_size=8))
    def push_many(self, events: list[bytes]) -> None:
        lane = self.back if self.hold_back else self.front
        for data in events:
            lane.append(Ev(len(self.accepted), data))
            self.accepted.append(data)
        self.q.push_many(events)

    @precondition(lambda self: self.front)
    @rule(
        max_events=st.integers(1, 6),
        max_bytes=st.integers(1, 3 * SMALL_CHUNK),
        sent=st.booleans(),
        rounds=st.one_of(st.integers(1, 4), st.just(ALL_OF_FRONT)),
    )
    def publish(self, max_events: int, max_bytes: int, sent: bool, rounds: int) -> None:
        # A few batches in a row, or everything publishable, as the loop sends
        # while a class is due (that is what empties chunks read back from disk).
        for _ in range(rounds):
            if not self.front:
                break
            self._publish_one(max_events, max_bytes, sent)

    def _publish_one(self, max_events: int, max_bytes: int, sent: bool) -> None:
        head = self.q.front[0]
        body, k = self.q.peek_batch(max_events, max_bytes)
        assert 1 <= k <= max_events
        batch = self.front[:k]
        assert body == b"".join(e.data for e in batch)
        assert isinstance(body, bytes)  # a copy: consume may recycle the chunk
        assert k == 1 or len(body) <= max_bytes
        # Maximal: stops at max_events, at max_bytes, or at the chunk's end
        # (a batch never spans chunks).
        if k < max_events and k < head.events:
            assert len(body) + len(self.front[k].data) > max_bytes
        # Events of one batch come from one chunk: one token (or none).
        tokens = {e.token for e in batch}
        assert len(tokens) == 1
        if not sent:
            return  # the send was refused: nothing is removed
        emptied = self.q.consume(k)
        del self.front[:k]
        self.gone.update(e.id for e in batch)
        (token,) = tokens
        if token is not None and all(e.token is not token for e in self.front):
            # Every event of a chunk read back from disk is delivered: the chunk
            # comes back so the loop can release its ring record.
            assert emptied is head
            assert emptied.token is token
            assert emptied.events == 0
            self.q.recycle(emptied)
        else:
            assert emptied is None

    @rule(commit=st.booleans(), rounds=st.integers(1, 3))
    def spill(self, commit: bool, rounds: int) -> None:
        # Several in a row, as the loop does when it makes room: the second
        # spill of an episode is the one that may go ahead of the ring.
        for _ in range(rounds):
            self._spill_one(commit)

    def _spill_one(self, commit: bool) -> None:
        chunk = self.q.spill_candidate()
        ahead = False
        if self.hold_back and self.back:
            # The oldest chunk of back goes behind the ring.
            assert chunk is self.q.back[0]
            assert not self.q.spills_ahead_of_ring(chunk)
            lane = self.back
            taken = slice(0, chunk.events)
        else:
            # The newest front chunk, unless partly published or from disk. It
            # goes behind an empty ring, or ahead of a non-empty one as long as
            # no chunk read back from the ring is still in memory.
            if not self.front:
                assert chunk is None
                return
            newest = self.q.front[-1]
            if chunk is None:
                assert (
                    newest.head > 0
                    or newest.token is not None
                    or (self.hold_back and any(e.token is not None for e in self.front))
                )
                return
            assert chunk is newest
            assert chunk.head == 0 and chunk.token is None
            ahead = self.hold_back
            assert self.q.spills_ahead_of_ring(chunk) == ahead
            if ahead:
                assert all(e.token is None for e in self.front)
            lane = self.front
            taken = slice(len(self.front) - chunk.events, len(self.front))
        moved = lane[taken]
        assert moved and all(e.token is None for e in moved)
        blob, ends = chunk.remaining()
        assert split(blob, ends) == [e.data for e in moved]
        if not commit:
            return  # the ring was full: nothing changes
        self.q.commit_spill(chunk)
        del lane[taken]
        if ahead:
            self.disk.appendleft((blob, ends))
            self.ring.appendleft(moved)
        else:
            self.disk.append((blob, ends))
            self.ring.append(moved)
        self.hold_back = True

    @precondition(lambda self: self.ring)
    @rule(as_view=st.booleans())
    def drain(self, as_view: bool) -> None:
        record = self.ring.popleft()
        blob, ends = self.disk.popleft()
        token = object()
        chunk = self.q.push_recovered(memoryview(blob) if as_view else blob, ends, token)
        assert chunk.token is token
        assert chunk is self.q.front[-1]
        assert chunk_events(chunk) == [e.data for e in record]
        self.front.extend(Ev(e.id, e.data, token) for e in record)

    @precondition(lambda self: not self.ring)
    @rule()
    def merge_back(self) -> None:
        self.q.merge_back()
        self.front.extend(self.back)
        self.back.clear()
        self.hold_back = False

    @rule()
    def evict_oldest(self) -> None:
        chunk = self.q.evict_oldest()
        lane = self.front or self.back
        if not lane:
            assert chunk is None
            return
        assert chunk is not None
        n = chunk.events
        assert n >= 1
        evicted = lane[:n]
        assert chunk_events(chunk) == [e.data for e in evicted]
        assert {e.token for e in evicted} == {chunk.token}
        del lane[:n]
        self.gone.update(e.id for e in evicted)
        # The loop counts them dropped (and releases the ring record if the
        # chunk has a token), then recycles the chunk.
        self.q.recycle(chunk)

    @rule()
    def stop_and_restart(self) -> None:
        """Clean stop: everything in memory is parked around the ring (front
        ahead of it, back behind it); on restart the class holds back."""
        front, back = self.q.drain_all()
        assert [ev for c in front for ev in chunk_events(c)] == [e.data for e in self.front]
        assert [ev for c in back for ev in chunk_events(c)] == [e.data for e in self.back]
        assert self.q.events == self.q.bytes == 0
        assert self.q.front_events == self.q.front_bytes == 0
        assert not self.q.hold_back
        records: list[tuple[bytes, array.array[int]]] = []
        model: list[list[Ev]] = []
        cursor = 0
        for chunk in front:
            n = chunk.events
            records.append(chunk.remaining())
            model.append([Ev(e.id, e.data) for e in self.front[cursor : cursor + n]])
            cursor += n
            self.q.recycle(chunk)
        records.extend(self.disk)
        model.extend(self.ring)
        cursor = 0
        for chunk in back:
            n = chunk.events
            records.append(chunk.remaining())
            model.append(self.back[cursor : cursor + n])
            cursor += n
            self.q.recycle(chunk)
        assert self.q.alloc_bytes == 0
        self.disk = deque(records)
        self.ring = deque(model)
        self.front.clear()
        self.back.clear()
        self.hold_back = bool(self.ring)
        self.q.hold_back = self.hold_back  # as the loop does for recovered rings

    @rule(events=st.lists(event_bytes, min_size=1, max_size=4))
    def push_other_class(self, events: list[bytes]) -> None:
        self.other.push_many(events)
        self.other_events.extend(events)

    @rule()
    def publish_other_class(self) -> None:
        assert drain_front(self.other) == self.other_events
        self.other_events.clear()
        assert self.other.alloc_bytes == 0

    @rule(keep_chunks=st.integers(0, 3))
    def trim_pool(self, keep_chunks: int) -> None:
        pooled = self.pool.pooled_bytes
        freed = self.pool.trim(keep_chunks * SMALL_CHUNK)
        assert self.pool.pooled_bytes == min(pooled, keep_chunks * SMALL_CHUNK)
        assert freed == pooled - self.pool.pooled_bytes

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def counters_match_the_model(self) -> None:
        q = self.q
        held = self.front + self.back
        assert q.events == len(held)
        assert q.bytes == sum(len(e.data) for e in held)
        assert q.front_events == len(self.front)
        assert q.front_bytes == sum(len(e.data) for e in self.front)
        assert q.hold_back == self.hold_back
        s = q.statistics()
        assert (s.events, s.bytes, s.chunks) == (q.events, q.bytes, len(q.front) + len(q.back))
        assert self.queues.events == q.events + len(self.other_events)
        assert self.queues.used_bytes == q.bytes + sum(map(len, self.other_events))

    @invariant()
    def memory_is_accounted(self) -> None:
        for queue in self.queues.by_class:
            assert queue.alloc_bytes == sum(c.capacity for c in (*queue.front, *queue.back))
        assert self.pool.in_use_bytes == sum(x.alloc_bytes for x in self.queues.by_class)
        assert self.pool.allocated_bytes == self.pool.in_use_bytes + self.pool.pooled_bytes
        assert self.pool.pooled_bytes % SMALL_CHUNK == 0

    @invariant()
    def chunks_are_well_formed(self) -> None:
        held = [*self.q.front, *self.q.back, *self.other.front, *self.other.back]
        assert len({id(c) for c in held}) == len(held)
        for c in held:
            assert not c.buf.closed
            assert 0 <= c.head < len(c.ends)  # no empty chunk is held
            ends = list(c.ends)
            assert all(a < b for a, b in itertools.pairwise([0, *ends]))
            assert ends[-1] == c.size <= c.capacity
            if c.capacity != SMALL_CHUNK:
                # Oversized only for what could not fit a standard chunk.
                assert c.capacity > SMALL_CHUNK
                assert c.size == c.capacity
                assert len(ends) == 1 or c.token is not None
        assert all(c.token is None for c in self.q.back)

    @invariant()
    def fifo_across_front_ring_back(self) -> None:
        in_memory_front = lane_events(self.q.front)
        on_disk = [ev for blob, ends in self.disk for ev in split(blob, ends)]
        in_memory_back = lane_events(self.q.back)
        assert in_memory_front == [e.data for e in self.front]
        assert on_disk == [e.data for r in self.ring for e in r]
        assert in_memory_back == [e.data for e in self.back]
        # Front -> ring -> back is what was ever accepted, minus what left,
        # in the order it was accepted.
        alive = [d for i, d in enumerate(self.accepted) if i not in self.gone]
        assert in_memory_front + on_disk + in_memory_back == alive
        ids = [e.id for e in self.front] + [e.id for r in self.ring for e in r]
        ids += [e.id for e in self.back]
        assert ids == sorted(ids)
        if not self.hold_back:
            assert not self.ring

    def teardown(self) -> None:
        for queue in self.queues.by_class:
            front, back = queue.drain_all()
            for chunk in front + back:
                queue.recycle(chunk)
        self.pool.trim()


QueueMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueModel = QueueMachine.TestCase


# ------------------------------------------------------------ plain tests


def test_events_are_preserved_byte_for_byte() -> None:
    qs = ClassQueues(chunk_bytes=1024)
    q = qs[EventClass.HIGH]
    events = [bytes([i % 256]) * (i % 37 + 1) for i in range(300)]
    events += [bytes(range(256)), b"\x00", b"\xff" * 5, b"\xa1\x64type\x65fault"]
    for i in range(0, len(events), 7):
        q.push_many(events[i : i + 7])
    assert q.events == len(events)
    assert q.bytes == sum(map(len, events))
    assert len(q.front) > 1  # crossed chunk boundaries
    assert drain_front(q) == events
    assert (q.events, q.bytes, q.alloc_bytes) == (0, 0, 0)


def test_batches_stay_within_limits_and_chunks() -> None:
    q = ClassQueues(chunk_bytes=100)[EventClass.NORMAL]
    q.push_many([b"a" * 30] * 7)  # 3 per chunk: 90, 90, 30
    assert [c.events for c in q.front] == [3, 3, 1]
    body, n = q.peek_batch(10, 1000)
    assert (body, n) == (b"a" * 90, 3)  # never spans chunks
    assert q.peek_batch(2, 1000) == (b"a" * 60, 2)
    assert q.peek_batch(10, 59) == (b"a" * 30, 1)
    assert q.peek_batch(10, 1) == (b"a" * 30, 1)  # at least one event
    # Peeking removes nothing.
    assert (q.events, q.front_events, q.bytes) == (7, 7, 210)
    assert q.consume(2) is None
    assert (q.events, q.bytes) == (5, 150)
    assert q.peek_batch(10, 1000) == (b"a" * 30, 1)


def test_single_event_bigger_than_a_chunk() -> None:
    qs = ClassQueues(chunk_bytes=64)
    q = qs[EventClass.CRITICAL]
    big = bytes(range(200))
    q.push_many([b"s1", big, b"s2"])
    assert [c.capacity for c in q.front] == [64, 200, 64]
    assert q.alloc_bytes == qs.pool.in_use_bytes == 328
    assert q.peek_batch(10, 10) == (b"s1", 1)
    q.consume(1)
    assert q.peek_batch(10, 10) == (big, 1)  # alone, over max_bytes
    oversized = q.front[0]
    q.consume(1)
    # Oversized chunks are not pooled: their memory goes straight back.
    assert oversized.buf.closed
    assert qs.pool.pooled_bytes == 64
    assert drain_front(q) == [b"s2"]
    assert qs.pool.in_use_bytes == 0


def test_event_exactly_a_chunk_fills_one_standard_chunk() -> None:
    q = ClassQueues(chunk_bytes=64)[EventClass.LOW]
    q.push_many([b"x" * 64, b"y"])
    assert [(c.capacity, c.events) for c in q.front] == [(64, 1), (64, 1)]


def test_pool_reuses_freed_chunks_and_trim_closes_them() -> None:
    pool = ChunkPool(chunk_bytes=4096)
    a, b = pool.get(10), pool.get(4096)
    assert pool.in_use_bytes == 8192 and pool.pooled_bytes == 0
    a.append_blob(b"abc", [3])
    a.token = "record"
    pool.put(a)
    pool.put(b)
    assert pool.in_use_bytes == 0 and pool.pooled_bytes == 8192
    assert pool.allocated_bytes == 8192
    c = pool.get(100)
    assert c in (a, b)  # reused, not a fresh mmap
    assert (c.size, c.head, len(c.ends), c.token) == (0, 0, 0, None)
    assert pool.in_use_bytes == 4096 and pool.pooled_bytes == 4096
    # Oversized requests never come from the pool.
    big = pool.get(5000)
    assert big.capacity == 5000 and pool.pooled_bytes == 4096
    pool.put(big)
    assert big.buf.closed and pool.pooled_bytes == 4096
    pool.put(c)
    assert pool.trim(4096) == 4096
    assert pool.pooled_bytes == 4096
    kept = pool.get(1)
    pool.put(kept)
    assert pool.trim() == 4096
    assert pool.allocated_bytes == 0
    assert a.buf.closed and b.buf.closed
    assert pool.trim() == 0


def test_trim_keeps_what_is_in_use() -> None:
    qs = ClassQueues(chunk_bytes=4096)
    q = qs[EventClass.NORMAL]
    q.push_many([b"e" * 1000] * 10)  # 4 per chunk: 3 chunks
    chunks = list(q.front)
    assert qs.pool.trim() == 0
    assert not any(c.buf.closed for c in chunks)
    assert drain_front(q) == [b"e" * 1000] * 10


def test_shrink_shows_in_rss() -> None:
    """Chunks are anonymous mmaps: trimming the pool gives their pages back to
    the OS (FACTS.md, "Memory"). Measured as deltas of this process's VmRSS."""
    qs = ClassQueues()  # standard 256 KiB chunks
    q = qs[EventClass.NORMAL]
    event = b"\x5a" * 4096
    per_chunk = CHUNK_BYTES // len(event)
    n_chunks = 64 * MiB // CHUNK_BYTES
    before = vm_rss()
    for _ in range(n_chunks):
        q.push_many([event] * per_chunk)  # writes (touches) every page
    assert qs.pool.in_use_bytes == 64 * MiB
    filled = vm_rss()
    assert filled - before >= 48 * MiB, "filling 64 MiB of chunks did not show in RSS"
    # Publish everything without keeping copies: 64 MiB of freed 4 KiB `bytes`
    # would sit in malloc's heap and hide the drop this test is about.
    published = 0
    while q.front_events:
        body, count = q.peek_batch(per_chunk, CHUNK_BYTES)
        assert len(body) == count * len(event)
        del body
        q.consume(count)
        published += count
    assert published == n_chunks * per_chunk
    assert qs.pool.pooled_bytes == 64 * MiB  # still held, ready for reuse
    assert qs.pool.trim() == 64 * MiB
    trimmed = vm_rss()
    assert qs.pool.allocated_bytes == 0
    assert filled - trimmed >= 48 * MiB, (
        f"RSS fell by {(filled - trimmed) / MiB:.1f} MiB after trimming 64 MiB of chunks"
    )


def test_spill_and_drain_keep_fifo_order() -> None:
    """The loop's walk through a spill episode, step by step, with the ring as a
    deque of records (push_back = append, push_front = appendleft)."""
    q = ClassQueues(chunk_bytes=8)[EventClass.HIGH]
    ring: deque[tuple[bytes, array.array[int]]] = deque()

    def spill() -> None:
        chunk = q.spill_candidate()
        assert chunk is not None
        if q.spills_ahead_of_ring(chunk):
            ring.appendleft(chunk.remaining())
        else:
            ring.append(chunk.remaining())
        q.commit_spill(chunk)

    q.push_many([b"a1", b"a2", b"a3", b"a4", b"b1", b"b2"])  # [a1..a4] [b1 b2]
    assert q.spill_candidate() is q.front[-1]
    spill()  # b: the newest front chunk, behind the (empty) ring
    assert q.hold_back and (q.events, q.front_events) == (4, 4)
    q.push_many([b"c1", b"c2"])  # behind the ring
    assert (q.events, q.front_events) == (6, 4)
    assert lane_events(q.back) == [b"c1", b"c2"]
    assert q.spill_candidate() is q.back[0]
    spill()  # c: the oldest back chunk, behind the ring
    assert q.spill_candidate() is q.front[-1]
    spill()  # a: the newest front chunk, ahead of the ring
    assert (q.events, q.alloc_bytes) == (0, 0)
    assert [split(*r) for r in ring] == [
        [b"a1", b"a2", b"a3", b"a4"],
        [b"b1", b"b2"],
        [b"c1", b"c2"],
    ]
    delivered: list[bytes] = []
    for i, token in enumerate(("rec-a", "rec-b", "rec-c")):
        blob, ends = ring.popleft()
        q.push_recovered(blob, ends, token)
        if i == 0:
            # A record read back is in memory: nothing may go ahead of the ring.
            assert q.spill_candidate() is None
            q.push_many([b"d1"])  # still behind the ring
            assert q.spill_candidate() is q.back[0]  # may go behind it
        body, n = q.peek_batch(100, 100)
        emptied = q.consume(n)
        assert emptied is not None and emptied.token == token
        delivered += split(body, list(itertools.accumulate([2] * n)))
        q.recycle(emptied)
    q.merge_back()
    assert not q.hold_back
    delivered += drain_front(q)
    assert delivered == [b"a1", b"a2", b"a3", b"a4", b"b1", b"b2", b"c1", b"c2", b"d1"]
    assert q.alloc_bytes == 0


def test_recovered_chunk_is_never_appended_to() -> None:
    qs = ClassQueues(chunk_bytes=64)
    q = qs[EventClass.NORMAL]
    q.push_recovered(b"r1r2", [2, 4], token="rec")
    q.merge_back()
    q.push_many([b"n1"])
    assert [c.token for c in q.front] == ["rec", None]
    assert q.spill_candidate() is q.front[-1]
    body, n = q.peek_batch(10, 100)
    assert (body, n) == (b"r1r2", 2)
    emptied = q.consume(1)
    assert emptied is None  # one event of the record still undelivered
    emptied = q.consume(1)
    assert emptied is not None and emptied.token == "rec"
    q.recycle(emptied)
    assert drain_front(q) == [b"n1"]


def test_spill_candidate_skips_partly_published_or_recovered_tail() -> None:
    q = ClassQueues(chunk_bytes=64)[EventClass.NORMAL]
    assert q.spill_candidate() is None
    q.push_many([b"x1", b"x2"])
    q.consume(1)
    assert q.spill_candidate() is None  # partly published
    q.push_many([b"y" * 64])
    assert q.spill_candidate() is q.front[-1]


def test_evict_takes_front_first_then_back() -> None:
    q = ClassQueues(chunk_bytes=8)[EventClass.LOW]
    assert q.evict_oldest() is None
    q.push_many([b"f1", b"f2", b"f3", b"f4", b"f5"])
    chunk = q.spill_candidate()
    assert chunk is not None
    q.commit_spill(chunk)
    q.push_many([b"k1"])
    first = q.evict_oldest()
    assert first is not None and chunk_events(first) == [b"f1", b"f2", b"f3", b"f4"]
    q.recycle(first)
    assert (q.events, q.front_events) == (1, 0)
    second = q.evict_oldest()
    assert second is not None and chunk_events(second) == [b"k1"]
    q.recycle(second)
    assert (q.events, q.bytes, q.alloc_bytes) == (0, 0, 0)


@pytest.mark.parametrize("n_events", [0, 1])
def test_push_many_of_nothing_allocates_nothing(n_events: int) -> None:
    qs = ClassQueues(chunk_bytes=64)
    q = qs[EventClass.NORMAL]
    q.push_many([b"z"] * n_events)
    assert qs.pool.in_use_bytes == (64 if n_events else 0)
    assert q.events == n_events


def test_trim_in_bounded_steps_returns_exactly_down_to_keep() -> None:
    # The loop trims a shrink in steps, so no single turn unmaps hundreds of
    # MiB (~0.23 ms per MiB measured): each call frees at most max_bytes.
    pool = ChunkPool()
    chunks = [pool.get(CHUNK_BYTES) for _ in range(10)]
    for c in chunks:
        pool.put(c)
    assert pool.pooled_bytes == 10 * CHUNK_BYTES
    steps = []
    while pool.pooled_bytes > 3 * CHUNK_BYTES:
        steps.append(pool.trim(3 * CHUNK_BYTES, max_bytes=2 * CHUNK_BYTES))
    assert steps == [2 * CHUNK_BYTES] * 3 + [CHUNK_BYTES]
    assert pool.pooled_bytes == 3 * CHUNK_BYTES
    assert pool.trim(3 * CHUNK_BYTES, max_bytes=2 * CHUNK_BYTES) == 0
