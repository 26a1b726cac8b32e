"""agent/upstream.py: the header, subscription tracking, seq and NODROP, over real
ZeroMQ on inproc:// endpoints of a context private to each test (no ports, no
files: parallel-safe). Waiting is for a condition with a deadline, driven by
polling the XPUB socket itself."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import cbor2
import pytest
import zmq

from agent.classes import CLASS_TOPICS, CLASSES, EventClass
from agent.settings import UpstreamSettings
from agent.upstream import (
    SUBSCRIPTION_LOG_EVERY_S,
    SUBSCRIPTION_MAX_BYTES,
    SUBSCRIPTIONS_PER_TURN,
    EndpointError,
    Upstream,
    encode_header,
    printable_topic,
)

C, H, N, L = EventClass.CRITICAL, EventClass.HIGH, EventClass.NORMAL, EventClass.LOW
ENDPOINT = "inproc://upstream"
TIMEOUT_S = 5.0
ALL = [True] * len(CLASSES)
NONE = [False] * len(CLASSES)


@pytest.fixture
def up(zctx: zmq.Context) -> Iterator[Upstream]:
    settings = UpstreamSettings(bind=(ENDPOINT,), sndhwm=1, sndbuf_bytes=4096)
    upstream = Upstream(zctx, settings, agent_id="gw-test", epoch=42)
    yield upstream
    upstream.sock.setsockopt(zmq.LINGER, 0)
    upstream.close()


def sub(ctx: zmq.Context, *topics: bytes, rcvhwm: int = 1000) -> zmq.Socket:
    """A SUB on the upstream endpoint. Keep a reference: pyzmq closes a socket
    that is garbage collected, and the close unsubscribes it."""
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, rcvhwm)
    s.connect(ENDPOINT)
    for t in topics:
        s.subscribe(t)
    return s


def wait_until(up: Upstream, condition: Callable[[], bool], what: str) -> None:
    """Process subscription messages until `condition` holds; fail after TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        up.handle_subscriptions()
        if condition():
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {what}; deliverable={up.deliverable}")
        up.sock.poll(min(50, int(remaining * 1000) + 1), zmq.POLLIN)


def recv_message(s: zmq.Socket) -> list[bytes]:
    assert s.poll(int(TIMEOUT_S * 1000), zmq.POLLIN), "no message within the deadline"
    return s.recv_multipart()


def header_of(msg: list[bytes]) -> dict[str, object]:
    return cbor2.loads(msg[1])


# ------------------------------------------------------------------- header


def test_header_decodes_to_the_contract_fields() -> None:
    h = cbor2.loads(encode_header("gw-7", 1700000000, 3, 256))
    assert h == {"agent": "gw-7", "epoch": 1700000000, "seq": 3, "count": 256}
    assert isinstance(h["agent"], str)
    assert all(type(h[k]) is int for k in ("epoch", "seq", "count"))


def test_header_is_one_cbor_map_and_nothing_else() -> None:
    raw = encode_header("a", 0, 1, 1)
    assert raw[0] >> 5 == 5  # major type 5: a map
    assert cbor2.dumps(cbor2.loads(raw)) == raw


# ------------------------------------------------------------ subscriptions


def test_no_subscriber_nothing_is_deliverable(up: Upstream) -> None:
    assert up.deliverable == NONE
    assert up.handle_subscriptions() is False
    assert up.deliverable == NONE
    assert up.subscribers == 0
    assert up.statistics().subscribers == 0


def test_subscribing_to_critical_makes_only_critical_deliverable(
    zctx: zmq.Context, up: Upstream
) -> None:
    s = sub(zctx, b"critical")
    wait_until(up, lambda: up.deliverable[C], "critical subscription")
    assert up.deliverable == [True, False, False, False]
    assert up.subscribers == 1
    s.close()


