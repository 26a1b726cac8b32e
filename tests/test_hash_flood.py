"""The hash-flooding bound of agent.codec: at most MAX_OTHER_KEYS non-text, non-bytes keys per map.

The rule (codec.py header): the (MAX_OTHER_KEYS+1)-th key of a map that is
neither a text nor a byte string is an error at its head, counted as
too_many_keys; an error earlier in the item wins, later ones are never seen.
Below the bound decoding is exactly cbor2's. The model here builds the same
frames from Python objects and says what each must give; the compiled path
(which hands every non-text key to the reference) must agree too.
"""

from __future__ import annotations

import time
from typing import Any

import cbor2
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_codec import BASE, check_against_judges, enc, h, mutated

from agent import codec, fastpath
from agent.classes import ClassRules, EventClass
from agent.codec import MAX_OTHER_KEYS, TOO_MANY_KEYS, FrameDecoder

NORMAL = int(EventClass.NORMAL)
LIMIT = MAX_OTHER_KEYS


def map_head(n: int) -> bytes:
    """Definite-length map head for n < 2**16 pairs."""
    if n < 24:
        return bytes((0xA0 | n,))
    return bytes((0xB8, n)) if n < 256 else bytes((0xB9, n >> 8, n & 0xFF))


def event_with(pairs: list[bytes]) -> bytes:
    """The BASE event plus `pairs` (each an encoded key then value)."""
    n = 3 + len(pairs)
    return map_head(n) + cbor2.dumps(BASE)[1:] + b"".join(pairs)


def int_pairs(n: int, value: bytes = h("00")) -> list[bytes]:
    return [cbor2.dumps(i + 1000) + value for i in range(n)]


def decode(frames: list[bytes]) -> Any:
    got = FrameDecoder(ClassRules()).decode_frames(frames)
    compiled = fastpath.make_decoder(ClassRules()).decode_frames(frames)
    assert compiled == got
    return got


def test_the_bound_is_exact() -> None:
    at = event_with(int_pairs(LIMIT))
    over = event_with(int_pairs(LIMIT + 1))
    assert decode([at]).events[NORMAL] == [at]
    assert decode([over]).rejected == {TOO_MANY_KEYS: 1}
    # In a frame: events before it kept, the rest rejected once.
    result = decode([enc() + over + enc(), at + at])
    assert result.events[NORMAL] == [enc(), at, at]
    assert result.rejected == {TOO_MANY_KEYS: 1}


@pytest.mark.parametrize(
    "key",
    [h("20"), h("f9 3c00"), h("f5"), h("f6"), h("81 00"), h("a1 00 00"), h("c1 00"), h("e0")],
    ids=["nint", "float", "true", "null", "array", "map", "tag", "simple"],
)
def test_every_other_key_type_counts(key: bytes) -> None:
    # 64 int keys plus one of another type (distinct from the ints).
    over = event_with([*int_pairs(LIMIT), key + h("00")])
    assert decode([over]).rejected == {TOO_MANY_KEYS: 1}


def test_text_and_bytes_keys_do_not_count() -> None:
    texts = [cbor2.dumps(f"k{i}") + h("00") for i in range(200)]
    raw = [cbor2.dumps(f"b{i}".encode()) + h("00") for i in range(200)]
    frame = event_with([*texts, *raw, *int_pairs(LIMIT)])
    assert decode([frame]).events[NORMAL] == [frame]


def test_nested_maps_are_bounded_each() -> None:
    inner_ok = map_head(LIMIT) + b"".join(int_pairs(LIMIT))
    inner_over = map_head(LIMIT + 1) + b"".join(int_pairs(LIMIT + 1))
    ok = event_with([cbor2.dumps("a") + inner_ok, cbor2.dumps("b") + inner_ok])
    over = event_with([cbor2.dumps("a") + h("81") + inner_over])
    assert decode([ok]).accepted == 1
    assert decode([over]).rejected == {TOO_MANY_KEYS: 1}
    # As a key of a map: the big map counts as one key of its parent, and its own keys count.
    as_key = event_with([inner_over + h("00")])
    assert decode([as_key]).rejected == {TOO_MANY_KEYS: 1}


@pytest.mark.parametrize(
    ("spoiler", "reason"),
    [
        (cbor2.dumps("v") + h("62 c328"), "invalid_utf8"),
        (cbor2.dumps(1000) + h("00"), "duplicate_key"),  # duplicates the first int key
        (cbor2.dumps("v") + h("9f ff"), "indefinite_length"),
        (cbor2.dumps("v") + h("81") * 40 + h("00"), "too_deep"),
        (cbor2.dumps("v") + h("1c"), "malformed"),
    ],
)
def test_an_earlier_error_wins(spoiler: bytes, reason: str) -> None:
    before = event_with([*int_pairs(10), spoiler, *int_pairs(LIMIT + 1)[10:]])
    after = event_with([*int_pairs(LIMIT + 1), spoiler])
    assert decode([before]).rejected == {reason: 1}
    assert decode([after]).rejected == {TOO_MANY_KEYS: 1}


def test_truncated_and_too_deep_floods() -> None:
    over = event_with(int_pairs(LIMIT + 1))
    assert decode([over[:-1]]).rejected == {TOO_MANY_KEYS: 1}  # cut after the 65th key's head
    cut = len(event_with(int_pairs(LIMIT))) - 1  # inside the 64th pair
    assert decode([over[:cut]]).rejected == {"truncated": 1}
    deep = map_head(4) + cbor2.dumps(BASE)[1:] + cbor2.dumps("v") + h("81") * 31
    deep += map_head(LIMIT + 1) + b"".join(int_pairs(LIMIT + 1))
    assert decode([deep]).rejected == {"too_deep": 1}  # its keys sit at depth 33


