"""`edge-agent tail`: subscribe like a head-end and print every event as JSON.

This module owns what a technician sees of the upstream stream: one SUB
socket, the classes it subscribes to, and how an upstream message
(INTERFACE.md, "Events out": `[class, header, body]`) becomes lines of text.

Promises:
- One JSON object per event, one line each, flushed per line (so `| grep`
  and `| head` see it at once):
  `{"class": "critical", "seq": 7, "epoch": 1790000000123, "agent": "gw-01",
  "event": {...}}`. `seq`, `epoch` and `agent` are the message header's; all
  events of one message share them.
- The event is decoded without interpreting anything (as the agent decodes it):
  byte strings become lowercase hex text; a tag becomes
  `{"tag": N, "value": ...}` (55799 around a whole event included); a map
  whose keys are all text becomes a JSON object, any other map becomes
  `{"map": [[key, value], ...]}` in wire order (a JSON object cannot have
  non-text keys, and turning `1` into `"1"` could collide with a real `"1"`);
  NaN and the infinities become the text `"NaN"`, `"Infinity"`, `"-Infinity"`
  (strict JSON has no such numbers); simple values `{"simple": N}`, CBOR
  `undefined` `{"simple": 23}`. An event that does not decode (it never
  should: the agent only forwards valid events) is printed as
  `{"class": ..., "seq": ..., "error": "...", "raw": "<hex>"}` and the rest
  of that message is skipped.
- Runs until SIGINT or SIGTERM, then returns 0. A reader that goes away
  (`| head`) ends it quietly too (cli.py handles the broken pipe).
- Never blocks a stop for long: it polls in POLL_S steps and checks the flag.
"""

from __future__ import annotations

import io
import json
import math
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TextIO

from cbor2 import CBORDecodeError, CBORDecoder, CBORSimpleValue, CBORTag, undefined

from agent.classes import CLASS_NAMES
from agent.settings import Settings

DEFAULT_UPSTREAM = "tcp://127.0.0.1:5558"
# Seconds between checks of the stop flag while no message arrives: how long
# a SIGINT/SIGTERM may take to end the command.
POLL_S = 0.1
# Messages (ZMQ_RCVHWM). A technician's terminal reads slowly; what does not
# fit waits in the agent (a slow subscriber loses nothing, INTERFACE.md).
RCVHWM = 1000


class TailError(Exception):
    """The command line or config asks for something tail cannot do (exit 2)."""


# --------------------------------------------------------------- decoding (pure)


def _keep_tag(tag: int) -> Callable[..., CBORTag]:
    def keep(value: Any, immutable: bool = False) -> CBORTag:
        return CBORTag(tag, value)

    return keep


class _UninterpretedTags(dict):  # type: ignore[type-arg]
    """Every tag stays a CBORTag: the same trick as agent/codec.py (cbor2 looks
    tags up in `semantic_decoders`, and __missing__ answers every number)."""

    __slots__ = ()

    def __missing__(self, tag: int) -> Callable[..., CBORTag]:
        return _keep_tag(tag)


def _prefilled_tags() -> _UninterpretedTags:
    from agent.codec import CBOR2_INTERPRETED_TAGS

    tags = _UninterpretedTags()
    for tag in CBOR2_INTERPRETED_TAGS:
        tags[tag] = _keep_tag(tag)
    return tags


_TAGS = _prefilled_tags()


