"""`edge-agent status`: ask a running agent how it is and tell a person.

This module owns the client side of the technician endpoint: fetching
`GET /api/v1/gateway/backpressure` (`fetch`), turning the document into a
summary a field technician reads in seconds (`render`), and the command's exit
status (`main`: 0 reachable, 1 not, with the reason on stderr).

It promises to render any document that carries the contract's fields
(INTERFACE.md, "Technician endpoint") and to survive one that lacks any field
at all: the CLI on a laptop may talk to an older or newer agent. Every field
beyond the contract is read as optional; a missing one shows as "?" or its
line is left out. Plain ASCII unless `color=True`.

The alarms are the agent's own (`alarms` in the document, agent/alarms.py),
printed with the names the status page shows; from an agent too old to send
them, the same module evaluates what one document can tell (no trends).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, ClassVar, TextIO

from agent import alarms
from agent.classes import CLASS_NAMES
from agent.routes import BACKPRESSURE_PATH

DEFAULT_URL = "http://127.0.0.1:8080"

# The document is a few KiB; anything far larger is not our endpoint (a wrong
# --url pointing at a file server) and is refused before it is read whole.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024

LABEL = 10  # width of the left-hand label column ("memory    ")
MIN_WIDTH = 40  # narrower than this and the layout stops meaning anything


class StatusError(Exception):
    """The agent could not be asked: the message says why, in a technician's words."""


# ---------------------------------------------------------------- fetching


