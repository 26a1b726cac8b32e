"""agent.codec: frames -> validated, classified events with their original bytes.

Two independent judges back the property tests:
- `reference_decode`: the contract written plainly, one fresh cbor2 decoder per
  frame, tags kept by a collections.abc.Mapping (not the codec's dict trick),
  no batching. FrameDecoder must agree with it on every list of frames.
- `oracle_item_end`: a pure-Python RFC 8949 well-formedness walker, so "each
  accepted event is exactly one CBOR item" is not checked by cbor2 alone.
"""

from __future__ import annotations

import collections.abc
import io
import itertools
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest
from cbor2 import CBORDecodeError, CBORDecoder, CBORTag
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import codec
from agent.classes import ClassRules, EventClass
from agent.codec import REASONS, DecodeResult, FrameDecoder, reason_for

CRITICAL, HIGH, NORMAL, LOW = (int(c) for c in EventClass)
BASE = {"meter": 123456789, "ts": 1790000000000, "type": "reading"}


def ev(**fields: Any) -> dict[Any, Any]:
    """BASE with fields replaced; a field set to ... is removed."""
    out = {**BASE, **fields}
    return {k: v for k, v in out.items() if v is not ...}


def enc(**fields: Any) -> bytes:
    return cbor2.dumps(ev(**fields))


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def raw_event(meter: str, ts: str, type_: str) -> bytes:
    """A three-key event from hand-written hex for each value."""
    return b"".join(
        [h("a3"), cbor2.dumps("meter"), h(meter), cbor2.dumps("ts"), h(ts), cbor2.dumps("type")]
        + [h(type_)]
    )


def event_head(extra_pairs: int = 0) -> bytes:
    """A map head plus the three required pairs, `extra_pairs` more pairs to follow."""
    return bytes((0xA3 + extra_pairs,)) + cbor2.dumps(BASE)[1:]


@pytest.fixture
def decoder() -> FrameDecoder:
    return FrameDecoder(ClassRules())


# --- The independent judges ------------------------------------------------


class NotWellFormed(Exception):
    pass


def oracle_item_end(buf: bytes, pos: int = 0) -> int:
    """End of the definite-length, well-formed CBOR item at `pos` (RFC 8949 App. C)."""
    need = 1
    while need:
        if pos >= len(buf):
            raise NotWellFormed("eof")
        major, ai = buf[pos] >> 5, buf[pos] & 31
        pos += 1
        need -= 1
        if ai < 24:
            arg = ai
        elif ai < 28:
            size = 1 << (ai - 24)
            if pos + size > len(buf):
                raise NotWellFormed("eof in head")
            arg = int.from_bytes(buf[pos : pos + size], "big")
            pos += size
        else:  # 28..30 reserved, 31 indefinite or break
            raise NotWellFormed(f"ai {ai}")
        if major == 7 and ai == 24 and arg < 32:
            raise NotWellFormed("two-byte simple value < 32")
        if major in (2, 3):
            pos += arg
            if pos > len(buf):
                raise NotWellFormed("eof in string")
        elif major == 4:
            need += arg
        elif major == 5:
            need += 2 * arg
        elif major == 6:
            need += 1
    return pos


class TagsAsIs(collections.abc.Mapping):  # type: ignore[type-arg]
    """Every tag -> CBORTag(tag, value): the brief's verified Mapping approach."""

    def __contains__(self, tag: object) -> bool:
        return True

    def __getitem__(self, tag: int) -> Any:
        return lambda value, *rest: CBORTag(tag, value)

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


