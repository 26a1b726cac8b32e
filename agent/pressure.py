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
- park (SIGTERM): everything held in memory goes to the rings in class order;
- write-through (`[spill] write_through`, INTERFACE.md "Crash durability"): an
  event of such a class still queued `write_through_after_s` after it was
  accepted is also written to its ring, as a run read but not released, while
  it stays queued; the run is released once all of it was delivered.

Write-through, how (per write-through class):
- events of `front` are numbered from the class's head: delivered + removed
  (evicted from the head, or demoted); `_on_disk_to` is the number below which
  every front event is on disk as a run read but not released (written through,
  or read back by the drain);
- each turn (`make_room`), runs whose events were all delivered are released
  (`_release_delivered`), and front events older than `write_through_after_s`
  not yet on disk are written (`_write`), one run per chunk touched. Events
  delivered within that time (the normal case, batching included: the loop
  passes linger + 5 ms) are never written;
- while the ring holds unread events (`hold_back`), new events wait in `back`:
  those are spilled (moved, not copied) once older than `write_through_after_s`;
- memory pressure on such a class never spills a front chunk (its events are on
  disk already, a second copy would duplicate them): it is *demoted* instead -
  every front event is on disk, so the memory copies are dropped and the runs
  become unread again (`store.unread_all`); the drain brings them back. A head
  run partly delivered is released and its rest pushed in front of the ring, so
  nothing delivered is delivered again. Park at stop demotes the same way.
