# The benchmark's event format: what loadgen.py sends and subscriber.py reads back.
#
# Every generated event is a CBOR map of exactly EVENT_BYTES (120) bytes with a
# fixed layout, so that
#   - the generator patches ids and send times into pre-built buffers in place
#     (no per-event encoding on the hot path), and
#   - the subscriber finds the ids of a whole upstream body with one
#     struct.iter_unpack call instead of decoding every event (a Python CBOR
#     decode costs ~1 us per event; the subscriber shares 2 cores with the
#     agent and the generator, so it must stay cheap).
# The layout is still ordinary CBOR that the agent validates like any other
# event; a body that does not match the layout falls back to real decoding.
#
#   offset  bytes                      meaning
#   0       a9 / aa                    map of 9 pairs (10 for critical)
#   1       61 6b  <k>                 "k": class index 0..3 (what loadgen meant)
#   4       61 67  <g>                 "g": generator index, 0..23 (one byte)
#   7       61 6e  1a <4 bytes>        "n": per (generator, class) sequence number
#   14      64 73656e74 1b <8 bytes>   "sent": time.monotonic_ns() (critical only)
#   ...     "meter", "ts", "type", "kwh", "v"   the meter reading
#   ...     "pad": text                brings the event to exactly EVENT_BYTES

from __future__ import annotations

import io
import struct

import cbor2

EVENT_BYTES = 120
# Ids start at 2**16 so every id is a 4-byte CBOR uint in its preferred
# (shortest) encoding: the field never changes width and can be patched in place.
ID_BASE = 1 << 16
ID_MAX = (1 << 32) - 1
# Placeholder >= 2**32 so "sent" is encoded with 8 bytes like a real
# monotonic_ns() reading.
SENT_PLACEHOLDER = 1 << 62

CRITICAL, HIGH, NORMAL, LOW = range(4)
CLASS_NAMES = ("critical", "high", "normal", "low")
CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}
# One event type per class under the contract's default rule table.
TYPES = ("over_voltage", "power_restore", "reading", "heartbeat")
MAX_GENERATORS = 24  # "g" must stay a one-byte CBOR uint (0..23)

K_OFF = 3
G_OFF = 6
N_OFF = 10
SENT_OFF = 20

PACK_ID = struct.Struct(">I").pack_into
PACK_SENT = struct.Struct(">Q").pack_into
# One record per event: (k, g, n, sent); `sent` is meaningful for k == CRITICAL only.
_REC = struct.Struct(
    f">{K_OFF}xB{G_OFF - K_OFF - 1}xB{N_OFF - G_OFF - 1}xI{SENT_OFF - N_OFF - 4}x"
    f"Q{EVENT_BYTES - SENT_OFF - 8}x"
)


def build_event(cls: int, g: int, meter: int, ts_ms: int, n: int = ID_BASE) -> bytes:
    """One event of `cls` in the fixed layout, exactly EVENT_BYTES long."""
    if not 0 <= g < MAX_GENERATORS:
        raise ValueError(f"generator index {g} outside 0..{MAX_GENERATORS - 1}")
    if not ID_BASE <= n <= ID_MAX:
        raise ValueError(f"id {n} outside {ID_BASE}..{ID_MAX}")
    ev: dict[str, object] = {"k": cls, "g": g, "n": n}
    if cls == CRITICAL:
        ev["sent"] = SENT_PLACEHOLDER
    ev.update(
        meter=100_000 + meter % 900_000,  # >= 2**16: always a 4-byte uint
        ts=ts_ms,
        type=TYPES[cls],
        kwh=1_000_000 + meter,
        v=230.0 + (meter % 100) / 10,
    )
    ev["pad"] = ""
    # "pad" text adds its length plus a 1- or 2-byte header: start a little
    # below the estimate and step up until the event is exactly EVENT_BYTES.
    pad = max(0, EVENT_BYTES - len(cbor2.dumps(ev)) - 2)
    while True:
        ev["pad"] = "x" * pad
        raw = cbor2.dumps(ev)
        if len(raw) == EVENT_BYTES:
            break
        if len(raw) > EVENT_BYTES:
            raise ValueError("event does not fit in EVENT_BYTES")
        pad += 1
    # The offsets above are the contract between loadgen and subscriber.
    assert raw[1:3] == b"\x61k" and raw[K_OFF] == cls
    assert raw[4:6] == b"\x61g" and raw[G_OFF] == g
    assert raw[7:10] == b"\x61n\x1a"
    assert cls != CRITICAL or raw[14:20] == b"\x64sent\x1b"
    return raw


def _layout_ok(body: bytes, count: int) -> bool:
    # Strided slices check one byte of every event in C: the key bytes must sit
    # where the layout puts them, or the body was not produced by loadgen.
    step = EVENT_BYTES
    if len(body) != count * step:
        return False
    return (
        body[2::step].count(b"k") == count
        and body[5::step].count(b"g") == count
        and body[8::step].count(b"n") == count
        and body[9::step].count(b"\x1a") == count
    )


def parse_ids(body: bytes, count: int) -> tuple[list[tuple[int, int, int, int]], int]:
    """(k, g, n, sent) of every event in an upstream body, and how many were foreign.

    `foreign` counts events without the loadgen keys. Fast path for bodies in
    the fixed layout; anything else is decoded event by event. `sent` is only
    meaningful when k == CRITICAL.
    """
    if _layout_ok(body, count):
        return list(_REC.iter_unpack(body)), 0
    out: list[tuple[int, int, int, int]] = []
    foreign = 0
    fp = io.BytesIO(body)
    # Tags stay untouched (the agent carries them); only our own keys matter.
    dec = cbor2.CBORDecoder(fp, tag_hook=lambda _d, tag: tag)
    while fp.tell() < len(body):
        try:
            ev = dec.decode()
        except (cbor2.CBORDecodeError, ValueError, EOFError):
            foreign += 1
            break
        if isinstance(ev, dict) and all(isinstance(ev.get(key), int) for key in "kgn"):
            sent = ev.get("sent")
            out.append((ev["k"], ev["g"], ev["n"], sent if isinstance(sent, int) else 0))
        else:
            foreign += 1
    return out, foreign