def reference_decode(frames: list[bytes], rules: ClassRules) -> DecodeResult:
    """INTERFACE.md "Events in", written plainly."""
    result = DecodeResult()
    result.frames = len(frames)
    for frame in frames:
        reason = None
        if not frame:
            reason = "empty_frame"
        fp = io.BytesIO(frame)
        dec = CBORDecoder(
            fp,
            semantic_decoders=TagsAsIs(),
            allow_indefinite=False,
            allow_duplicate_keys=False,
            max_depth=32,
        )
        while reason is None and fp.tell() < len(frame):
            start = fp.tell()
            try:
                obj = dec.decode()
            except CBORDecodeError as exc:
                reason = reason_for(exc)
                break
            if isinstance(obj, CBORTag) and obj.tag == 55799:
                obj = obj.value
            if not isinstance(obj, dict):
                reason = "not_a_map"
            elif not all(k in obj for k in ("meter", "ts", "type")):
                reason = "missing_field"
            elif not (
                (isinstance(obj["meter"], str) or is_uint64(obj["meter"]))
                and is_uint64(obj["ts"])
                and isinstance(obj["type"], str)
            ):
                reason = "bad_field_type"
            else:
                cls = rules.classify(obj["type"])
                result.events[cls].append(frame[start : fp.tell()])
                result.accepted += 1
        if reason is not None:
            result.rejected[reason] = result.rejected.get(reason, 0) + 1
    return result


