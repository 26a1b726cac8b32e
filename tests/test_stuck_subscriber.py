"""Hostile and hung subscribers against the real agent (issue 13 items 1-3):
one subscriber that never reads beside one that reads, a 4 MiB subscription,
a topic that forges a log line. The numbers (20,000 events/s, 100 ms) live in
bench/stuck.py; here the bounds are generous, for a shared box under -n auto."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

import cbor2
import zmq

from harness import AgentProcess, event, split_sequence, wait_for

# From the send to the healthy subscriber's receive, once the stall is seen
# (STALL_S = 1 s after it began). The promise is 100 ms (bench/stuck.py).
CRITICAL_BOUND_S = 5.0


def sub(ctx: zmq.Context, agent: AgentProcess, *topics: bytes, rcvhwm: int = 1000) -> zmq.Socket:
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, rcvhwm)
    s.setsockopt(zmq.RCVBUF, 4096)
    s.connect(agent.upstream)
    for t in topics:
        s.subscribe(t)
    return s


def rss_kib(agent: AgentProcess) -> int:
    assert agent.proc is not None
    with open(f"/proc/{agent.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_stuck_subscriber_does_not_hold_back_a_reading_one(make_agent, zctx) -> None:
    agent = make_agent().start()
    # The stuck one first; "n" (a prefix of normal) marks that its "" is in.
    stuck = sub(zctx, agent, b"", b"n", rcvhwm=1)
    agent.wait_state(lambda d: d["upstream"]["subscribers"] == 2, what="the stuck one")
    healthy = sub(zctx, agent, b"", b"no")
    agent.wait_state(lambda d: d["upstream"]["subscribers"] == 3, what="the healthy one")
    agent.wait_state(lambda d: d["upstream"]["peers"] == 2, what="two peers")

    received: list[bytes] = []
    alerts: dict[int, float] = {}
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            if not healthy.poll(50):
                continue
            cls, _header, body = healthy.recv_multipart()
            now = time.monotonic()
            for e in split_sequence(body):
                received.append(e)
                if cls == b"critical":
                    alerts[cbor2.loads(e)["alert"]] = now

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    push = zctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.connect(agent.ingest)
    sent_at: dict[int, float] = {}
    total = 0
    # ~3 s of 100-event frames (100-byte events) and an alert every 50 ms:
    # far more than the stuck one's buffers hold, so the agent stalls on it.
    start = time.monotonic()
    k = 0
    while time.monotonic() - start < 3.0:
        frame = b"".join(event(total + i, "reading", pad="x" * 50) for i in range(100))
        push.send(frame)
        total += 100
        sent_at[k] = time.monotonic()
        push.send(event(k, "over_voltage", alert=k))
        total += 1
        k += 1
        time.sleep(0.05)
    wait_for(lambda: len(received) >= total, timeout=30, what=f"{total} events at the healthy one")
    stop.set()
    reader.join(5)
    assert len(received) == total, "the healthy subscriber got a duplicate"
    assert sorted(alerts) == list(range(k)), "an alert never reached the healthy subscriber"
    worst = max(alerts[i] - sent_at[i] for i in range(k))
    assert worst < CRITICAL_BOUND_S, f"an alert took {worst:.2f} s"
    up = agent.get()["upstream"]
    assert up["stalled"] is True
    assert up["stuck_dropped_messages"] >= 1 and up["stuck_dropped_events"] >= 1
    assert "cut off" in agent.log
    stuck.close()
    assert agent.stop() == 0


def zmtp_subscriber(path: str) -> socket.socket:
    """A raw ZMTP 3.0 SUB over a Unix socket: the greeting (NULL mechanism)
    and READY. (A libzmq XSUB keeps every subscription it sends in a trie of
    its own, and freeing a 4 MiB-deep one crashes the sending process.)"""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    greeting = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + bytes(32)
    s.sendall(greeting)
    prop = b"\x0bSocket-Type" + struct.pack(">I", 3) + b"SUB"
    body = b"\x05READY" + prop
    s.sendall(b"\x04" + bytes([len(body)]) + body)
    return s


def test_a_4_mib_subscription_is_refused_and_memory_stays_flat(make_agent) -> None:
    agent = make_agent().start()
    path = agent.upstream.removeprefix("ipc://")
    before = rss_kib(agent)
    topic = b"\x01" + b"c" * (4 * 1024 * 1024)
    for _ in range(5):
        s = zmtp_subscriber(path)
        # Refused mid-way, the agent may have closed the connection already.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(b"\x02" + struct.pack(">Q", len(topic)) + topic)
        # Refused: libzmq closes the connection at the frame's declared size
        # (MAXMSGSIZE), before it allocates or stores anything.
        try:
            with contextlib.suppress(ConnectionResetError):
                while s.recv(65536):
                    pass  # the agent's greeting and READY, then EOF
        except TimeoutError:
            raise AssertionError("the agent kept the connection: subscription accepted") from None
        finally:
            s.close()
    # The agent still serves, and a real subscriber still works.
    ctx = zmq.Context()
    try:
        real = sub(ctx, agent, b"critical")
        agent.wait_state(lambda d: d["upstream"]["subscribers"] == 1, what="a real subscription")
        real.close()
    finally:
        ctx.destroy(0)
    after = rss_kib(agent)
    # One such subscription took +86 MB before (issue 13); allow noise.
    assert after - before < 16 * 1024, f"RSS grew {before} -> {after} KiB"
    assert "cccccccc" not in agent.log
    assert agent.stop() == 0


def test_a_topic_cannot_forge_a_log_line(make_agent, zctx) -> None:
    agent = make_agent().start()
    forged = b"\n2026-12-06 21:00:00,000 CRITICAL agent.loop: stopped: 0 delivered, 9 LOST"
    x = zctx.socket(zmq.XSUB)
    x.setsockopt(zmq.LINGER, 0)
    x.connect(agent.upstream)
    x.send(b"\x01" + forged)
    x.send(b"\x01critical")
    agent.wait_state(lambda d: d["upstream"]["subscribers"] == 1, what="the subscription")
    wait_for(lambda: "ignored 1" in agent.log, what="the subscription log line")
    log = agent.log.splitlines()
    assert not [line for line in log if line.startswith("2026-12-06 21:00:00,000")]
    lines = [line for line in log if "2026-12-06 21:00:00,000" in line]
    assert len(lines) == 1, lines
    assert "agent.upstream: upstream subscriptions:" in lines[0]
    assert "'\\x0a2026-12-06 21:00:00,000 CRITICAL agent" in lines[0]
    x.close()
    assert agent.stop() == 0
