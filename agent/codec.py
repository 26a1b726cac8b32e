"""Frames in, validated events out: each with its original bytes and its class.

This module owns the "Events in" decoding rules of INTERFACE.md: what a valid
event is, which reason code a rejection is counted under, and how a frame (a
CBOR sequence, RFC 8742) is cut into events. It promises:

- Every frame ends as valid events plus at most ONE counted rejection: the
  valid events before the first bad item are kept, the rest of the frame is
  rejected under the reason of that first bad item (a CBOR sequence cannot be
  resynchronised).
- An accepted event's bytes are exactly the bytes of one CBOR item as received
  (slices of the frame, or the frame itself): non-canonical encodings, tags in
  carried-through values and a tag 55799 around the event travel untouched.
  The accepted events of a frame concatenate to a prefix of that frame.
- Decoding never crashes and never hangs on input: the only outcomes are
  accepted events and counted rejections (tests/test_codec.py fuzzes this).

It is pure: no zmq, no clock, no I/O. The loop hands it the frames it drained
and queues what comes back.

Decoding rules (cbor2 6.x does the decoding; these are the options we pin):
- Tags are never interpreted: every tag number maps to a decoder that returns
  `CBORTag(tag, value)` (no bignums, dates, regexes, shared references).
- Indefinite-length items, duplicate keys, invalid UTF-8 are rejected anywhere
  in the event, not only in the top-level map.
- Depth: a data item may be enclosed by at most `max_depth` (32) containers,
  tags included (that is how cbor2 counts). So 32 nested arrays around a
  scalar pass and 33 fail; an empty 33rd container passes because nothing sits
  inside it; a tag 55799 around the event uses one level.

- Keys: a map may hold at most MAX_OTHER_KEYS (64) keys that are neither text
  nor byte strings; the 65th is an error at its head (TOO_MANY_KEYS), so an
  error earlier in the item still wins. Why, below.

Known limitation (from cbor2 building Python dicts): duplicate keys are found
with Python equality, so 1, 1.0 and true collide (as do [1] and [1.0]), while
two NaN keys do not (NaN != NaN) and b"a" and "a" do not.

Hash flooding, and how it is bounded: keys that are arrays, maps or tags
become tuples, frozendicts and CBORTags whose hashes an attacker can make
collide (tuple hashing is invertible), and building such a map is quadratic in
its size. Measured through decode_frames before the bound: one event map with
4000 colliding 2-int array keys (56 KB) took 0.44 s, with 16000 (224 KB) 5.6
s; a 1 MiB frame would have stalled the loop for minutes. Text and byte-string
keys are safe (randomised hashes). So every decode runs with cbor2's
`strict_hashable_types=True` (0.999 against 0.969 us/event in one batch
loads() here, within the noise) and an item that fails it for a key of another
type is decoded again under the bound (`_other_keys_overflow` walks it first,
so cbor2 never builds a map with more than MAX_OTHER_KEYS such keys). Honest
events with text keys never take that path. Events with keys of other types
do, at about twice the cost (measured, 110-byte events with one int key: 2.8
us instead of 1.3 in single-event frames, 2.3 instead of 1.6 in 32-event
frames; a Python walk is added for such events longer than 2 * MAX_OTHER_KEYS
bytes). The compiled scanner (agent/_speedups.pyx) judges int and byte-string
keys itself.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cbor2 import CBORDecodeEOF, CBORDecodeError, CBORDecoder, CBORTag, loads

from agent.classes import ClassRules, EventClass

# --- Reason codes: stable strings, counted in the stats and shown on /backpressure.
EMPTY_FRAME = "empty_frame"  # a frame of zero bytes
TRUNCATED = "truncated"  # an item cut short by the end of the frame
MALFORMED = "malformed"  # not well-formed CBOR (reserved values, stray break, ...)
INDEFINITE_LENGTH = "indefinite_length"  # an indefinite-length string, array or map
DUPLICATE_KEY = "duplicate_key"  # a key twice in one map (Python equality)
INVALID_UTF8 = "invalid_utf8"  # a text string that is not valid UTF-8
TOO_DEEP = "too_deep"  # an item enclosed by more than max_depth containers/tags
NOT_A_MAP = "not_a_map"  # a well-formed item that is neither a map nor 55799(map)
MISSING_FIELD = "missing_field"  # "meter", "ts" or "type" absent
BAD_FIELD_TYPE = "bad_field_type"  # "meter"/"ts"/"type" present with the wrong type
TOO_MANY_KEYS = "too_many_keys"  # a map with more than MAX_OTHER_KEYS non-text, non-bytes keys
# Decided by the loop, not here (a frame never knows it was one of several):
# a multipart ZeroMQ message, rejected whole (INTERFACE.md).
MULTIPART = "multipart"

REASONS: tuple[str, ...] = (
    EMPTY_FRAME,
    TRUNCATED,
    MALFORMED,
    INDEFINITE_LENGTH,
    DUPLICATE_KEY,
    INVALID_UTF8,
    TOO_DEEP,
    NOT_A_MAP,
    MISSING_FIELD,
    BAD_FIELD_TYPE,
    TOO_MANY_KEYS,
)

# Keys per map that are neither text nor byte strings. Colliding keys cost
# ~55 ns per pair compared (4000 keys: 0.44 s), so a map of n costs at most
# ~n**2/2 * 55 ns: 64 keys ~0.1 ms for >= 128 bytes of input. Measured here:
# a 1 MiB frame of events each holding 64 colliding array keys 0.18 s (1 MiB
# of honest events 0.03 s), one map of 16000 colliding keys 0.3 ms (the walk
# stops at the 65th key; it took 5.6 s unbounded); tests/test_hash_flood.py.
# Honest maps keyed by small ints (a histogram of 64 buckets) stay within.
MAX_OTHER_KEYS = 64
_SMALL_ITEM = 2 * MAX_OTHER_KEYS  # bytes: see FrameDecoder._decode_bounded

# cbor2 reports everything as CBORDecodeError with a message, so the reason is
# read from the message. First match wins; anything unmatched is MALFORMED.
# Patterns are anchored: only the duplicate-key message quotes peer data (the
# key's repr), and it comes after its fixed prefix. Message texts are cbor2
# 6.3's; tests/test_codec.py pins each one, so an upgrade that rewords them
# fails a test instead of silently shifting counts to "malformed".
# AI 31 on an integer or a tag ("error decoding semantic tag: encountered
# indefinite length") is not an indefinite-length item but a malformed head.
_MESSAGE_REASONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"error decoding map: Duplicate map key: "), DUPLICATE_KEY),
    (re.compile(r"maximum container nesting depth \(\d+\) exceeded"), TOO_DEEP),
    (
        re.compile(r"error decoding (?:byte string|text string|array|map): encountered indefinite"),
        INDEFINITE_LENGTH,
    ),
)


# cbor2 6.3's message when strict_hashable_types meets a key of another type.
# Not a reason: FrameDecoder catches it and decodes the item under the bound.
_OTHER_KEY_MESSAGE = re.compile(r"error decoding map: map key must be a text string or byte string")


def _is_other_key_error(exc: CBORDecodeError) -> bool:
    return not isinstance(exc, CBORDecodeEOF) and _OTHER_KEY_MESSAGE.match(str(exc)) is not None


def _other_keys_overflow(buf: bytes, pos: int, max_depth: int, limit: int) -> int | None:
    """Where the item at `pos` gives a map its (limit+1)-th key that is not text or bytes.

    The offset of that key's head, or None if no map gets there before the
    walk ends: at the item's end, or at anything cbor2 fails on by itself
    there (end of buffer, a reserved or indefinite head, a two-byte simple
    value < 32, an item deeper than max_depth). cbor2 decodes in the same
    order and stops at or before that point, so with None it never builds a
    map of more than `limit` such keys.
    """
    end = len(buf)
    # Per open container: [items still to come, is a map, other keys so far].
    stack: list[list[int]] = []
    while True:
        if len(stack) > max_depth or pos >= end:
            return None
        head = buf[pos]
        major = head >> 5
        ai = head & 31
        if stack and stack[-1][1] and stack[-1][0] % 2 == 0 and major not in (2, 3):
            top = stack[-1]  # a key (maps count 2 items per pair, keys at even counts)
            top[2] += 1
            if top[2] > limit:
                return pos
        pos += 1
        if ai < 24:
            arg = ai
        elif ai < 28:
            size = 1 << (ai - 24)
            if pos + size > end:
                return None
            arg = int.from_bytes(buf[pos : pos + size], "big")
            pos += size
        else:
            return None
        if major == 2 or major == 3:
            pos += arg
            if pos > end:
                return None
        elif major >= 4 and major <= 6:
            count = 1 if major == 6 else arg * 2 if major == 5 else arg
            if count:
                stack.append([count, major == 5, 0])
                continue
        elif major == 7 and ai == 24 and arg < 32:
            return None
        while stack:
            stack[-1][0] -= 1
            if stack[-1][0]:
                break
            stack.pop()
        if not stack:
            return None


def reason_for(exc: CBORDecodeError) -> str:
    """The reason code for a cbor2 decoding error."""
    if isinstance(exc, CBORDecodeEOF):
        return TRUNCATED
    # cbor2 chains the UnicodeDecodeError; its own message ("error decoding
    # text string") is shared with other text-string failures.
    if isinstance(exc.__cause__, UnicodeDecodeError):
        return INVALID_UTF8
    message = str(exc)
    for pattern, reason in _MESSAGE_REASONS:
        if pattern.match(message):
            return reason
    return MALFORMED


# --- Tags: never interpreted.
_SELF_DESCRIBED = 55799  # RFC 8949 3.4.6, accepted around a whole event

# cbor2 looks a tag up in `semantic_decoders` before its built-in decoders and
# calls what it finds with (value, immutable). A dict subclass whose
# __missing__ answers every tag is honoured (cbor2 6.3 subscripts the mapping)
# and costs ~0.04 us per loads() call; a collections.abc.Mapping costs
# ~0.25 us (cbor2 checks isinstance against the ABC), an eighth of our
# per-event budget. tests/test_codec.py checks that every tag cbor2 knows, and
# random others, stay CBORTags, through this table and through __missing__.


CBOR2_INTERPRETED_TAGS: tuple[int, ...] = (
    *(0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100),
    *(256, 258, 260, 261, 1004, _SELF_DESCRIBED),
)


def _keep_tag(tag: int) -> Callable[..., CBORTag]:
    def keep(value: Any, immutable: bool = False) -> CBORTag:
        return CBORTag(tag, value)

    return keep


class _UninterpretedTags(dict):  # type: ignore[type-arg]
    __slots__ = ()

    def __missing__(self, tag: int) -> Callable[..., CBORTag]:
        # Not stored: a peer sending random tag numbers must not grow this dict.
        return _keep_tag(tag)


def _uninterpreted_tags() -> _UninterpretedTags:
    tags = _UninterpretedTags()
    # The tags cbor2 6.3 interprets (found by decoding tags 0..1100 without
    # this table), prefilled so they stay uninterpreted even if a later cbor2
    # looked them up with PyDict_GetItem, which skips __missing__.
    for tag in CBOR2_INTERPRETED_TAGS:
        tags[tag] = _keep_tag(tag)
    return tags


# --- The batch path for single-event frames.
#
# Measured here (bench/bench_codec.py, 110-byte 10-key events): one loads()
# call per frame with our options costs ~1.6-1.7 us, a reused CBORDecoder with
# decode() + tell() ~2.1 us, and decoding 64 frames in ONE loads() call
# ~1.5 us per frame, about what bare loads() costs. loads() cannot say where
# an item ends (it ignores trailing bytes), so the batch interleaves each frame
# with a sentinel the peer cannot forge:
#
#     array(2n) [frame_0, S_0, frame_1, S_1, ..., frame_n-1, S_n-1]
#
# where S_j is a byte string of a per-decoder secret (16 random bytes) plus j.
# Invariant: if the decoded array holds S_j at index 2j+1 for every j < k,
# frames 0..k-1 are each exactly one CBOR item. Why: S_j's 19-byte encoding
# can only appear where we put it (forging it needs the secret), items are
# decoded in order, so S_0..S_k-1 were decoded at their own offsets as
# top-level items, and between S_j-1 and S_j sit exactly frame_j's bytes,
# decoded as the one item at index 2j. Distinct S_j matter for proving a
# prefix: with one shared S, a truncated map in frame_0 could swallow S and
# frame_1 as its last key and value, and frame_1's S would land at index 1.
# The outer array is one more level, so the batch decodes with max_depth + 1.
#
# Anything else (an exception, a misaligned sentinel) sends the frames from the
# first unproven one on through the exact path, which alone decides reasons
# and spans. A hostile frame can so cost at most one wasted decode of the rest
# of its chunk (<= 2x for that chunk; bench/bench_codec.py measures it).
#
# Routing, so honest multi-event frames never pay for a failed batch: a chunk
# of frames averaging <= 1 KiB whose joined bytes hold b"\x65meter" (the
# encoded key) exactly once per frame is batched whole: one bytes.count for the
# chunk. Otherwise each frame is looked at (len + count, ~0.1 us): runs of
# frames that look like one event are batched, the rest go to the exact path.
# The guess only steers cost; the sentinels alone decide what is proven.
# Frames per loads(). A chunk costs ~3 us on top of its events (join, count,
# call, alignment check); a bad frame costs the re-decoding of its chunk.
# Measured, us/event in drains of 64, all valid / one bad frame per drain:
# chunk 16: 2.00 / 2.67, chunk 32: 1.88 / 3.13, chunk 64: 1.78 / 4.20. The
# clean rate is what the 2 us budget is about; 128..256 gained nothing more.
_BATCH_CHUNK = 64
_BATCH_MAX_FRAME = 1024  # bytes; above this the saved ~0.5 us call cost is < 10% of decoding
_METER_KEY = b"\x65meter"  # text(5) "meter": every shortest-form encoder writes it so


def _array_header(count: int) -> bytes:
    """Definite-length CBOR array head (RFC 8949 3.1) for count < 2**16."""
    if count < 24:
        return bytes((0x80 | count,))
    if count < 0x100:
        return bytes((0x98, count))
    if count < 0x10000:
        return bytes((0x99, count >> 8, count & 0xFF))
    raise ValueError(count)


_BATCH_HEADERS = [_array_header(2 * n) for n in range(_BATCH_CHUNK + 1)]


# --- Event checks, in the order of the codes they return.
_NOT_A_MAP = -1
_MISSING_FIELD = -2
_BAD_FIELD_TYPE = -3
_CHECK_REASONS = {
    _NOT_A_MAP: NOT_A_MAP,
    _MISSING_FIELD: MISSING_FIELD,
    _BAD_FIELD_TYPE: BAD_FIELD_TYPE,
}
_NORMAL = int(EventClass.NORMAL)


def _event_class(obj: Any, lookup: dict[str, int]) -> int:
    """Class index (0..3) of a decoded event, or a negative _CHECK_REASONS code."""
    if type(obj) is not dict:
        if type(obj) is CBORTag and obj.tag == _SELF_DESCRIBED and type(obj.value) is dict:
            obj = obj.value
        else:
            return _NOT_A_MAP
    try:
        meter = obj["meter"]
        ts = obj["ts"]
        event_type = obj["type"]
    except KeyError:
        return _MISSING_FIELD
    # `type(x) is int` excludes bool; CBOR ints are within -2**64..2**64-1, so
    # >= 0 is exactly "unsigned, at most 64 bits". A bignum is a CBORTag.
    if type(ts) is not int or ts < 0 or type(event_type) is not str:
        return _BAD_FIELD_TYPE
    if type(meter) is int:
        if meter < 0:
            return _BAD_FIELD_TYPE
    elif type(meter) is not str:
        return _BAD_FIELD_TYPE
    return lookup.get(event_type, _NORMAL)


@dataclass(slots=True)
class DecodeResult:
    """What one decode_frames() call made of its frames. One per call, then handed off."""

    # Per EventClass index (0=critical..3=low): each valid event's original
    # bytes, in arrival order.
    events: tuple[list[bytes], list[bytes], list[bytes], list[bytes]] = field(
        default_factory=lambda: ([], [], [], [])
    )
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count, only reasons seen
    frames: int = 0  # frames looked at
    accepted: int = 0  # valid events

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class FrameDecoder:
    """Turns frames (CBOR sequences of events) into a DecodeResult. Not thread-safe."""

    __slots__ = (
        "_decoder",
        "_lax",
        "_lookup",
        "_max_depth",
        "_sentinel_values",
        "_sentinels",
        "_tags",
    )

    def __init__(self, rules: ClassRules, *, max_depth: int = 32) -> None:
        if max_depth < 1:
            raise ValueError("max_depth must be >= 1")
        self._lookup = rules.lookup
        self._max_depth = max_depth
        self._tags = _uninterpreted_tags()
        # One decoder for every exact-path frame: its constructor is ~0.6 us;
        # assigning .fp reuses it (cbor2 6.3 keeps no state across items or
        # after an error: tests/test_codec.py checks both). It reads ahead
        # read_size bytes per item and seeks back: 512 instead of the default
        # 4096 measured 1.52 vs 1.60 us/event on 32-event frames, 1.50 vs 1.65
        # on 2000-event frames (events of ~110 bytes).
        # Strict: a key that is not text or bytes fails it, and that item is
        # decoded again by `_lax` under MAX_OTHER_KEYS (`_decode_bounded`).
        self._decoder = CBORDecoder(
            io.BytesIO(b""),
            semantic_decoders=self._tags,
            read_size=512,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            max_depth=max_depth,
            strict_hashable_types=True,
        )
        self._lax = CBORDecoder(
            io.BytesIO(b""),
            semantic_decoders=self._tags,
            read_size=512,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            max_depth=max_depth,
        )
        secret = os.urandom(16)
        self._sentinel_values = [secret + j.to_bytes(2, "big") for j in range(_BATCH_CHUNK)]
        # 0x52: byte string of 18 bytes.
        self._sentinels = [b"\x52" + v for v in self._sentinel_values]

    def set_rules(self, rules: ClassRules) -> None:
        """Classify with new rules from the next call on (SIGHUP reload)."""
        self._lookup = rules.lookup

    def decode_frame(self, frame: bytes) -> DecodeResult:
        return self.decode_frames([frame])

    def decode_frames(self, frames: list[bytes]) -> DecodeResult:
        """Every frame's valid events by class, in arrival order, and its rejection if any."""
        result = DecodeResult(([], [], [], []), {}, len(frames), 0)
        for start in range(0, len(frames), _BATCH_CHUNK):
            chunk = frames[start : start + _BATCH_CHUNK]
            n = len(chunk)
            # The common case, checked for the whole chunk at C speed: small
            # frames and one "meter" key per frame.
            if sum(map(len, chunk)) <= n * _BATCH_MAX_FRAME:
                joined = self._join(chunk)
                if joined.count(_METER_KEY) == n:
                    self._decode_batch(chunk, joined, result)
                    continue
            self._decode_routed(chunk, result)
        return result

    def _decode_routed(self, frames: list[bytes], result: DecodeResult) -> None:
        """Frame by frame: runs of likely single-event frames batched, the rest exact."""
        run: list[bytes] = []
        for frame in frames:
            if len(frame) <= _BATCH_MAX_FRAME and frame.count(_METER_KEY) == 1:
                run.append(frame)
                continue
            if run:
                self._decode_batch(run, self._join(run), result)
                run = []
            self._decode_exact(frame, result)
        if run:
            self._decode_batch(run, self._join(run), result)

    def _join(self, frames: list[bytes]) -> bytes:
        """array(2n) [frame_0, S_0, ..., frame_n-1, S_n-1] for n <= _BATCH_CHUNK."""
        n = len(frames)
        parts: list[bytes] = [b""] * (2 * n + 1)
        parts[0] = _BATCH_HEADERS[n]
        parts[1::2] = frames
        parts[2::2] = self._sentinels[:n]
        return b"".join(parts)

    def _decode_batch(self, frames: list[bytes], joined: bytes, result: DecodeResult) -> None:
        """Frames in one loads() call; see the invariant above `_BATCH_CHUNK`."""
        n = len(frames)
        other_keys = False
        try:
            items = loads(
                joined,
                semantic_decoders=self._tags,
                allow_indefinite=False,
                allow_duplicate_keys=False,
                max_depth=self._max_depth + 1,
                strict_hashable_types=True,
            )
        except CBORDecodeError as exc:
            proven = 0
            # Some frame of the chunk has keys of other types: its peer likely
            # sends them in every event, so the chunk skips the strict try.
            other_keys = _is_other_key_error(exc)
        else:
            values = self._sentinel_values
            if items[1::2] == values[:n]:
                proven = n
            else:
                proven = 0
                while proven < n and items[2 * proven + 1] == values[proven]:
                    proven += 1

        if proven:
            lookup = self._lookup
            events = result.events
            rejected = result.rejected
            accepted = 0
            # frames may run past `proven`: zip stops at the proven items.
            for obj, frame in zip(items[0 : 2 * proven : 2], frames, strict=False):
                cls = _event_class(obj, lookup)
                if cls >= 0:
                    events[cls].append(frame)
                    accepted += 1
                else:
                    reason = _CHECK_REASONS[cls]
                    rejected[reason] = rejected.get(reason, 0) + 1
            result.accepted += accepted
        for j in range(proven, n):
            self._decode_exact(frames[j], result, bounded=other_keys)

    def _decode_exact(self, frame: bytes, result: DecodeResult, *, bounded: bool = False) -> None:
        """Item by item with exact spans (decode() + tell()); decides every reason.

        `bounded` starts with `_decode_bounded` instead of the strict decoder
        (the same results: it is only faster when keys of other types are
        expected); a frame switches to it at its first such key anyway.
        """
        end = len(frame)
        if end == 0:
            self._reject(result, EMPTY_FRAME)
            return
        fp = io.BytesIO(frame)
        decoder = self._decoder
        decoder.fp = fp
        decode = decoder.decode
        tell = fp.tell
        lookup = self._lookup
        events = result.events
        start = accepted = 0
        reason = None
        while start < end:
            if bounded:
                obj, stop, reason = self._decode_bounded(frame, start)
                if reason is not None:
                    break
            else:
                try:
                    obj = decode()
                    stop = tell()
                except CBORDecodeError as exc:
                    if not _is_other_key_error(exc):
                        reason = reason_for(exc)
                        break
                    bounded = True
                    obj, stop, reason = self._decode_bounded(frame, start)
                    if reason is not None:
                        break
            cls = _event_class(obj, lookup)
            if cls < 0:
                reason = _CHECK_REASONS[cls]
                break
            # A frame that is one item is its own event: no copy.
            events[cls].append(frame if stop - start == end else frame[start:stop])
            accepted += 1
            start = stop
        result.accepted += accepted
        if reason is not None:
            self._reject(result, reason)

    def _decode_bounded(self, frame: bytes, start: int) -> tuple[Any, int, str | None]:
        """The item at `start` without strict_hashable_types: (obj, stop, None) or a reason.

        If a map of the item would get a (MAX_OTHER_KEYS+1)-th key that is not
        text or bytes, only the bytes before that key's head are decoded:
        cbor2 then fails inside them (an earlier error: its reason) or at
        their end (TOO_MANY_KEYS). Either way no map it builds holds more than
        MAX_OTHER_KEYS such keys.
        """
        lax = self._lax
        # First within the item's first _SMALL_ITEM bytes, where no map can be
        # over the bound (a map's (MAX_OTHER_KEYS+1)-th key sits after its
        # head and MAX_OTHER_KEYS pairs of >= 2 bytes): an item that ends
        # there is decoded whole, an error there is its first error. Only
        # running into the window's end means looking at the whole item.
        window = frame[start : start + _SMALL_ITEM]
        fp = io.BytesIO(window)
        lax.fp = fp
        try:
            obj = lax.decode()
        except CBORDecodeEOF as exc:
            if len(window) < _SMALL_ITEM:
                return None, 0, reason_for(exc)  # the frame itself ends there
        except CBORDecodeError as exc:
            return None, 0, reason_for(exc)
        else:
            return obj, start + fp.tell(), None
        cut = _other_keys_overflow(frame, start, self._max_depth, MAX_OTHER_KEYS)
        if cut is None:
            fp = io.BytesIO(frame)
            fp.seek(start)
        else:
            fp = io.BytesIO(frame[start:cut])
        lax.fp = fp
        try:
            obj = lax.decode()
        except CBORDecodeError as exc:
            if cut is not None and isinstance(exc, CBORDecodeEOF):
                return None, 0, TOO_MANY_KEYS
            return None, 0, reason_for(exc)
        if cut is not None:
            # Unreachable: the key at `cut` belongs to the item, which cannot
            # end before it. Counted, not raised: the input is the peer's.
            return None, 0, TOO_MANY_KEYS
        return obj, fp.tell(), None

    @staticmethod
    def _reject(result: DecodeResult, reason: str) -> None:
        result.rejected[reason] = result.rejected.get(reason, 0) + 1


__all__ = [
    "MAX_OTHER_KEYS",
    "MULTIPART",
    "REASONS",
    "TOO_MANY_KEYS",
    "DecodeResult",
    "FrameDecoder",
    "reason_for",
]