def is_uint64(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**64


def check_against_judges(frames: list[bytes], rules: ClassRules | None = None) -> DecodeResult:
    rules = rules or ClassRules()
    got = FrameDecoder(rules).decode_frames(frames)
    want = reference_decode(frames, rules)
    assert got.events == want.events
    assert got.rejected == want.rejected
    assert (got.frames, got.accepted) == (want.frames, want.accepted)
    assert all(n > 0 for n in got.rejected.values()) and set(got.rejected) <= set(REASONS)
    assert got.accepted == sum(len(cls) for cls in got.events)
    # Per frame: at most one rejection, and the events are the first items
    # of the frame, each exactly one well-formed item.
    lone = FrameDecoder(ClassRules({}))  # everything NORMAL: keeps frame order
    for frame in frames:
        one = lone.decode_frame(frame)
        assert sum(one.rejected.values()) <= 1
        events = one.events[NORMAL]
        assert b"".join(events) == frame[: sum(map(len, events))]
        for e in events:
            assert oracle_item_end(e) == len(e)
        if not one.rejected:
            assert b"".join(events) == frame and frame
    return got


# --- Reasons ---------------------------------------------------------------

DEPTH_MSG = "maximum container nesting depth (32) exceeded"

# (frame, reason of its one rejection): every reason, and the cbor2 message
# texts reason_for() matches, pinned. Reworded messages in a cbor2 upgrade
# fail here instead of drifting to "malformed".
REJECTIONS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "empty_frame"),
    ("truncated map", enc()[:-1], "truncated"),
    ("truncated head", h("19 01"), "truncated"),
    ("truncated string", event_head(1) + h("61 61 63 61 62"), "truncated"),
    ("huge declared length", h("5b ffffffffffffffff"), "truncated"),
    ("huge declared map", h("bb ffffffffffffffff"), "truncated"),
    ("stray break", h("ff"), "malformed"),
    ("break in map", event_head(1) + h("ff"), "malformed"),
    ("reserved ai 28", h("1c"), "malformed"),
    ("reserved ai 29 in value", event_head(1) + h("6161 3d"), "malformed"),
    ("reserved ai 30", h("fe"), "malformed"),
    ("ai 31 on uint", h("1f"), "malformed"),
    ("ai 31 on nint", h("3f"), "malformed"),
    ("ai 31 on tag", h("df 00"), "malformed"),
    ("simple value < 32 in two bytes", h("f8 10"), "malformed"),
    ("indefinite array", h("9f 01 ff"), "indefinite_length"),
    ("indefinite map", h("bf 61 61 01 ff"), "indefinite_length"),
    ("indefinite bytes in value", event_head(1) + h("6161 5f 4101 ff"), "indefinite_length"),
    ("indefinite text in value", event_head(1) + h("6161 7f 6161 ff"), "indefinite_length"),
    ("indefinite array in key", event_head(1) + h("9f ff 00"), "indefinite_length"),
    ("duplicate meter", event_head(1) + h("65") + b"meter" + h("01"), "duplicate_key"),
    ("duplicate nested", event_head(1) + h("6161 a2 01 01 01 02"), "duplicate_key"),
    ("1 and 1.0 collide", event_head(2) + h("01 00 f9 3c00 00"), "duplicate_key"),
    ("1 and true collide", event_head(2) + h("01 00 f5 00"), "duplicate_key"),
    (
        "dup key quoting a reason",
        event_head(2) + (cbor2.dumps(DEPTH_MSG) + h("00")) * 2,
        "duplicate_key",
    ),
    ("invalid utf-8 value", event_head(1) + h("6161 62 c328"), "invalid_utf8"),
    ("invalid utf-8 key", event_head(1) + h("62 c328 00"), "invalid_utf8"),
    ("invalid utf-8 type", raw_event("01", "02", "62 ff61"), "invalid_utf8"),
    ("33 levels", event_head(1) + h("6161") + h("81") * 32 + h("00"), "too_deep"),
    ("33 levels in a key", event_head(1) + h("81") * 32 + h("00 00"), "too_deep"),
    ("33 levels by tags", event_head(1) + h("6161") + h("c1") * 32 + h("00"), "too_deep"),
    ("array", cbor2.dumps([BASE]), "not_a_map"),
    ("int", h("00"), "not_a_map"),
    ("text", cbor2.dumps("meter"), "not_a_map"),
    ("55799 around an array", h("d9d9f7") + cbor2.dumps([1]), "not_a_map"),
    ("55799 twice", h("d9d9f7 d9d9f7") + enc(), "not_a_map"),
    ("other tag around event", h("c1") + enc(), "not_a_map"),
    ("no meter", enc(meter=...), "missing_field"),
    ("no ts", enc(ts=...), "missing_field"),
    ("no type", enc(type=...), "missing_field"),
    ("empty map", h("a0"), "missing_field"),
    ("meter as bytes key", cbor2.dumps({b"meter": 1, "ts": 2, "type": "x"}), "missing_field"),
    ("meter negative", enc(meter=-1), "bad_field_type"),
    ("meter bool", enc(meter=True), "bad_field_type"),
    ("meter float", enc(meter=1.0), "bad_field_type"),
    ("meter bytes", enc(meter=b"m1"), "bad_field_type"),
    ("meter null", enc(meter=None), "bad_field_type"),
    ("meter bignum", enc(meter=CBORTag(2, b"\x01")), "bad_field_type"),
    ("meter tagged text", enc(meter=CBORTag(32, "x")), "bad_field_type"),
    ("ts negative", enc(ts=-1), "bad_field_type"),
    ("ts float", enc(ts=1790000000000.0), "bad_field_type"),
    ("ts bool", enc(ts=False), "bad_field_type"),
    ("ts text", enc(ts="1790000000000"), "bad_field_type"),
    ("ts bignum 2**64", enc(ts=CBORTag(2, (2**64).to_bytes(9, "big"))), "bad_field_type"),
    ("ts small bignum", enc(ts=CBORTag(2, b"\x05")), "bad_field_type"),
    ("ts epoch tag", enc(ts=CBORTag(1, 1790000000)), "bad_field_type"),
    ("ts 55799", enc(ts=CBORTag(55799, 1)), "bad_field_type"),
    ("type bytes", enc(type=b"fault"), "bad_field_type"),
    ("type int", enc(type=1), "bad_field_type"),
    ("type tagged text", enc(type=CBORTag(0, "fault")), "bad_field_type"),
]


@pytest.mark.parametrize(
    ("frame", "reason"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS]
)
def test_each_rejection_counts_one_reason(decoder: FrameDecoder, frame: bytes, reason: str) -> None:
    for result in (decoder.decode_frame(frame), decoder.decode_frames([enc()] * 3 + [frame])):
        assert result.rejected == {reason: 1}
    assert decoder.decode_frame(frame).accepted == 0
    check_against_judges([frame])


