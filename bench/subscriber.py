# Upstream subscriber for the benches: a SUB that keeps its own buffers shallow
# (RCVHWM and SO_RCVBUF small, so a slow reader pushes back on the agent rather
# than hiding a backlog in its own socket), optionally rate-limited in events/s
# during a time window, and as cheap per event as possible.
#
# What it checks, per class (from the class frame and the header's count):
#   - events and messages received; per (agent, epoch, class) the header seq
#     must go up by exactly 1 (gaps and repeats are counted);
#   - for tracked classes, every event's (generator, id) from the body
#     (bench/events.py layout): duplicates on the fly, lost ones at the end
#     against the generator's id ranges (sent on stdin as {"expect": ...});
#   - critical latency = receive time - the send time the generator embedded
#     (both time.monotonic_ns(), one clock for every process on Linux).
# The relay sends everything under one class frame with a fixed header (count
# 0): its bodies are counted by size, and by each event's "k" (the class the
# generator meant) when ids are tracked. Under the agent, an event whose "k"
# differs from its class frame is counted as misclassified.
#
# Protocol: prints {"ready": ...} after connecting; reads one JSON line
# {"expect": {"events": N, "ids": [[class, g, count], ...]}} on stdin; stops when
# it has N events (plus a short linger to catch duplicates), when nothing came
# for --idle-s, or at --deadline-s; then prints {"subscriber": {...}}.
#
#   python bench/subscriber.py --connect tcp://127.0.0.1:5558 --track all \
#       --limit 100000 --limit-from-ns A --limit-until-ns B

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

import cbor2
import zmq
from common import percentiles
from events import CLASS_INDEX, CLASS_NAMES, CRITICAL, EVENT_BYTES, ID_BASE, parse_ids
from loadgen import tracked_classes

LINGER_AFTER_COMPLETE_S = 0.5  # keep reading this long after the last expected event