def test_subscribing_to_everything_makes_all_deliverable(zctx: zmq.Context, up: Upstream) -> None:
    s = sub(zctx, b"")
    wait_until(up, lambda: all(up.deliverable), "subscription to all")
    assert up.deliverable == ALL
    s.close()


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (b"c", [True, False, False, False]),
        (b"hi", [False, True, False, False]),
        (b"low", [False, False, False, True]),
        (b"normal", [False, False, True, False]),
    ],
)
def test_subscriptions_match_by_prefix(
    zctx: zmq.Context, up: Upstream, prefix: bytes, expected: list[bool]
) -> None:
    s = sub(zctx, prefix)
    wait_until(up, lambda: any(up.deliverable), "a prefix subscription")
    assert up.deliverable == expected
    s.close()


def test_longer_topic_than_class_matches_nothing(zctx: zmq.Context, up: Upstream) -> None:
    # b"criticality" is not a prefix of b"critical"; b"low" after it is the marker
    # that both subscriptions were processed (one pipe delivers in order).
    s = sub(zctx, b"criticality", b"low")
    wait_until(up, lambda: up.deliverable[L], "the marker subscription")
    assert up.deliverable == [False, False, False, True]
    s.close()


def test_unsubscribe_makes_it_undeliverable_again(zctx: zmq.Context, up: Upstream) -> None:
    s = sub(zctx, b"critical", b"high")
    wait_until(up, lambda: up.deliverable[C] and up.deliverable[H], "two subscriptions")
    s.unsubscribe(b"critical")
    wait_until(up, lambda: not up.deliverable[C], "critical unsubscribed")
    assert up.deliverable == [False, True, False, False]
    s.unsubscribe(b"high")
    wait_until(up, lambda: not any(up.deliverable), "all unsubscribed")
    assert up.subscribers == 0


def test_disconnect_makes_it_undeliverable_again(zctx: zmq.Context, up: Upstream) -> None:
    s = sub(zctx, b"")
    wait_until(up, lambda: all(up.deliverable), "subscription to all")
    s.close()
    wait_until(up, lambda: not any(up.deliverable), "the disconnect")
    assert up.subscribers == 0


def test_one_of_two_subscribers_leaving_keeps_the_class_deliverable(
    zctx: zmq.Context, up: Upstream
) -> None:
    a = sub(zctx, b"critical")
    b = sub(zctx, b"critical", b"low")
    wait_until(up, lambda: up.deliverable[C] and up.deliverable[L], "both subscribers")
    a.close()
    b.unsubscribe(b"low")  # a marker: b's pipe is processed after a's disconnect
    wait_until(up, lambda: not up.deliverable[L], "the marker unsubscribe")
    # b's own unsubscribe of low is processed, so a's disconnect may or may not
    # be yet; either way b still wants critical.
    assert up.deliverable[C]
    b.close()
    wait_until(up, lambda: not any(up.deliverable), "both gone")


def test_duplicate_subscription_from_one_peer_is_forgotten_when_it_leaves(
    zctx: zmq.Context, up: Upstream
) -> None:
    """A SUB that subscribes to the same topic twice (a reconnect helper that
    re-subscribes, say) and then disconnects leaves no subscriber behind.

    With XPUB_VERBOSER each subscribe reaches the XPUB (two b"\\x01critical"),
    but libzmq sends one b"\\x00critical" per (peer, topic) when the peer leaves.
    Counting those messages leaves critical "deliverable" with nobody connected,
    and libzmq then discards every critical message sent (FACTS.md: a PUB with
    no matching subscriber drops silently) while send_batch reports success.
    """
    s = sub(zctx, b"critical", b"critical", b"low")
    # One pipe delivers in order: low seen => both critical subscribes seen.
    wait_until(up, lambda: up.deliverable[L], "the subscriptions")
    assert up.deliverable == [True, False, False, True]
    s.close()
    # libzmq queues every unsubscribe of a terminated pipe at once: when low is
    # gone, whatever the disconnect will say about critical has been said.
    wait_until(up, lambda: not up.deliverable[L], "the disconnect")
    assert up.deliverable == NONE, "critical still deliverable with no subscriber left"


