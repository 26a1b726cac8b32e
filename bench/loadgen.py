# Load generator: PUSH sockets sending pre-built ~120-byte CBOR meter events
# (bench/events.py) at a scheduled rate, as a process or imported.
#
# What it measures: only what it offered. Its JSON report (one line on stdout
# at exit) gives per phase the planned rate, the events actually sent and the
# achieved offered rate, per class the events sent, and the id ranges that the
# subscriber checks for loss and duplicates. A send that blocks longer than
# --stall-s (the receiver stopped reading) ends the run with "stalled": true.
#
#   python bench/loadgen.py --connect ipc:///tmp/x/in --schedule 5:max
#   python bench/loadgen.py --connect ipc:///tmp/x/in --connections 4 \
#       --schedule 2:10000,10:500000,10:10000 --frame-events 32 --track all
#
# Cheap by construction: frames are built once into a cycle of ~1000 frames;
# the hot loop only sends them, patching ids (and, for critical events, the
# send time taken just before the send: time.monotonic_ns() is system-wide on
# Linux, so the subscriber's clock is the same clock) into bytearrays in place.
# Pacing checks the clock once per chunk (1000 frames at full speed, ~5 ms worth
# of frames at a set rate), never per send. Measured on the 2-core box: one
# process offers ~0.8-1.2M single-event frames/s into a PULL that only drains
# (3-6M events/s in 32-event frames) and paces 500,000 ids-patched events/s in
# about half a core.

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq
from events import (
    CLASS_INDEX,
    CLASS_NAMES,
    CRITICAL,
    EVENT_BYTES,
    ID_BASE,
    MAX_GENERATORS,
    N_OFF,
    PACK_ID,
    PACK_SENT,
    SENT_OFF,
    build_event,
)

CYCLE_FRAMES = 1000  # frames per pre-built cycle, and per chunk at full speed
PACE_WINDOW_S = 0.005  # at a set rate, look at the clock every ~5 ms of frames