class Tally:
    """Everything counted from upstream messages. No I/O, no clock of its own."""

    def __init__(self, tracked: frozenset[int]) -> None:
        self.tracked = tracked
        self.events = [0, 0, 0, 0]
        self.messages = [0, 0, 0, 0]
        self.seq_last: dict[tuple[str, int, int], int] = {}
        self.seq_first: dict[tuple[str, int, int], int] = {}
        self.seq_gaps = [0, 0, 0, 0]
        self.seq_repeats = [0, 0, 0, 0]
        self.count_mismatch = 0  # header count disagrees with the body
        self.malformed = 0  # not [class, header, body] or an unknown class
        self.foreign = 0  # events in a tracked body without loadgen ids
        self.misclassified = 0  # an event under another class frame than loadgen meant
        self.seen: dict[tuple[int, int], bytearray] = {}  # (class, g) -> one byte per id
        self.duplicates = [0, 0, 0, 0]
        self.latencies: list[tuple[int, int]] = []  # (receive ns, latency ns)
        # (class, g) -> [[t_ns, highest id so far], ...], one entry per 10 ms at
        # most: when was everything up to a given id delivered (brownout.py).
        self.progress: dict[tuple[int, int], list[list[int]]] = {}
        self.per_second: dict[int, int] = {}
        self.first_ns = 0
        self.last_ns = 0
        self.total = 0

    def message(self, parts: list[bytes], t_ns: int) -> int:
        """Account one upstream message received at t_ns; returns its event count."""
        if len(parts) != 3:
            self.malformed += 1
            return 0
        cls_name, header, body = parts
        cls = CLASS_INDEX.get(cls_name.decode("ascii", "replace"))
        try:
            h = cbor2.loads(header)
            agent, epoch, seq, count = h["agent"], h["epoch"], h["seq"], h["count"]
        except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError):
            self.malformed += 1
            return 0
        if cls is None:
            self.malformed += 1
            return 0
        relay = agent == "relay"
        if relay:
            # Fixed header, one class frame for everything: count by size, and
            # by the "k" each event carries when ids are tracked.
            count = len(body) // EVENT_BYTES
        else:
            key = (agent, epoch, cls)
            last = self.seq_last.get(key)
            if last is None:
                self.seq_first[key] = seq
            elif seq > last + 1:
                self.seq_gaps[cls] += seq - last - 1
            elif seq <= last:
                self.seq_repeats[cls] += 1
            self.seq_last[key] = seq if last is None else max(seq, last)
        self.messages[cls] += 1
        self.total += count
        if not self.first_ns:
            self.first_ns = t_ns
        self.last_ns = t_ns
        sec = t_ns // 1_000_000_000
        self.per_second[sec] = self.per_second.get(sec, 0) + count
        if self.tracked and (relay or cls in self.tracked):
            recs, foreign = parse_ids(body, count)
            self.foreign += foreign
            if len(recs) + foreign != count:
                self.count_mismatch += 1
            if relay:
                for rec in recs:
                    self.events[rec[0] & 3] += 1
            else:
                self.events[cls] += count
            self._ids(recs, t_ns, None if relay else cls)
        else:
            self.events[cls] += count
            if len(body) != count * EVENT_BYTES:
                self.count_mismatch += 1
        return count

    def _ids(self, recs: list[tuple[int, int, int, int]], t_ns: int, frame_cls: int | None) -> None:
        seen = self.seen
        tracked = self.tracked
        latencies = self.latencies
        high: dict[tuple[int, int], int] = {}
        cur: tuple[int, int] | None = None
        bm = bytearray()
        hi = 0
        for k, g, n, sent in recs:
            if frame_cls is not None and k != frame_cls:
                self.misclassified += 1
            if k not in tracked:
                continue
            if cur is None or k != cur[0] or g != cur[1]:
                if cur is not None:
                    high[cur] = max(high.get(cur, 0), hi)
                cur = (k, g)
                got = seen.get(cur)
                if got is None:
                    got = seen[cur] = bytearray(1 << 16)
                bm = got
                hi = 0
            hi = max(hi, n)
            i = n - ID_BASE
            if i < 0:
                self.foreign += 1
                continue
            if i >= len(bm):
                bm.extend(bytes(max(i + 1 - len(bm), len(bm))))
            if bm[i]:
                self.duplicates[k] += 1
            else:
                bm[i] = 1
            if k == CRITICAL:
                latencies.append((t_ns, t_ns - sent))
        if cur is not None:
            high[cur] = max(high.get(cur, 0), hi)
        for key, hi in high.items():
            prog = self.progress.setdefault(key, [])
            if prog and t_ns - prog[-1][0] < 10_000_000:
                prog[-1][1] = max(prog[-1][1], hi)
            else:
                prog.append([t_ns, max(hi, prog[-1][1] if prog else 0)])

    def result(self, expect: dict[str, Any] | None, raw: bool = False) -> dict[str, Any]:
        lost = [0, 0, 0, 0]
        unexpected = [0, 0, 0, 0]
        expected_ids: dict[tuple[int, int], int] = {}
        if expect:
            for cls_name, g, n in expect.get("ids", []):
                expected_ids[(CLASS_INDEX[cls_name], int(g))] = int(n)
        for (cls, g), n in expected_ids.items():
            if cls not in self.tracked:
                continue
            bm = self.seen.get((cls, g), bytearray())
            got = bm.count(1, 0, n)
            lost[cls] += n - got
        for (cls, g), bm in self.seen.items():
            n = expected_ids.get((cls, g), 0)
            unexpected[cls] += bm.count(1, n)
        lat_ms = [v / 1e6 for _, v in self.latencies]
        span = (self.last_ns - self.first_ns) / 1e9
        return {
            "classes": {
                CLASS_NAMES[c]: {
                    "events": self.events[c],
                    "messages": self.messages[c],
                    "seq_gaps": self.seq_gaps[c],
                    "seq_repeats": self.seq_repeats[c],
                    "tracked": c in self.tracked,
                    "duplicates": self.duplicates[c],
                    "lost": lost[c] if c in self.tracked and expect else None,
                    "unexpected": unexpected[c],
                }
                for c in range(4)
            },
            "events": self.total,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "rate": round(self.total / span, 1) if span > 0 else None,
            "epochs": sorted({f"{a}/{e}" for a, e, _ in self.seq_last}),
            "seq_first": {
                f"{a}/{e}/{CLASS_NAMES[c]}": s for (a, e, c), s in self.seq_first.items()
            },
            "malformed": self.malformed,
            "count_mismatch": self.count_mismatch,
            "foreign": self.foreign,
            "misclassified": self.misclassified,
            "latency_ms": percentiles(lat_ms),
            "per_second": sorted(self.per_second.items()),
            "latencies": self.latencies if raw else None,
            "progress": (
                [[CLASS_NAMES[c], g, p] for (c, g), p in self.progress.items()] if raw else None
            ),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="shallow SUB that checks what the agent delivers")
    ap.add_argument("--connect", action="append", required=True)
    ap.add_argument("--track", default="critical", help="classes whose ids are checked")
    ap.add_argument("--rcvhwm", type=int, default=4, help="ZMQ_RCVHWM in messages")
    ap.add_argument("--rcvbuf", type=int, default=4096, help="SO_RCVBUF in bytes")
    ap.add_argument("--limit", type=float, default=0, help="events/s during the window (0 = off)")
    ap.add_argument("--limit-from-ns", type=int, default=0, help="window start, monotonic_ns")
    ap.add_argument("--limit-until-ns", type=int, default=2**63, help="window end, monotonic_ns")
    ap.add_argument("--idle-s", type=float, default=5.0, help="stop after this long without data")
    ap.add_argument("--raw", action="store_true", help="report every latency and id progress")
    ap.add_argument("--deadline-s", type=float, default=300.0, help="hard stop")
    args = ap.parse_args(argv)

    stopping = False

    def on_signal(_sig: int, _frm: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    tally = Tally(tracked_classes(args.track))
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, args.rcvhwm)
    sub.setsockopt(zmq.RCVBUF, args.rcvbuf)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    for ep in args.connect:
        sub.connect(ep)
    stdin_fd = sys.stdin.fileno()
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    poller.register(stdin_fd, zmq.POLLIN)
    sys.stdout.write(json.dumps({"ready": {"connect": args.connect}}) + "\n")
    sys.stdout.flush()

    expect: dict[str, Any] | None = None
    expect_total = None
    stdin_open = True
    deadline = time.monotonic() + args.deadline_s
    last_activity = time.monotonic()
    complete_at = None
    reason = "deadline"
    limit = args.limit
    lim_from, lim_until = args.limit_from_ns, args.limit_until_ns
    lim_start = 0
    lim_consumed = 0
    recv = sub.recv_multipart
    clock = time.monotonic_ns
    try:
        while True:
            now = time.monotonic()
            if stopping:
                reason = "signal"
                break
            if now >= deadline:
                reason = "deadline"
                break
            if expect_total is not None and complete_at is None and tally.total >= expect_total:
                complete_at = now
            if complete_at is not None and now - complete_at >= LINGER_AFTER_COMPLETE_S:
                reason = "complete"
                break
            if expect is not None and now - last_activity >= args.idle_s:
                reason = "idle"
                break
            ready = dict(poller.poll(100))
            if stdin_open and stdin_fd in ready:
                line = sys.stdin.readline()
                if not line:
                    stdin_open = False
                    poller.unregister(stdin_fd)
                else:
                    msg = json.loads(line)
                    if "expect" in msg:
                        expect = msg["expect"]
                        expect_total = int(expect["events"])
                        last_activity = time.monotonic()
            if sub not in ready:
                continue
            for _ in range(64):
                try:
                    parts = recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                t = clock()
                n = tally.message(parts, t)
                if limit and lim_from <= t < lim_until:
                    # Token bucket from the first message in the window: sleep
                    # whenever more than 1 ms ahead of `limit` events/s.
                    if not lim_start:
                        lim_start = t
                    lim_consumed += n
                    ahead_ns = lim_consumed * 1e9 / limit - (t - lim_start)
                    if ahead_ns > 1e6:
                        time.sleep(min(ahead_ns, lim_until - t) / 1e9)
            last_activity = time.monotonic()
    finally:
        sub.close(0)
        ctx.term()
    res = tally.result(expect, raw=args.raw)
    res["stop_reason"] = reason
    res["cpu_s"] = round(time.process_time(), 3)
    res["pid"] = os.getpid()
    sys.stdout.write(json.dumps({"subscriber": res}) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