def test_every_reason_is_tested() -> None:
    # too_many_keys needs a map of 65 keys: tests/test_hash_flood.py.
    assert {r[2] for r in REJECTIONS} | {"too_many_keys"} == set(REASONS)
    assert len(set(REASONS)) == len(REASONS)


def test_unmatched_decode_errors_fall_back_to_malformed() -> None:
    assert reason_for(CBORDecodeError("something cbor2 never said")) == "malformed"
    assert reason_for(cbor2.CBORDecodeEOF("premature end of stream")) == "truncated"


def test_edge_values_of_required_fields_are_valid(decoder: FrameDecoder) -> None:
    frames = [
        enc(meter=0, ts=0),
        enc(meter=2**64 - 1, ts=2**64 - 1),
        enc(meter=""),
        enc(meter="MTR-0042", type=""),
        raw_event("1b 0000000000000001", "00", "60"),
    ]
    result = decoder.decode_frames(frames)
    assert result.rejected == {}
    assert result.events[NORMAL] == frames


# --- Bytes travel untouched ------------------------------------------------


NONCANONICAL = [
    ("ints in 8 bytes", raw_event("1b 0000000000000007", "1b 000001a0c08e9800", "61 78")),
    ("float16 value", event_head(1) + h("61 76 f9 3c00")),
    ("float64 value", event_head(1) + h("61 76 fb 3ff8000000000000")),
    ("length in 2 bytes", h("b9 0003") + cbor2.dumps(BASE)[1:]),
    ("text length in 8 bytes", event_head(1) + h("7b 0000000000000001") + b"k" + h("00")),
    ("bignum tag in value", event_head(1) + h("61 62 c2 49 010000000000000000")),
    ("date tag in value", event_head(1) + h("61 64 c0 74") + b"2020-01-01T00:00:00Z"),
    ("regex tag in value", event_head(1) + h("61 72 d8 23 62") + b"(("),
    ("shared ref tags", event_head(1) + h("61 73 d8 1c 81 d8 1d 00")),
    ("stringref tags", event_head(1) + h("61 73 d9 0100 82 64") + b"abcd" + h("d8 19 00")),
    ("set tag", event_head(1) + h("61 73 d9 0102 82 01 01")),
    ("unknown tag", event_head(1) + h("61 74 db 0102030405060708 00")),
    ("55799 around event", h("d9d9f7") + enc()),
    ("55799 with 8-byte tag head", h("db 000000000000d9f7") + enc()),
    ("int keys", event_head(2) + h("01 02 20 03")),
    (
        "array, map, tag, float, null keys",
        event_head(5) + h("82 01 02 00 a1 01 02 00 c1 00 00 f9 3e00 00 f6 00"),
    ),
    ("two NaN keys (NaN != NaN)", event_head(2) + h("f9 7e00 00 fa 7fc00000 00")),
    ("bytes and text keys alike", event_head(2) + h("41 61 00 61 61 00")),
    ("simple values", event_head(3) + h("61 61 f7 61 62 f8 ff 61 63 e0")),
    ("empty 33rd container", event_head(1) + h("6161") + h("81") * 31 + h("80")),
    ("32 levels", event_head(1) + h("6161") + h("81") * 31 + h("00")),
    ("32 levels in 55799", h("d9d9f7") + event_head(1) + h("6161") + h("81") * 30 + h("00")),
]


@pytest.mark.parametrize("frame", [n[1] for n in NONCANONICAL], ids=[n[0] for n in NONCANONICAL])
def test_valid_events_keep_their_bytes(decoder: FrameDecoder, frame: bytes) -> None:
    assert oracle_item_end(frame) == len(frame)
    for frames in ([frame], [enc(), frame, enc()], [frame * 3]):
        result = decoder.decode_frames(frames)
        assert result.rejected == {}
        assert b"".join(result.events[NORMAL]) == b"".join(frames)
    single = decoder.decode_frame(frame)
    assert single.events[NORMAL][0] is frame  # a one-item frame is not copied
    check_against_judges([frame, frame + frame, enc() + frame])