def to_json(value: Any) -> Any:
    """A decoded CBOR value -> something `json.dumps(allow_nan=False)` takes,
    following the rules in the module header."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, CBORTag):
        return {"tag": value.tag, "value": to_json(value.value)}
    if isinstance(value, Mapping):  # dict, or cbor2's frozendict for a map used as a key
        if all(isinstance(k, str) for k in value):
            return {k: to_json(v) for k, v in value.items()}
        return {"map": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is undefined:
        return {"simple": 23}
    if isinstance(value, CBORSimpleValue):
        return {"simple": value.value}
    if value is None or isinstance(value, (str, int, float)):  # bool is an int
        return value
    # Nothing else comes out of cbor2 with every tag kept; should it ever,
    # show it rather than fail the line.
    return {"unknown": repr(value)}


def decode_items(body: bytes) -> Iterator[Any]:
    """The items of a CBOR sequence, tags kept. Raises CBORDecodeError."""
    fp = io.BytesIO(body)
    decoder = CBORDecoder(fp, semantic_decoders=_TAGS)
    while fp.tell() < len(body):
        yield decoder.decode()


def render_message(frames: Sequence[bytes]) -> list[str]:
    """One upstream message -> its JSON lines (no newline)."""
    if len(frames) != 3:
        return [_dumps({"error": f"message of {len(frames)} frames, expected 3"})]
    cls_raw, header_raw, body = frames
    cls = cls_raw.decode("ascii", errors="replace")
    try:
        header = next(decode_items(header_raw))
    except (CBORDecodeError, StopIteration) as e:
        return [_dumps({"class": cls, "error": f"header: {e}", "raw": header_raw.hex()})]
    if not isinstance(header, dict):
        header = {}
    head = {
        "class": cls,
        "seq": to_json(header.get("seq")),
        "epoch": to_json(header.get("epoch")),
        "agent": to_json(header.get("agent")),
    }
    lines = []
    try:
        for event in decode_items(body):
            lines.append(_dumps({**head, "event": to_json(event)}))
    except CBORDecodeError as e:
        where = f"event {len(lines) + 1}"
        lines.append(_dumps({**head, "error": f"{where}: {e}", "raw": body.hex()}))
    return lines


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


# ---------------------------------------------------------- endpoint from config


def endpoint_from_settings(settings: Settings) -> str:
    """Where a local tail should connect to reach the agent's upstream: its first
    bind, with a wildcard host replaced by loopback."""
    if settings.upstream.curve.secret_key_file is not None:
        raise TailError(
            "the config's upstream uses CURVE ([upstream.curve]); tail has no client "
            "key and would receive nothing: give --upstream an endpoint without CURVE"
        )
    if not settings.upstream.bind:
        raise TailError(
            "the config's upstream only connects (upstream.connect): there is no "
            "endpoint to subscribe to; give --upstream"
        )
    ep = settings.upstream.bind[0]
    for wildcard, local in (("*", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("[::]", "[::1]")):
        prefix = f"tcp://{wildcard}:"
        if ep.startswith(prefix):
            return f"tcp://{local}:{ep[len(prefix) :]}"
    return ep


# ------------------------------------------------------------------ the command


def main(
    endpoint: str,
    classes: Sequence[str] = (),
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Subscribe to `classes` (all when empty) at `endpoint` and print until
    SIGINT/SIGTERM: 0. A bad endpoint or class: message on `err`, 2."""
    import zmq

    unknown = [c for c in classes if c not in CLASS_NAMES]
    if unknown:
        print(
            f"edge-agent tail: unknown class {unknown[0]!r} (one of {', '.join(CLASS_NAMES)})",
            file=err,
        )
        return 2
    wanted = tuple(dict.fromkeys(classes)) or CLASS_NAMES
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, RCVHWM)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as e:
            print(f"edge-agent tail: cannot connect to {endpoint!r}: {e}", file=err)
            return 2
        for name in wanted:
            sock.subscribe(name.encode("ascii"))
        print(f"edge-agent tail: subscribed to {endpoint} ({', '.join(wanted)})", file=err)
        err.flush()
        while not stop:
            if not sock.poll(int(POLL_S * 1000)):
                continue
            frames = sock.recv_multipart()
            # A prefix subscription would also pass "criticalX": keep exact names.
            if frames and frames[0].decode("ascii", "replace") not in wanted:
                continue
            for line in render_message(frames):
                out.write(line + "\n")
                out.flush()
        return 0
    finally:
        sock.close(0)
        ctx.term()
        for s, handler in previous.items():
            signal.signal(s, handler)
