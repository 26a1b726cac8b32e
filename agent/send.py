"""`edge-agent send`: push test events into an agent like a collector does.

This module owns the technician's test events and how they are handed over:
one PUSH socket connected to the ingest endpoint (the bulk one, or the alert
lane's), events batched as a collector may batch them: a frame is a CBOR
sequence of up to EVENTS_PER_FRAME events (INTERFACE.md, "Events in").

Promises:
- Each event is a CBOR map `{"meter": M, "ts": <now, ms>, "type": T,
  "sent_by": "edge-agent send", "n": i}` with i = 1..N: the two marker keys let
  a head-end (or `edge-agent tail`) tell test events from real ones. `--meter`
  all digits is sent as an unsigned integer, anything else as text (the
  contract allows both).
- Exit 0 once every event was handed to ZeroMQ on an established connection to
  the endpoint and flushed out of this process; 1 when that did not happen
  within `timeout_s` (5 s: nobody listening, a wrong port, CURVE required);
  2 for input that can never work (a malformed endpoint, an empty type, a bad
  count). Never hangs: ZMQ_IMMEDIATE keeps messages off connections that are
  not up, so a send with no peer waits (SNDTIMEO) instead of queueing, and the
  close lingers only for what is left of the deadline.
- PUSH has no acknowledgement: "handed over" means written to a live
  connection, not counted by the agent. `edge-agent status` or `tail` show
  that they arrived.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import cbor2

DEFAULT_TIMEOUT_S = 5.0  # INTERFACE.md: 1 if not handed over within 5 s
# Events per frame: 256 test events are ~23 KiB, far under the default 1 MiB
# max_frame_bytes (and under the 64-byte-per-event floor of any legal one).
EVENTS_PER_FRAME = 256
# Events per invocation: a test, not a load generator (bench/ has those).
# Why so few: libzmq drops what a receiver has not yet taken into its pipe
# when the sender disconnects (measured: a PUSH that closed after 2000
# one-event frames to a busy PULL with RCVHWM 1000 got 1001 delivered), and
# `send` exits right after handing over. 100,000 events are 391 frames, which
# the agent's default ingest.rcvhwm of 1000 frames holds whole.
MAX_COUNT = 100_000
MARKER = "edge-agent send"


class SendError(Exception):
    """Input that can never work (exit 2)."""


def build_event(type_: str, meter: str, n: int, now_ms: int) -> bytes:
    """One test event's CBOR bytes. Pure."""
    if not type_:
        raise SendError("--type must not be empty")
    if not meter:
        raise SendError("--meter must not be empty")
    meter_value: int | str = int(meter) if meter.isascii() and meter.isdigit() else meter
    if isinstance(meter_value, int) and meter_value >= 2**64:
        raise SendError(f"--meter {meter}: an integer meter must fit in 64 bits")
    return cbor2.dumps(
        {"meter": meter_value, "ts": now_ms, "type": type_, "sent_by": MARKER, "n": n}
    )


def main(
    endpoint: str,
    type_: str,
    meter: str,
    count: int = 1,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    import zmq

    deadline = time.monotonic() + timeout_s
    try:
        if not 1 <= count <= MAX_COUNT:
            raise SendError(f"--count must be between 1 and {MAX_COUNT}, got {count}")
        now_ms = int(time.time() * 1000)
        events = [build_event(type_, meter, n, now_ms) for n in range(1, count + 1)]
        frames = [
            b"".join(events[i : i + EVENTS_PER_FRAME]) for i in range(0, count, EVENTS_PER_FRAME)
        ]
    except SendError as e:
        print(f"edge-agent send: {e}", file=err)
        return 2

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    handed = 0
    try:
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as e:
            print(f"edge-agent send: bad endpoint {endpoint!r}: {e}", file=err)
            return 2
        for i, frame in enumerate(frames):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            sock.setsockopt(zmq.SNDTIMEO, left_ms)
            try:
                sock.send(frame)
            except zmq.Again:
                break
            handed += min(EVENTS_PER_FRAME, count - i * EVENTS_PER_FRAME)
        # What is still in this process's queue gets what is left of the
        # deadline to reach the kernel; close() does not say whether it did.
        left_ms = max(0, int((deadline - time.monotonic()) * 1000))
        sock.setsockopt(zmq.LINGER, left_ms)
    finally:
        sock.close()
        ctx.term()
    if handed < count:
        print(
            f"edge-agent send: {handed} of {count} events handed over to {endpoint} "
            f"within {timeout_s:g} s: is an agent listening there (and without CURVE)?",
            file=err,
        )
        return 1
    print(f"sent {count} event(s) type={type_} meter={meter} to {endpoint}", file=out)
    return 0
