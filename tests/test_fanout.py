"""agent/fanout.py: the peer count from monitor events, the stall window on a
fake clock, and which connections a stall cuts off."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.fanout import (
    REPEAT_STALL_S,
    REPEAT_WINDOW_S,
    STALL_S,
    STALL_VISIBLE_S,
    PeerTracker,
    StallWatch,
    stuck_fds,
)

# ------------------------------------------------------------------ peers


def connect(t: PeerTracker, fd: int) -> None:
    t.opened(fd)
    t.handshake_succeeded()


def test_a_peer_counts_after_its_handshake() -> None:
    t = PeerTracker()
    t.opened(7)
    assert t.peers == 0  # connected, no pipe yet: it cannot hold sends back
    t.handshake_succeeded()
    assert t.peers == 1
    t.closed(7)
    assert t.peers == 0
    assert t.open_fds == set()


def test_a_failed_handshake_is_no_peer_and_its_disconnect_takes_none() -> None:
    t = PeerTracker()
    connect(t, 5)
    t.opened(6)
    t.handshake_failed()
    t.closed(6)
    assert t.peers == 1
    assert t.open_fds == {5}


def test_a_probe_that_never_speaks_is_no_peer() -> None:
    t = PeerTracker()
    connect(t, 5)
    t.opened(9)  # a TCP probe: no handshake yet
    assert t.peers == 1
    assert len(t.open_fds) == 2


def test_two_peers_and_one_leaves() -> None:
    t = PeerTracker()
    connect(t, 5)
    connect(t, 6)
    assert t.peers == 2
    t.closed(6)
    assert t.peers == 1


def test_an_unaccounted_failure_errs_towards_fewer_peers() -> None:
    # A frame over the size limit during a handshake ends it without a
    # HANDSHAKE_FAILED event: counted as a peer leaving (never more peers).
    t = PeerTracker()
    connect(t, 5)
    t.opened(6)
    t.closed(6)  # silent failure
    assert t.peers == 0
    t.closed(5)
    assert t.peers == 0


@given(
    st.lists(
        st.tuples(st.sampled_from(["open", "ok", "fail", "close"]), st.integers(3, 8)),
        max_size=60,
    )
)
def test_peers_never_negative_nor_above_open_connections(ops: list[tuple[str, int]]) -> None:
    t = PeerTracker()
    for op, fd in ops:
        if op == "open":
            t.opened(fd)
        elif op == "ok":
            t.handshake_succeeded()
        elif op == "fail":
            t.handshake_failed()
        else:
            t.closed(fd)
        assert 0 <= t.peers <= len(t.open_fds)


# ------------------------------------------------------------------ stall


def refuse_until(w: StallWatch, start: float, end: float, step: float = 0.1) -> bool:
    """Refused sends every `step` s (the loop retries far more often)."""
    stalled = False
    steps = round((end - start) / step)
    for i in range(steps + 1):
        stalled = w.refused(start + i * step if i < steps else end)
    return stalled


def test_a_refusal_is_a_stall_only_after_stall_s() -> None:
    w = StallWatch()
    assert not w.refused(10.0)
    assert not w.refused(10.0 + STALL_S / 2)
    assert w.refused(10.0 + STALL_S)
    assert w.stalled(10.0 + STALL_S)


def test_a_successful_send_ends_the_window() -> None:
    w = StallWatch()
    w.refused(10.0)
    w.sent(10.5)
    assert not w.refused(10.9)
    assert not w.refused(10.9 + STALL_S - 0.01)
    assert w.refused(10.9 + STALL_S)


def test_a_gap_without_attempts_starts_a_new_window() -> None:
    # Refused once, then nothing to send for a while: not a stall at the next refusal.
    w = StallWatch()
    w.refused(10.0)
    assert not w.refused(10.0 + 5 * STALL_S)


def test_after_acting_the_next_decision_waits_a_whole_window() -> None:
    w = StallWatch()
    assert refuse_until(w, 0.0, STALL_S)
    w.acted(STALL_S, cut=False)  # nobody to cut (all slow)
    assert not w.refused(STALL_S + 0.001)
    assert not refuse_until(w, STALL_S + 0.1, 2 * STALL_S - 0.1)
    assert refuse_until(w, 2 * STALL_S, 2 * STALL_S)


def test_stalled_stays_visible_after_a_cut() -> None:
    w = StallWatch()
    assert refuse_until(w, 0.0, STALL_S)
    w.acted(STALL_S, cut=True)
    w.sent(STALL_S + 0.01)
    assert w.stalled(STALL_S + 1.0)
    assert not w.stalled(STALL_S + STALL_VISIBLE_S + 0.01)


def test_not_stalled_when_nothing_was_refused() -> None:
    assert not StallWatch().stalled(100.0)


# ------------------------------------------------------------------ which to cut


def test_cut_the_full_queue_when_another_is_empty() -> None:
    assert stuck_fds({5: 0, 6: 8192}) == [6]


def test_never_cut_when_every_queue_is_full() -> None:
    # Every peer slow, or the network down: cutting them off would hand the
    # events to nobody.
    assert stuck_fds({5: 100, 6: 8192}) == []


def test_nothing_to_cut_when_no_queue_is_full() -> None:
    assert stuck_fds({5: 0, 6: 0}) == []
    assert stuck_fds({}) == []


@given(st.dictionaries(st.integers(0, 100), st.integers(0, 1 << 20), max_size=8))
def test_a_cut_always_leaves_an_empty_queue(queued: dict[int, int]) -> None:
    cut = stuck_fds(queued)
    assert all(queued[fd] > 0 for fd in cut)
    if cut:
        assert any(n == 0 for fd, n in queued.items() if fd not in cut)


def test_after_a_cut_a_repeat_stall_is_declared_sooner() -> None:
    w = StallWatch()
    assert refuse_until(w, 0.0, STALL_S)
    w.acted(STALL_S, cut=True)
    w.sent(STALL_S + 0.01)
    # The stuck peer is back and refuses again: 100 ms is a stall now.
    t = STALL_S + 5.0
    assert not refuse_until(w, t, t + REPEAT_STALL_S / 2, step=0.01)
    assert refuse_until(w, t + REPEAT_STALL_S / 2 + 0.01, t + REPEAT_STALL_S + 0.01, step=0.01)
    # A minute later the full window applies again.
    later = STALL_S + REPEAT_WINDOW_S + 1.0
    w.acted(later, cut=False)
    assert not refuse_until(w, later + 0.1, later + 0.5)
    assert refuse_until(w, later + 0.6, later + 0.1 + STALL_S)
