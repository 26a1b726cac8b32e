# The bare ceiling: a minimal Python PULL -> PUB relay that validates nothing.
#
# It is what the agent is compared against in the same run (throughput.py):
# the cost of moving bytes through pyzmq in one Python thread, with the batching
# an agent does but without decoding, classifying, queueing or accounting.
# Loop: one blocking poll, then a bounded run of recv(NOBLOCK) (FACTS.md: the
# fastest way to drain a PULL), then ONE send_multipart per batch in the
# contract's shape [class, header, body]; the class frame and the header are
# fixed (header count 0 = "count the body": every generated event is 120 bytes).
# Socket options are the agent's (agent/settings.py): small SNDHWM and SNDBUF,
# XPUB_NODROP so a slow subscriber blocks the relay instead of losing events.
#
#   python bench/relay.py --ingest ipc:///tmp/r/in --upstream tcp://127.0.0.1:5558
#
# stdout (JSON lines): {"ready": ...} once bound, {"subscribed": ...} when the
# first subscription arrives, and {"relay": {...counters...}} on exit (SIGTERM,
# SIGINT or --max-seconds). With --discard it drains and drops (measures the
# load generator alone).

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import cbor2
import zmq

CLASS_FRAME = b"normal"
HEADER = cbor2.dumps({"agent": "relay", "epoch": 0, "seq": 0, "count": 0})


def emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="bare PULL->PUB relay (benchmark baseline)")
    ap.add_argument("--ingest", action="append", required=True, help="PULL bind endpoint")
    ap.add_argument("--upstream", action="append", default=[], help="XPUB bind endpoint")
    ap.add_argument("--batch-frames", type=int, default=256, help="frames per upstream message")
    ap.add_argument("--batch-bytes", type=int, default=64 * 1024, help="body bytes per message")
    ap.add_argument("--rcvhwm", type=int, default=1000)
    ap.add_argument("--sndhwm", type=int, default=4)
    ap.add_argument("--sndbuf", type=int, default=64 * 1024)
    ap.add_argument("--max-seconds", type=float, default=600.0, help="hard stop")
    ap.add_argument("--discard", action="store_true", help="drain ingest, publish nothing")
    args = ap.parse_args(argv)

    stopping = False

    def on_signal(_sig: int, _frm: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, args.rcvhwm)
    pull.setsockopt(zmq.MAXMSGSIZE, 1024 * 1024)
    pull.setsockopt(zmq.LINGER, 0)
    for ep in args.ingest:
        pull.bind(ep)
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, args.sndhwm)
    pub.setsockopt(zmq.SNDBUF, args.sndbuf)
    pub.setsockopt(zmq.XPUB_NODROP, 1)
    # Bounds a blocking send when the subscriber has gone away for good.
    pub.setsockopt(zmq.SNDTIMEO, 10_000)
    pub.setsockopt(zmq.LINGER, 0)
    for ep in args.upstream:
        pub.bind(ep)

    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    poller.register(pub, zmq.POLLIN)  # subscriptions
    emit({"ready": {"ingest": args.ingest, "upstream": args.upstream}})

    frames = messages = body_bytes = dropped = 0
    first_ns = last_ns = 0
    recv = pull.recv
    send_multipart = pub.send_multipart
    batch_frames = args.batch_frames
    batch_bytes = args.batch_bytes
    deadline = time.monotonic() + args.max_seconds
    subscribed = False
    try:
        while not stopping and time.monotonic() < deadline:
            ready = dict(poller.poll(100))
            if pub in ready:
                while True:
                    try:
                        sub = pub.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if sub[:1] == b"\x01" and not subscribed:
                        subscribed = True
                        emit({"subscribed": sub[1:].decode("ascii", "replace")})
            if pull not in ready:
                continue
            batch: list[bytes] = []
            size = 0
            for _ in range(batch_frames):
                try:
                    f = recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                batch.append(f)
                size += len(f)
                if size >= batch_bytes:
                    break
            if not batch:
                continue
            if not first_ns:
                first_ns = time.monotonic_ns()
            frames += len(batch)
            body_bytes += size
            if not args.discard:
                # Blocking send: with XPUB_NODROP a full pipe waits here, so
                # backpressure reaches the generator and nothing is lost.
                try:
                    send_multipart([CLASS_FRAME, HEADER, b"".join(batch)])
                    messages += 1
                except zmq.Again:
                    dropped += len(batch)
            last_ns = time.monotonic_ns()
    finally:
        pull.close(0)
        pub.close(0)
        ctx.term()
    emit(
        {
            "relay": {
                "frames": frames,
                "messages": messages,
                "dropped_frames": dropped,
                "body_bytes": body_bytes,
                "first_ns": first_ns,
                "last_ns": last_ns,
                "cpu_s": time.process_time(),
            }
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
