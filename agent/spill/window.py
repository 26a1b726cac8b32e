"""A sparse ring's allocated window: allocating ahead of its tail, punching behind its head.

This module owns the space bookkeeping of one sparse ring (store.py's one spill
budget): which part of the data region's circle is allocated on disk (the
window, from the head's page to just past the tail), growing it ahead of the
tail in steps of `ALLOC_STEP`, punching (FALLOC_FL_PUNCH_HOLE) what the head has
passed, and drawing every byte of it from the ring's share of the budget
(`RingBudget`) and giving it back. It knows nothing of records: `SpillRing`
(ring.py) says where its head and tail are and asks before it writes; the file
calls (posix_fallocate + zero-fill, punch) are ringfile.py's.

Promises:
- Nothing outside the window is allocated, and the window covers every live run
  and skip item once `cover_back`/`cover_front` returned True for it (FACTS: a
  write through a mapping where posix_fallocate did not allocate first dies by
  SIGBUS on a full disk). What is allocated is zero-filled before it is written
  (ringfile.allocate; see `SpillRing._zero_fill` for the measured reason).
- The budget is charged exactly the window's bytes: `take` before allocating,
  `give` for what is punched or what a failed allocation returned. A False
  (no room in the budget or on the disk) changes nothing.
- A punch never touches a live byte: the ring's tail never enters its head's page
  and its head never the tail's (`room_back`, `room_front`),
  and the window only ever loses whole pages behind the head.

# Invariant: the window is [start, start + length) around the circle, page-
#   aligned at its start, 0 <= length <= data size; length 0 means nothing is
#   allocated (start is then 0).
"""

from __future__ import annotations

import mmap
import os
from typing import Protocol

from agent.spill.format import DATA_OFFSET, Placement
from agent.spill.ringfile import allocate, punch

__all__ = ["ALLOC_STEP", "RingBudget", "SparseWindow"]

# A sparse ring allocates its window in steps of this much (fallocate + pwrite
# of zeros: ~0.5-1 ms per MiB here), so a 256 KiB chunk pays for it once in four.
ALLOC_STEP = 1024 * 1024
_PAGE = mmap.PAGESIZE


class RingBudget(Protocol):
    """The share of the spill budget one sparse ring draws on (store.py)."""

    def take(self, nbytes: int, *, force: bool = False) -> bool: ...
    def give(self, nbytes: int) -> None: ...


def _page_up(n: int) -> int:
    return -(-n // _PAGE) * _PAGE


class SparseWindow:
    """The allocated window of one sparse ring file (`fd`, its data region of
    `data_size` bytes at DATA_OFFSET), drawn from `budget`. Not thread-safe:
    the ring's owner (the loop) owns it."""

    def __init__(self, fd: int, data_size: int, budget: RingBudget) -> None:
        self.fd = fd
        self._size = data_size
        self._budget = budget
        self._start = 0
        self._len = 0

    @property
    def allocated(self) -> int:
        """Data bytes allocated (the window's length)."""
        return self._len

    def adopt(self, head_pos: int, end: int | None) -> None:
        """At open: the window the live runs [head_pos, end) need (None: no live
        run), taken from the budget whatever it holds; the rest of the region is
        punched (whatever an earlier run left allocated)."""
        size = self._size
        if end is None:
            self._start = self._len = 0
        else:
            self._start = head_pos - head_pos % _PAGE
            end = min(size, _page_up(end))
            self._len = (end - self._start - 1) % size + 1
        self._budget.take(self._len, force=True)
        self._punch(self._start + self._len, size - self._len)

    def room_back(self, place: Placement, span: int, head: int, *, empty: bool) -> bool:
        """Make the window cover a run of `span` bytes appended at `place` (and
        its wrap marker, which lies inside the window already: at the old tail).
        False: it would enter the head's page, or no room (nothing allocated)."""
        pos = place.pos
        if not empty and pos < head and pos + span > head - head % _PAGE:
            return False  # a sparse ring's tail never enters the head's page
        if empty and self._len:
            self.release(0, empty=True)  # an empty ring starts over at 0
        return self.cover_back(pos + span)

    def room_front(self, place: Placement, tail: int) -> bool:
        """Make the window cover a run prepended at `place` and the skip item in
        front of it (at 0, when there is one). False: it would enter the tail's
        page, or no room."""
        if tail <= place.pos < _page_up(tail):
            return False  # nor the head the tail's
        if not self.cover_front(place.skip_at if place.skip_at >= 0 else place.pos):
            return False
        return place.skip_at < 0 or self.cover_front(place.pos)

    def cover_back(self, end: int) -> bool:
        """Grow the window forward until it reaches region position `end` (in
        (0, size]). False: the budget or the disk has no room (nothing changed)."""
        size = self._size
        if self._len == 0:
            self._start = 0
        reach = (end - self._start - 1) % size + 1
        if reach <= self._len:
            return True
        reach = min(size, _page_up(reach))
        want = min(size, -(-reach // ALLOC_STEP) * ALLOC_STEP)
        start = self._start + self._len
        if want > reach and self._grow(start, want - self._len, back=True):
            return True
        return self._grow(start, reach - self._len, back=True)

    def cover_front(self, start: int) -> bool:
        """Grow the window backward until it starts at or below region position
        `start`. False: no room (nothing changed)."""
        size = self._size
        start -= start % _PAGE
        if (start - self._start) % size < self._len:
            return True
        extra = (self._start - start) % size
        return self._grow(start, extra, back=False)

    def release(self, head_pos: int, *, empty: bool) -> None:
        """The head moved forward to `head_pos` (or the ring emptied): punch what
        it passed and give it back to the budget."""
        if empty:
            self._punch(self._start, self._len)
            self._budget.give(self._len)
            self._start = self._len = 0
            return
        new_start = head_pos - head_pos % _PAGE
        moved = (new_start - self._start) % self._size
        if 0 < moved < self._len:
            self._punch(self._start, moved)
            self._budget.give(moved)
            self._start = new_start
            self._len -= moved

    def close(self) -> None:
        """Close the ring file's descriptor. Idempotent."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _grow(self, start: int, length: int, *, back: bool) -> bool:
        if length <= 0:
            return True
        if self._len + length > self._size or not self._budget.take(length):
            return False
        done: list[tuple[int, int]] = []
        for off, n in self._segments(start, length):
            if not allocate(self.fd, off, n):
                for o, m in done:
                    punch(self.fd, o, m)
                self._budget.give(length)
                return False
            done.append((off, n))
        if not back:
            self._start = start % self._size
        self._len += length
        return True

    def _segments(self, start: int, length: int) -> list[tuple[int, int]]:
        """[start, start + length) around the circle as (offset, length) in the file."""
        size = self._size
        start %= size
        first = min(length, size - start)
        segs = [(DATA_OFFSET + start, first)]
        if length > first:
            segs.append((DATA_OFFSET, length - first))
        return segs

    def _punch(self, start: int, length: int) -> None:
        for off, n in self._segments(start, length):
            punch(self.fd, off, n)