def test_multi_event_frames_are_cut_at_item_boundaries(decoder: FrameDecoder) -> None:
    items = [enc(ts=i, v=i * 1.5, pad="x" * (i % 7)) for i in range(40)]
    items[3] = NONCANONICAL[0][1]
    items[9] = h("d9d9f7") + enc(type="fault")
    frame = b"".join(items)
    result = decoder.decode_frame(frame)
    assert result.rejected == {}
    assert result.events[CRITICAL] == [items[9]]
    assert result.events[NORMAL] == items[:9] + items[10:]


def test_large_frame_of_many_events(decoder: FrameDecoder) -> None:
    items = [enc(ts=i, type=("fault", "reading", "heartbeat")[i % 3]) for i in range(3000)]
    result = decoder.decode_frames([b"".join(items)])
    assert (result.accepted, result.rejected) == (3000, {})
    assert result.events[LOW] == items[2::3]


# --- Classes ---------------------------------------------------------------


def test_classification_by_default_rules(decoder: FrameDecoder) -> None:
    types = {
        CRITICAL: ["over_voltage", "under_voltage", "last_gasp", "fault"],
        HIGH: ["power_restore", "tamper"],
        LOW: ["heartbeat", "diagnostic"],
        NORMAL: ["reading", "Fault", "FAULT", "fault ", " tamper", "heartbeat\x00", "", "é"],
    }
    frames = [enc(type=t) for ts in types.values() for t in ts]
    for result in (decoder.decode_frames(frames), decoder.decode_frame(b"".join(frames))):
        assert result.rejected == {}
        for cls, ts in types.items():
            assert result.events[cls] == [enc(type=t) for t in ts]


def test_set_rules_applies_from_the_next_call(decoder: FrameDecoder) -> None:
    frames = [enc(type="reading"), enc(type="fault")]
    decoder.set_rules(ClassRules({EventClass.LOW: ("fault",), EventClass.CRITICAL: ("reading",)}))
    result = decoder.decode_frames(frames)
    assert result.events == ([frames[0]], [], [], [frames[1]])


# --- Sequences: keep what comes before the first bad item ------------------


def test_events_before_the_first_bad_item_are_kept(decoder: FrameDecoder) -> None:
    good = [enc(ts=i) for i in range(3)]
    frame = good[0] + good[1] + enc(meter=-1) + good[2] + h("ff")
    result = decoder.decode_frame(frame)
    assert result.events[NORMAL] == good[:2]
    assert result.rejected == {"bad_field_type": 1}


def test_trailing_garbage_after_a_valid_event(decoder: FrameDecoder) -> None:
    cases = {
        h("ff"): "malformed",
        h("82 01"): "truncated",
        enc()[:5]: "truncated",
        h("00"): "not_a_map",
    }
    for tail, reason in cases.items():
        result = decoder.decode_frames([enc() + tail])
        assert result.events[NORMAL] == [enc()]
        assert result.rejected == {reason: 1}


def test_mixed_frames_keep_arrival_order_and_counts() -> None:
    frames = []
    for i in range(200):  # crosses chunks, mixes batched, routed and exact frames
        kind = i % 9
        if kind == 4:
            frames.append(enc(ts=i) + enc(ts=i, type="tamper"))
        elif kind == 7:
            frames.append(enc(ts=i)[:-2])
        elif kind == 8 and i % 2:
            frames.append(b"")
        else:
            frames.append(enc(ts=i, type="fault" if i % 5 == 0 else "reading"))
    result = check_against_judges(frames)
    assert result.frames == 200
    assert result.rejected == {"truncated": 22, "empty_frame": 11}


def test_decode_frames_of_nothing(decoder: FrameDecoder) -> None:
    assert decoder.decode_frames([]) == DecodeResult(([], [], [], []), {}, 0, 0)


