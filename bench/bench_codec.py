"""How fast agent.codec turns frames into classified events, against bare cbor2.loads.

    python bench/bench_codec.py [--events 8192] [--repeat 15] [--burst-frames 65536]

Prints us/event (p50, p99 and max over the repeats) for:
- single-event frames: FrameDecoder.decode_frames on lists of 64 frames (what
  the loop hands it after a drain), versus `[cbor2.loads(f) for f in frames]`;
- the same frames through the exact path alone (no batch), and drains in which
  one frame in 64 is bad at its end (its batch fails, the drain is redone exactly);
- 32-event frames: the same, versus `cbor2.loads` of each event separately (the
  bare cost of decoding those events if one already knew where they end).
The bare baseline has no options, no validation, no classification and no
spans: it is the floor, measured in the same run. The whole per-event budget
is ~2 us (500,000 single-event frames/s on 2 cores, INTERFACE.md).

Then the compiled ingest core (agent/_speedups.pyx through agent/fastpath.py),
when it is built: the same drains through fastpath.CompiledDecoder, with the
ratio reference / compiled of the p50s, and the burst reader: frames queued
in a PULL socket over ipc:// and read in bursts of 128 by the Python burst
(recv(NOBLOCK) + getsockopt(RCVMORE), agent/loop.py's) and by the C one; only
the time inside read() counts, per frame.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import cbor2
import zmq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from agent import fastpath
from agent.classes import ClassRules
from agent.codec import DecodeResult, FrameDecoder

TYPES = ("reading", "reading", "reading", "heartbeat", "over_voltage", "tamper")


def make_event(i: int) -> bytes:
    # ~115 bytes, 10 keys: what a meter collector sends.
    return cbor2.dumps(
        {
            "meter": 123456789 + i % 1000,
            "ts": 1790000000000 + i,
            "type": TYPES[i % len(TYPES)],
            "v": 231.5,
            "i": 12.25,
            "pf": 0.98,
            "f": 50.01,
            "phase": "L1",
            "seq": i,
            "fw": "3.2.1-rc4",
        }
    )


def per_event_us(run: Callable[[], object], events: int, repeat: int) -> list[float]:
    run()  # warm up
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t0) / events * 1e6)
    return samples


def line(name: str, samples: list[float]) -> str:
    s = sorted(samples)
    p99 = s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]
    return (
        f"  {name:44s} p50 {statistics.median(s):6.3f}  p99 {p99:6.3f}  max {s[-1]:6.3f} us/event"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--burst-frames", type=int, default=65536)
    args = parser.parse_args()
    n = args.events - args.events % 32
    events = [make_event(i) for i in range(n)]
    size = statistics.mean(len(e) for e in events)

    print(f"machine: {platform.platform()} {platform.machine()}, {os.cpu_count()} cpus")
    print(f"python {platform.python_version()} ({platform.python_implementation()}), ", end="")
    print(f"cbor2 {_cbor2_version()}")
    print(f"{n} events of {size:.0f} bytes (10 keys), {args.repeat} repeats; us per event\n")

    decoder = FrameDecoder(ClassRules())
    loads = cbor2.loads

    # What the loop hands the decoder after a drain: lists of frames.
    drains = [events[i : i + 64] for i in range(0, n, 64)]
    batches = [b"".join(events[i : i + 32]) for i in range(0, n, 32)]
    batch_drains = [batches[i : i + 8] for i in range(0, len(batches), 8)]
    # One bad frame per drain of 64, invalid UTF-8 in its last byte: the batch
    # fails at its very end and the whole drain is decoded again frame by
    # frame (the most a sparse bad peer can cost).
    spoiled = [d[:-1] + [d[-1][:-1] + b"\xff"] for d in drains]

    check = decoder.decode_frames(events)
    assert check.accepted == n and not check.rejected, check.rejected
    check = decoder.decode_frames(batches)
    assert check.accepted == n and not check.rejected, check.rejected
    check = decoder.decode_frames(spoiled[0])
    assert check.accepted == 63 and check.rejected == {"invalid_utf8": 1}, check.rejected

    def ours_single() -> None:
        for drain in drains:
            decoder.decode_frames(drain)

    def exact_single() -> None:
        # The exact path alone (private: what every frame would cost without
        # the batch), into a DecodeResult that is thrown away.
        result = DecodeResult()
        for f in events:
            decoder._decode_exact(f, result)

    def ours_spoiled() -> None:
        for drain in spoiled:
            decoder.decode_frames(drain)

    def ours_32() -> None:
        for drain in batch_drains:
            decoder.decode_frames(drain)

    def bare() -> None:
        for f in events:
            loads(f)

    print("single-event frames (drains of 64):")
    print(line("FrameDecoder.decode_frames", per_event_us(ours_single, n, args.repeat)))
    print(line("  exact path only (no batch)", per_event_us(exact_single, n, args.repeat)))
    print(line("  1 bad frame per drain", per_event_us(ours_spoiled, n, args.repeat)))
    print(line("bare cbor2.loads per frame", per_event_us(bare, n, args.repeat)))
    print("32-event frames (drains of 8):")
    print(line("FrameDecoder.decode_frames", per_event_us(ours_32, n, args.repeat)))
    print(line("bare cbor2.loads per event (spans known)", per_event_us(bare, n, args.repeat)))

    print(f"\ningest core: {fastpath.ACTIVE} ({fastpath.REASON})")
    if fastpath.ACTIVE != "compiled":
        return
    compiled = fastpath.make_decoder(ClassRules())
    assert compiled.decode_frames(events) == decoder.decode_frames(events)
    assert compiled.decode_frames(spoiled[0]) == decoder.decode_frames(spoiled[0])

    def compiled_single() -> None:
        for drain in drains:
            compiled.decode_frames(drain)

    def compiled_spoiled() -> None:
        for drain in spoiled:
            compiled.decode_frames(drain)

    def compiled_32() -> None:
        for drain in batch_drains:
            compiled.decode_frames(drain)

    rows = [
        ("single-event frames, drains of 64", ours_single, compiled_single),
        ("  1 bad frame per drain", ours_spoiled, compiled_spoiled),
        ("32-event frames, drains of 8", ours_32, compiled_32),
    ]
    print("reference FrameDecoder vs CompiledDecoder (p50 us/event):")
    for name, ref, comp in rows:
        r = statistics.median(per_event_us(ref, n, args.repeat))
        c = statistics.median(per_event_us(comp, n, args.repeat))
        print(f"  {name:40s} reference {r:6.3f}  compiled {c:6.3f}  ratio {r / c:5.1f}x")

    print(f"burst recv, {args.burst_frames} frames of {size:.0f} bytes over ipc:// (p50 us/frame):")
    py, c = burst_us(events, args.burst_frames, args.repeat)
    name = "recv(NOBLOCK) + getsockopt(RCVMORE) vs C"
    print(f"  {name:40s} python {py:6.3f}  compiled {c:6.3f}  ratio {py / c:5.1f}x")


def burst_us(events: list[bytes], frames: int, repeat: int) -> tuple[float, float]:
    """p50 us per frame inside read(), Python burst and compiled burst, same frames."""
    ctx = zmq.Context()
    results: dict[str, list[float]] = {"python": [], "compiled": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(max(3, repeat // 3)):
            for kind in ("python", "compiled"):
                endpoint = f"ipc://{tmp}/burst-{kind}-{i}"
                pull = ctx.socket(zmq.PULL)
                pull.setsockopt(zmq.RCVHWM, 0)
                pull.bind(endpoint)
                push = ctx.socket(zmq.PUSH)
                push.setsockopt(zmq.SNDHWM, 0)
                push.connect(endpoint)
                reader: Any = (
                    fastpath.PythonBurstReader(pull)
                    if kind == "python"
                    else fastpath.make_burst_reader(pull)
                )
                assert reader.kind == kind
                for j in range(frames):
                    push.send(events[j % len(events)])
                got = 0
                spent = 0.0
                while got < frames:
                    if not pull.poll(5000):
                        raise RuntimeError(f"{kind}: {got} of {frames} frames arrived")
                    t0 = time.perf_counter()
                    batch, _ = reader.read()
                    spent += time.perf_counter() - t0
                    got += len(batch)
                results[kind].append(spent / frames * 1e6)
                push.close(linger=0)
                pull.close(linger=0)
    ctx.term()
    return statistics.median(results["python"]), statistics.median(results["compiled"])


def _cbor2_version() -> str:
    from importlib.metadata import version

    return version("cbor2")


if __name__ == "__main__":
    main()
