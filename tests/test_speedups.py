"""agent._speedups against the reference: the scanner's answers and the C burst reader.

The scanner may answer UNSURE anywhere; whatever it answers for sure must be
what agent.codec.FrameDecoder decides (same spans, classes, reason), and
frames it is built to judge (text keys only, small maps) must not be UNSURE,
or the differential tests would prove nothing. The judges are FrameDecoder
and, for spans, tests/test_codec.py's oracle_item_end.

The extension is required here: these tests skip only when it is not built
AND EDGE_AGENT_PURE_PYTHON=1 (the pure-Python run of `make test`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest
import zmq
from cbor2 import CBORSimpleValue, CBORTag
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codec import (
    BASE,
    NONCANONICAL,
    REJECTIONS,
    enc,
    event_head,
    frame_lists,
    h,
    items,
    mutated,
    oracle_item_end,
    raw_event,
)

from agent.classes import ClassRules, EventClass
from agent.codec import DecodeResult, FrameDecoder

try:
    from agent import _speedups
except ImportError:
    if os.environ.get("EDGE_AGENT_PURE_PYTHON") == "1":
        pytest.skip("extension not built, pure-Python run", allow_module_level=True)
    raise

NORMAL = int(EventClass.NORMAL)
RULES = ClassRules()


def compiled_decode(frames: list[bytes], rules: ClassRules = RULES, max_depth: int = 32) -> Any:
    """What fastpath.CompiledDecoder does, built here so it runs in the pure run too."""
    reference = FrameDecoder(rules, max_depth=max_depth)
    scanner = _speedups.Scanner(rules.lookup, max_depth)
    result = DecodeResult(([], [], [], []), {}, len(frames), 0)
    scanner.decode_into(frames, result, lambda rest: reference.decode_frames([rest]))
    return result, scanner.unsure_frames


def judge_frame(frame: bytes, rules: ClassRules = RULES, max_depth: int = 32) -> Any:
    """The reference's answer for one frame, in scan()'s shape (outcome, events)."""
    one = FrameDecoder(rules, max_depth=max_depth).decode_frames([frame])
    # Spans: the accepted events are the frame's first items, in order; the
    # class of each comes from the per-class lists (matched by position).
    spans = []
    pos = 0
    order = FrameDecoder(ClassRules({}), max_depth=max_depth).decode_frames([frame])
    for event in order.events[NORMAL]:
        cls = next(c for c in range(4) if event in one.events[c])
        spans.append((pos, pos + len(event), cls))
        pos += len(event)
    assert sum(one.rejected.values()) <= 1
    outcome = next(iter(one.rejected), None)
    return spans, outcome


def check(frames: list[bytes], rules: ClassRules = RULES, max_depth: int = 32) -> int:
    """Compiled == reference on `frames`; every sure per-frame answer == reference. Unsure count."""
    want = FrameDecoder(rules, max_depth=max_depth).decode_frames(frames)
    got, unsure = compiled_decode(frames, rules, max_depth)
    assert got.events == want.events
    assert got.rejected == want.rejected
    assert (got.frames, got.accepted) == (want.frames, want.accepted)
    scanner = _speedups.Scanner(rules.lookup, max_depth)
    for frame in frames:
        spans, outcome, at = scanner.scan(frame)
        want_spans, want_outcome = judge_frame(frame, rules, max_depth)
        if outcome == "unsure":
            assert spans == want_spans[: len(spans)]
            continue
        assert (spans, outcome) == (want_spans, want_outcome), frame.hex()
        assert at == (spans[-1][1] if spans else 0) or outcome is None
        for start, stop, _ in spans:
            assert oracle_item_end(frame[start:stop]) == stop - start
    return int(unsure)


def sure(frame: bytes) -> bool:
    return _speedups.Scanner(RULES.lookup).scan(frame)[1] != "unsure"


# --- The hostile corpus of tests/test_codec.py ------------------------------


@pytest.mark.parametrize(
    ("frame", "reason"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS]
)
def test_rejections_agree(frame: bytes, reason: str) -> None:
    check([frame])
    check([enc() + frame, frame + enc(), enc()] * 3)
    outcome = _speedups.Scanner(RULES.lookup).scan(frame)[1]
    assert outcome in (reason, "unsure")


# Rejections whose exact semantics the scanner implements: they must not go to cbor2.
UNSURE_REJECTIONS = {  # keys that are floats, bools or arrays: cbor2's Python equality
    "1 and 1.0 collide",
    "1 and true collide",
    "indefinite array in key",
    "33 levels in a key",
}


def test_the_scanner_judges_the_corpus_itself() -> None:
    for name, frame, reason in REJECTIONS:
        if name in UNSURE_REJECTIONS:
            continue
        assert _speedups.Scanner(RULES.lookup).scan(frame)[1] == reason, name


@pytest.mark.parametrize("frame", [n[1] for n in NONCANONICAL], ids=[n[0] for n in NONCANONICAL])
def test_noncanonical_events_agree(frame: bytes) -> None:
    check([frame, frame + frame, enc() + frame, frame + h("ff")])


def test_valid_events_are_judged_without_cbor2() -> None:
    for name, frame in NONCANONICAL:
        if name.startswith(("array, map", "two NaN")):
            continue  # float, tag, array... keys: cbor2's Python equality decides
        spans, outcome, _ = _speedups.Scanner(RULES.lookup).scan(frame * 3)
        assert outcome is None and len(spans) == 3, name


# --- Depth ------------------------------------------------------------------


@pytest.mark.parametrize("max_depth", [1, 2, 3, 31, 32, 33, 62])
@pytest.mark.parametrize("wrap", [b"", h("d9d9f7")])
def test_depth_boundary(max_depth: int, wrap: bytes) -> None:
    frames = []
    for levels in range(max(0, max_depth - 4), max_depth + 3):
        for opener in (h("81"), h("a1 6161"), h("c1"), h("d9d9f7")):
            for inner in (h("00"), h("80"), h("a0"), h("40"), h("ff"), h("1c"), b"", h("9f")):
                frames.append(wrap + event_head(1) + h("6161") + opener * levels + inner)
    unsure = check(frames, max_depth=max_depth)
    assert unsure == 0


def test_max_depth_bounds() -> None:
    with pytest.raises(ValueError):
        _speedups.Scanner({}, 0)
    with pytest.raises(ValueError):
        _speedups.Scanner({}, _speedups.MAX_DEPTH_LIMIT + 1)


# --- UTF-8 ------------------------------------------------------------------

UTF8_CASES = [
    b"",
    b"a",
    b"\x7f",
    b"\xc2\x80",
    b"\xdf\xbf",
    b"\xe0\xa0\x80",
    b"\xef\xbf\xbf",
    b"\xf0\x90\x80\x80",
    b"\xf4\x8f\xbf\xbf",
    "é€😀".encode(),
    # overlong forms
    b"\xc0\x80",
    b"\xc1\xbf",
    b"\xe0\x80\x80",
    b"\xe0\x9f\xbf",
    b"\xf0\x80\x80\x80",
    b"\xf0\x8f\xbf\xbf",
    # surrogates, above U+10FFFF, invalid lead bytes
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xed\x9f\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xfe",
    b"\xff",
    # truncated and broken sequences
    b"\xc2",
    b"\xe0\xa0",
    b"\xf0\x90\x80",
    b"\x80",
    b"\xbf",
    b"\xc2\x41",
    b"\xe1\x80\x41",
    b"a\xc3",
    b"\xf1\x80\x80\xc0",
]


@pytest.mark.parametrize("payload", UTF8_CASES)
def test_utf8_agrees_with_python(payload: bytes) -> None:
    text = bytes((0x60 | len(payload),)) if len(payload) < 24 else None
    assert text is not None
    frames = [
        event_head(1) + h("6161") + text + payload,  # a value
        event_head(1) + text + payload + h("00"),  # a key
        raw_event("01", "02", (text + payload).hex()),  # the type
    ]
    assert check(frames) == 0


@given(st.binary(max_size=12))
@settings(max_examples=500)
def test_utf8_random(payload: bytes) -> None:
    valid = True
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        valid = False
    frame = event_head(1) + h("6161") + bytes((0x60 | len(payload),)) + payload
    spans, outcome, _ = _speedups.Scanner(RULES.lookup).scan(frame)
    assert (outcome is None) == valid
    assert check([frame]) == 0


# --- Valid events of every major type ----------------------------------------

simple_values = st.one_of(
    st.integers(0, 19).map(CBORSimpleValue),
    st.integers(32, 255).map(CBORSimpleValue),
    st.sampled_from([None, True, False, cbor2.undefined]),
)
floats = st.one_of(
    st.floats(width=16),
    st.floats(width=32),
    st.floats(),
    st.sampled_from([0.0, -0.0, float("inf"), float("-inf"), float("nan")]),
)
text_scalars = st.one_of(
    simple_values,
    floats,
    st.integers(-(2**64), 2**64 - 1),
    st.integers(-(2**80), 2**80),  # bignums (tags 2 and 3) beyond 64 bits
    st.text(max_size=8),
    st.binary(max_size=8),
)
text_keys = st.sampled_from(["a", "b", "meter", "ts", "type", "é", "", "ab"]) | st.text(max_size=4)
text_values = st.recursive(
    text_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(text_keys, inner, max_size=4)
        | st.builds(CBORTag, st.sampled_from([0, 1, 2, 3, 24, 32, 55799, 2**32, 2**64 - 1]), inner)
    ),
    max_leaves=8,
)
text_events = st.fixed_dictionaries(
    {
        "meter": st.integers(0, 2**64 - 1) | st.text(max_size=6),
        "ts": st.integers(0, 2**64 - 1),
        "type": st.sampled_from(["reading", "fault", "tamper", "heartbeat", "Fault", "", "é"]),
    },
    optional={"v": text_values, "w": text_values, "x": text_values},
)


@st.composite
def text_items(draw: st.DrawFn) -> bytes:
    obj = draw(st.one_of(text_events, text_events, text_values))
    data = cbor2.dumps(obj, canonical=draw(st.booleans()))
    if draw(st.integers(0, 4)) == 0:
        data = h("d9d9f7") + data
    return data


@given(st.lists(text_items(), min_size=1, max_size=5))
@settings(max_examples=400)
def test_text_key_items_are_judged_and_agree(parts: list[bytes]) -> None:
    frames = [*parts, b"".join(parts)]
    assert check(frames) == 0


def bit_flip(data: bytes, at: int, bit: int) -> bytes:
    buf = bytearray(data)
    buf[at % len(buf)] ^= 1 << bit
    return bytes(buf)


@given(text_items(), st.integers(0, 10_000), st.integers(0, 7))
@settings(max_examples=400)
def test_bit_flips(item: bytes, at: int, bit: int) -> None:
    flipped = bit_flip(item, at, bit)
    check([flipped, item + flipped, flipped + item])


@given(text_items(), text_items(), st.integers(0, 10_000), st.integers(0, 10_000))
@settings(max_examples=300)
def test_truncations_and_splices(a: bytes, b: bytes, i: int, j: int) -> None:
    i %= len(a) + 1
    j %= len(b) + 1
    check([a[:i], a[:i] + b[j:], b[:j] + a, a + b[:j], a[i:] + b])


@given(text_items().flatmap(mutated))
@settings(max_examples=400)
def test_mutated_text_items(frame: bytes) -> None:
    check([frame])


@given(frame_lists())
@settings(max_examples=200)
def test_codec_property_frames(frames: list[bytes]) -> None:
    check(frames)


@given(st.lists(items(), min_size=1, max_size=4))
@settings(max_examples=200)
def test_codec_items_any_keys(parts: list[bytes]) -> None:
    check([*parts, b"".join(parts)])


@given(st.lists(st.binary(max_size=40), max_size=8))
@settings(max_examples=500)
def test_arbitrary_bytes(frames: list[bytes]) -> None:
    check(frames)


# --- Maps and keys -----------------------------------------------------------


@given(
    st.lists(text_keys, min_size=1, max_size=40),
    st.integers(0, 6),
    st.sampled_from([b"", h("d9d9f7")]),
)
@settings(max_examples=300)
def test_duplicate_text_keys_at_any_depth(keys: list[str], depth: int, wrap: bytes) -> None:
    """Maps of text keys, duplicates or not, inside `depth` arrays in the event."""
    n = len(keys)
    head = bytes((0xB8, n)) if n >= 24 else bytes((0xA0 | n,))
    inner = head + b"".join(cbor2.dumps(k) + h("00") for k in keys)
    frame = wrap + event_head(1) + h("6161") + h("81") * depth + inner
    unsure = check([frame, frame + enc()])
    if n <= 32:
        assert unsure == 0


INT_AND_BYTES_KEYS = [
    ("1 twice, two widths", "a2 01 00 18 01 00", "duplicate_key"),
    ("1 twice, 8-byte head", "a2 1b 0000000000000001 00 01 00", "duplicate_key"),
    ("-1 twice", "a2 20 00 38 00 00", "duplicate_key"),
    ("1 and -2", "a2 01 00 21 00", None),
    ("-1 and 1", "a2 20 00 01 00", None),
    ("0 and -1 (n = 0 both)", "a2 00 00 20 00", None),
    ("max uint and min nint", "a2 1b ffffffffffffffff 00 3b ffffffffffffffff 00", None),
    ('b"a" and "a"', "a2 41 61 00 61 61 00", None),
    ('b"a" twice, two widths', "a2 41 61 00 58 01 61 00", "duplicate_key"),
    ('"a" twice, two widths', "a2 61 61 00 78 01 61 00", "duplicate_key"),
    ("int and text 1", "a2 01 00 61 31 00", None),
    ("dup detected after the value", "a2 01 00 01 ff", "malformed"),
    ("dup then truncated value", "a2 01 00 01", "truncated"),
]


@pytest.mark.parametrize(
    ("keys", "reason"),
    [(k, r) for _, k, r in INT_AND_BYTES_KEYS],
    ids=[n for n, _, _ in INT_AND_BYTES_KEYS],
)
def test_int_and_bytes_keys_are_judged(keys: str, reason: str | None) -> None:
    inner = h(keys)
    frame = event_head(1) + h("6161") + inner
    assert check([frame, h("d9d9f7") + frame, enc() + frame]) == 0
    spans, outcome, _ = _speedups.Scanner(RULES.lookup).scan(frame)
    assert outcome == reason


int_keys = st.integers(-(2**64), 2**64 - 1) | st.integers(-3, 3)


@st.composite
def int_key_maps(draw: st.DrawFn) -> bytes:
    """A map of int, bytes and text keys, some repeated, heads of any width."""
    keys = draw(
        st.lists(int_keys | st.binary(max_size=3) | st.text(max_size=3), min_size=1, max_size=12)
    )
    pairs = []
    for key in keys:
        item = cbor2.dumps(key)
        if draw(st.booleans()) and item[0] & 31 < 24 and item[0] >> 5 != 7:
            # The same value with a one-byte argument: a non-shortest head.
            major, ai = item[0] >> 5, item[0] & 31
            item = bytes((major << 5 | 24, ai)) + item[1:]
        pairs.append(item + h("00"))
    return map_head(len(pairs)) + b"".join(pairs)


def map_head(n: int) -> bytes:
    return bytes((0xA0 | n,)) if n < 24 else bytes((0xB8, n))


@given(int_key_maps(), st.booleans())
@settings(max_examples=300)
def test_int_bytes_text_keys_any_width(inner: bytes, as_event: bool) -> None:
    if as_event:
        n = inner[0] & 31 if inner[0] < 0xB8 else inner[1]
        frame = map_head(n + 3) + cbor2.dumps(BASE)[1:] + inner[1 if inner[0] < 0xB8 else 2 :]
    else:
        frame = event_head(1) + h("6161") + inner
    assert check([frame]) == 0


def test_big_maps_go_to_cbor2() -> None:
    keys = [f"k{i}" for i in range(40)]
    big = cbor2.dumps({**BASE, **dict.fromkeys(keys, 0)})
    spans, outcome, at = _speedups.Scanner(RULES.lookup).scan(enc() + big)
    assert (len(spans), outcome, at) == (1, "unsure", len(enc()))
    result, unsure = compiled_decode([enc() + big])
    assert result.events[NORMAL] == [enc(), big] and unsure == 1
    dup = cbor2.dumps({**BASE, **dict.fromkeys(keys, 0)})[:-2] + cbor2.dumps("k0") + h("00")
    assert check([dup]) == 1


def test_many_open_maps_stay_within_the_key_slots() -> None:
    # 31 nested maps of 31 keys each: 961 keys open at the deepest point.
    inner = h("00")
    for level in range(31):
        pairs = [cbor2.dumps(f"k{i}") + h("00") for i in range(30)]
        inner = h("b8 1f") + b"".join(pairs) + cbor2.dumps(f"n{level}") + inner
    frame = h("a4") + cbor2.dumps(BASE)[1:] + cbor2.dumps("deep") + inner
    check([frame])


def test_event_field_recognition_is_exact() -> None:
    frames = [
        enc(meter="x", ts=0, type="fault"),
        cbor2.dumps({"meterx": 1, "ts": 1, "type": "a"}),
        cbor2.dumps({"mete": 1, "ts": 1, "type": "a"}),
        cbor2.dumps({"meter": 1, "ts": 1, "types": "a"}),
        cbor2.dumps({"meter": 1, "t": 1, "type": "a"}),
        cbor2.dumps({"meter": {"ts": 1}, "ts": 1, "type": "a"}),
        cbor2.dumps({"x": {"meter": 1, "ts": 1, "type": "a"}}),
        cbor2.dumps([{"meter": 1, "ts": 1, "type": "a"}]),
        cbor2.dumps({"meter": 1, "ts": 1, "type": "a", "v": {"meter": "no"}}),
        h("d9d9f7") + cbor2.dumps({"meter": 1, "ts": 1, "type": CBORTag(55799, "fault")}),
        h("d9d9f7 a0"),
        h("d9d9f7 80"),
        h("d9d9f7 00"),
        h("c1 a0"),
        raw_event("1b ffffffffffffffff", "1b ffffffffffffffff", "60"),
        raw_event("3b ffffffffffffffff", "00", "60"),
        raw_event("00", "c2 41 01", "60"),
        raw_event("00", "f9 0000", "60"),
        raw_event("78 00", "00", "78 05") + b"fault",
    ]
    assert check(frames) == 0


# --- Classes -----------------------------------------------------------------


@given(
    st.dictionaries(st.text(max_size=6), st.integers(0, 3), max_size=40),
    st.lists(st.text(max_size=6), max_size=10),
)
@settings(max_examples=200)
def test_classification_matches_rules(table: dict[str, int], types: list[str]) -> None:
    by_class: dict[EventClass, list[str]] = {c: [] for c in EventClass}
    for t, c in table.items():
        by_class[EventClass(c)].append(t)
    rules = ClassRules(by_class)
    frames = [enc(type=t) for t in [*types, *table]]
    assert check(frames, rules) == 0


def test_set_rules_applies_from_the_next_call() -> None:
    scanner = _speedups.Scanner(RULES.lookup)
    assert scanner.scan(enc(type="fault"))[0] == [(0, len(enc(type="fault")), 0)]
    scanner.set_rules({"fault": 3})
    assert scanner.scan(enc(type="fault"))[0][0][2] == 3
    scanner.set_rules({"\ud800": 0})  # a lone surrogate cannot be a valid type
    assert scanner.scan(enc(type="fault"))[0][0][2] == NORMAL


def test_non_bytes_frames_go_to_the_reference() -> None:
    frames: list[Any] = [bytearray(enc()), memoryview(enc()), enc()]
    result, unsure = compiled_decode(frames)
    assert result.events[NORMAL] == [enc()] * 3 and unsure == 0
    with pytest.raises(TypeError):
        _speedups.Scanner({}).scan(bytearray(enc()))


def test_large_frame_of_many_events() -> None:
    events = [enc(ts=i, type=("fault", "reading", "heartbeat")[i % 3]) for i in range(3000)]
    frame = b"".join(events)
    assert check([frame, frame[:-1], frame + h("ff")]) == 0


def test_floats_and_simple_values_everywhere() -> None:
    parts = [h("f9") + struct.pack(">e", 1.5), h("fa") + struct.pack(">f", 1.5)]
    parts += [h("fb") + struct.pack(">d", 1.5), h("f97c00"), h("f97e00"), h("fa7fc00000")]
    parts += [bytes((0xE0 | i,)) for i in range(24)] + [h("f8") + bytes((i,)) for i in range(256)]
    frames = [event_head(1) + h("6161") + p for p in parts]
    frames += [event_head(1) + h("6161 81") + p for p in parts]
    check(frames)


# --- The burst reader ---------------------------------------------------------


@pytest.fixture
def pair(
    zctx: zmq.Context[Any], tmp_path: Any
) -> Iterator[tuple[zmq.Socket[Any], zmq.Socket[Any]]]:
    endpoint = f"ipc://{tmp_path}/ingest"
    pull = zctx.socket(zmq.PULL)
    pull.bind(endpoint)
    push = zctx.socket(zmq.PUSH)
    push.connect(endpoint)
    yield push, pull
    push.close(linger=0)
    pull.close(linger=0)


def compiled_reader(pull: zmq.Socket[Any], max_frames: int = 128, max_bytes: int = 65536) -> Any:
    from agent import fastpath

    found = fastpath.libzmq_addresses(_speedups.LIBZMQ_FUNCTIONS)
    assert found is not None, fastpath.loaded_libzmq_paths()
    return _speedups.BurstReader(pull, tuple(found[0]), max_frames, max_bytes, zmq.ZMQError)


def read_all(reader: Any, pull: zmq.Socket[Any], messages: int) -> tuple[list[bytes], int, int]:
    """Bursts until `messages` messages are read: (frames, multipart, bursts)."""
    frames: list[bytes] = []
    multipart = bursts = 0
    while len(frames) + multipart < messages:
        assert pull.poll(5000), f"only {len(frames)} + {multipart} of {messages} arrived"
        got, skipped = reader.read()
        frames += got
        multipart += skipped
        bursts += 1
    return frames, multipart, bursts


def test_burst_reader_reads_frames_in_order(pair: Any) -> None:
    push, pull = pair
    sent = [enc(ts=i) for i in range(300)] + [b"", b"x" * 5000]
    for frame in sent:
        push.send(frame)
    frames, multipart, _ = read_all(compiled_reader(pull), pull, len(sent))
    assert frames == sent and multipart == 0


def test_burst_reader_skips_multipart_whole(pair: Any) -> None:
    push, pull = pair
    push.send(b"a")
    push.send_multipart([b"x", b"y", b"z"])
    push.send(b"b")
    push.send_multipart([b"", b""])
    push.send(b"c")
    frames, multipart, _ = read_all(compiled_reader(pull), pull, 5)
    assert (frames, multipart) == ([b"a", b"b", b"c"], 2)


def test_burst_reader_bounds(pair: Any) -> None:
    push, pull = pair
    for i in range(200):
        push.send(b"%d" % i)
    reader = compiled_reader(pull, max_frames=128)
    assert pull.poll(5000)
    # Wait until all 200 are queued in the PULL socket: a burst then takes exactly 128.
    first: list[bytes] = []
    while not first:
        got, _ = reader.read()
        first = got
    rest, _, _ = read_all(reader, pull, 200 - len(first))
    assert first + rest == [b"%d" % i for i in range(200)]
    assert len(first) <= 128

    for _ in range(20):
        push.send(b"y" * 10_000)
    big = compiled_reader(pull, max_bytes=65536)
    frames, _, bursts = read_all(big, pull, 20)
    assert len(frames) == 20 and bursts >= 3  # at most 7 frames of 10 KB cross 64 KiB


def test_burst_reader_without_data_returns_at_once(pair: Any) -> None:
    _, pull = pair
    assert compiled_reader(pull).read() == ([], 0)


def test_burst_reader_on_a_closed_socket(pair: Any) -> None:
    _, pull = pair
    reader = compiled_reader(pull)
    pull.close(linger=0)
    with pytest.raises(zmq.ZMQError):
        reader.read()


def test_burst_reader_argument_checks(pair: Any) -> None:
    _, pull = pair
    with pytest.raises(ValueError):
        _speedups.BurstReader(pull, (0,) * 7, 1, 1, zmq.ZMQError)
    with pytest.raises(ValueError):
        _speedups.BurstReader(pull, (1,) * 6, 1, 1, zmq.ZMQError)