@pytest.mark.parametrize("n", [1, 11, 12, 63, 64, 65, 127, 128, 129, 300])
def test_chunk_boundaries(decoder: FrameDecoder, n: int) -> None:
    frames = [enc(ts=i) for i in range(n)]
    result = decoder.decode_frames(frames)
    assert result.events[NORMAL] == frames and result.rejected == {}


def test_array_header_encoding() -> None:
    for count in (0, 1, 23, 24, 255, 256, 65535):
        assert codec._array_header(count) == cbor2.dumps([None] * count)[: -count or None]
    with pytest.raises(ValueError):
        codec._array_header(65536)


# --- Depth: cbor2 counts the containers and tags around each item ----------


def nested(levels: int, inner: bytes = h("00")) -> bytes:
    return h("81") * levels + inner


@pytest.mark.parametrize("wrap_55799", [False, True])
def test_depth_boundary_is_exact_on_both_paths(wrap_55799: bool) -> None:
    prefix = h("d9d9f7") if wrap_55799 else b""
    used = 1 + wrap_55799  # the event map, and the tag if any

    def event(levels: int, inner: bytes = h("00")) -> bytes:
        return prefix + event_head(1) + h("6161") + nested(levels, inner)

    ok = event(32 - used)
    too_deep = event(33 - used)
    empty_33rd = event(32 - used, h("80"))
    tags_ok = prefix + event_head(1) + h("6161") + h("c1") * (32 - used) + h("00")
    tags_too_deep = prefix + event_head(1) + h("6161") + h("c1") * (33 - used) + h("00")
    for frames in ([ok], [ok] * 70, [ok + ok]):
        result = FrameDecoder(ClassRules()).decode_frames(frames)
        assert b"".join(result.events[NORMAL]) == b"".join(frames)
    for frame in (empty_33rd, tags_ok):
        assert FrameDecoder(ClassRules()).decode_frames([frame] * 3).accepted == 3
    for frame in (too_deep, tags_too_deep):
        for frames in ([frame], [ok] * 5 + [frame] + [ok] * 5, [ok + frame]):
            result = FrameDecoder(ClassRules()).decode_frames(frames)
            assert result.rejected == {"too_deep": 1}
    check_against_judges([ok, too_deep, empty_33rd, tags_ok, tags_too_deep] * 3)


def test_max_depth_is_configurable() -> None:
    shallow = FrameDecoder(ClassRules(), max_depth=3)
    assert shallow.decode_frames([enc(v=[[1]])] * 2).accepted == 2
    assert shallow.decode_frames([enc(v=[[[1]]])] * 2).rejected == {"too_deep": 2}
    with pytest.raises(ValueError):
        FrameDecoder(ClassRules(), max_depth=0)


def test_reused_decoder_keeps_no_state_after_errors(decoder: FrameDecoder) -> None:
    """Errors deep inside an item must not leave a depth count or buffered bytes behind."""
    deep_ok = event_head(1) + h("6161") + nested(31)  # exactly 32 levels
    errors_at_depth_20 = [
        nested(20, h("9f")),
        nested(20, h("62 c328")),
        nested(20, h("a2 01 01 01 02")),
        nested(20, h("81")),
        nested(40),
    ]
    for bad in errors_at_depth_20:
        for frame in (bad, deep_ok + bad):  # no b"\x65meter" once: both take the exact path
            assert decoder.decode_frames([frame]).rejected_total == 1
            assert decoder.decode_frames([deep_ok + deep_ok]).accepted == 2


# --- Tags are never interpreted --------------------------------------------

TAG_VALUES: list[Any] = [
    0,
    1,
    1.5,
    "2020-01-01T00:00:00Z",
    "a+",
    b"\x01" * 16,
    b"\x01\x02\x03\x04",
    [1, 2],
    [1, [1, 2]],
    [b"\x01\x02\x03\x04", 24],
    ["aa", "bb"],
    {1: 2},
]