def fetch(url: str, timeout: float = 3.0) -> dict[str, Any]:
    """GET {url}/api/v1/gateway/backpressure -> the decoded JSON object.

    Raises StatusError naming the address and the cause: connection refused,
    timeout, unknown host, an HTTP status other than 200, or a body that is not
    a JSON object.
    """
    base = url.strip().rstrip("/")
    if "://" not in base:
        base = "http://" + base  # "10.0.0.5:8080" is what a technician types
    endpoint = base + BACKPRESSURE_PATH
    # No proxies: the agent is a box on the local network (or this one), and
    # an http_proxy set for the laptop's internet access would swallow the
    # request or answer for the proxy instead of the agent.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(endpoint, headers={"Accept": "application/json"})
    try:
        with opener.open(request, timeout=timeout) as resp:
            if resp.status != 200:
                raise StatusError(f"{endpoint} answered HTTP {resp.status} {resp.reason}")
            body = resp.read(MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise StatusError(f"{endpoint} answered HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise StatusError(_connect_failure(base, e.reason, timeout)) from e
    except (TimeoutError, OSError) as e:
        # Raised while reading the body (or by a connect that urllib did not
        # wrap): the connection was made but did not finish.
        raise StatusError(_connect_failure(base, e, timeout)) from e
    except http.client.HTTPException as e:
        raise StatusError(f"{base} did not answer in HTTP ({type(e).__name__})") from e
    except ValueError as e:  # urllib's "unknown url type" and friends
        raise StatusError(f"not a usable URL: {url!r} ({e})") from e
    if len(body) > MAX_DOCUMENT_BYTES:
        raise StatusError(f"{endpoint} sent more than {_bytes(MAX_DOCUMENT_BYTES)}: not an agent")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StatusError(f"{endpoint} did not answer JSON ({e}): is this an edge-agent?") from e
    if not isinstance(doc, dict):
        raise StatusError(f"{endpoint} answered JSON but not an object: is this an edge-agent?")
    return doc


def _connect_failure(base: str, reason: object, timeout: float) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return (
            f"connection refused at {base}: is edge-agent running, "
            "and is this its [http] bind address?"
        )
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"no answer from {base} within {timeout:g} s"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve the host in {base}: {reason.strerror}"
    if isinstance(reason, OSError) and reason.strerror:
        return f"cannot reach {base}: {reason.strerror}"
    return f"cannot reach {base}: {reason}"


# ---------------------------------------------------------------- reading the document


def _get(doc: Any, *keys: str) -> Any:
    """doc[k1][k2]..., or None when any level is missing or not an object."""
    for key in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _num(doc: Any, *keys: str) -> float | None:
    value = _get(doc, *keys)
    return value if _is_number(value) else None


def _is_number(value: Any) -> bool:
    # bool is an int in Python, but `true` is not a count.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(doc: Any, *keys: str) -> str | None:
    value = _get(doc, *keys)
    return value if isinstance(value, str) and value else None


# ---------------------------------------------------------------- formatting


def _count(n: float | None) -> str:
    return "?" if n is None else f"{int(n):,}"


def _bytes(n: float | None) -> str:
    if n is None:
        return "?"
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return "<1s"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h {s % 3600 // 60:02d}m"


def _percent(part: float | None, whole: float | None) -> str:
    if part is None or not whole:
        return "?"
    ratio = 100.0 * part / whole
    # A nonsense ratio (a newer agent's different meaning, a bug) must not
    # blow the layout: beyond 999% the exact figure tells nobody anything.
    return f"{ratio:.1f}%" if -999 <= ratio <= 999 else ">999%"


class _Paint:
    """ANSI styling, or nothing: callers pad plain text first, then paint it."""

    _CODES: ClassVar[dict[str, str]] = {
        "bad": "1;31",
        "warn": "33",
        "good": "32",
        "bold": "1",
        "dim": "2",
    }

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, style: str) -> str:
        if not self.enabled or not text:
            return text
        return f"\x1b[{self._CODES[style]}m{text}\x1b[0m"


def _wrap(label: str, text: str, width: int) -> list[str]:
    """`label` in the left column, `text` wrapped to `width` beside it."""
    return textwrap.wrap(
        text,
        width=max(width, MIN_WIDTH),
        initial_indent=label.ljust(LABEL),
        subsequent_indent=" " * LABEL,
        break_on_hyphens=False,
    ) or [label]


def _flow(
    label: str,
    parts: list[tuple[str, str | None]],
    width: int,
    paint: _Paint,
    sep: str = "  ",
) -> list[str]:
    """Like _wrap, for (text, style) parts painted whole and split only if they must be.

    A line that breaks between parts keeps the separator's punctuation
    (`sep="; "` ends the line with ";"); a part too long for a line of its own
    is broken between words.
    """
    width = max(width, MIN_WIDTH)
    # (text, style, separator before it)
    tokens: list[tuple[str, str | None, str]] = []
    for text, style in parts:
        if LABEL + len(text) + len(sep) <= width:
            tokens.append((text, style, sep))
        else:
            words = text.split(" ")
            tokens.append((words[0], style, sep))
            tokens += [(word, style, " ") for word in words[1:]]
    lines: list[str] = []
    plain = label.ljust(LABEL)  # the current line without escapes, to measure it
    painted = plain
    empty = True
    for text, style, before in tokens:
        mark = before.rstrip()  # what ends a line broken here
        if not empty and len(plain) + len(before) + len(text) + len(sep.rstrip()) > width:
            lines.append(painted + mark)
            plain = painted = " " * LABEL
            empty = True
        if not empty:
            plain += before
            painted += before
        plain += text
        painted += paint(text, style) if style else text
        empty = False
    lines.append(painted)
    return lines


# ---------------------------------------------------------------- rendering


def render(doc: dict[str, Any], *, width: int = 72, color: bool = False) -> str:
    """The human summary of one backpressure document, `width` columns wide."""
    paint = _Paint(color)
    sections: list[Callable[[Any, _Paint, int], list[str]]] = [
        _agent_lines,
        _alarm_lines,
        _upstream_lines,
        _rate_lines,
        _memory_lines,
        _class_lines,
        _spill_lines,
        _reject_lines,
        _ingest_lines,
    ]
    lines: list[str] = []
    for section in sections:
        lines.extend(section(doc if isinstance(doc, dict) else {}, paint, width))
    return "\n".join(lines) + "\n"


def _agent_lines(doc: Any, paint: _Paint, width: int) -> list[str]:
    agent_id = _text(doc, "agent", "id") or "(id not reported)"
    state = _text(doc, "agent", "state")
    uptime = _num(doc, "agent", "uptime_s")
    version = _text(doc, "agent", "version")
    started = _num(doc, "agent", "started_at")
    path = _text(doc, "agent", "ingest_path")
    parts: list[tuple[str, str | None]] = [(agent_id, "bold")]
    if state is not None:
        parts.append((state, "good" if state == "running" else "warn"))
    if uptime is not None:
        parts.append((f"up {_duration(uptime)}", None))
    if started is not None and started > 0:
        # The start, not the epoch: a 13-digit number tells a person nothing.
        parts.append((f"since {_utc(started)}", "dim"))
    if version is not None:
        parts.append((f"v{version}", "dim"))
    if path is not None:
        parts.append((f"{path} ingest", "dim"))
    return _flow("agent", parts, width, paint)


def _utc(seconds: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))
    except (OverflowError, OSError, ValueError):
        return "?"


def _upstream_lines(doc: Any, paint: _Paint, width: int) -> list[str]:
    upstream = _get(doc, "upstream")
    if not isinstance(upstream, dict):
        return _wrap("upstream", "not reported by this agent", width)
    subscribers = _num(upstream, "subscribers")
    connected = _get(upstream, "connected")
    if not isinstance(connected, bool):
        connected = None if subscribers is None else subscribers > 0
    if connected is False:
        # The single most important fact on the box: nothing reaches the
        # head-end, everything is piling up in memory and on disk.
        alarm = [("NOT CONNECTED", "bad"), ("no subscriber; events are held here", None)]
        return _flow("upstream", alarm, width, paint, sep=" - ")
    head = "connected" if connected else "state unknown"
    counts = []
    if subscribers is not None:
        counts.append(f"{_count(subscribers)} subscriber" + ("" if subscribers == 1 else "s"))
    peers = _num(upstream, "peers")
    if peers is not None:
        counts.append(f"{_count(peers)} peer" + ("" if peers == 1 else "s"))
    if counts:
        head += f" ({', '.join(counts)})"
    parts: list[tuple[str, str | None]] = [(head, "good" if connected else "warn")]
    if _get(upstream, "stalled") is True:
        parts.append(("a subscriber stopped reading", "bad"))
    if _num(upstream, "events") is not None:
        parts.append((f"{_count(_num(upstream, 'events'))} events sent", None))
    stuck = _num(upstream, "stuck_dropped_messages")
    if stuck:
        text = f"{_count(stuck)} messages dropped for stuck subscribers"
        stuck_events = _num(upstream, "stuck_dropped_events")
        if stuck_events is not None:
            text += f" ({_count(stuck_events)} events)"
        parts.append((text, "warn"))
    blocked = _num(upstream, "blocked")
    if blocked:
        # Normal on the deliberately shallow pipe while a subscriber keeps
        # up: a count, not an alarm (SLOW SUBSCRIBER says when it matters).
        parts.append((f"{_count(blocked)} sends refused by a full pipe", None))
    return _flow("upstream", parts, width, paint, sep="; ")


def _alarm_lines(doc: Any, paint: _Paint, width: int) -> list[str]:
    """The alarms, worst first, each with what to do, where nobody can miss them."""
    lines = []
    for name, level, detail, action in _alarms(doc):
        style = "bad" if level == alarms.BAD else "warn"
        lines += [paint(line, style) for line in _wrap("!!", f"{name}: {detail}", width)]
        if action:
            lines += _wrap("", f"-> {action}", width)
    return lines


def _alarms(doc: Any) -> list[tuple[str, str, str, str]]:
    """(name, level, detail, action) of the document's alarms, or, from an
    agent that does not send them, those one document shows."""
    listed = _get(doc, "alarms")
    if not isinstance(listed, list):
        return [(a.name, a.level, a.detail, a.action) for a in alarms.evaluate(doc)]
    found = []
    for item in listed:
        name = _text(item, "name")
        if name is None:
            continue
        found.append(
            (
                name,
                _text(item, "level") or alarms.WARN,
                _text(item, "detail") or "",
                _text(item, "action") or "",
            )
        )
    return found


def _rate_lines(doc: Any, paint: _Paint, width: int) -> list[str]:
    """Events per second over the agent's own last few seconds (`rates`)."""
    rates = _get(doc, "rates")
    if not isinstance(rates, dict):
        return []
    window = _num(rates, "window_s")
    events_in, events_out = _num(rates, "events_in"), _num(rates, "events_out")
    text = f"in {_rate(events_in)}/s, out {_rate(events_out)}/s"
    critical = _num(rates, "classes", "critical", "in")
    if critical:
        text += f"; critical in {_rate(critical)}/s"
    rejected = _num(rates, "rejected")
    if rejected:
        text += f"; rejected {_rate(rejected)}/s"
    if window is not None:
        text += f" (last {window:.0f} s)"
    return _wrap("rates", text, width)


def _rate(r: float | None) -> str:
    if r is None:
        return "?"
    return f"{r:.1f}" if 0 < r < 10 else f"{round(r):,}"


def _memory_lines(doc: Any, paint: _Paint, width: int) -> list[str]:
    used = _num(doc, "buffer", "used_bytes")
    capacity = _num(doc, "buffer", "capacity_bytes")
    budget = _num(doc, "buffer", "budget_bytes")
    governor = _text(doc, "buffer", "state")
    governor_line = []
    if governor is not None:
        style = "good" if governor in ("steady", "growing") else "warn"
        governor_line = [" " * LABEL + "governor: " + paint(governor, style)]
    if not budget:
        # No budget (an agent still starting, or an old one): no scale for a bar.
        text = f"used {_bytes(used)}, capacity {_bytes(capacity)}, budget {_bytes(budget)}"
        return _wrap("memory", text, width) + governor_line
    # The bar is the budget; '#' what is held, '-' the rest of the governor's
    # current capacity, '.' the headroom the governor may still grow into.
    cells = max(width, MIN_WIDTH) - LABEL - 2
    used_cells = _cells(used, budget, cells)
    cap_cells = max(_cells(capacity, budget, cells), used_cells)
    fill = used / capacity if used is not None and capacity else 0.0
    level = "bad" if fill >= 0.9 else "warn" if fill >= 0.7 else "good"
    bar = (
        paint("#" * used_cells, level)
        + "-" * (cap_cells - used_cells)
        + paint("." * (cells - cap_cells), "dim")
    )
    rows = [
        (
            "#",
            "used",
            used,
            [f"{_percent(used, budget)} of budget", f"{_percent(used, capacity)} of capacity"],
        ),
        ("-", "capacity", capacity, [f"{_percent(capacity, budget)} of budget"]),
        (".", "budget", budget, ["hard ceiling"]),
    ]
    size_width = max(len(_bytes(value)) for _, _, value, _ in rows)
    lines = ["memory".ljust(LABEL) + "[" + bar + "]"]
    for glyph, name, value, notes in rows:
        head = f"{glyph} {name:<9}{_bytes(value):>{size_width}}"
        lines += _flow("", [(head, None), *((n, None) for n in notes)], width, paint, sep="   ")
    return lines + governor_line


def _cells(value: float | None, whole: float, cells: int) -> int:
    if value is None or value <= 0:
        return 0
    # Any use at all shows as at least one cell: "empty" must mean empty.
    return min(cells, max(1, round(cells * value / whole)))


def _class_lines(doc: Any, paint: _Paint, width: int) -> list[str]:
    columns = ("received", "queued", "on disk", "delivered", "dropped")
    rows = []
    for name in CLASS_NAMES:
        on_disk = _num(doc, "priorities", name, "pending")
        if on_disk is None:
            on_disk = _num(doc, "spill", "pending_by_class", name, "events")
        values = (
            _num(doc, "priorities", name, "received"),
            _num(doc, "priorities", name, "queued"),
            on_disk,
            _num(doc, "priorities", name, "delivered"),
            _num(doc, "priorities", name, "dropped"),
        )
        rows.append((name, [("-" if v is None else _count(v)) for v in values], values))
    widths = [max(len(c), *(len(r[1][i]) for r in rows)) + 2 for i, c in enumerate(columns)]
    header = "class".ljust(LABEL) + "".join(
        c.rjust(w) for c, w in zip(columns, widths, strict=True)
    )
    lines = [paint(header, "bold")]
    for name, texts, values in rows:
        cells = []
        for i, (text, w) in enumerate(zip(texts, widths, strict=True)):
            cell = text.rjust(w)
            if columns[i] == "dropped" and values[i]:
                cell = paint(cell, "bad")
            cells.append(cell)
        lines.append(name.ljust(LABEL) + "".join(cells))
    return lines


def _spill_lines(doc: Any, paint: _Paint, width: int) -> list[str]:
    spill = _get(doc, "spill")
    if not isinstance(spill, dict):
        return _wrap("spill", "not reported by this agent", width)
    if spill.get("enabled") is False:
        return _wrap("spill", "disabled: memory is the only buffer", width)
    pending = _num(spill, "pending_events")
    text = f"{_count(pending)} events on disk ({_bytes(_num(spill, 'pending_bytes'))})"
    eta = _num(spill, "drain_eta_s")
    if eta is not None:
        text += f", drain ETA {_duration(eta)}"
    elif pending:
        text += ", drain ETA unknown"
    lines = _wrap("spill", text, width)
    if pending:
        lines[0] = lines[0][:LABEL] + paint(lines[0][LABEL:], "warn")
    lines += _wrap(
        "",
        f"files {_bytes(_num(spill, 'file_bytes'))}; since start "
        f"{_count(_num(spill, 'spilled_events'))} spilled, "
        f"{_count(_num(spill, 'recovered_events'))} recovered",
        width,
    )
    write_through = _write_through(spill)
    if write_through is not None:
        lines += _wrap("", "write-through: " + (", ".join(write_through) or "none"), width)
    corrupt = _num(spill, "corrupt_records")
    if corrupt:
        text = f"{_count(corrupt)} corrupt records skipped at start-up"
        lines += [paint(line, "warn") for line in _wrap("", text, width)]
    return lines


def _write_through(spill: dict[str, Any]) -> list[str] | None:
    """The classes written through to disk, from `spill.write_through` (a
    list of classes, or class -> bool / {"enabled": bool}); None if absent."""
    value = spill.get("write_through")
    if isinstance(value, list):
        return [name for name in CLASS_NAMES if name in value]
    if isinstance(value, dict):
        on = []
        for name in CLASS_NAMES:
            state = value.get(name)
            if isinstance(state, dict):
                state = state.get("enabled", state.get("on"))
            if state is True:
                on.append(name)
        return on
    return None


def _reject_lines(doc: Any, paint: _Paint, width: int) -> list[str]:
    total = _num(doc, "rejected", "total")
    by_reason = _get(doc, "rejected", "by_reason")
    reasons: list[tuple[str, float]] = []
    if isinstance(by_reason, dict):
        # Largest first: the reason worth chasing leads.
        reasons = sorted(
            ((str(k), v) for k, v in by_reason.items() if _is_number(v)),
            key=lambda kv: (-kv[1], kv[0]),
        )
    head = f"{_count(total)} total" + (":" if reasons else "")
    parts: list[tuple[str, str | None]] = [(head, "warn" if total else None)]
    # Each part carries its own comma so a line may break between any two.
    last = len(reasons) - 1
    parts += [
        (f"{reason} {_count(n)}" + ("," if i < last else ""), None)
        for i, (reason, n) in enumerate(reasons)
    ]
    return _flow("rejected", parts, width, paint, sep=" ")


def _ingest_lines(doc: Any, paint: _Paint, width: int) -> list[str]:
    ingest = _get(doc, "ingest")
    if not isinstance(ingest, dict):
        return []
    text = f"{_count(_num(ingest, 'events'))} events in {_count(_num(ingest, 'frames'))} frames"
    disconnects = _num(ingest, "disconnects")
    if disconnects:
        text += (
            f"; {_count(disconnects)} disconnects (peers gone, or dropped for an oversize frame)"
        )
    unauthorized = _num(ingest, "unauthorized")
    if unauthorized:
        text += f"; {_count(unauthorized)} unauthorized handshakes refused"
    lines = _wrap("ingest", text, width)
    lane = _get(ingest, "lane")
    if isinstance(lane, dict):
        if lane.get("configured") is False:
            lines += _wrap("lane", "no alert lane configured", width)
        else:
            text = f"{_count(_num(lane, 'events'))} events in {_count(_num(lane, 'frames'))} frames"
            noncritical = _num(lane, "noncritical")
            if noncritical:
                text += f"; {_count(noncritical)} not critical (a misconfigured collector?)"
            lines += _wrap("lane", text, width)
    return lines


# ---------------------------------------------------------------- the command


def main(
    url: str = DEFAULT_URL,
    as_json: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    *,
    color: bool | None = None,
) -> int:
    """`edge-agent status`: 0 when the agent answered, 1 (reason on `err`) when not.

    `color=None` colours the summary when `out` is a terminal.
    """
    try:
        doc = fetch(url)
    except StatusError as e:
        print(f"edge-agent status: {e}", file=err)
        return 1
    if as_json:
        json.dump(doc, out, indent=2, sort_keys=True)
        out.write("\n")
        return 0
    if color is None:
        # https://no-color.org: a technician who set NO_COLOR gets none.
        color = _is_terminal(out) and not os.environ.get("NO_COLOR")
    out.write(render(doc, color=color))
    return 0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
