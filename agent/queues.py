"""Per-class FIFOs of event bytes held in large chunks, with byte accounting.

This module owns where accepted events live in memory and how much memory that
costs. Everything that affects "how many bytes are held" happens here.

Why chunks: one Python `bytes` per event pins pymalloc arenas; measured here,
3M 100-byte objects with 1% kept alive held 427 MB of RSS after the rest was
freed (FACTS.md, "Memory"). Events are therefore copied into chunk buffers of
`CHUNK_BYTES`, each an anonymous mmap: closing one gives its pages straight back
to the OS (no malloc arena, no dynamic mmap threshold), so the byte budget
is honest and a shrink shows in RSS. A chunk also makes an upstream batch body
one slice, and a spill record one chunk.

Layout of a class queue, in delivery order:

    front (deque of Chunk)  ->  [the class's spill ring, owned by the loop]  ->  back

While the ring holds events of the class, newly accepted events go to `back`
so they cannot overtake what is on disk; `front` is what may be published now.
The loop moves `back` into `front` once the ring is empty (`merge_back`).

Pure: no sockets, no files, no clock. The only OS contact is allocating and
releasing anonymous memory through `ChunkPool`.
"""

from __future__ import annotations

import array
import bisect
import collections
import dataclasses
import itertools
import mmap
from collections.abc import Iterable, Sequence

from agent.classes import CLASSES

# 256 KiB: ~2,000 events of 120 bytes. Big enough that per-chunk costs (one
# mmap/munmap, one spill record, one checksum) vanish per event, small enough
# that a class with a trickle of events pins little memory (4 classes x 2
# chunks = 2 MiB at most while idle).
CHUNK_BYTES = 256 * 1024


class Chunk:
    """A contiguous run of events of one class: bytes + cumulative end offsets.

    Invariant: `ends` is strictly increasing, `ends[-1] == size` when non-empty,
    and events `[head, len(ends))` are the ones not yet handed out.
    """

    __slots__ = ("buf", "capacity", "size", "ends", "head", "token")

    def __init__(self, capacity: int) -> None:
        self.buf = mmap.mmap(-1, capacity)
        self.capacity = capacity
        self.size = 0
        self.ends: array.array[int] = array.array("I")
        self.head = 0
        # Set by the loop for chunks drained back from a spill ring: the ring
        # record is released only once every event of the chunk is delivered.
        self.token: object | None = None

    @property
    def free(self) -> int:
        return self.capacity - self.size

    @property
    def events(self) -> int:
        return len(self.ends) - self.head

    @property
    def start(self) -> int:
        """Byte offset of the first event not yet handed out."""
        return self.ends[self.head - 1] if self.head else 0

    @property
    def held_bytes(self) -> int:
        return self.size - self.start

    def append_blob(self, blob: bytes | memoryview, ends: Iterable[int]) -> None:
        """Append events already concatenated in `blob`; `ends` relative to blob start."""
        base = self.size
        n = len(blob)
        self.buf[base : base + n] = blob
        self.size = base + n
        if base:
            self.ends.extend(e + base for e in ends)
        else:
            self.ends.extend(ends)

    def append_sized(self, blob: bytes | memoryview, sizes: Sequence[int]) -> None:
        """Append events concatenated in `blob`, given each one's size: the
        ends are accumulated in C (itertools), no Python step per event."""
        base = self.size
        n = len(blob)
        self.buf[base : base + n] = blob
        self.size = base + n
        self.ends.extend(itertools.islice(itertools.accumulate(sizes, initial=base), 1, None))

    def remaining(self) -> tuple[bytes, array.array[int]]:
        """The events not yet handed out, as one blob and ends relative to it."""
        start = self.start
        blob = self.buf[start : self.size]
        ends = array.array("I", (e - start for e in self.ends[self.head :]))
        return blob, ends

    def reset(self) -> None:
        self.size = 0
        del self.ends[:]
        self.head = 0
        self.token = None

    def close(self) -> None:
        self.buf.close()


