"""agent/pressure.py: the buffer policy over real class queues and a real
governor, with an in-memory fake of the spill store and a fake clock (no
files, no sockets, no sleeps).

The fake store keeps the real one's contract, including its refusals
(push_front or drop_front while a record is read but unreleased raise), and
counts room in bytes the way a ring does (blob + 4 bytes per event).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Sequence

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from agent.classes import CLASSES, EventClass
from agent.governor import BufferGovernor
from agent.pressure import DRAIN_LOW_WATER, BufferPressure
from agent.queues import CHUNK_BYTES, ClassQueues
from agent.telemetry import AgentIdentity, Telemetry

C, H, N, L = (
    int(c) for c in (EventClass.CRITICAL, EventClass.HIGH, EventClass.NORMAL, EventClass.LOW)
)
ALL = [True] * len(CLASSES)
NONE = [False] * len(CLASSES)

BUDGET = 16 * CHUNK_BYTES
RESERVE = 2 * CHUNK_BYTES
BURST = 2 * CHUNK_BYTES  # one chunk of events plus a partial tail
EVENT_PAD = 4000  # ~4 KiB events: ~64 to a chunk, so memory fills in a few steps
MAX_BATCH = 4 * CHUNK_BYTES
WT_AFTER = 0.01


# ----------------------------------------------------------------- the fakes


@dataclasses.dataclass(frozen=True)
class Batch:
    blob: bytes
    ends: list[int]
    count: int


Record = tuple[bytes, list[int]]


class FakeSpillStore:
    """The SpillStore methods the policy uses, over deques. `capacity` is the
    room per class in ring bytes (blob + 4 per event)."""

    def __init__(self, capacity: Sequence[int], shared: int | None = None) -> None:
        self.capacity = list(capacity)
        self.shared = shared  # one budget for all classes (bytes), as SpillStore has
        self.unread: list[collections.deque[Record]] = [collections.deque() for _ in CLASSES]
        self.read: list[collections.deque[Record]] = [collections.deque() for _ in CLASSES]
        self.written = 0  # events written through

    @staticmethod
    def _size(rec: Record) -> int:
        return len(rec[0]) + 4 * len(rec[1])

    def _used(self, cls: int) -> int:
        return sum(map(self._size, self.unread[cls])) + sum(map(self._size, self.read[cls]))

    def _room(self, cls: int) -> int:
        if self.shared is not None:
            return self.shared - sum(self._used(c) for c in CLASSES)
        return self.capacity[cls] - self._used(cls)

    @property
    def shared_budget(self) -> bool:
        return self.shared is not None

    def max_batch_bytes(self, cls: int) -> int:
        return MAX_BATCH

    def push_back(self, cls: int, blob: bytes, ends: Sequence[int]) -> bool:
        rec = (bytes(blob), list(ends))
        assert rec[1] and rec[1][-1] == len(rec[0])
        if self._size(rec) > self._room(cls):
            return False
        self.unread[cls].append(rec)
        return True

    def push_front(self, cls: int, blob: bytes, ends: Sequence[int]) -> bool:
        if self.read[cls]:
            raise RuntimeError("push_front with records read but unreleased")
        rec = (bytes(blob), list(ends))
        if self._size(rec) > self._room(cls):
            return False
        self.unread[cls].appendleft(rec)
        return True

    def read_next(self, cls: int) -> Batch | None:
        if not self.unread[cls]:
            return None
        rec = self.unread[cls].popleft()
        self.read[cls].append(rec)
        return Batch(rec[0], rec[1], len(rec[1]))

    def release_read(self, cls: int) -> None:
        if not self.read[cls]:
            raise RuntimeError("release_read with nothing read")
        self.read[cls].popleft()

    def drop_front(self, cls: int) -> int:
        if self.read[cls]:
            raise RuntimeError("drop_front with records read but unreleased")
        if not self.unread[cls]:
            return 0
        return len(self.unread[cls].popleft()[1])

    def pending(self, cls: int) -> int:
        return sum(len(ends) for _, ends in self.unread[cls])

    def write_through(self, cls: int, blob: bytes, ends: Sequence[int]) -> bool:
        if self.unread[cls]:
            raise RuntimeError("write-through push with records unread")
        rec = (bytes(blob), list(ends))
        assert rec[1] and rec[1][-1] == len(rec[0])
        if self._size(rec) > self._room(cls):
            return False
        self.read[cls].append(rec)
        self.written += len(rec[1])
        return True

    def room_bytes(self, cls: int) -> int:
        return self._room(cls)

    @staticmethod
    def run_bytes(nbytes: int, events: int) -> int:
        return nbytes + 4 * events

    def read_batches(self, cls: int) -> int:
        return len(self.read[cls])

    def unread_all(self, cls: int) -> int:
        moved = sum(len(r[1]) for r in self.read[cls])
        self.unread[cls].extendleft(reversed(self.read[cls]))
        self.read[cls].clear()
        return moved

    def crash(self) -> None:
        """A kill -9: what was read but not released comes back as unread."""
        for cls in CLASSES:
            self.unread_all(cls)

    def events(self, cls: int) -> list[bytes]:
        """Every event on disk, oldest first (read ones first)."""
        return [e for rec in (*self.read[cls], *self.unread[cls]) for e in split(rec[0])]


def make_event(cls: int, seq: int, pad: int = EVENT_PAD) -> bytes:
    return b"%d.%08d" % (cls, seq) + b"x" * pad + b"|"


def split(body: bytes) -> list[bytes]:
    return [e + b"|" for e in body.split(b"|")[:-1]]


def seq_of(event: bytes) -> int:
    return int(event[2:10])


def telemetry() -> Telemetry:
    return Telemetry(AgentIdentity("gw", "0", 1, 0.0, BUDGET, RESERVE, "/spill"))


class Rig:
    """Queues + governor + fake store + telemetry + the policy, and the loop's
    part (ingest, publish) done by hand."""

    def __init__(
        self,
        disk: Sequence[int] = (8 * CHUNK_BYTES,) * 4,
        budget: int = BUDGET,
        reserve: int = RESERVE,
        write_through: Sequence[int] = (),
        shared: int | None = None,
    ) -> None:
        self.budget, self.reserve = budget, reserve
        self.write_through = tuple(write_through)
        self.queues = ClassQueues()
        self.governor = self.new_governor()
        self.store = FakeSpillStore(disk, shared)
        self.telemetry = telemetry()
        self.pressure = self.new_pressure()
        self.seq = [0] * len(CLASSES)
        self.delivered: list[list[bytes]] = [[] for _ in CLASSES]

    def new_pressure(self) -> BufferPressure:
        return BufferPressure(
            self.queues, self.governor, self.store, self.telemetry, self.write_through, WT_AFTER
        )

    def new_governor(self) -> BufferGovernor:
        return BufferGovernor(self.budget, self.reserve, 60.0, 8 * CHUNK_BYTES, burst_bytes=BURST)

    def ingest(self, cls: int, n: int, pad: int = EVENT_PAD) -> list[bytes]:
        events = [make_event(cls, self.seq[cls] + i, pad) for i in range(n)]
        self.seq[cls] += n
        self.queues[cls].push_many(events)
        self.telemetry.classes[cls].received += n
        return events

    def publish(self, cls: int, max_events: int = 1000) -> int:
        q = self.queues[cls]
        if not q.front_events:
            return 0
        body, count = q.peek_batch(max_events, 1 << 30)
        self.delivered[cls].extend(split(body))
        emptied = q.consume(count)
        if emptied is not None:
            self.store.release_read(cls)
            q.recycle(emptied)
        self.telemetry.classes[cls].delivered += count
        return count

    def publish_all(self, cls: int) -> None:
        while self.publish(cls):
            pass

    def accounted(self, cls: int) -> int:
        c = self.telemetry.classes[cls]
        return c.delivered + self.queues[cls].events + self.store.pending(cls) + c.dropped


def fill(rig: Rig, cls: int, chunks: float) -> list[bytes]:
    """Events of `cls` worth about `chunks` chunks, a burst at a time with
    make_room between, as the loop does."""
    per_chunk = CHUNK_BYTES // (EVENT_PAD + 11)
    out: list[bytes] = []
    left = int(per_chunk * chunks)
    while left:
        n = min(left, per_chunk)
        out += rig.ingest(cls, n)
        left -= n
        rig.pressure.make_room(0.0)
    return out


# ----------------------------------------------------------------- make room


def test_within_the_limit_nothing_moves() -> None:
    rig = Rig()
    fill(rig, N, 4)
    assert rig.pressure.make_room(0.0)
    assert rig.store.pending(N) == 0 and rig.telemetry.classes[N].spilled == 0
    assert not rig.governor.spilling(0.0)


def test_the_lowest_class_spills_first_and_keeps_its_order() -> None:
    rig = Rig()
    normal = fill(rig, N, 6)
    low = fill(rig, L, 9)
    assert rig.pressure.noncritical_alloc() <= rig.governor.noncritical_limit
    assert rig.store.pending(L) > 0 and rig.store.pending(N) == 0
    assert rig.telemetry.classes[L].spilled == rig.store.pending(L)
    assert rig.governor.spilling(0.0)
    # FIFO across disk and memory: drain and publish everything.
    for _ in range(100):
        rig.publish_all(N)
        rig.publish_all(L)
        rig.pressure.drain(1.0, ALL)
    assert rig.delivered[N] == normal and rig.delivered[L] == low
    assert rig.telemetry.classes[L].recovered == rig.telemetry.classes[L].spilled


def test_with_disk_full_the_oldest_of_the_lowest_class_is_evicted_and_counted() -> None:
    rig = Rig(disk=(8 * CHUNK_BYTES, 8 * CHUNK_BYTES, 0, 0))
    fill(rig, N, 5)
    low = fill(rig, L, 12)
    dropped = rig.telemetry.classes[L].dropped
    assert dropped > 0 and rig.telemetry.classes[N].dropped == 0
    assert rig.telemetry.take_unlogged_drops()[L] == dropped
    assert rig.telemetry.take_unlogged_drops() == [0, 0, 0, 0]
    rig.publish_all(L)
    assert rig.delivered[L] == low[dropped:], "not the oldest evicted"
    for cls in CLASSES:
        assert rig.accounted(cls) == rig.seq[cls]


def test_critical_is_never_evicted_it_spills_then_ingest_pauses() -> None:
    rig = Rig(disk=(2 * CHUNK_BYTES, 0, 0, 0))
    crit = rig.ingest(C, 2)
    rig.telemetry.critical_arrived(2, 0.0)
    admitted = True
    while admitted:
        crit += rig.ingest(C, 60)
        admitted = rig.pressure.make_room(0.0)
    assert rig.store.pending(C) > 0  # spilled first, as long as its ring had room
    assert rig.telemetry.classes[C].dropped == 0
    assert not rig.governor.can_admit(rig.queues.pool.in_use_bytes)
    # The latency marks no longer match the queue: measuring stops.
    rig.publish(C, 2)
    assert rig.telemetry.latency.snapshot().count == 0
    # Room again once critical is delivered.
    rig.publish_all(C)
    assert rig.pressure.make_room(1.0)


# ---------------------------------------------------------------------- drain


def test_drain_waits_for_a_subscriber_and_goes_highest_class_first() -> None:
    rig = Rig()
    for cls in (L, N, H):
        events = [make_event(cls, i, 10) for i in range(3)]
        assert rig.store.push_back(cls, b"".join(events), ends_of(events))
    pressure = BufferPressure(rig.queues, rig.governor, rig.store, rig.telemetry)
    assert all(rig.queues[c].hold_back for c in (H, N, L)) and not rig.queues[C].hold_back
    assert not pressure.can_drain(H, False)
    assert not pressure.drain(0.0, NONE)
    assert not rig.governor.draining(0.0), "events lying on disk are not a drain"
    assert pressure.drain(1.0, [True, True, False, True])
    assert rig.queues[H].front_events == 3 and rig.queues[L].front_events == 3
    assert rig.store.pending(N) == 3 and rig.queues[N].hold_back
    assert not rig.queues[H].hold_back  # ring empty: what waited behind it merged
    assert rig.governor.draining(1.0)
    assert rig.telemetry.classes[H].recovered == 3


def test_drain_stops_at_the_low_water_mark() -> None:
    rig = Rig()
    for i in range(8):
        rig.store.push_back(N, make_event(N, i, CHUNK_BYTES - 20), [CHUNK_BYTES - 9])
    pressure = BufferPressure(rig.queues, rig.governor, rig.store, rig.telemetry)
    pressure.drain(0.0, ALL)
    assert DRAIN_LOW_WATER <= rig.queues[N].front_bytes < DRAIN_LOW_WATER + CHUNK_BYTES
    assert rig.store.pending(N) > 0


def ends_of(events: list[bytes]) -> list[int]:
    return list(itertools.accumulate(map(len, events)))


# ----------------------------------------------------------------------- park


def test_park_keeps_class_order_around_the_ring() -> None:
    rig = Rig(disk=(8 * CHUNK_BYTES, 8 * CHUNK_BYTES, 8 * CHUNK_BYTES, 16 * CHUNK_BYTES))
    low = fill(rig, L, 15)
    low += rig.ingest(L, 5)
    q = rig.queues[L]
    assert rig.store.pending(L) and q.back, "events behind the ring"
    while q.front_events:
        rig.publish(L, 64)
    rig.pressure.drain(0.0, ALL)
    assert rig.store.read[L], "a record read back"
    rig.publish(L, 3)  # and partly delivered
    in_memory = q.events
    parked, lost = rig.pressure.park_in_memory_events()
    assert (parked, lost) == (in_memory, 0)
    assert rig.queues.events == 0 and rig.queues.pool.in_use_bytes == 0
    assert not rig.store.read[L]
    assert rig.delivered[L] + rig.store.events(L) == low
    for cls in CLASSES:
        assert rig.accounted(cls) == rig.seq[cls]


def test_park_with_the_ring_full_counts_each_lost_event_once() -> None:
    """`_park` used to count a lost chunk twice over (its own add, then again
    through the drop counter's path)."""
    rig = Rig(disk=(0, 0, 0, 0))
    rig.ingest(H, 10)
    rig.ingest(C, 5)
    parked, lost = rig.pressure.park_in_memory_events()
    assert (parked, lost) == (0, 15)
    assert rig.telemetry.classes[H].dropped == 10 and rig.telemetry.classes[C].dropped == 5
    assert rig.telemetry.take_unlogged_drops() == [5, 10, 0, 0]


def test_park_never_evicts_critical_from_its_ring_for_newer_critical() -> None:
    old = [make_event(C, i) for i in range(50)]
    rig = Rig(disk=(len(b"".join(old)) + 4 * 50, 0, 0, 0))
    assert rig.store.push_back(C, b"".join(old), ends_of(old))
    rig.seq[C] = 50
    rig.telemetry.classes[C].received = 50
    rig.pressure = BufferPressure(rig.queues, rig.governor, rig.store, rig.telemetry)
    rig.ingest(C, 10)  # behind the ring
    assert rig.pressure.park_in_memory_events() == (0, 10)
    assert rig.store.events(C) == old
    assert rig.telemetry.classes[C].dropped == 10


# ------------------------------------------------------------------- the model


class PressureModel(RuleBasedStateMachine):
    """Random turns of the loop (ingest, publish, make room, drain) and
    restarts (park, then a new policy over the same store), against a model
    that knows every event ever received.

    Checked: per class, every event is delivered, in memory, on disk, or
    counted as dropped (never lost uncounted); delivery is FIFO with no
    duplicates across memory and disk; critical is never dropped while the
    agent runs; when make_room admits a burst, the burst fits in the budget.

    Also: memory after a drain stays within the budget (a non-critical drain
    used to look at the non-critical classes' memory only, so with critical
    holding much of it it read back past the budget until the next make_room);
    a random set of classes is written through, which changes none of this."""

    SHARED = False

    @initialize(
        disk=st.lists(st.integers(0, 6), min_size=4, max_size=4),
        write_through=st.sets(st.sampled_from(CLASSES).map(int)),
    )
    def setup(self, disk: list[int], write_through: set[int]) -> None:
        # A small budget (5 chunks for the non-critical classes) so that a
        # few turns of ingest already spill, evict and pause.
        self.rig = Rig(
            disk=[d * CHUNK_BYTES for d in disk],
            budget=8 * CHUNK_BYTES,
            reserve=CHUNK_BYTES,
            write_through=sorted(write_through),
            shared=sum(disk) * CHUNK_BYTES if self.SHARED else None,
        )
        self.now = 0.0
        self.admit = True
        self.last_seq = [-1] * len(CLASSES)
        self.park_lost = [0] * len(CLASSES)

    def _publish(self, cls: int, max_events: int) -> None:
        before = len(self.rig.delivered[cls])
        self.rig.publish(cls, max_events)
        for e in self.rig.delivered[cls][before:]:
            assert seq_of(e) > self.last_seq[cls], "out of order or twice"
            self.last_seq[cls] = seq_of(e)

    @rule(
        cls=st.sampled_from(CLASSES).map(int),
        n=st.integers(0, 60),
        deliverable=st.lists(st.booleans(), min_size=4, max_size=4),
        sends=st.integers(0, 3),
        dt=st.floats(0.0, 2.0),
    )
    def turn(self, cls: int, n: int, deliverable: list[bool], sends: int, dt: float) -> None:
        rig = self.rig
        self.now += dt
        if self.admit and n:
            rig.ingest(cls, n)
        for c in CLASSES:  # strict class order, like the loop
            while sends and deliverable[c] and rig.queues[c].front_events:
                self._publish(c, 40)
                sends -= 1
        dropped = [c.dropped for c in rig.telemetry.classes]
        self.admit = rig.pressure.make_room(self.now)
        for c in CLASSES:
            if rig.telemetry.classes[c].dropped > dropped[c]:
                # Evicted: the lowest class holding anything goes first. (With
                # one spill budget a class needing disk room takes it from the
                # lowest class holding disk space at that moment; a lower class
                # may be moved to disk later in the same turn, so the end state
                # says less: test_one_budget_* check the order.)
                assert c != C
                if not self.SHARED:
                    assert all(rig.queues[low].events == 0 for low in CLASSES[c + 1 :])
        if self.admit:  # room for one more burst within the budget
            assert rig.queues.pool.in_use_bytes + BURST <= rig.budget
        before = rig.queues.pool.in_use_bytes
        rig.pressure.drain(self.now, deliverable)
        after = rig.queues.pool.in_use_bytes
        assert after <= max(before, rig.budget), "a drain read back past the budget"

    @rule(classes=st.lists(st.sampled_from(CLASSES).map(int), min_size=1, max_size=30))
    def outage(self, classes: list[int]) -> None:
        """No subscriber: a burst of 60 events per turn, one class each."""
        for cls in classes:
            self.turn(cls, 60, NONE, 0, 0.01)

    @precondition(lambda self: hasattr(self, "rig"))
    @rule()
    def subscriber_returns(self) -> None:
        """Everything not dropped is delivered, in order, once a subscriber
        reads fast enough (nothing stays stuck behind an emptied ring)."""
        rig = self.rig
        for _ in range(1000):
            if not rig.queues.events and not any(map(rig.store.pending, CLASSES)):
                break
            self.turn(C, 0, ALL, 100, 0.01)
        else:
            raise AssertionError("events stuck in memory or on disk")
        for cls in CLASSES:
            c = rig.telemetry.classes[cls]
            assert c.delivered + c.dropped == rig.seq[cls]

    @precondition(lambda self: hasattr(self, "rig"))
    @rule()
    def restart(self) -> None:
        rig = self.rig
        dropped_before = [c.dropped for c in rig.telemetry.classes]
        _, lost = rig.pressure.park_in_memory_events()
        for cls in CLASSES:
            self.park_lost[cls] += rig.telemetry.classes[cls].dropped - dropped_before[cls]
        assert rig.queues.events == 0
        assert sum(self.park_lost) >= lost
        # Order on disk continues what was delivered.
        for cls in CLASSES:
            seqs = [seq_of(e) for e in rig.store.events(cls)]
            assert seqs == sorted(set(seqs)) and all(s > self.last_seq[cls] for s in seqs)
        # Critical on disk is never evicted to make room while parking: it is
        # lost only where its ring cannot take it, so its oldest is still there.
        kept = [seq_of(e) for e in rig.delivered[C] + rig.store.events(C)]
        if kept and self.park_lost[C] == 0:
            assert kept == list(range(len(kept)))
        rig.queues = ClassQueues()
        rig.governor = rig.new_governor()
        rig.pressure = rig.new_pressure()
        self.admit = True

    @invariant()
    def nothing_lost_uncounted(self) -> None:
        if not hasattr(self, "rig"):
            return
        for cls in CLASSES:
            assert self.rig.accounted(cls) == self.rig.seq[cls], EventClass(cls).wire_name

    @invariant()
    def critical_is_dropped_only_when_parking_into_a_full_ring(self) -> None:
        if hasattr(self, "rig"):
            assert self.rig.telemetry.classes[C].dropped == self.park_lost[C]

    @invariant()
    def spilled_recovered_add_up(self) -> None:
        if not hasattr(self, "rig"):
            return
        for cls in CLASSES:
            c = self.rig.telemetry.classes[cls]
            assert c.recovered <= c.spilled


PressureModel.TestCase.settings = settings(max_examples=100, stateful_step_count=40)
test_pressure_model = PressureModel.TestCase


class SharedBudgetModel(PressureModel):
    """The same over one spill budget for all classes (the disk sizes drawn,
    summed), as SpillStore has it."""

    SHARED = True


SharedBudgetModel.TestCase.settings = settings(max_examples=100, stateful_step_count=40)
test_shared_budget_model = SharedBudgetModel.TestCase


@pytest.mark.parametrize("cls", [H, N, L])
def test_eviction_never_touches_critical_or_a_higher_class_first(cls: int) -> None:
    rig = Rig(disk=(0, 0, 0, 0))
    fill(rig, C, 2)
    fill(rig, cls, 14)
    for other in CLASSES:
        if other != cls:
            assert rig.telemetry.classes[other].dropped == 0
    assert rig.telemetry.classes[cls].dropped > 0


# --------------------------------------------------------------- write-through


def wt_rig(**kw: object) -> Rig:
    return Rig(write_through=(C, H), **kw)  # type: ignore[arg-type]


def test_write_through_delivered_at_once_writes_nothing() -> None:
    rig = wt_rig()
    for turn in range(20):
        now = turn * 0.004  # a batch leaves within the linger: never written
        rig.ingest(H, 5)
        rig.ingest(C, 1)
        rig.pressure.make_room(now)
        rig.publish_all(C)
        if turn % 2:
            rig.publish_all(H)
    rig.publish_all(H)
    rig.pressure.make_room(1.0)
    assert rig.store.written == 0 and not rig.store.read[H] and not rig.store.read[C]
    assert rig.telemetry.classes[H].written_through == 0


def test_write_through_queued_events_are_on_disk_while_they_stay_queued() -> None:
    rig = wt_rig()
    events = rig.ingest(C, 10) + rig.ingest(C, 5)
    rig.pressure.make_room(0.0)
    assert rig.store.written == 0, "not before the delay"
    assert rig.pressure.write_through_due_s(0.0) == pytest.approx(WT_AFTER)
    rig.pressure.make_room(WT_AFTER)
    assert rig.store.written == 15 and rig.store.pending(C) == 0
    assert rig.queues[C].front_events == 15, "still queued in memory"
    assert rig.store.events(C) == events
    state = rig.pressure.write_through_state()
    assert (state[C].enabled, state[C].held, state[C].lagging) == (True, 15, 0)
    assert not rig.pressure.write_through_state()[N].enabled
    # Delivered: the runs are released at the next turn, none written again.
    rig.publish(C, 12)
    rig.pressure.make_room(WT_AFTER * 2)
    assert rig.store.events(C) == events, "the run with undelivered events stays"
    rig.publish_all(C)
    rig.pressure.make_room(WT_AFTER * 3)
    assert not rig.store.read[C] and rig.store.written == 15
    assert rig.delivered[C] == events


def test_write_through_survives_a_crash_with_bounded_duplicates() -> None:
    rig = wt_rig()
    events = []
    for turn in range(10):
        events += rig.ingest(H, 7)
        rig.pressure.make_room(turn * 1.1 * WT_AFTER)
    # Every other turn something falls due and everything queued is written
    # with it (one run per delay, not per turn).
    assert rig.store.written == 70
    assert 5 <= len(rig.store.read[H]) <= 6  # a run never spans two chunks
    rig.publish(H, 30)
    rig.pressure.make_room(11 * WT_AFTER)  # releases the 2 runs of 14 delivered
    young = rig.ingest(H, 3)  # accepted just now: may be lost
    rig.store.crash()
    rig.queues, rig.governor = ClassQueues(), rig.new_governor()
    rig.pressure = rig.new_pressure()
    assert rig.store.events(H) == events[28:]
    assert not set(young) & set(rig.store.events(H))
    for _ in range(20):
        rig.pressure.drain(1.0, ALL)
        rig.publish_all(H)
    # Duplicates: the delivered part of the run that was not yet all delivered.
    assert rig.delivered[H] == events[:30] + events[28:]


def test_write_through_class_under_memory_pressure_is_demoted_not_copied_twice() -> None:
    rig = wt_rig(disk=(16 * CHUNK_BYTES,) * 4)
    crit: list[bytes] = []
    now = 0.0
    while rig.store.pending(C) == 0:
        crit += rig.ingest(C, 40)
        now += WT_AFTER
        assert rig.pressure.make_room(now)
    assert rig.telemetry.classes[C].dropped == 0
    assert rig.queues[C].hold_back and rig.queues[C].events < len(crit)
    on_disk = rig.store.events(C)
    assert len(on_disk) == len(set(on_disk)), "no event on disk twice"
    assert rig.queues[C].events + rig.store.pending(C) == len(crit)
    for _ in range(100):
        now += WT_AFTER
        rig.pressure.make_room(now)
        rig.publish_all(C)
        rig.pressure.drain(now, ALL)
    assert rig.delivered[C] == crit


def test_demoting_a_partly_delivered_run_delivers_nothing_twice() -> None:
    rig = wt_rig()
    events = rig.ingest(H, 50)
    rig.pressure.make_room(0.0)
    rig.pressure.make_room(WT_AFTER)
    assert rig.store.written == 50
    rig.publish(H, 20)
    assert rig.pressure._demote(H, WT_AFTER) > 0
    assert rig.queues[H].events == 0 and rig.store.pending(H) == 30
    assert rig.store.events(H) == events[20:]
    rig.pressure.drain(1.0, ALL)
    rig.publish_all(H)
    assert rig.delivered[H] == events


def test_write_through_behind_the_ring_spills_after_the_delay() -> None:
    rig = wt_rig()
    old = [make_event(H, i, 10) for i in range(3)]
    rig.seq[H] = 3
    rig.telemetry.classes[H].received = 3
    assert rig.store.push_back(H, b"".join(old), ends_of(old))
    rig.pressure = rig.new_pressure()
    new = rig.ingest(H, 4)
    rig.pressure.make_room(0.0)
    assert rig.store.pending(H) == 3 and rig.queues[H].back
    rig.pressure.make_room(WT_AFTER)
    assert rig.store.pending(H) == 7 and not rig.queues[H].events
    for _ in range(5):
        rig.pressure.drain(1.0, ALL)
        rig.publish_all(H)
    assert rig.delivered[H] == old + new


def test_write_through_off_writes_nothing_and_loses_memory_at_a_crash() -> None:
    rig = Rig()
    rig.ingest(C, 10)
    rig.pressure.make_room(0.0)
    rig.pressure.make_room(1.0)
    assert rig.store.written == 0 and rig.pressure.write_through_due_s(1.0) is None


def test_park_of_a_write_through_class_rewrites_nothing() -> None:
    rig = wt_rig()
    events = rig.ingest(C, 30)
    rig.pressure.make_room(0.0)
    rig.pressure.make_room(WT_AFTER)
    rig.publish(C, 10)
    parked, lost = rig.pressure.park_in_memory_events(1.0)
    assert (parked, lost) == (20, 0)
    assert rig.store.events(C) == events[10:] and not rig.store.read[C]
    assert rig.store.written == 30


# --------------------------------------------------- issue 8's two defects


def test_a_noncritical_drain_never_reads_past_the_budget_critical_holds() -> None:
    rig = Rig()
    normal = [make_event(N, i) for i in range(60)]
    assert rig.store.push_back(N, b"".join(normal), ends_of(normal))
    rig.pressure = rig.new_pressure()
    while rig.queues.pool.in_use_bytes + CHUNK_BYTES <= BUDGET:
        rig.ingest(C, 30)  # critical fills the budget (the non-critical classes hold nothing)
    assert rig.pressure.noncritical_alloc() == 0
    assert not rig.pressure.can_drain(N, True)
    before = rig.queues.pool.in_use_bytes
    rig.pressure.drain(0.0, ALL)
    assert rig.queues.pool.in_use_bytes == before


def test_parking_critical_into_a_small_ring_keeps_the_oldest() -> None:
    per_chunk = CHUNK_BYTES // (EVENT_PAD + 11)
    rig = Rig(disk=(2 * CHUNK_BYTES + CHUNK_BYTES // 2, 0, 0, 0))
    crit = rig.ingest(C, per_chunk * 4)  # four chunks ahead of an empty ring
    parked, lost = rig.pressure.park_in_memory_events()
    assert parked + lost == len(crit) and lost > 0
    assert rig.store.events(C) == crit[:parked], "the oldest are kept"
    assert rig.telemetry.classes[C].dropped == lost


def test_parking_a_noncritical_class_into_a_full_ring_evicts_the_oldest() -> None:
    per_chunk = CHUNK_BYTES // (EVENT_PAD + 11)
    rig = Rig(disk=(0, 0, 2 * CHUNK_BYTES + CHUNK_BYTES // 2, 0))
    normal = rig.ingest(N, per_chunk * 4)
    parked, lost = rig.pressure.park_in_memory_events()
    assert parked + lost == len(normal) and lost > 0
    assert rig.store.events(N) == normal[lost:], "the oldest go first"
