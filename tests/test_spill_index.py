"""agent/spill/index.py: the live runs of one ring, against a plain-list model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.spill.index import RunIndex
from agent.spill.recover import LiveRecord


def _entry(seq: int, count: int, length: int, pieces: int) -> LiveRecord:
    return LiveRecord(pos=0, seq=seq, count=count, length=length, pieces=pieces)


ops = st.lists(
    st.tuples(
        st.sampled_from(
            ["append", "append_read", "prepend", "advance", "release", "drop", "unread_all"]
        ),
        st.integers(1, 50),
        st.integers(1, 5000),
        st.integers(1, 4),
    ),
    max_size=60,
)


@given(ops)
def test_the_index_keeps_order_and_totals_like_two_lists(steps) -> None:
    index = RunIndex()
    read: list[LiveRecord] = []
    unread: list[LiveRecord] = []
    seq = 1000
    for op, count, length, pieces in steps:
        if op == "append" or (op == "append_read" and not unread):
            entry = _entry(seq, count, length, pieces)
            seq += pieces
            index.append(entry, read=op == "append_read")
            (read if op == "append_read" else unread).append(entry)
        elif op == "prepend" and not read:
            entry = _entry(-seq, count, length, pieces)
            index.prepend(entry)
            unread.insert(0, entry)
        elif op == "advance":
            got = index.advance()
            assert got == (unread[0] if unread else None)
            if unread:
                read.append(unread.pop(0))
        elif op == "release" and read:
            assert index.release() == read.pop(0)
        elif op == "drop" and unread and not read:
            assert index.drop_front() == unread.pop(0)
        elif op == "unread_all":
            assert index.unread_all() == sum(e.count for e in read)
            unread[:0] = read
            read.clear()
        live = read + unread
        assert list(index.read) == read and list(index.unread) == unread
        assert index.empty == (not live) and index.records == len(live)
        assert index.first() == (live[0] if live else None)
        assert index.last() == (live[-1] if live else None)
        assert index.events == sum(e.count for e in live)
        assert index.bytes == sum(e.length for e in live)
        assert index.pieces == sum(e.pieces for e in live)
        assert index.read_events == sum(e.count for e in read)
        assert index.read_bytes == sum(e.length for e in read)
        assert index.read_pieces == sum(e.pieces for e in read)


def test_adopted_runs_come_after_the_live_ones_as_unread() -> None:
    index = RunIndex()
    found = [_entry(5, 3, 100, 1), _entry(6, 2, 50, 2)]
    index.adopt(found)
    assert list(index.unread) == found and not index.read
    assert (index.events, index.bytes, index.pieces) == (5, 150, 3)
