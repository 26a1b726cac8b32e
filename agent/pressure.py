"""The buffer policy: make room, spill, evict, drain, park.

This module owns every decision that moves events between memory and the spill
rings, over the class queues (agent/queues.py), the buffer governor
(agent/governor.py) and the spill store (agent/spill/store.py):

- make room: non-critical classes beyond `governor.noncritical_limit` move to
  their rings, lowest class first; when their rings are full too, the oldest
  events of the lowest class holding any are evicted and counted; then memory
  keeps room for one more ingest burst, spilling critical if it alone fills it;
- drain: spilled events come back into memory, highest class first, while
  there is room, the class has little in memory and some subscriber wants it;
- park (SIGTERM): everything held in memory goes to the rings in class order.

Pure (STYLE.md): no zmq, no threads, no clock; `now` is an argument. It never
touches a socket: `make_room` answers whether ingest may read another burst,
and the loop pauses or resumes its poller accordingly.

Promises:
- FIFO per class across memory and disk: what the queue holds ahead of the
  ring is spilled in front of it, what waits behind it after it; a record read
  back is released only once every event of it was delivered.
- Critical is never evicted (ingest pauses instead), so no lower class is
  ever kept while critical is dropped.
- Nothing leaves uncounted: every event moved is counted once in telemetry as
  spilled, recovered or dropped (agent/telemetry.py).

# Invariant (per class, checked by tests/test_pressure.py against a model):
#   received == delivered + in memory + on disk + dropped, where "on disk"
#   counts records read back but not yet released only once (in memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from agent.classes import CLASSES, EventClass
from agent.governor import BufferGovernor
from agent.queues import CHUNK_BYTES, Chunk, ClassQueues
from agent.spill.format import Buffer
from agent.telemetry import Telemetry

CRITICAL = int(EventClass.CRITICAL)
NONCRITICAL_LOWEST_FIRST = tuple(reversed(CLASSES[1:]))

# Drain a class's ring while it has fewer than this many bytes in memory:
# enough to keep the upstream busy (4 chunks ~ 8,000 100-byte events, several
# upstream messages), little enough to leave room for a spike.
DRAIN_LOW_WATER = 4 * CHUNK_BYTES


class SpilledBatchLike(Protocol):
    """One record read back (`agent.spill.SpilledBatch`)."""

    @property
    def blob(self) -> bytes: ...
    @property
    def ends(self) -> Sequence[int]: ...
    @property
    def count(self) -> int: ...


class SpillRings(Protocol):
    """What the policy uses of `agent.spill.SpillStore` (tests pass a fake)."""

    def max_batch_bytes(self, cls: int) -> int: ...
    def push_back(self, cls: int, blob: Buffer, ends: Sequence[int]) -> bool: ...
    def push_front(self, cls: int, blob: Buffer, ends: Sequence[int]) -> bool: ...
    def read_next(self, cls: int) -> SpilledBatchLike | None: ...
    def release_read(self, cls: int) -> None: ...
    def drop_front(self, cls: int) -> int: ...
    def pending(self, cls: int) -> int: ...


class BufferPressure:
    """The policy over one agent's queues, governor and spill store."""

    def __init__(
        self,
        queues: ClassQueues,
        governor: BufferGovernor,
        store: SpillRings,
        telemetry: Telemetry,
    ) -> None:
        self.queues = queues
        self.governor = governor
        self.store = store
        self.telemetry = telemetry
        for cls in CLASSES:
            if store.pending(cls):
                # Recovered from a previous run: new events queue behind them.
                queues[cls].hold_back = True

    # -- make room ---------------------------------------------------------------

    def noncritical_alloc(self) -> int:
        """Chunk memory the non-critical classes hold together, bytes."""
        return sum(self.queues[c].alloc_bytes for c in CLASSES if c != CRITICAL)

    def make_room(self, now: float) -> bool:
        """Keep the non-critical classes within their limit (spilling lowest
        first, evicting only when disk is full too) and room for one more
        ingest burst (spilling critical if it alone fills memory). Returns
        whether ingest may read another burst; False: pause it ("not now")."""
        gov = self.governor
        excess = self.noncritical_alloc() - gov.noncritical_limit
        while excess > 0:
            freed = self._spill_one(NONCRITICAL_LOWEST_FIRST, now) or self._evict_one(now)
            if not freed:
                break
            excess -= freed
        pool = self.queues.pool
        while not gov.can_admit(pool.in_use_bytes) and self._spill_one((CRITICAL,), now):
            pass
        return gov.can_admit(pool.in_use_bytes)

    def _spill_one(self, classes: tuple[int, ...], now: float) -> int:
        """Move one chunk of the first class in `classes` that can spill.
        Returns memory bytes freed (0: none could)."""
        for cls in classes:
            q = self.queues[cls]
            chunk = q.spill_candidate()
            if chunk is None:
                continue
            if chunk.held_bytes + 4 * chunk.events > self.store.max_batch_bytes(cls):
                continue  # larger than a ring record can be (config prevents it)
            # A copy, not a view: a view would pin the chunk's mmap open.
            blob, ends = chunk.remaining()
            push = self.store.push_front if q.spills_ahead_of_ring(chunk) else self.store.push_back
            if push(cls, blob, ends):
                if cls == CRITICAL:
                    self.telemetry.critical_spilled()
                self.telemetry.spilled(cls, len(ends))
                freed = chunk.capacity
                q.commit_spill(chunk)
                self.governor.spilled(now)
                return freed
        return 0

    def _evict_one(self, now: float) -> int:
        """Memory and disk are full: drop the oldest events of the lowest class
        that holds any. Critical is never evicted (ingest pauses instead), so
        it never is while a lower class holds data. Returns memory bytes freed."""
        for cls in NONCRITICAL_LOWEST_FIRST:
            q = self.queues[cls]
            if not q.events:
                continue
            if not q.front and self.store.pending(cls):
                # The class's oldest events are on disk (behind nothing in
                # memory): drop them there, and move memory into the freed room.
                self.telemetry.dropped(cls, self.store.drop_front(cls))
                return self._spill_one((cls,), now)
            chunk = q.evict_oldest()
            assert chunk is not None
            if chunk.token is not None:
                self.store.release_read(cls)
            self.telemetry.dropped(cls, chunk.events)
            freed = chunk.capacity
            q.recycle(chunk)
            return freed
        return 0

    # -- drain -------------------------------------------------------------------

    def can_drain(self, cls: int, deliverable: bool) -> bool:
        """Read back from disk only what memory can take without spilling it
        again next turn (two chunks below the spill threshold), and only for a
        class some subscriber wants (`deliverable`): with nobody to deliver to,
        data read back would only compete for memory with what keeps arriving."""
        q = self.queues[cls]
        if q.front_bytes >= DRAIN_LOW_WATER or not self.store.pending(cls):
            return False
        if not deliverable:
            return False
        gov = self.governor
        if cls == CRITICAL:
            return gov.can_admit(self.queues.pool.in_use_bytes + 2 * CHUNK_BYTES)
        used = self.noncritical_alloc()
        if used + 2 * CHUNK_BYTES <= gov.noncritical_limit:
            return True
        # Memory is near the threshold with data queued behind the ring: until
        # the ring drains, none of this class can be published. Take one record
        # anyway (never out of the critical reserve); make_room then moves
        # other data out, or, with disk full too, evicts the oldest.
        return (
            q.front_events == 0
            and used + CHUNK_BYTES <= gov.budget_bytes - gov.critical_reserve_bytes
        )

    def drain(self, now: float, deliverable: Sequence[bool]) -> bool:
        """Read spilled events back into memory, highest class first. Returns
        True if any class got publishable events it did not have (read back,
        or what waited behind an emptied ring)."""
        moved_any = False
        for cls in CLASSES:
            q = self.queues[cls]
            if not q.hold_back:
                continue
            while self.can_drain(cls, deliverable[cls]):
                batch = self.store.read_next(cls)
                if batch is None:
                    break
                if not batch.count:
                    # Every piece of it was damaged (counted by the store).
                    self.store.release_read(cls)
                    continue
                q.push_recovered(batch.blob, batch.ends, token=True)
                self.telemetry.recovered(cls, batch.count)
                self.governor.drained(now)
                moved_any = True
            if not self.store.pending(cls):
                q.merge_back()
                moved_any = moved_any or bool(q.front_events)
        return moved_any

    # -- park (SIGTERM) ----------------------------------------------------------

    def park_in_memory_events(self) -> tuple[int, int]:
        """Move every event held in memory into the rings, keeping class order:
        what sat ahead of the ring goes in front of it (newest first), what
        queued behind it after it. Chunks read back from disk still own their
        ring records: those are released (oldest first, as they were read) and
        their undelivered rest is put back in front like any other.
        Returns (events parked, events lost because the ring was full)."""
        parked = lost = 0
        for cls in CLASSES:
            q = self.queues[cls]
            front, back = q.drain_all()
            for chunk in front:
                if chunk.token is not None:
                    self.store.release_read(cls)
            for chunk in reversed(front):
                n, ok = self._park(cls, chunk, front_side=True)
                parked += n if ok else 0
                lost += 0 if ok else n
            for chunk in back:
                n, ok = self._park(cls, chunk, front_side=False)
                parked += n if ok else 0
                lost += 0 if ok else n
        return parked, lost

    def _park(self, cls: int, chunk: Chunk, *, front_side: bool) -> tuple[int, bool]:
        blob, ends = chunk.remaining()
        self.queues[cls].recycle(chunk)
        n = len(ends)
        if not n:
            return 0, True
        push = self.store.push_front if front_side else self.store.push_back
        while not push(cls, blob, ends):
            # The class's share of the disk is full: memory and disk are both
            # exhausted, so the oldest events go first (never these newer ones).
            # Critical is never evicted; it is lost only if its ring is full.
            evicted = 0 if (front_side or cls == CRITICAL) else self.store.drop_front(cls)
            if not evicted:
                self.telemetry.dropped(cls, n)
                return n, False
            self.telemetry.dropped(cls, evicted)
        self.telemetry.spilled(cls, n)
        return n, True