class ChunkPool:
    """Allocates chunks and keeps freed standard-size ones for reuse.

    `allocated_bytes` (chunks in use + pooled) is what the buffers cost in
    RSS; the governor bounds it and `trim()` gives pooled memory back.
    """

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.chunk_bytes = chunk_bytes
        self._pool: list[Chunk] = []
        self.in_use_bytes = 0

    @property
    def pooled_bytes(self) -> int:
        return len(self._pool) * self.chunk_bytes

    @property
    def allocated_bytes(self) -> int:
        return self.in_use_bytes + self.pooled_bytes

    def cost(self, nbytes: int) -> int:
        """Bytes of new allocation a chunk able to hold `nbytes` costs."""
        return max(self.chunk_bytes, nbytes)

    def get(self, nbytes: int) -> Chunk:
        if nbytes <= self.chunk_bytes and self._pool:
            chunk = self._pool.pop()
        else:
            chunk = Chunk(self.cost(nbytes))
        self.in_use_bytes += chunk.capacity
        return chunk

    def put(self, chunk: Chunk) -> None:
        self.in_use_bytes -= chunk.capacity
        if chunk.capacity == self.chunk_bytes:
            chunk.reset()
            self._pool.append(chunk)
        else:
            chunk.close()

    def trim(self, keep_bytes: int = 0, max_bytes: int | None = None) -> int:
        """Release pooled chunks until at most `keep_bytes` stay pooled, or
        `max_bytes` were released in this call; returns bytes freed."""
        freed = 0
        while self._pool and self.pooled_bytes > keep_bytes:
            if max_bytes is not None and freed >= max_bytes:
                break
            self._pool.pop().close()
            freed += self.chunk_bytes
        return freed


@dataclasses.dataclass(frozen=True)
class QueueStats:
    events: int
    bytes: int
    chunks: int