- Duplicates after a kill -9: runs delivered but not yet released (at most the
  events delivered since the last turn's release) and the delivered part of the
  head run (at most one chunk's worth, <= 256 KiB): each comes back once.
- kill -9 loses no write-through event accepted more than
  write_through_after_s + one turn earlier (the run sits in the MAP_SHARED
  mapping); unless the ring had no room (then it is counted as lagging and
  written as soon as there is room).

Pure (STYLE.md): no zmq, no threads, no clock; `now` is an argument. It never
touches a socket: `make_room` answers whether ingest may read another burst,
and the loop pauses or resumes its poller accordingly.

Promises:
- FIFO per class across memory and disk: what the queue holds ahead of the
  ring is spilled in front of it, what waits behind it after it; a record read
  back is released only once every event of it was delivered.
- Critical is never evicted (ingest pauses instead), so no lower class is
  ever kept while critical is dropped. Parking critical into a ring too small
  for it keeps the oldest of what memory held ahead of the ring.
- A drain never reads back past the budget: with critical holding much of
  memory, the other classes' drain waits (issue 8's model found it reading
  past it until the next make_room spilled again).
- Nothing leaves uncounted: every event moved is counted once in telemetry as
  spilled, recovered or dropped (agent/telemetry.py).

# Invariant (per class, checked by tests/test_pressure.py against a model):
#   received == delivered + in memory + on disk + dropped, where "on disk"
#   counts records read back but not yet released only once (in memory).
"""

from __future__ import annotations

import collections
from array import array
from collections.abc import Iterable, Sequence
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
# Write-through: events still queued this long after they were accepted are
# written to their ring. The loop passes upstream linger + 5 ms, so a batch that
# leaves on time is never written; 10 ms keeps the 50 ms kill -9 promise with
# room for a slow turn.
WRITE_THROUGH_AFTER_S = 0.010


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
    def write_through(self, cls: int, blob: Buffer, ends: Sequence[int]) -> bool: ...
    def read_batches(self, cls: int) -> int: ...
    def unread_all(self, cls: int) -> int: ...
    @property
    def shared_budget(self) -> bool: ...
    def room_bytes(self, cls: int) -> int: ...
    def run_bytes(self, nbytes: int, events: int) -> int: ...


class WriteThroughState:
    """One class's write-through state for the snapshot."""

    __slots__ = ("enabled", "held", "lagging")

    def __init__(self, enabled: bool, held: int, lagging: int) -> None:
        self.enabled = enabled
        self.held = held  # in memory and on disk (written through or read back)
        self.lagging = lagging  # queued, not on disk yet (younger than the delay, or no room)


class BufferPressure:
    """The policy over one agent's queues, governor and spill store."""

    def __init__(
        self,
        queues: ClassQueues,
        governor: BufferGovernor,
        store: SpillRings,
        telemetry: Telemetry,
        write_through: Iterable[int] = (),
        write_through_after_s: float = WRITE_THROUGH_AFTER_S,
    ) -> None:
        self.queues = queues
        self.governor = governor
        self.store = store
        self.telemetry = telemetry
        wt = set(write_through)
        self.write_through = tuple(c for c in CLASSES if c in wt)
        self._wt = [c in wt for c in CLASSES]
        self._after = write_through_after_s
        n = len(CLASSES)
        self._removed = [0] * n  # events gone from the head of front, not delivered
        self._on_disk_to = [0] * n  # front events below this number are on disk
        # (first, end) numbers of the written-through runs not yet released, oldest first.
        self._runs: list[collections.deque[tuple[int, int]]] = [
            collections.deque() for _ in CLASSES
        ]
        # (number, time): front reached that number at that time (for the delay).
        self._marks: list[collections.deque[tuple[int, float]]] = [
            collections.deque() for _ in CLASSES
        ]
        self._back_since: list[float | None] = [None] * n
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
        for cls in self.write_through:
            self._write_through(cls, now)
        gov = self.governor
        excess = self.noncritical_alloc() - gov.noncritical_limit
        while excess > 0:
            freed = self._spill_one(NONCRITICAL_LOWEST_FIRST, now) or self._evict_one(now)
            if not freed:
                break
            excess -= freed
        pool = self.queues.pool
        critical = self.queues[CRITICAL]
        while not gov.can_admit(pool.in_use_bytes):
            if self._spill_one((CRITICAL,), now):
                continue
            # Critical has a chunk to spill and the spill is full: lower classes
            # give up disk room (never critical's memory).
            if critical.spill_candidate() is None or not self._claim(CRITICAL):
                break
        return gov.can_admit(pool.in_use_bytes)

    def _spill_one(self, classes: tuple[int, ...], now: float) -> int:
        """Move one chunk of the first class in `classes` that can spill.
        Returns memory bytes freed (0: none could)."""
        for cls in classes:
            q = self.queues[cls]
            chunk = q.spill_candidate()
            if chunk is None:
                continue
            if self._wt[cls] and not (q.hold_back and q.back and chunk is q.back[0]):
                # Front events of a write-through class are on disk (or about to
                # be): free their memory without a second copy.
                freed = self._demote(cls, now)
                if freed:
                    return freed
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
            if not q.events and not self.store.pending(cls):
                continue
            if not q.front and self.store.pending(cls):
                # The class's oldest events are on disk (behind nothing in
                # memory): drop them there, and move memory into the freed room.
                if not self.store.shared_budget:
                    self.telemetry.dropped(cls, self.store.drop_front(cls))
                    return self._spill_one((cls,), now)
                # One spill budget: whichever class needs the room, lowest
                # first; runs may be small, so drop until two chunks are free.
                while (
                    self.store.room_bytes(cls) < 2 * CHUNK_BYTES
                    and self.store.pending(cls)
                    and not self.store.read_batches(cls)
                ):
                    self.telemetry.dropped(cls, self.store.drop_front(cls))
                freed = self._spill_one(NONCRITICAL_LOWEST_FIRST, now)
                if freed:
                    return freed
                if not q.events:
                    continue  # still no room: the next class's oldest
                # Still no room for its memory: its oldest in memory go next.
            from_front = bool(q.front)
            chunk = q.evict_oldest()
            assert chunk is not None
            if from_front:
                self._removed[cls] += chunk.events
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
        in_use = self.queues.pool.in_use_bytes
        if cls == CRITICAL:
            if gov.can_admit(in_use + 2 * CHUNK_BYTES):
                return True
            # Critical queued behind its own ring fills memory: until the ring
            # drains none of it can be published. One record anyway, within
            # the budget (make_room then pauses ingest).
            return q.front_events == 0 and in_use + CHUNK_BYTES <= gov.budget_bytes
        used = self.noncritical_alloc()
        if used + 2 * CHUNK_BYTES <= gov.noncritical_limit and gov.can_admit(
            in_use + 2 * CHUNK_BYTES
        ):
            return True
        # Memory is near the threshold with data queued behind the ring: until
        # the ring drains, none of this class can be published. Take one record
        # anyway (never out of the critical reserve, never past the budget when
        # critical holds much of it: issue 8's model found a drain reading back
        # past it); make_room then moves other data out, or, with disk full too,
        # evicts the oldest.
        return (
            q.front_events == 0
            and used + CHUNK_BYTES <= gov.budget_bytes - gov.critical_reserve_bytes
            and in_use + CHUNK_BYTES <= gov.budget_bytes
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
                if self._wt[cls]:
                    # Read back: on disk as a run read but not released, like a
                    # written-through one (what front held before it was, too).
                    self._on_disk_to[cls] = self._head(cls) + q.front_events
                    self._marks[cls].clear()
                self.telemetry.recovered(cls, batch.count)
                self.governor.drained(now)
                moved_any = True
            if not self.store.pending(cls):
                q.merge_back()
                moved_any = moved_any or bool(q.front_events)
        return moved_any

    # -- write-through -----------------------------------------------------------

    def _head(self, cls: int) -> int:
        """The number of the class's first front event."""
        return self.telemetry.classes[cls].delivered + self._removed[cls]

    def _write_through(self, cls: int, now: float) -> None:
        """Release what was delivered, then write (or, behind the ring, spill)
        what has waited `write_through_after_s`."""
        self._release_delivered(cls)
        q = self.queues[cls]
        if q.hold_back:
            # Front holds only runs read back; new events wait behind the ring.
            self._marks[cls].clear()
            if not q.back:
                self._back_since[cls] = None
                return
            since = self._back_since[cls]
            if since is None:
                self._back_since[cls] = now
            elif now - since >= self._after:
                while q.back and self._spill_back(cls, now):
                    pass
                self._back_since[cls] = now if q.back else None
            return
        self._back_since[cls] = None
        head = self._head(cls)
        top = head + q.front_events
        done = self._on_disk_to[cls] = max(self._on_disk_to[cls], head)
        marks = self._marks[cls]
        while marks and marks[0][0] <= done:
            marks.popleft()
        if top > done and (not marks or marks[-1][0] < top):
            marks.append((top, now))
        due = 0
        while marks and now - marks[0][1] >= self._after:
            due = marks.popleft()[0]
        if due > done:
            # Everything queued goes with what is due: one run per ~delay, not
            # one per turn (a turn is ~1 ms under load; tiny runs cost 8-18% of
            # the peak ingest rate in the brownout with the subscriber away).
            if self._write(cls, top):
                marks.clear()
            else:
                marks.appendleft((due, now))  # no room: try again after the delay

    def _claim(self, cls: int) -> bool:
        """The spill budget is full and `cls` needs room: the lowest class below
        it holding disk space loses its oldest events (counted): its oldest run
        on disk, or, while runs of it are read back or written through (in
        memory and on disk), its oldest chunk in memory, whose runs are then
        released. False: nothing lower holds disk space, or the store has a
        fixed share per class (dropping would not help)."""
        if not self.store.shared_budget:
            return False
        for lower in NONCRITICAL_LOWEST_FIRST:
            if lower <= cls:
                break
            q = self.queues[lower]
            if self.store.read_batches(lower) and q.front:
                chunk = q.evict_oldest()
                assert chunk is not None
                self._removed[lower] += chunk.events
                if chunk.token is not None:
                    self.store.release_read(lower)
                self.telemetry.dropped(lower, chunk.events)
                q.recycle(chunk)
                if self._wt[lower]:
                    self._release_delivered(lower)
                return True
            if self.store.pending(lower) and not self.store.read_batches(lower):
                self.telemetry.dropped(lower, self.store.drop_front(lower))
                return True
        return False

    def _release_delivered(self, cls: int) -> None:
        head = self._head(cls)
        runs = self._runs[cls]
        while runs and runs[0][1] <= head:
            runs.popleft()
            self.store.release_read(cls)

    def _write(self, cls: int, upto: int) -> bool:
        """Write front events [_on_disk_to, upto) through, one run per chunk.
        False: the ring had no room (what was written stays written)."""
        q = self.queues[cls]
        lo = self._on_disk_to[cls]
        end = self._head(cls) + q.front_events
        spans: list[tuple[Chunk, int, int, int]] = []
        for chunk in reversed(q.front):
            first = end - chunk.events
            if end <= lo:
                break
            if first < upto:
                a = max(lo, first)
                b = min(upto, end)
                spans.append((chunk, chunk.head + a - first, chunk.head + b - first, a))
            end = first
        for chunk, a, b, number in reversed(spans):
            blob, ends = _slice(chunk, a, b)
            while not self.store.write_through(cls, blob, ends):
                if not self._claim(cls):
                    return False
            self._runs[cls].append((number, number + b - a))
            self._on_disk_to[cls] = number + b - a
            self.telemetry.written_through(cls, b - a)
        return True

    def _spill_back(self, cls: int, now: float) -> bool:
        """Move the oldest chunk behind the ring to it. False: no room."""
        q = self.queues[cls]
        chunk = q.back[0]
        blob, ends = chunk.remaining()
        while not self.store.push_back(cls, blob, ends):
            if not self._claim(cls):
                return False
        self.telemetry.spilled(cls, len(ends))
        if cls == CRITICAL:
            self.telemetry.critical_spilled()
        q.commit_spill(chunk)
        self.governor.spilled(now)
        return True

    def _demote(self, cls: int, now: float) -> int:
        """Drop the memory copies of the class's front (write everything through
        first); its runs become unread, to come back through the drain. Returns
        memory bytes freed (0: the ring had no room for what was not on disk)."""
        q = self.queues[cls]
        if not q.front:
            return 0
        if not q.hold_back:
            top = self._head(cls) + q.front_events
            if self._on_disk_to[cls] < top and not self._write(cls, top):
                return 0
        head = self._head(cls)
        first = q.front[0]
        # The head run partly delivered (or evicted): its rest, to put back alone.
        rest: tuple[Buffer, Sequence[int]] | None = None
        if first.token is not None:
            if first.head:
                rest = first.remaining()
        elif self._runs[cls] and self._runs[cls][0][0] < head:
            run_end = self._runs[cls][0][1]
            rest = _slice(first, first.head, first.head + run_end - head)
        moved = total = q.front_events
        freed = 0
        while q.front:
            chunk = q.evict_oldest()
            assert chunk is not None
            freed += chunk.capacity
            q.recycle(chunk)
        self.store.unread_all(cls)
        if rest is not None:
            self.store.read_next(cls)
            self.store.release_read(cls)
            if not self.store.push_front(cls, rest[0], rest[1]):
                # Only if releasing the run did not leave room for its own rest.
                self.telemetry.dropped(cls, len(rest[1]))
                moved -= len(rest[1])
        q.hold_back = True
        self._removed[cls] += total
        self._runs[cls].clear()
        self._marks[cls].clear()
        self._on_disk_to[cls] = self._head(cls)
        self.telemetry.spilled(cls, moved)
        if cls == CRITICAL:
            self.telemetry.critical_spilled()
        self.governor.spilled(now)
        return freed

    def write_through_due_s(self, now: float) -> float | None:
        """Seconds until some write-through work falls due (the loop's poll
        timeout), None when nothing waits."""
        due: float | None = None
        for cls in self.write_through:
            for at in (
                self._marks[cls][0][1] if self._marks[cls] else None,
                self._back_since[cls],
            ):
                if at is not None:
                    left = max(0.0, at + self._after - now)
                    due = left if due is None else min(due, left)
            q = self.queues[cls]
            if q.hold_back:
                unseen = bool(q.back) and self._back_since[cls] is None
            else:
                head = self._head(cls)
                top = head + q.front_events
                unseen = top > max(self._on_disk_to[cls], head) and not self._marks[cls]
            if unseen:
                due = 0.0  # queued since the last make_room: look at once
        return due

    def write_through_state(self) -> tuple[WriteThroughState, ...]:
        """Per class: enabled, events held in memory and on disk, events lagging."""
        out = []
        for cls in CLASSES:
            q = self.queues[cls]
            if not self._wt[cls]:
                out.append(WriteThroughState(False, 0, 0))
                continue
            head = self._head(cls)
            on_disk = min(max(self._on_disk_to[cls], head), head + q.front_events) - head
            if q.hold_back:
                on_disk = q.front_events
            held = on_disk
            lagging = q.events - held
            out.append(WriteThroughState(True, held, lagging))
        return tuple(out)

    # -- park (SIGTERM) ----------------------------------------------------------

    def park_in_memory_events(self, now: float = 0.0) -> tuple[int, int]:
        """Move every event held in memory into the rings, keeping class order:
        what sat ahead of the ring goes in front of it (newest first), what
        queued behind it after it. A write-through class's front is demoted
        (its events are on disk already). Chunks read back from disk still own
        their ring records: those are released (oldest first, as they were read)
        and their undelivered rest is put back in front like any other.
        Returns (events parked, events lost because the ring was full)."""
        parked = lost = 0
        for cls in CLASSES:
            q = self.queues[cls]
            if self._wt[cls] and q.front:
                before = self.telemetry.classes[cls].spilled
                dropped = self.telemetry.classes[cls].dropped
                if self._demote(cls, now):
                    parked += self.telemetry.classes[cls].spilled - before
                    lost += self.telemetry.classes[cls].dropped - dropped
            front, back = q.drain_all()
            for _ in range(self.store.read_batches(cls)):
                self.store.release_read(cls)
            self._runs[cls].clear()
            if cls == CRITICAL:
                n, gone = self._park_critical_front(front)
                parked += n
                lost += gone
            else:
                for chunk in reversed(front):
                    n, ok = self._park(cls, chunk, front_side=True)
                    parked += n if ok else 0
                    lost += 0 if ok else n
            for chunk in back:
                n, ok = self._park(cls, chunk, front_side=False)
                parked += n if ok else 0
                lost += 0 if ok else n
        return parked, lost

    def _park_critical_front(self, front: list[Chunk]) -> tuple[int, int]:
        """Critical ahead of its ring, newest first, but only the oldest chunks
        that fit the room left (critical is never evicted for newer critical, so
        what does not fit is the newest). Returns (parked, lost)."""
        parts = []
        for chunk in front:
            blob, ends = chunk.remaining()
            self.queues[CRITICAL].recycle(chunk)
            if len(ends):
                parts.append((blob, ends))
        need = sum(self.store.run_bytes(len(blob), len(ends)) for blob, ends in parts)
        while self.store.room_bytes(CRITICAL) < need and self._claim(CRITICAL):
            pass
        room = self.store.room_bytes(CRITICAL)
        fit = 0
        for blob, ends in parts:
            room -= self.store.run_bytes(len(blob), len(ends))
            if room < 0:
                break
            fit += 1
        parked = lost = 0
        for i, (blob, ends) in enumerate(reversed(parts)):
            n = len(ends)
            if len(parts) - i <= fit and self.store.push_front(CRITICAL, blob, ends):
                parked += n
                self.telemetry.spilled(CRITICAL, n)
            else:
                lost += n
                self.telemetry.dropped(CRITICAL, n)
        return parked, lost

    def _park(self, cls: int, chunk: Chunk, *, front_side: bool) -> tuple[int, bool]:
        blob, ends = chunk.remaining()
        self.queues[cls].recycle(chunk)
        n = len(ends)
        if not n:
            return 0, True
        push = self.store.push_front if front_side else self.store.push_back
        while not push(cls, blob, ends):
            # The spill is full: memory and disk are both exhausted, so the
            # lowest class's oldest events go first (a lower class's on disk,
            # then this class's own, never these newer ones). Critical is never
            # evicted; it is lost only if the spill holds nothing lower.
            if self._claim(cls):
                continue
            evicted = 0 if (front_side or cls == CRITICAL) else self.store.drop_front(cls)
            if not evicted:
                self.telemetry.dropped(cls, n)
                return n, False
            self.telemetry.dropped(cls, evicted)
        self.telemetry.spilled(cls, n)
        return n, True


def _slice(chunk: Chunk, a: int, b: int) -> tuple[bytes, array[int]]:
    """Events [a, b) of a chunk (indexes into its ends) as a blob and ends relative to it."""
    ends = chunk.ends
    start = ends[a - 1] if a else 0
    blob = chunk.buf[start : ends[b - 1]]
    return blob, array("I", (e - start for e in ends[a:b]))