def test_data_from_a_peer_is_not_a_subscription(zctx: zmq.Context, up: Upstream) -> None:
    x = zctx.socket(zmq.XSUB)
    x.setsockopt(zmq.LINGER, 0)
    x.connect(ENDPOINT)
    x.send(b"hello")  # first byte neither 0 nor 1: passed up as data by libzmq
    x.send(b"\x02critical")
    x.send(b"\x01low")
    wait_until(up, lambda: up.deliverable[L], "the real subscription")
    assert up.deliverable == [False, False, False, True]
    assert up.subscribers == 1


# ---------------------------------------------------------------- sending


def test_seq_starts_at_one_per_class_and_messages_have_three_frames(
    zctx: zmq.Context, up: Upstream
) -> None:
    s = sub(zctx, b"")
    wait_until(up, lambda: all(up.deliverable), "subscription to all")
    sends = [(C, b"\xa0", 1), (L, b"\xa0\xa0", 2), (C, b"\xa1", 1), (H, b"", 0), (C, b"x", 1)]
    for cls, body, count in sends:
        assert up.send_batch(cls, body, count)
    seen: dict[bytes, list[int]] = {}
    for cls, body, count in sends:
        msg = recv_message(s)
        assert len(msg) == 3
        assert msg[0] == CLASS_TOPICS[cls]
        assert header_of(msg) == {
            "agent": "gw-test",
            "epoch": 42,
            "seq": len(seen.get(msg[0], [])) + 1,
            "count": count,
        }
        assert msg[2] == body
        seen.setdefault(msg[0], []).append(header_of(msg)["seq"])  # type: ignore[arg-type]
    assert seen == {b"critical": [1, 2, 3], b"low": [1], b"high": [1]}
    st = up.statistics()
    assert (st.messages, st.events, st.blocked) == (5, 5, 0)


def test_a_filtered_subscriber_gets_only_its_class(zctx: zmq.Context, up: Upstream) -> None:
    s = sub(zctx, b"critical")
    wait_until(up, lambda: up.deliverable[C], "critical subscription")
    # Sent while nobody wants low: libzmq drops it (the loop never does this;
    # here it shows that the topic frame is what the SUB filters on).
    assert up.send_batch(L, b"low-body", 1)
    assert up.send_batch(C, b"crit-body", 1)
    msg = recv_message(s)
    assert msg[0] == b"critical" and msg[2] == b"crit-body"
    assert header_of(msg)["seq"] == 1


def test_slow_subscriber_refuses_sends_without_advancing_seq(
    zctx: zmq.Context, up: Upstream
) -> None:
    s = sub(zctx, b"", rcvhwm=1)
    wait_until(up, lambda: all(up.deliverable), "subscription to all")
    sent = 0
    # sndhwm=1 + rcvhwm=1 over inproc: the pipe holds a couple of messages.
    for _ in range(10_000):
        if not up.send_batch(N, b"body-%d" % (sent + 1), 1):
            break
        sent += 1
    else:
        pytest.fail("NODROP never refused a send to a subscriber that does not read")
    assert sent >= 1
    # Refused again and again: nothing sent, seq stays.
    for _ in range(3):
        assert not up.send_batch(N, b"refused", 1)
    st = up.statistics()
    assert st.messages == sent and st.events == sent and st.blocked == 4
    # The subscriber reads: nothing was dropped, no gap, no refused body.
    got = [recv_message(s) for _ in range(sent)]
    assert [header_of(m)["seq"] for m in got] == list(range(1, sent + 1))
    assert [m[2] for m in got] == [b"body-%d" % i for i in range(1, sent + 1)]
    assert all(m[0] == b"normal" and len(m) == 3 for m in got)
    # Room again: the next successful send carries seq sent + 1.
    deadline = time.monotonic() + TIMEOUT_S
    while not up.send_batch(N, b"after", 1):
        assert time.monotonic() < deadline, "send still refused after the subscriber read"
        up.sock.poll(10, zmq.POLLOUT)
    msg = recv_message(s)
    assert header_of(msg)["seq"] == sent + 1
    assert msg[2] == b"after"
    # Other classes count independently.
    assert up.send_batch(C, b"c", 1)
    assert header_of(recv_message(s))["seq"] == 1