class ClassQueue:
    """FIFO of one class's events: `front` (publishable) and `back` (behind the ring).

    Invariants: `events`/`bytes` count what is held in front + back;
    `front_events`/`front_bytes` only front; `alloc_bytes` is the capacity of
    every chunk held (what this class costs in RSS).
    """

    def __init__(self, pool: ChunkPool) -> None:
        self._pool = pool
        self.front: collections.deque[Chunk] = collections.deque()
        self.back: collections.deque[Chunk] = collections.deque()
        # True while the class's spill ring holds events: new events go to `back`.
        self.hold_back = False
        self.events = 0
        self.bytes = 0
        self.front_events = 0
        self.front_bytes = 0
        self.alloc_bytes = 0

    def _new_chunk(self, nbytes: int) -> Chunk:
        chunk = self._pool.get(nbytes)
        self.alloc_bytes += chunk.capacity
        return chunk

    def recycle(self, chunk: Chunk) -> None:
        """Give back a chunk this queue no longer holds (after consume/evict/spill)."""
        self.alloc_bytes -= chunk.capacity
        self._pool.put(chunk)

    def _count(self, front: bool, events: int, nbytes: int) -> None:
        self.events += events
        self.bytes += nbytes
        if front:
            self.front_events += events
            self.front_bytes += nbytes

    # -- filling ---------------------------------------------------------------

    def push_many(self, events: Sequence[bytes]) -> None:
        """Append events (original bytes) in order. Never refuses: the loop
        checks room with the governor before it reads the socket."""
        if not events:
            return
        lane = self.back if self.hold_back else self.front
        blob = b"".join(events)
        sizes = list(map(len, events))
        ends = list(itertools.accumulate(sizes))
        self._count(lane is self.front, len(ends), len(blob))
        n = len(ends)
        done = 0  # events written so far
        base = 0  # byte offset in blob of event `done`
        view = memoryview(blob)
        while done < n:
            fit = 0
            if lane and lane[-1].token is None:
                # Never append to a chunk read back from disk: its ring record
                # is released when exactly its own events are delivered.
                tail = lane[-1]
                fit = bisect.bisect_right(ends, base + tail.free, lo=done) - done
            if fit == 0:
                tail = self._new_chunk(ends[done] - base)
                lane.append(tail)
                fit = bisect.bisect_right(ends, base + tail.free, lo=done) - done
            stop = done + fit
            end = ends[stop - 1]
            tail.append_sized(view[base:end], sizes[done:stop])
            done = stop
            base = end

    def push_recovered(self, blob: bytes | memoryview, ends: Sequence[int], token: object) -> Chunk:
        """Append events read back from the spill ring at the end of `front`,
        in a chunk of their own that carries the ring's `token`."""
        chunk = self._new_chunk(len(blob))
        chunk.append_blob(blob, ends)
        chunk.token = token
        self.front.append(chunk)
        self._count(True, len(ends), len(blob))
        return chunk

    def merge_back(self) -> None:
        """The ring is empty again: what waited behind it becomes publishable."""
        for chunk in self.back:
            self.front_events += chunk.events
            self.front_bytes += chunk.held_bytes
        self.front.extend(self.back)
        self.back.clear()
        self.hold_back = False

    # -- publishing ------------------------------------------------------------

    def peek_batch(self, max_events: int, max_bytes: int) -> tuple[bytes, int]:
        """The oldest publishable events as one body (a copy) and their count.

        A batch never spans chunks; it holds at least one event even if that
        event alone exceeds `max_bytes`. Nothing is removed: `consume` does that
        once the send succeeded, so a refused send loses nothing.
        """
        chunk = self.front[0]
        head = chunk.head
        ends = chunk.ends
        start = ends[head - 1] if head else 0
        stop = min(len(ends), head + max_events)
        # Last event that keeps the body within max_bytes (at least one).
        stop = max(head + 1, bisect.bisect_right(ends, start + max_bytes, head, stop))
        return chunk.buf[start : ends[stop - 1]], stop - head

    def consume(self, count: int) -> Chunk | None:
        """Remove `count` events peeked from the head chunk. A chunk emptied by
        this is returned if it came from disk (the caller releases its ring
        record, then `recycle`s it); other emptied chunks are recycled here."""
        chunk = self.front[0]
        start = chunk.start
        chunk.head += count
        nbytes = chunk.start - start
        self._count(True, -count, -nbytes)
        if chunk.head < len(chunk.ends):
            return None
        self.front.popleft()
        if chunk.token is not None:
            return chunk
        self.recycle(chunk)
        return None

    # -- spilling and eviction ---------------------------------------------------

    def spill_candidate(self) -> Chunk | None:
        """The chunk to move to disk next, keeping FIFO order across the ring.

        Preferably the oldest chunk of `back` (it goes behind the ring). Else
        the newest chunk of `front`, unless it is partly published or came from
        disk: it goes behind the ring if the ring is empty, or in front of it
        (`spills_ahead_of_ring`) if the ring holds events, which is only
        allowed while no chunk read back from the ring is still in memory.
        Nothing changes until `commit_spill`.
        """
        if self.hold_back and self.back:
            return self.back[0]
        if not self.front:
            return None
        chunk = self.front[-1]
        if chunk.head or chunk.token is not None:
            return None
        if self.hold_back and any(c.token is not None for c in self.front):
            return None
        return chunk

    def spills_ahead_of_ring(self, chunk: Chunk) -> bool:
        """True if `chunk` (from spill_candidate) belongs in front of the ring."""
        return self.hold_back and bool(self.front) and chunk is self.front[-1]

    def commit_spill(self, chunk: Chunk) -> None:
        """`chunk` (from spill_candidate) is on disk now: forget it."""
        if self.back and chunk is self.back[0]:
            self.back.popleft()
            self._count(False, -chunk.events, -chunk.held_bytes)
        else:
            assert self.front[-1] is chunk
            self.front.pop()
            self._count(True, -chunk.events, -chunk.held_bytes)
            # From now on new events queue behind what went to disk.
            self.hold_back = True
        self.recycle(chunk)

    def evict_oldest(self) -> Chunk | None:
        """Remove the oldest chunk held in memory (memory and disk both full)
        and return it; the caller counts its events as dropped, releases its
        ring record if it has a token, and recycles it."""
        if self.front:
            chunk = self.front.popleft()
            self._count(True, -chunk.events, -chunk.held_bytes)
        elif self.back:
            chunk = self.back.popleft()
            self._count(False, -chunk.events, -chunk.held_bytes)
        else:
            return None
        return chunk

    def drain_all(self) -> tuple[list[Chunk], list[Chunk]]:
        """Every chunk (front, back) for a clean stop; the queue is left empty.
        The caller recycles them."""
        front, back = list(self.front), list(self.back)
        self.front.clear()
        self.back.clear()
        self.events = self.bytes = self.front_events = self.front_bytes = 0
        self.hold_back = False
        return front, back

    def statistics(self) -> QueueStats:
        return QueueStats(self.events, self.bytes, len(self.front) + len(self.back))


class ClassQueues:
    """The four class queues over one chunk pool."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.pool = ChunkPool(chunk_bytes)
        self.by_class: tuple[ClassQueue, ...] = tuple(ClassQueue(self.pool) for _ in CLASSES)

    def __getitem__(self, cls: int) -> ClassQueue:
        return self.by_class[cls]

    @property
    def used_bytes(self) -> int:
        return sum(q.bytes for q in self.by_class)

    @property
    def events(self) -> int:
        return sum(q.events for q in self.by_class)
