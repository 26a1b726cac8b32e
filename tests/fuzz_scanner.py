"""Long differential fuzz run: the compiled scanner against agent.codec.FrameDecoder.

    python tests/fuzz_scanner.py [--inputs 1000000] [--seed N] [--extension PATH]

`make fuzz` runs it over a million inputs (not part of `make test`); `make
fuzz-asan` runs it on a build of agent/_speedups.pyx under AddressSanitizer
(--extension loads that build instead of the installed one), so a read
outside a frame's buffer aborts the run instead of passing unseen.

Inputs: a seed corpus (tests/test_codec.py's hostile corpus and valid frames,
random events with text keys, nested containers, tags, floats, bignums,
simple values) mutated 1..4 times each: bit flips, interesting bytes, inserted
heads, deletions, truncations, splices of two seeds, repeated chunks, random
bytes. For every input: if the scanner is sure, its spans, classes and reason
must be the reference's; the CompiledDecoder merge path is checked on frame
lists every 64 inputs; every 8th input, FrameDecoder itself is checked
against tests/test_codec.py's plain-cbor2 judge (below the key bound).
Stops at the first disagreement and prints the frame.
Not collected by pytest (the file name does not start with test_).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import sys
import time
from typing import Any

import cbor2
from cbor2 import CBORSimpleValue, CBORTag

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from test_codec import NONCANONICAL, REJECTIONS, reference_decode  # noqa: E402

from agent import codec  # noqa: E402
from agent.classes import ClassRules  # noqa: E402
from agent.codec import DecodeResult, FrameDecoder  # noqa: E402

RULES = ClassRules()
INTERESTING = [
    0x00,
    0x17,
    0x18,
    0x1B,
    0x1C,
    0x1F,
    0x3F,
    0x5F,
    0x60,
    0x7F,
    0x80,
    0x81,
    0x9F,
    0xA0,
    0xA1,
    0xBF,
    0xC1,
    0xD9,
    0xDF,
    0xF4,
    0xF5,
    0xF8,
    0xF9,
    0xFB,
    0xFF,
    0xC0,
    0xED,
    0xE0,
    0xF0,
]
HEADS = [
    bytes.fromhex(x)
    for x in (
        "ff",
        "9f",
        "5f",
        "7f",
        "bf",
        "1c",
        "82",
        "a1",
        "d9d9f7",
        "f810",
        "c1",
        "1b",
        "3b",
        "7b",
        "9b",
        "bb",
        "6165",
        "62c328",
        "63eda080",
        "a16161",
        "818181",
    )
]


def load_extension(path: str | None) -> Any:
    if path is None:
        from agent import _speedups

        return _speedups
    spec = importlib.util.spec_from_file_location("agent._speedups", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(12 if depth < 6 else 8)
    if kind == 0:
        return rng.choice([None, True, False, cbor2.undefined, CBORSimpleValue(rng.randrange(20))])
    if kind == 1:
        return rng.choice(
            [rng.randrange(-(2**64), 2**64), rng.randrange(-(2**70), 2**70), rng.randrange(30)]
        )
    if kind == 2:
        return rng.choice([rng.random(), float("nan"), float("inf"), -0.0, 1.5, 1e300])
    if kind == 3:
        return "".join(rng.choice("abmeterstypé€😀\x00") for _ in range(rng.randrange(6)))
    if kind in (4, 5, 6, 7):
        return rng.randbytes(rng.randrange(6)) if kind == 4 else rng.choice(["a", "ts", "", "é"])
    if kind in (8, 9):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 10:
        keys = rng.sample(["a", "b", "meter", "ts", "type", "é", ""], rng.randrange(4))
        return {k: random_value(rng, depth + 1) for k in keys}
    return CBORTag(rng.choice([0, 1, 2, 3, 24, 55799, 2**40]), random_value(rng, depth + 1))


def random_event(rng: random.Random) -> bytes:
    event: dict[str, Any] = {
        "meter": rng.choice([rng.randrange(2**64), "MTR-1"]),
        "ts": rng.randrange(2**64),
        "type": rng.choice(["reading", "fault", "tamper", "heartbeat", "x"]),
    }
    for key in rng.sample(["v", "w", "x", "phase", "seq"], rng.randrange(4)):
        event[key] = random_value(rng, 1)
    if rng.randrange(4) == 0:
        # Int and bytes keys the scanner judges (duplicates once mutated), and
        # now and then a float, bool or array key it leaves to cbor2.
        keys = [rng.randrange(-3, 3), rng.randrange(2**64), b"k", b"", "k"]
        if rng.randrange(4) == 0:
            keys.append(rng.choice([1.0, True, None, (1, 2)]))
        event[rng.choice(["a", "b"])] = {k: rng.randrange(3) for k in rng.sample(keys, 3)}
    data = cbor2.dumps(event, canonical=rng.random() < 0.3)
    return bytes.fromhex("d9d9f7") + data if rng.randrange(6) == 0 else data


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(9)
        at = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[at % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[at % len(buf)] = rng.choice(INTERESTING)
        elif op == 2:
            buf[at:at] = rng.choice(HEADS)
        elif op == 3 and buf:
            del buf[at : at + rng.randrange(1, 4)]
        elif op == 4:
            del buf[at:]
        elif op == 5:
            other = rng.choice(corpus)
            buf[at:] = other[rng.randrange(len(other) + 1) :]
        elif op == 6 and buf:
            a = rng.randrange(len(buf))
            buf[at:at] = buf[a : a + rng.randrange(1, 16)]
        elif op == 7:
            buf[at:at] = rng.randbytes(rng.randrange(1, 5))
        else:
            buf += rng.choice(corpus)
    return bytes(buf)


def describe(frame: bytes, got: Any, want: Any) -> str:
    return f"DISAGREEMENT on {frame.hex()}\n  scanner:   {got}\n  reference: {want}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--extension", default=None, help="path of a _speedups build to load")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    speedups = load_extension(args.extension)
    print(f"fuzz: {args.inputs} inputs, seed {seed}, extension {speedups.__file__}", flush=True)

    corpus = [r[1] for r in REJECTIONS] + [n[1] for n in NONCANONICAL]
    corpus += [random_event(rng) for _ in range(3000)]
    corpus += [b"".join(rng.choice(corpus) for _ in range(3)) for _ in range(300)]
    scanner = speedups.Scanner(RULES.lookup, 32)
    reference = FrameDecoder(RULES)
    by_order = FrameDecoder(ClassRules({}))  # everything NORMAL: the events in frame order
    unsure = sure = 0
    batch: list[bytes] = []
    t0 = time.monotonic()
    for i in range(args.inputs):
        base = rng.choice(corpus)
        frame = mutate(rng, base, corpus) if rng.randrange(10) else base
        spans, outcome, _ = scanner.scan(frame)
        if outcome == "unsure":
            unsure += 1
        else:
            sure += 1
            want = reference.decode_frames([frame])
            want_reason = next(iter(want.rejected), None)
            order = by_order.decode_frames([frame]).events[2]
            got_events = [frame[a:b] for a, b, _ in spans]
            got_classes = [c for _, _, c in spans]
            want_classes = [next(c for c in range(4) if e in want.events[c]) for e in order]
            if (got_events, got_classes, outcome) != (order, want_classes, want_reason):
                print(describe(frame, (spans, outcome), (want.events, want.rejected)))
                return 1
        if i % 8 == 0:
            # The reference itself against test_codec's plain-cbor2 judge
            # (which has no hash-flooding bound: frames over it are skipped).
            mine = reference.decode_frames([frame])
            if codec.TOO_MANY_KEYS not in mine.rejected:
                judged = reference_decode([frame], RULES)
                if (mine.events, mine.rejected) != (judged.events, judged.rejected):
                    print(describe(frame, (mine.events, mine.rejected), judged))
                    return 1
        batch.append(frame)
        if len(batch) == 64:
            want = reference.decode_frames(batch)
            got = DecodeResult(([], [], [], []), {}, len(batch), 0)
            scanner.decode_into(batch, got, lambda rest: reference.decode_frames([rest]))
            if (got.events, got.rejected, got.accepted) != (
                want.events,
                want.rejected,
                want.accepted,
            ):
                print(f"DISAGREEMENT on the frame list {[f.hex() for f in batch]}")
                return 1
            batch = []
        if rng.randrange(50) == 0 and frame:
            corpus.append(frame)  # keep some mutants as seeds: deeper mutations
            if len(corpus) > 20000:
                del corpus[len(REJECTIONS) + len(NONCANONICAL) : len(corpus) // 2]
        if (i + 1) % 200_000 == 0:
            print(f"  {i + 1} inputs, {time.monotonic() - t0:.0f} s", flush=True)
    print(
        f"fuzz: {args.inputs} inputs agree ({sure} judged by the scanner, {unsure} unsure), "
        f"{time.monotonic() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