def test_small_frames_skip_the_walk_and_agree_with_the_judges() -> None:
    frames = [event_with(int_pairs(n)) for n in (1, 2, 5, 20, LIMIT)]
    check_against_judges(frames + [b"".join(frames)])


def colliding_pairs(count: int) -> list[tuple[int, int]]:
    """2-int tuples with one hash: CPython's tuple hash (xxHash lanes) inverted."""
    mask = 2**64 - 1
    p1, p2, p5 = 11400714785074694791, 14029467366897019727, 2870177450012600261
    inv1, inv2 = pow(p1, -1, 2**64), pow(p2, -1, 2**64)

    def rotl(x: int) -> int:
        return ((x << 31) | (x >> 33)) & mask

    def rotr(x: int) -> int:
        return ((x >> 31) | (x << 33)) & mask

    target = 12345
    out = []
    a = 1
    while len(out) < count:
        a += 1
        acc = rotl((p5 + a * p2) & mask) * p1 & mask
        lane = ((rotr(target * inv1 & mask) - acc) * inv2) & mask
        if lane < 2**61 - 1:
            out.append((a, lane))
    assert len({hash(t) for t in out}) == 1
    return out


def test_a_flood_costs_little() -> None:
    """16000 colliding array keys took 5.6 s before the bound (codec.py header)."""
    keys = colliding_pairs(16_000)
    flood = event_with([cbor2.dumps(list(k)) + h("00") for k in keys])
    decoder = FrameDecoder(ClassRules())
    t0 = time.perf_counter()
    result = decoder.decode_frames([flood])
    spent = time.perf_counter() - t0
    assert result.rejected == {TOO_MANY_KEYS: 1}
    assert spent < 1.0, spent  # ~0.03 s here; generous for a loaded 2-core box


@st.composite
def maps_with_other_keys(draw: st.DrawFn) -> tuple[bytes, int]:
    """An event with n distinct int keys in one nested map, n around the bound."""
    n = draw(st.integers(LIMIT - 3, LIMIT + 3))
    ints = draw(st.lists(st.integers(-(2**64), 2**64 - 1), min_size=n, max_size=n, unique=True))
    values = draw(st.lists(st.sampled_from([0, "x", [1], {"a": 1}, 1.5]), min_size=n, max_size=n))
    inner = dict(zip(ints, values, strict=True))
    if len({hash(k) for k in inner}) != n or any(isinstance(k, bool) for k in inner):
        n = len(inner)
    return cbor2.dumps({**BASE, "m": inner}), len(inner)


@given(maps_with_other_keys())
@settings(max_examples=100)
def test_model_around_the_bound(case: tuple[bytes, int]) -> None:
    frame, n = case
    result = decode([frame])
    if n <= LIMIT:
        assert result.events[NORMAL] == [frame]
    else:
        assert result.rejected == {TOO_MANY_KEYS: 1}


def sized_event(size: int, int_keys: int = 3) -> bytes:
    """An event with `int_keys` int keys, padded with a text value to exactly `size` bytes."""
    base = cbor2.dumps({**BASE, **dict.fromkeys(range(int_keys), 0), "p": ""})
    pad = size - len(base)
    event = cbor2.dumps({**BASE, **dict.fromkeys(range(int_keys), 0), "p": "x" * pad})
    while len(event) > size:  # the text head grew by a byte at 24 characters
        pad -= 1
        event = cbor2.dumps({**BASE, **dict.fromkeys(range(int_keys), 0), "p": "x" * pad})
    return event


@pytest.mark.parametrize("size", [60, 126, 127, 128, 129, 130, 200])
def test_items_around_the_small_item_window(size: int) -> None:
    event = sized_event(size)
    assert len(event) in (size, size - 1)
    frames = [event, event + event, event[:-1], event + event[:-1], event[:-1] + enc()]
    frames += [event[:k] for k in (126, 127, 128, 129, 130)]
    frames += [event[:-2] + h("62 c328") + event, event + h("ff")]
    check_against_judges(frames)
    decode(frames)


@st.composite
def int_keyed_frames(draw: st.DrawFn) -> bytes:
    items = []
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.integers(0, 20))
        pad = "x" * draw(st.integers(0, 200))
        values = st.sampled_from([0, "v", [1], 1.5, {"a": 1}])
        event = {**BASE, "pad": pad, **{i - 5: draw(values) for i in range(n)}}
        items.append(cbor2.dumps(event))
    return draw(mutated(b"".join(items)))


@given(st.lists(int_keyed_frames(), min_size=1, max_size=3))
@settings(max_examples=300)
def test_below_the_bound_decoding_is_plain_cbor2(frames: list[bytes]) -> None:
    """test_codec's judge decodes with plain cbor2 (no bound): it must agree below the bound."""
    # A mutated map head can make the rest of a frame 65+ keys: over the bound.
    assume(TOO_MANY_KEYS not in decode(frames).rejected)
    check_against_judges(frames)


def test_chunks_with_other_keys_take_the_bounded_path() -> None:
    """Single-event frames in one batch chunk: a key of another type sends the chunk bounded."""
    int_key = sized_event(110)
    bad = int_key[:-3] + h("62 c328")
    frames = [enc(ts=1), int_key, enc(type="fault"), bad, int_key[:-1], b"", int_key + enc()]
    check_against_judges(frames * 20)  # crosses chunks of 64
    over = event_with(int_pairs(LIMIT + 1))
    result = decode([enc(), over, int_key, enc()] * 20)
    assert result.rejected == {TOO_MANY_KEYS: 20}
    assert result.events[NORMAL] == [enc(), int_key, enc()] * 20


def test_reason_is_known() -> None:
    assert TOO_MANY_KEYS in codec.REASONS
