"""One ring's index: its live runs in FIFO order, the read cursor, and their totals.

This module owns the in-memory bookkeeping of a spill ring's live runs: which are
read but not released and which are unread, in which order, and how many events,
payload bytes and pieces each side holds (kept as running totals, so the loop's
every-turn questions are O(1)). It is pure: no file, no mapping, no clock.
`SpillRing` (ring.py) writes and releases the bytes and asks this index which
run is oldest, next, newest.

# Invariant: the live runs are `read` then `unread`, oldest first, in increasing
#   seq order; the totals are the sums over them (events, bytes, pieces), the
#   `read_*` totals the sums over `read` alone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from agent.spill.recover import LiveRecord

__all__ = ["RunIndex"]


class RunIndex:
    """The live runs of one ring. Not thread-safe: the ring's owner (the loop) owns it."""

    def __init__(self) -> None:
        self.read: deque[LiveRecord] = deque()  # read, not released (oldest first)
        self.unread: deque[LiveRecord] = deque()
        self.events = 0
        self.bytes = 0
        self.pieces = 0
        self.read_events = 0
        self.read_bytes = 0
        self.read_pieces = 0

    @property
    def empty(self) -> bool:
        return not (self.read or self.unread)

    @property
    def records(self) -> int:
        return len(self.read) + len(self.unread)

    def first(self) -> LiveRecord | None:
        """The oldest live run (read or not), None when empty."""
        return self.read[0] if self.read else (self.unread[0] if self.unread else None)

    def last(self) -> LiveRecord | None:
        """The newest live run, None when empty."""
        return self.unread[-1] if self.unread else (self.read[-1] if self.read else None)

    def adopt(self, records: Iterable[LiveRecord]) -> None:
        """What recovery found, as unread runs behind the live ones."""
        for entry in records:
            self.unread.append(entry)
            self._count(entry, 1)

    def append(self, entry: LiveRecord, *, read: bool = False) -> None:
        """A new newest run; `read`: held by the caller already (write-through)."""
        if read:
            self.read.append(entry)
            self._count_read(entry, 1)
        else:
            self.unread.append(entry)
        self._count(entry, 1)

    def prepend(self, entry: LiveRecord) -> None:
        """A new oldest run (nothing is read)."""
        self.unread.appendleft(entry)
        self._count(entry, 1)

    def advance(self) -> LiveRecord | None:
        """Move the read cursor past the next unread run and return it (None: all read)."""
        if not self.unread:
            return None
        entry = self.unread.popleft()
        self.read.append(entry)
        self._count_read(entry, 1)
        return entry

    def release(self) -> LiveRecord:
        """Forget the oldest read run (the caller checked there is one)."""
        entry = self.read.popleft()
        self._count_read(entry, -1)
        self._count(entry, -1)
        return entry

    def drop_front(self) -> LiveRecord:
        """Forget the oldest unread run (the caller checked there is one)."""
        entry = self.unread.popleft()
        self._count(entry, -1)
        return entry

    def unread_all(self) -> int:
        """Every read run becomes unread again, in order, ahead of the unread ones.
        Returns the events moved."""
        moved = self.read_events
        self.unread.extendleft(reversed(self.read))
        self.read.clear()
        self.read_events = self.read_bytes = self.read_pieces = 0
        return moved

    def _count(self, entry: LiveRecord, sign: int) -> None:
        self.events += sign * entry.count
        self.bytes += sign * entry.length
        self.pieces += sign * entry.pieces

    def _count_read(self, entry: LiveRecord, sign: int) -> None:
        self.read_events += sign * entry.count
        self.read_bytes += sign * entry.length
        self.read_pieces += sign * entry.pieces