# ------------------------------------------------------------ opening (issue 8)


@pytest.mark.parametrize(
    ("bind", "connect", "key", "bad"),
    [
        (("inproc://taken",), (), "upstream.bind", "inproc://taken"),
        (("inproc://fine", "inproc://taken"), (), "upstream.bind", "inproc://taken"),
        ((), ("nonsense://x",), "upstream.connect", "nonsense://x"),
    ],
)
def test_an_endpoint_that_cannot_open_is_named_and_nothing_stays_open(
    bind: tuple[str, ...], connect: tuple[str, ...], key: str, bad: str
) -> None:
    """The socket whose bind raised used to stay open, and ctx.term() then
    waited for it forever (a busy port hung the agent holding the spill lock)."""
    ctx = zmq.Context()
    holder = ctx.socket(zmq.PUB)
    holder.bind("inproc://taken")
    settings = UpstreamSettings(bind=bind, connect=connect, sndhwm=1, sndbuf_bytes=4096)
    with pytest.raises(EndpointError) as e:
        Upstream(ctx, settings, agent_id="gw-test", epoch=1)
    assert e.value.key == key and e.value.endpoint == bad
    assert str(e.value).startswith(f"cannot open {key} {bad}: ")
    holder.close(0)
    term = threading.Thread(target=ctx.term, daemon=True)
    term.start()
    term.join(TIMEOUT_S)
    assert not term.is_alive(), "ctx.term() waits for a socket Upstream left open"


# -------------------------------------------- hostile subscribers (issue 13)


def test_a_subscription_that_selects_no_class_is_ignored(zctx: zmq.Context, up: Upstream) -> None:
    s = sub(zctx, b"garbage", b"criticality", b"\x00\xff", b"low")
    wait_until(up, lambda: up.deliverable[L], "the marker subscription")
    assert up.deliverable == [False, False, False, True]
    assert up.subscribers == 1  # only b"low" is kept
    s.close()


def test_subscriptions_read_per_turn_are_bounded(zctx: zmq.Context, up: Upstream) -> None:
    x = zctx.socket(zmq.XSUB)
    x.setsockopt(zmq.LINGER, 0)
    x.setsockopt(zmq.SNDHWM, 0)
    x.connect(ENDPOINT)
    n = SUBSCRIPTIONS_PER_TURN + 50
    for i in range(n):
        x.send(b"\x01junk-%d" % i)  # distinct: a plain XPUB passes each one up
    x.send(b"\x01critical")
    # Over inproc every send above is in the pipe already: the XPUB takes them
    # all into its queue at the first poll.
    assert up.sock.poll(int(TIMEOUT_S * 1000), zmq.POLLIN)
    up.handle_subscriptions()
    assert not up.deliverable[C], "more than SUBSCRIPTIONS_PER_TURN read in one turn"
    wait_until(up, lambda: up.deliverable[C], "the subscription after the junk")
    x.close()


@pytest.mark.parametrize(
    "topic",
    [
        b"\n2026-12-06 21:00:00,000 CRITICAL agent.loop: stopped: 0 delivered, 9 LOST",
        b"\r\x1b[2Kcritical\x00",
        "ünïcode\u2028line".encode(),
        b"x" * 5000,
        b"it's a \\ quote",
    ],
)
def test_a_topic_is_printed_on_one_escaped_line(topic: bytes) -> None:
    text = printable_topic(topic)
    assert text.isprintable() and "\n" not in text and "\r" not in text
    assert len(text) < 2 * 4 * 40 + 40  # cut, whatever the topic's length
    if topic.startswith(b"\n"):
        assert text.startswith("'\\x0a2026-12-06")