def test_cbor2_interprets_only_the_tags_we_prefill() -> None:
    """Without our table cbor2 6.3 interprets exactly these; a new one shows up here."""
    interpreted = set()
    for tag in [*range(1100), 55799, 55800, 2**32, 2**64 - 1]:
        for value in TAG_VALUES:
            data = cbor2.dumps(CBORTag(tag, value))
            try:
                out = cbor2.loads(data)
            except CBORDecodeError:
                interpreted.add(tag)
                continue
            if not (type(out) is CBORTag and out.tag == tag):
                interpreted.add(tag)
    assert interpreted == set(codec.CBOR2_INTERPRETED_TAGS)


@pytest.mark.parametrize("tag", codec.CBOR2_INTERPRETED_TAGS)
def test_known_tags_stay_uninterpreted(tag: int) -> None:
    tables = (codec._uninterpreted_tags(), codec._UninterpretedTags(), TagsAsIs())
    for value in TAG_VALUES:
        data = cbor2.dumps(CBORTag(tag, value))
        for table in tables:  # ours, its __missing__ alone, and the reference's Mapping
            out = cbor2.loads(data, semantic_decoders=table)
            assert type(out) is CBORTag and out.tag == tag
            assert out.value == cbor2.loads(cbor2.dumps(value))


@given(tag=st.integers(0, 2**64 - 1), value=st.sampled_from(TAG_VALUES))
@settings(max_examples=200, deadline=None)
def test_any_tag_stays_uninterpreted(tag: int, value: Any) -> None:
    data = cbor2.dumps(CBORTag(tag, value))
    out = cbor2.loads(data, semantic_decoders=codec._uninterpreted_tags())
    assert type(out) is CBORTag and out.tag == tag
    frame = event_head(1) + h("61 74") + data
    result = FrameDecoder(ClassRules()).decode_frames([frame, frame])
    assert result.events[NORMAL] == [frame, frame]


def test_unknown_tags_do_not_grow_the_table() -> None:
    tags = codec._uninterpreted_tags()
    size = len(tags)
    cbor2.loads(cbor2.dumps(CBORTag(123456, 1)), semantic_decoders=tags)
    assert len(tags) == size


def test_bignum_is_not_an_unsigned_int(decoder: FrameDecoder) -> None:
    # If tag 2 were interpreted, meter would be the int 1 and the event valid.
    frames = [enc(meter=CBORTag(2, b"\x01")), enc(ts=CBORTag(2, b"\x01"))]
    assert decoder.decode_frames(frames).rejected == {"bad_field_type": 2}
    assert decoder.decode_frame(b"".join(frames)).rejected == {"bad_field_type": 1}


# --- The batch path cannot be fooled ---------------------------------------


def test_a_frame_cannot_swallow_the_next_ones() -> None:
    """Frame 0 is a map missing its last key and value; frame 3 holds three items.

    In one batch, frame 0's map takes S_0 and frame 1 as that key and value,
    frame 3's extra items make up the count, and the sentinel at index 1 is
    S_1. With one shared sentinel that would "prove" the truncated frame 0.
    """
    e = [enc(ts=i) for i in range(5)]
    frames = [event_head(1), e[1], e[2], e[3] + h("00 00"), e[4]]
    result = FrameDecoder(ClassRules()).decode_frames(frames)
    assert result.rejected == {"truncated": 1, "not_a_map": 1}
    assert result.events[NORMAL] == [e[1], e[2], e[3], e[4]]
    check_against_judges(frames)

    # The same frames against the design this test guards against.
    weak = FrameDecoder(ClassRules())
    weak._sentinel_values = [weak._sentinel_values[0]] * codec._BATCH_CHUNK
    weak._sentinels = [weak._sentinels[0]] * codec._BATCH_CHUNK
    assert weak.decode_frames(frames).events[NORMAL][0] == event_head(1)