Frame = tuple[bytes | None, bytearray | None, tuple[tuple[int, int], ...], tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class Phase:
    seconds: float
    rate: float | None  # events/s; None = as fast as possible


def parse_schedule(text: str) -> list[Phase]:
    """`5:max` or `2:10000,10:500000,10:10000` (seconds:events-per-second, ...)."""
    phases = []
    for part in text.split(","):
        secs, _, rate = part.partition(":")
        r = None if rate.strip() in ("max", "") else float(rate)
        if r is not None and r <= 0:
            raise ValueError(f"rate must be > 0 in {part!r}")
        phases.append(Phase(float(secs), r))
    return phases


def scale_schedule(phases: Sequence[Phase], share: float) -> list[Phase]:
    return [Phase(p.seconds, None if p.rate is None else p.rate * share) for p in phases]


def schedule_text(phases: Sequence[Phase]) -> str:
    return ",".join(f"{p.seconds:g}:{'max' if p.rate is None else f'{p.rate:g}'}" for p in phases)


def parse_mix(text: str) -> list[int]:
    """`critical=1,normal=74,low=25` -> integer weights per class index."""
    weights = [0, 0, 0, 0]
    for part in text.split(","):
        name, _, w = part.partition("=")
        weights[CLASS_INDEX[name.strip()]] = int(w)
    if sum(weights) <= 0:
        raise ValueError("mix has no weight")
    return weights


def class_pattern(weights: Sequence[int]) -> list[int]:
    """One cycle of classes, each class spread evenly (smooth weighted round robin)."""
    total = sum(weights)
    credit = [0] * len(weights)
    out = []
    for _ in range(total):
        for c, w in enumerate(weights):
            credit[c] += w
        pick = max(range(len(weights)), key=lambda c: credit[c])
        credit[pick] -= total
        out.append(pick)
    return out


@dataclasses.dataclass
class FrameCycle:
    frames: list[Frame]
    frame_events: int
    prefix: list[list[int]]  # prefix[i][c]: events of class c in frames[:i]

    def class_counts(self, total_frames: int) -> list[int]:
        laps, rest = divmod(total_frames, len(self.frames))
        full = self.prefix[-1]
        part = self.prefix[rest]
        return [laps * full[c] + part[c] for c in range(4)]


def build_cycle(
    frame_events: int, weights: Sequence[int], g: int, tracked: set[int], ts_ms: int
) -> FrameCycle:
    """~CYCLE_FRAMES frames of `frame_events` events each, classes per `weights`.

    Events of a class in `tracked` get a unique id per (generator, class);
    critical events also get their send time. Frames without either are plain
    bytes, sent as they are.
    """
    pattern = class_pattern(weights)
    base_events = math.lcm(len(pattern), frame_events)
    base_frames = base_events // frame_events
    n_frames = base_frames * max(1, math.ceil(CYCLE_FRAMES / base_frames))
    cache: dict[tuple[int, int], bytes] = {}
    frames: list[Frame] = []
    prefix = [[0, 0, 0, 0]]
    e = 0
    for _ in range(n_frames):
        parts = []
        npatch: list[tuple[int, int]] = []
        spatch: list[int] = []
        counts = list(prefix[-1])
        for k in range(frame_events):
            cls = pattern[e % len(pattern)]
            key = (cls, e % 997)
            if key not in cache:
                cache[key] = build_event(cls, g, e % 997, ts_ms)
            parts.append(cache[key])
            if cls in tracked:
                npatch.append((k * EVENT_BYTES + N_OFF, cls))
            if cls == CRITICAL:
                spatch.append(k * EVENT_BYTES + SENT_OFF)
            counts[cls] += 1
            e += 1
        raw = b"".join(parts)
        if npatch or spatch:
            frames.append((None, bytearray(raw), tuple(npatch), tuple(spatch)))
        else:
            frames.append((raw, None, (), ()))
        prefix.append(counts)
    return FrameCycle(frames, frame_events, prefix)


def send_chunk(
    send: Callable[..., Any],
    part: list[Frame],
    ctr: list[int],
    send_lane: Callable[..., Any] | None = None,
) -> int:
    """Send `part`; returns how many frames went out (fewer only on a stall).
    With `send_lane`, frames that carry a critical event go through it."""
    clock = time.monotonic_ns
    fr: Frame | None = None
    try:
        for fr in part:
            static, buf, npatch, spatch = fr
            if static is not None:
                send(static)
                continue
            for off, c in npatch:
                PACK_ID(buf, off, ctr[c])
                ctr[c] += 1
            for off in spatch:
                PACK_SENT(buf, off, clock())
            if spatch and send_lane is not None:
                send_lane(buf)
            else:
                send(buf)
    except zmq.Again:
        # The frame in hand was not sent: give its ids back so the id ranges
        # reported stay exactly the ids that left this process.
        assert fr is not None
        for _off, c in fr[2]:
            ctr[c] -= 1
        return next(i for i, f in enumerate(part) if f is fr)
    return len(part)


@dataclasses.dataclass
class Generator:
    """PUSH sockets + a frame cycle + a schedule."""

    endpoints: Sequence[str]
    connections: int = 1
    frame_events: int = 1
    weights: Sequence[int] = (1, 0, 74, 25)
    tracked: frozenset[int] = frozenset({CRITICAL})
    index: int = 0
    stall_s: float = 5.0
    sndhwm: int = 1000
    # The alert lane (issue 9): frames holding a critical event go to a PUSH
    # socket of their own connected here, as a lane-aware collector sends.
    lane: Sequence[str] = ()

    def run(self, phases: Sequence[Phase], start_at_ns: int | None = None) -> dict[str, Any]:
        if not 0 <= self.index < MAX_GENERATORS:
            raise ValueError(f"generator index must be 0..{MAX_GENERATORS - 1}")
        cycle = build_cycle(
            self.frame_events, self.weights, self.index, set(self.tracked), int(time.time() * 1000)
        )
        ctx = zmq.Context()
        socks = []
        try:
            for _ in range(self.connections):
                s = ctx.socket(zmq.PUSH)
                s.setsockopt(zmq.SNDHWM, self.sndhwm)
                s.setsockopt(zmq.SNDTIMEO, int(self.stall_s * 1000))
                # Frames still queued at exit are flushed for up to 30 s.
                s.setsockopt(zmq.LINGER, 30_000)
                for ep in self.endpoints:
                    s.connect(ep)
                socks.append(s)
            lane = None
            if self.lane:
                lane = ctx.socket(zmq.PUSH)
                lane.setsockopt(zmq.SNDHWM, self.sndhwm)
                lane.setsockopt(zmq.SNDTIMEO, int(self.stall_s * 1000))
                lane.setsockopt(zmq.LINGER, 30_000)
                for ep in self.lane:
                    lane.connect(ep)
                socks.append(lane)
            report = self._run(socks, cycle, phases, start_at_ns, lane)
        finally:
            for s in socks:
                s.close()
            ctx.term()
        report["ended_ns"] = time.monotonic_ns()
        report["cpu_s"] = round(time.process_time(), 3)
        return report

    def _run(
        self,
        socks: list[zmq.Socket[Any]],
        cycle: FrameCycle,
        phases: Sequence[Phase],
        start_at_ns: int | None,
        lane: zmq.Socket[Any] | None = None,
    ) -> dict[str, Any]:
        if start_at_ns is not None:
            delay = (start_at_ns - time.monotonic_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
        frames = cycle.frames
        n_cycle = len(frames)
        bulk = [sk for sk in socks if sk is not lane]
        send_lane = None if lane is None else lane.send
        n_ev = cycle.frame_events
        ctr = [ID_BASE] * 4
        pos = total = turn = 0
        stalled = False
        started_ns = time.monotonic_ns()
        out_phases = []
        for ph in phases:
            t0 = time.monotonic()
            t_end = t0 + ph.seconds
            f0 = total
            if ph.rate is None:
                fps = None
                chunk = n_cycle
            else:
                fps = ph.rate / n_ev
                chunk = int(max(1, min(n_cycle, fps * PACE_WINDOW_S)))
            while True:
                now = time.monotonic()
                if now >= t_end:
                    break
                if fps is not None:
                    due = t0 + (total - f0) / fps
                    if now < due:
                        time.sleep(min(due, t_end) - now)
                        continue
                end = pos + chunk
                part = frames[pos:end] if end <= n_cycle else frames[pos:] + frames[: end - n_cycle]
                sent = send_chunk(bulk[turn % len(bulk)].send, part, ctr, send_lane)
                turn += 1
                total += sent
                pos = (pos + sent) % n_cycle
                if sent < len(part):
                    stalled = True
                    break
            elapsed = time.monotonic() - t0
            before = cycle.class_counts(f0)
            after = cycle.class_counts(total)
            events = (total - f0) * n_ev
            out_phases.append(
                {
                    "seconds": ph.seconds,
                    "rate": ph.rate,
                    "elapsed_s": round(elapsed, 4),
                    "frames": total - f0,
                    "events": events,
                    "offered_rate": round(events / elapsed, 1) if elapsed > 0 else 0.0,
                    "classes": {CLASS_NAMES[c]: after[c] - before[c] for c in range(4)},
                }
            )
            if stalled:
                break
        counts = cycle.class_counts(total)
        ids = {
            CLASS_NAMES[c]: [ID_BASE, ctr[c] - ID_BASE] for c in sorted(self.tracked) if counts[c]
        }
        for c in self.tracked:
            assert ctr[c] - ID_BASE == counts[c], "id counter and class count disagree"
        return {
            "generator": self.index,
            "connections": len(socks),
            "frame_events": n_ev,
            "started_ns": started_ns,
            "start_late_ms": (
                round((started_ns - start_at_ns) / 1e6, 2) if start_at_ns is not None else None
            ),
            "stalled": stalled,
            "frames": total,
            "events": total * n_ev,
            "classes": {CLASS_NAMES[c]: counts[c] for c in range(4)},
            "ids": ids,
            "phases": out_phases,
        }


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One report for several generator processes that ran the same schedule together."""
    phases = []
    for i, first in enumerate(reports[0]["phases"]):
        rows = [r["phases"][i] for r in reports if i < len(r["phases"])]
        events = sum(p["events"] for p in rows)
        elapsed = max(p["elapsed_s"] for p in rows)
        rates = [p["rate"] for p in rows]
        phases.append(
            {
                "seconds": first["seconds"],
                "rate": None if None in rates else sum(rates),
                "elapsed_s": elapsed,
                "events": events,
                "offered_rate": round(events / elapsed, 1) if elapsed > 0 else 0.0,
                "classes": {n: sum(p["classes"][n] for p in rows) for n in CLASS_NAMES},
            }
        )
    return {
        "generators": len(reports),
        "connections": sum(r["connections"] for r in reports),
        "frame_events": reports[0]["frame_events"],
        "stalled": any(r["stalled"] for r in reports),
        "events": sum(r["events"] for r in reports),
        "frames": sum(r["frames"] for r in reports),
        "classes": {n: sum(r["classes"][n] for r in reports) for n in CLASS_NAMES},
        # (class, generator, count): ids ID_BASE .. ID_BASE+count-1 were sent.
        "ids": [[cls, r["generator"], rng[1]] for r in reports for cls, rng in r["ids"].items()],
        "cpu_s": round(sum(r["cpu_s"] for r in reports), 3),
        "start_late_ms": max((r["start_late_ms"] or 0.0) for r in reports),
        "started_ns": min(r["started_ns"] for r in reports),
        "ended_ns": max(r["ended_ns"] for r in reports),
        "phases": phases,
    }


def generator_argv(
    endpoints: Sequence[str],
    phases: Sequence[Phase],
    *,
    index: int,
    connections: int,
    frame_events: int,
    mix: str,
    track: str,
    start_at_ns: int,
    stall_s: float = 5.0,
    lane: Sequence[str] = (),
) -> list[str]:
    """Arguments for one loadgen process (without the interpreter and script)."""
    argv = []
    for ep in endpoints:
        argv += ["--connect", ep]
    for ep in lane:
        argv += ["--lane", ep]
    argv += [
        "--schedule",
        schedule_text(phases),
        "--index",
        str(index),
        "--connections",
        str(connections),
        "--frame-events",
        str(frame_events),
        "--mix",
        mix,
        "--track",
        track,
        "--start-at-ns",
        str(start_at_ns),
        "--stall-s",
        str(stall_s),
    ]
    return argv


def tracked_classes(text: str) -> frozenset[int]:
    if text == "all":
        return frozenset(range(4))
    if text == "none":
        return frozenset()
    return frozenset(CLASS_INDEX[n.strip()] for n in text.split(","))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="PUSH load generator for the edge-agent benches")
    ap.add_argument("--connect", action="append", required=True, help="ingest endpoint")
    ap.add_argument("--connections", type=int, default=1, help="PUSH sockets (round robin)")
    ap.add_argument(
        "--lane", action="append", default=[], help="alert-lane endpoint for critical frames"
    )
    ap.add_argument("--frame-events", type=int, default=1, help="events per frame")
    ap.add_argument("--schedule", default="5:max", help="secs:rate,... (rate in events/s or max)")
    ap.add_argument("--mix", default="critical=1,normal=74,low=25", help="class weights")
    ap.add_argument(
        "--track", default="critical", help="classes with unique ids: all, none, or a list"
    )
    ap.add_argument("--index", type=int, default=0, help="generator index 0..23 (id space)")
    ap.add_argument("--start-at-ns", type=int, default=None, help="time.monotonic_ns() to start")
    ap.add_argument(
        "--stall-s", type=float, default=5.0, help="give up on a send blocked this long"
    )
    args = ap.parse_args(argv)
    if args.lane and args.frame_events != 1:
        ap.error("--lane sends critical events as frames of their own: needs --frame-events 1")
    gen = Generator(
        lane=args.lane,
        endpoints=args.connect,
        connections=args.connections,
        frame_events=args.frame_events,
        weights=parse_mix(args.mix),
        tracked=tracked_classes(args.track) | {CRITICAL},
        index=args.index,
        stall_s=args.stall_s,
    )
    report = gen.run(parse_schedule(args.schedule), args.start_at_ns)
    sys.stdout.write(json.dumps({"loadgen": report}) + "\n")
    sys.stdout.flush()
    return 1 if report["stalled"] else 0


if __name__ == "__main__":
    sys.exit(main())