def test_subscription_changes_are_logged_as_escaped_differences_rate_limited(
    zctx: zmq.Context, up: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    forged = b"\n... CRITICAL agent.loop: stopped: ... LOST"
    caplog.set_level(logging.INFO, logger="agent.upstream")
    s = sub(zctx, forged, b"critical")
    now = 100.0
    deadline = time.monotonic() + TIMEOUT_S
    while not up.deliverable[C]:
        up.handle_subscriptions(now)
        assert time.monotonic() < deadline
        up.sock.poll(20, zmq.POLLIN)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "\n" not in lines[0]
    assert "added 'critical'" in lines[0]
    assert "ignored 1" in lines[0] and "\\x0a..." in lines[0]
    # Within the rate limit: changes are held back, then logged as one difference.
    s.subscribe(b"high")
    s.subscribe(b"low")
    wait_until_at(up, now + 0.5, lambda: up.deliverable[H] and up.deliverable[L])
    assert len(caplog.records) == 1
    up.log_subscriptions(now + SUBSCRIPTION_LOG_EVERY_S)
    assert len(caplog.records) == 2
    second = caplog.records[1].getMessage()
    assert "added 'high', 'low'" in second
    assert "critical" not in second  # a difference, not the whole list
    s.close()


def wait_until_at(up: Upstream, now: float, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        up.handle_subscriptions(now)
        assert time.monotonic() < deadline, "timed out"
        up.sock.poll(20, zmq.POLLIN)


@pytest.fixture
def ipc_up(zctx: zmq.Context, workdir: str) -> Iterator[Upstream]:
    settings = UpstreamSettings(bind=(f"ipc://{workdir}/up",), sndhwm=1, sndbuf_bytes=4096)
    upstream = Upstream(zctx, settings, agent_id="gw-test", epoch=7)
    yield upstream
    upstream.sock.setsockopt(zmq.LINGER, 0)
    upstream.close()


def ipc_sub(
    ctx: zmq.Context, up: Upstream, *, rcvhwm: int = 1000, marker: bytes | None = None
) -> zmq.Socket:
    """A SUB to everything; `marker`, a second honoured topic, shows (once in
    the XPUB's set) that this peer's b"" was processed too: one pipe is read
    in order, and a plain XPUB reports b"" only for its first subscriber."""
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, rcvhwm)
    s.setsockopt(zmq.RCVBUF, 4096)
    s.connect(up.sock.getsockopt_string(zmq.LAST_ENDPOINT))
    s.subscribe(b"")
    if marker is not None:
        s.subscribe(marker)
    return s


def wait_peers(up: Upstream, n: int) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while up.peers.peers != n:
        assert time.monotonic() < deadline, f"peers {up.peers.peers}, waiting for {n}"
        up.monitor.poll(20, zmq.POLLIN)
        up.handle_monitor()
        up.handle_subscriptions()


def test_peers_are_counted_from_the_monitor(zctx: zmq.Context, ipc_up: Upstream) -> None:
    a = ipc_sub(zctx, ipc_up)
    b = ipc_sub(zctx, ipc_up)
    wait_peers(ipc_up, 2)
    assert ipc_up.statistics().peers == 2
    a.close()
    wait_peers(ipc_up, 1)
    b.close()
    wait_peers(ipc_up, 0)


def test_an_oversized_subscription_disconnects_the_peer(
    zctx: zmq.Context, ipc_up: Upstream
) -> None:
    x = zctx.socket(zmq.XSUB)
    x.setsockopt(zmq.LINGER, 0)
    x.connect(ipc_up.sock.getsockopt_string(zmq.LAST_ENDPOINT))
    wait_peers(ipc_up, 1)
    x.send(b"\x01" + b"c" * (SUBSCRIPTION_MAX_BYTES + 1))
    wait_peers(ipc_up, 0)  # MAXMSGSIZE: libzmq dropped the connection
    assert ipc_up.subscribers == 0
    x.close()


def send_until_refused(up: Upstream, now: float, limit: int = 100_000) -> int:
    for i in range(limit):
        if not up.send_batch(N, b"x" * 200, 1, now):
            return i
    pytest.fail("NODROP never refused")


def test_a_lone_stuck_subscriber_is_never_cut_off(zctx: zmq.Context, ipc_up: Upstream) -> None:
    stuck = ipc_sub(zctx, ipc_up, rcvhwm=1)
    wait_peers(ipc_up, 1)
    wait_until(ipc_up, lambda: all(ipc_up.deliverable), "the subscription")
    sent = send_until_refused(ipc_up, 0.0)
    # Refused for 4 s of the fake clock (the kernel may still take one now and then).
    for k in range(1, 40):
        sent += ipc_up.send_batch(N, b"x" * 200, 1, k * 0.1)
    st = ipc_up.statistics(4.0)
    assert st.stuck_dropped_messages == 0 and st.peers == 1 and st.blocked >= 30
    # It still gets everything, in order, once it reads.
    got = [recv_message(stuck) for _ in range(sent)]
    assert [header_of(m)["seq"] for m in got] == list(range(1, sent + 1))


def test_a_stuck_subscriber_beside_a_reading_one_is_cut_off(
    zctx: zmq.Context, ipc_up: Upstream
) -> None:
    stuck = ipc_sub(zctx, ipc_up, rcvhwm=1, marker=b"n")
    wait_until(ipc_up, lambda: ipc_up.subscribers == 2, "the stuck one's subscription")
    healthy = ipc_sub(zctx, ipc_up, marker=b"no")
    wait_until(ipc_up, lambda: ipc_up.subscribers == 3, "the healthy one's subscription")
    wait_peers(ipc_up, 2)
    sent = 0
    received: list[int] = []

    def drain() -> None:
        while healthy.poll(0):
            received.append(int(header_of(healthy.recv_multipart())["seq"]))  # type: ignore[call-overload]

    # Fill the stuck one's queues (the healthy one reads as we go), then keep
    # trying on a fake clock that moves 0.1 s per refusal.
    now = 0.0
    deadline = time.monotonic() + TIMEOUT_S * 2
    while ipc_up.statistics(now).stuck_dropped_messages == 0:
        assert time.monotonic() < deadline, "never cut off"
        if ipc_up.send_batch(N, b"x" * 200, 1, now):
            sent += 1
        else:
            now += 0.1
        drain()
    st = ipc_up.statistics(now)
    assert st.stalled and st.stuck_dropped_messages >= 1 and st.stuck_dropped_events >= 1
    # From now on sends reach the healthy one again.
    more = 0
    while more < 50:
        assert time.monotonic() < deadline, "sends still refused after the cut"
        if ipc_up.send_batch(N, b"y", 1, now):
            more += 1
        else:
            ipc_up.sock.poll(5, zmq.POLLIN)
            ipc_up.handle_monitor()
        drain()
    while len(received) < sent + more:
        assert time.monotonic() < deadline, (
            f"healthy got {len(received)} of {sent + more}: "
            f"missing {sorted(set(range(1, sent + more + 1)) - set(received))}"
        )
        healthy.poll(50)
        drain()
    assert received == list(range(1, sent + more + 1)), "the healthy one lost a message"
    stuck.close()


def test_the_xpub_bounds_handshakes_and_keeps_tcp_alive_but_sends_no_heartbeats(
    up: Upstream,
) -> None:
    from agent.upstream import UPSTREAM_PEER_OPTIONS

    for option, value in UPSTREAM_PEER_OPTIONS:
        assert up.sock.getsockopt(option) == value, option
    # A lone slow subscriber must never be dropped for not answering PINGs.
    assert up.sock.getsockopt(zmq.HEARTBEAT_IVL) == 0
