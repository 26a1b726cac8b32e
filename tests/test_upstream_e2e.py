"""The adaptive message size through the real agent (issue 9 part 3): small
messages while a shallow subscriber reads slowly, large ones for a
subscriber that drains fast. The latency figures live in bench/ (README)."""

from __future__ import annotations

import time

import cbor2
import zmq

from harness import AgentProcess, event

TOTAL = 120_000
SLOW_EVENTS = 10_000


def subscriber(ctx: zmq.Context, agent: AgentProcess, rcvhwm: int) -> zmq.Socket:
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, rcvhwm)
    s.setsockopt(zmq.RCVBUF, 4096)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(agent.upstream)
    s.subscribe(b"")
    agent.wait_state(lambda d: d["upstream"]["subscribers"] == 1, what="the subscription")
    return s


def read(s: zmq.Socket, events: int, pause_s: float) -> list[int]:
    """Events per message of the next messages holding `events` events."""
    sizes: list[int] = []
    deadline = time.monotonic() + 60
    while sum(sizes) < events:
        assert time.monotonic() < deadline, f"got {sum(sizes)} of {events}"
        if s.poll(100):
            sizes.append(cbor2.loads(s.recv_multipart()[1])["count"])
            if pause_s:
                time.sleep(pause_s)
    return sizes


def test_messages_are_small_for_a_slow_reader_and_large_for_a_fast_one(make_agent, zctx) -> None:
    agent = make_agent().start()
    slow = subscriber(zctx, agent, rcvhwm=4)
    push = zctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.connect(agent.ingest)
    for i in range(0, TOTAL, 100):
        push.send(b"".join(event(i + k, "reading", pad="x" * 40) for k in range(100)))
    # A shallow subscriber that reads ~500 messages/s: the bottleneck.
    small = read(slow, SLOW_EVENTS, 0.002)
    slow.close()
    median = sorted(small)[len(small) // 2]
    assert median < 128, f"messages stayed large for a slow reader: {small[:50]}"
    # One that takes everything as fast as the agent sends (a deep queue).
    fast = subscriber(zctx, agent, rcvhwm=100_000)
    large: list[int] = []
    while fast.poll(1000):  # until the backlog is through (then idle)
        large.append(cbor2.loads(fast.recv_multipart()[1])["count"])
    assert sum(large) > TOTAL // 2
    # Large once measured: the size follows the drain rate window by window
    # (50 ms each), from the smallest at the first refusal.
    assert max(large) >= 128, f"never large: {large}"
    assert agent.stop() == 0
