"""agent/peers.py: the connection table behind ingest.max_peers and the
disconnect counters, against a model, and the worst-case arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.peers import LIBZMQ_IN_BATCH_BYTES, PeerStats, PeerTable, worst_case_bytes

MiB = 1024 * 1024


def test_the_cap_refuses_the_next_bound_connection_and_frees_a_place_on_disconnect() -> None:
    t = PeerTable(2)
    assert t.accepted(10) is False
    assert t.accepted(11) is False
    assert t.accepted(12) is True  # the third: refuse
    assert t.statistics() == PeerStats(connected=2, refused=1)
    t.disconnected(12)  # our refusal ending: not a collector's disconnect
    assert t.statistics() == PeerStats(connected=2, refused=1)
    t.disconnected(10)
    assert t.statistics() == PeerStats(connected=1, refused=1, disconnects=1)
    assert t.accepted(12) is False  # the retry gets in (a reused number too)
    assert t.connected == 2


def test_own_connects_count_but_are_never_refused_and_take_no_bound_place() -> None:
    t = PeerTable(1)
    t.connected_out(5)
    t.connected_out(6)
    assert t.accepted(7) is False  # the cap is on bound connections
    assert t.accepted(8) is True
    assert t.connected == 3


def test_failed_handshakes_are_counted_and_are_disconnects_too() -> None:
    # libzmq gives a failed handshake no descriptor: it cannot be matched to
    # its DISCONNECTED, so both counters see it.
    t = PeerTable(4)
    t.accepted(3)
    t.handshake_failed()
    t.disconnected(3)
    t.accepted(3)
    t.disconnected(3)
    assert t.statistics() == PeerStats(connected=0, failed_handshakes=1, disconnects=2)


def test_a_refused_connection_is_never_a_disconnect() -> None:
    t = PeerTable(1)
    t.accepted(3)
    assert t.accepted(4) is True
    t.handshake_failed()  # our shutdown ended its handshake
    t.disconnected(4)
    assert t.statistics() == PeerStats(connected=1, refused=1, failed_handshakes=1)


def test_max_peers_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PeerTable(0)


# A model: the events of connections that each go through accept -> (maybe a
# failed handshake) -> disconnect, interleaved in any order that keeps each
# connection's own order, as libzmq's single I/O thread emits them.
@given(
    cap=st.integers(1, 4),
    plan=st.lists(st.tuples(st.booleans(), st.booleans()), max_size=30),
    order=st.randoms(use_true_random=False),
)
def test_totals_match_a_model_whatever_the_interleaving(
    cap: int, plan: list[tuple[bool, bool]], order: object
) -> None:
    import random

    assert isinstance(order, random.Random)
    t = PeerTable(cap)
    fds = iter(range(100, 1000))
    live: dict[int, list[str]] = {}  # fd -> its remaining events
    pending = list(plan)
    expected = {"refused": 0, "failed": 0, "disconnects": 0}
    open_fds: set[int] = set()
    while pending or live:
        if pending and (not live or order.random() < 0.5):
            fails, _ = pending.pop()
            fd = next(fds)
            live[fd] = (["fail"] if fails else []) + ["disconnect"]
            expected["failed"] += fails
            if t.accepted(fd):
                expected["refused"] += 1
            else:
                open_fds.add(fd)
                expected["disconnects"] += 1
            assert len(open_fds) <= cap
            continue
        fd = order.choice(sorted(live))
        step = live[fd].pop(0)
        if step == "fail":
            t.handshake_failed()
        else:
            t.disconnected(fd)
            open_fds.discard(fd)
            del live[fd]
        assert t.connected == len(open_fds)
    stats = t.statistics()
    assert stats.connected == 0
    assert stats.refused == expected["refused"]
    assert stats.failed_handshakes == expected["failed"]
    assert stats.disconnects == expected["disconnects"]


def test_worst_case_formula() -> None:
    # Per connection: (rcvhwm + 2) frames, the kernel's doubled SO_RCVBUF and
    # libzmq's batch buffer.
    per = (100 + 2) * MiB + 2 * 65536 + LIBZMQ_IN_BATCH_BYTES
    assert worst_case_bytes(100, MiB, 65536, 1) == per
    assert worst_case_bytes(100, MiB, 65536, 128) == 128 * per
    assert worst_case_bytes(1, 64, 4096, 0) == 0