@pytest.mark.parametrize(
    "frames",
    [
        [enc(), h("82")],
        [h("82"), enc(), enc()],
        [h("5813"), enc(), enc()],  # a byte string as long as a sentinel
        [h("5814"), enc(), enc()],
        [enc()[:7], enc()[7:]],  # half-items
        [enc() + enc()[:7], enc()[7:], enc()],  # item + half-item, then the rest
        [enc() + enc(), enc(), enc()],
        [h("c1"), enc(), enc()],
        [h("d9d9f7"), enc()],
        [h("a1") + cbor2.dumps("meter"), enc(), enc()],
    ],
)
def test_adversarial_alignment(frames: list[bytes]) -> None:
    check_against_judges(frames)
    check_against_judges(frames * 30)


# --- Property tests ----------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64 - 1),
    st.floats(width=16) | st.floats(),
    st.text(max_size=6),
    st.binary(max_size=6),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "c", 1, 2, -1]), inner, max_size=2)
        | st.builds(
            CBORTag, st.sampled_from([0, 1, 2, 25, 28, 29, 35, 37, 258, 55799, 9999]), inner
        )
    ),
    max_leaves=4,
)
event_types = st.sampled_from(["reading", "fault", "tamper", "heartbeat", "Fault", ""])
events = st.fixed_dictionaries(
    {
        "meter": st.integers(0, 2**64 - 1) | st.text(max_size=6),
        "ts": st.integers(0, 2**64 - 1),
        "type": event_types,
    },
    optional={"v": values, "w": values, 7: values},
)
bad_events = st.one_of(
    values,
    events.map(lambda e: {k: v for k, v in e.items() if k != "ts"}),
    st.builds(lambda e, v: {**e, "meter": v}, events, values),
    st.builds(lambda e, v: {**e, "ts": v}, events, values),
)


@st.composite
def items(draw: st.DrawFn) -> bytes:
    obj = draw(st.one_of(events, events, bad_events))
    data = cbor2.dumps(obj, canonical=draw(st.booleans()))
    if draw(st.integers(0, 5)) == 0:
        data = h("d9d9f7") + data
    return data


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.integers(0, 4))
        at = draw(st.integers(0, len(buf)))
        if op == 0 and at < len(buf):
            buf[at] = draw(st.integers(0, 255))
        elif op == 1:
            buf[at:at] = draw(
                st.sampled_from([h(x) for x in ("ff", "9f", "5f", "1c", "82", "d9d9f7", "f810")])
            )
        elif op == 2 and at < len(buf):
            del buf[at]
        elif op == 3:
            del buf[at:]
        else:
            buf[at:at] = draw(st.binary(max_size=4))
    return bytes(buf)


@st.composite
def frame_lists(draw: st.DrawFn) -> list[bytes]:
    """Sequences of items, some mutated, cut into frames at arbitrary points."""
    stream = b"".join(draw(st.lists(items(), min_size=1, max_size=6)))
    stream = draw(mutated(stream))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    edges = [0, *cuts, len(stream)]
    frames = [stream[a:b] for a, b in itertools.pairwise(edges)]
    # Whole-item frames too, so the batch path has something to prove.
    frames += draw(st.lists(items(), max_size=4))
    return draw(st.permutations(frames))


@given(st.lists(st.binary(max_size=40), max_size=10))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes(frames: list[bytes]) -> None:
    check_against_judges(frames)


@given(frame_lists())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_structured_and_mutated_frames(frames: list[bytes]) -> None:
    check_against_judges(frames)


@st.composite
def long_frame_lists(draw: st.DrawFn) -> list[bytes]:
    """60..140 frames (more than one batch chunk) drawn from a few distinct ones."""
    pool = draw(st.lists(st.one_of(items(), items().flatmap(mutated)), min_size=1, max_size=6))
    picks = draw(st.lists(st.integers(0, len(pool) - 1), min_size=60, max_size=140))
    return [pool[i] for i in picks]


@given(long_frame_lists())
@settings(max_examples=30, deadline=None)
def test_long_lists_cross_chunks(frames: list[bytes]) -> None:
    check_against_judges(frames)
