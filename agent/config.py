"""The config file: TOML text -> validated `Settings` (agent/settings.py).

This module owns every rule about what an operator may write in the config file:
the tables and keys, their types and bounds, how defaults combine with what is
given, and the wording of the error that names the key at fault. settings.py
owns only the shape and the defaults. Pure apart from `load_config`, which reads
one file: no socket is opened, no name is resolved, no directory is created.

Promises:
- A `Settings` returned here is valid: every value is within its bounds and the
  values agree with each other (endpoints do not clash, the critical reserve
  fits the budget, no event type is in two classes). Lists come back as tuples.
- Anything else raises `ConfigError` naming the dotted key ("ingest.bind") and
  the problem; the first problem found is reported, unknown keys before values,
  because a misspelt key explains the value errors that follow it. Problems with
  the file itself (unreadable, not UTF-8, TOML syntax) have key "" and name the
  path; TOML syntax errors carry the line and column.
- Unknown tables and keys are errors (INTERFACE.md: a typo must not be silently
  ignored), with a "did you mean" when a known key is close.

Decisions an operator should know (the README quotes them):
- Relative paths (`spill.dir`, `*.curve.secret_key_file`,
  `*.curve.allowed_keys_dir`) are resolved against the directory of the config
  file as named on the command line (symlinks to the file are not followed),
  then normalised lexically, so `dir = "../var/spill"` in packaging/dev.toml
  means <checkout>/var/spill whatever the working directory. A path that starts
  with "~" is an error (nothing expands it). `parse_config` / `parse_config_text`
  take `base_dir=`; without it a relative path is an error, so `Settings` paths
  are always absolute and never depend on the process's working directory.
- Endpoints are `tcp://host:port` or `ipc:///absolute/path` (or `ipc://@name`);
  their syntax and when two are the same place is agent/endpoints.py's.
- `bind` defaults to the contract's endpoint only when neither `bind` nor
  `connect` is given for that socket: a config that says only
  `connect = [...]` does not also listen on 0.0.0.0.
- Two binds that the kernel would refuse (same tcp port on the same address or
  a wildcard, the same ipc path) are an error, across ingest, upstream and http:
  check-config catches at once what would otherwise fail at start-up (or, for
  ipc, silently steal the other socket's file). Names are not resolved, so
  `localhost` vs `127.0.0.1` is not detected.
- `[classes]`: each list given replaces that class's default list; classes not
  given keep their defaults minus any type that a given list claims. So
  `low = ["fault"]` alone moves `fault` from critical to low and leaves the
  other critical defaults in place. A type in two given lists is an error
  naming both keys; so is a type listed twice in one list, or one with leading
  or trailing white space (it could never match: classes match exactly).
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

from agent.classes import CLASS_NAMES, CLASSES, DEFAULT_RULES, ClassRules, EventClass
from agent.endpoints import (
    Endpoint,
    first_bind_clash,
    http_endpoint,
    parse_endpoint,
    parse_http_bind,
)
from agent.queues import CHUNK_BYTES
from agent.settings import (
    AgentSettings,
    BufferSettings,
    CurveSettings,
    HttpSettings,
    IngestSettings,
    Settings,
    SpillSettings,
    UpstreamSettings,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Ubuntu 22.04 ships 3.10; setup.cfg pulls tomli there
    import tomli as tomllib

__all__ = [
    "RELOADABLE",
    "ConfigError",
    "changed_keys",
    "load_config",
    "parse_config",
    "parse_config_text",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# The shipped agent.toml is ~10 KiB. Anything past 1 MiB is the wrong file
# (`--config /dev/zero`, a log file) and must not be read into memory whole.
MAX_CONFIG_FILE_BYTES = 1 * MiB

# Keys whose new values a running agent can adopt on SIGHUP; a change to any
# other key needs a restart. Compare with `changed_keys(old, new)`.
RELOADABLE: frozenset[str] = frozenset(
    {
        "agent.log_level",
        *(f"classes.{name}" for name in CLASS_NAMES),
        "upstream.batch_max_events",
        "upstream.batch_max_bytes",
        "upstream.linger_ms",
    }
)

LOG_LEVELS = ("debug", "info", "warning", "error")

# Every table and its keys. A key that names another entry here is a sub-table.
_TABLES: dict[str, tuple[str, ...]] = {
    "": ("agent", "ingest", "upstream", "buffer", "spill", "http", "classes"),
    "agent": ("id", "log_level"),
    "ingest": ("bind", "connect", "max_frame_bytes", "rcvhwm", "curve"),
    "ingest.curve": ("secret_key_file", "allowed_keys_dir"),
    "upstream": (
        "bind",
        "connect",
        "batch_max_events",
        "batch_max_bytes",
        "linger_ms",
        "sndhwm",
        "sndbuf_bytes",
        "curve",
    ),
    "upstream.curve": ("secret_key_file", "allowed_keys_dir"),
    "buffer": ("budget_bytes", "critical_reserve_bytes", "shrink_after_s"),
    "spill": ("dir", "max_bytes", "flush_interval_ms", "write_through"),
    "http": ("bind",),
    "classes": CLASS_NAMES,
}

# Every dotted key that holds a value (not a table), in file order.
_VALUE_KEYS: tuple[str, ...] = tuple(
    f"{table}.{key}" if table else key
    for table, keys in _TABLES.items()
    for key in keys
    if (f"{table}.{key}" if table else key) not in _TABLES
)


class ConfigError(Exception):
    """The operator wrote a config the agent cannot run on.

    `key` is the dotted key at fault ("ingest.max_frame_bytes"), or "" when the
    file itself is the problem; `path` is the file when one was read.
    """

    def __init__(self, key: str, problem: str, *, path: str | None = None) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem
        self.path = path

    def __str__(self) -> str:
        if self.key:
            return f"{self.key}: {self.problem}"
        if self.path is not None:
            return f"{self.path}: {self.problem}"
        return self.problem


# ---------------------------------------------------------------------------
# Entry points


def load_config(path: str | os.PathLike[str]) -> Settings:
    """Read and validate one config file. Relative paths inside it are resolved
    against the file's directory."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read(MAX_CONFIG_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError("", f"cannot read: {e.strerror or e}", path=name) from None
    if len(raw) > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(
            "",
            f"larger than {MAX_CONFIG_FILE_BYTES} bytes: not a config file?",
            path=name,
        )
    try:
        # utf-8-sig: editors on technicians' laptops may add a BOM, which
        # tomllib would report as a baffling "Invalid statement" at 1:1.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            "", f"not valid UTF-8 (TOML requires it) at byte {e.start}", path=name
        ) from None
    base_dir = os.path.dirname(os.path.abspath(name))
    try:
        return parse_config_text(text, base_dir=base_dir)
    except ConfigError as e:
        e.path = name
        raise


def parse_config_text(text: str, *, base_dir: str | os.PathLike[str] | None = None) -> Settings:
    """TOML text -> Settings. See `parse_config` for `base_dir`."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"TOML syntax error: {e}") from None
    return parse_config(doc, base_dir=base_dir)


def parse_config(
    doc: Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None
) -> Settings:
    """An already-parsed TOML document -> Settings.

    `base_dir` is the directory relative paths are resolved against; without
    it a relative path is an error.
    """
    _check_shape("", doc)
    base = None if base_dir is None else os.fspath(base_dir)
    root = _Table("", doc)
    agent = _parse_agent(root.sub("agent"))
    ingest = _parse_ingest(root.sub("ingest"), base)
    upstream = _parse_upstream(root.sub("upstream"), base)
    buffer = _parse_buffer(root.sub("buffer"))
    spill = _parse_spill(root.sub("spill"), base)
    http = _parse_http(root.sub("http"))
    classes = _parse_classes(root.sub("classes"))
    _check_bind_clashes(ingest, upstream, http)
    _check_buffer_room(root.sub("buffer"), buffer, ingest)
    _check_spill_room(root.sub("spill"), spill, ingest)
    return Settings(
        agent=agent,
        ingest=ingest,
        upstream=upstream,
        buffer=buffer,
        spill=spill,
        http=http,
        classes=classes,
    )


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """The dotted config keys whose values differ, in file order.

    `set(changed_keys(old, new)) - RELOADABLE` is what a SIGHUP cannot apply.
    """
    before, after = _flatten(old), _flatten(new)
    return [key for key in _VALUE_KEYS if before[key] != after[key]]


def apply_reloadable(running: Settings, new: Settings) -> Settings:
    """The settings a SIGHUP leaves running: `running` with every RELOADABLE
    key taken from `new`, everything else as it runs. Keeping what was not
    applied lets the next reload compare against the truth (and repeat the
    restart warning).

    # Invariant: changed_keys(running, result) ⊆ RELOADABLE and
    #   changed_keys(result, new) ∩ RELOADABLE == [].
    """
    u = new.upstream
    return dataclasses.replace(
        running,
        agent=dataclasses.replace(running.agent, log_level=new.agent.log_level),
        upstream=dataclasses.replace(
            running.upstream,
            batch_max_events=u.batch_max_events,
            batch_max_bytes=u.batch_max_bytes,
            linger_ms=u.linger_ms,
        ),
        classes=new.classes,
    )


# ---------------------------------------------------------------------------
# Shape: tables, unknown keys


def _check_shape(table: str, doc: Mapping[str, Any]) -> None:
    known = _TABLES[table]
    for key, value in doc.items():
        dotted = f"{table}.{key}" if table else key
        if key not in known:
            kind = "table" if isinstance(value, Mapping) else "key"
            raise ConfigError(dotted, f"unknown {kind}{_suggestion(table, key)}")
        if dotted in _TABLES:
            if not isinstance(value, Mapping):
                raise ConfigError(dotted, f"must be a table, got {_describe(value)}")
            _check_shape(dotted, value)


def _suggestion(table: str, key: str) -> str:
    """ "; did you mean ingest.bind?" for a near miss among the siblings, else
    for the same name in another table (`[ingest] budget_bytes`), else ""."""
    close = difflib.get_close_matches(key, _TABLES[table], n=1, cutoff=0.6)
    if close:
        return f"; did you mean {table + '.' if table else ''}{close[0]}?"
    elsewhere = [k for k in (*_VALUE_KEYS, *_TABLES) if k.rsplit(".", 1)[-1] == key]
    if elsewhere:
        return f"; did you mean {' or '.join(elsewhere)}?"
    return ""


# ---------------------------------------------------------------------------
# Values


def _toml_type(value: object) -> str:
    # The operator wrote TOML, so speak TOML's type names. bool first: it is an int.
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, datetime.datetime):
        return "datetime"
    if isinstance(value, datetime.date):
        return "date"
    if isinstance(value, datetime.time):
        return "time"
    return type(value).__name__


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, Mapping):
        return "{...}"
    else:
        text = repr(value)
    # Long enough for any valid endpoint or path, short enough for one line of a log.
    return text if len(text) <= 200 else text[:197] + "..."


def _describe(value: object) -> str:
    """`string "10"`: for a value of the wrong type, say what was given."""
    if isinstance(value, Mapping):
        return "table"
    return f"{_toml_type(value)} {_show(value)}"


class _Table:
    """One table of the document being read: hands out validated values."""

    def __init__(self, name: str, doc: Mapping[str, Any]) -> None:
        self.name = name
        self.doc = doc

    def key(self, name: str) -> str:
        return f"{self.name}.{name}" if self.name else name

    def has(self, name: str) -> bool:
        return name in self.doc

    def sub(self, name: str) -> _Table:
        # _check_shape has made sure that a sub-table, when present, is a table.
        return _Table(self.key(name), self.doc.get(name, {}))

    def fail(self, name: str, problem: str) -> NoReturn:
        raise ConfigError(self.key(name), problem)

    def integer(self, name: str, default: int, lo: int, hi: int | None) -> int:
        if not self.has(name):
            return default
        value = self.doc[name]
        want = f"an integer between {lo} and {hi}" if hi is not None else f"an integer >= {lo}"
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, f"must be {want}, got {_describe(value)}")
        if value < lo or (hi is not None and value > hi):
            self.fail(name, f"must be {want}, got {value}")
        return value

    def number(self, name: str, default: float, lo_excl: float, hi: float) -> float:
        if not self.has(name):
            return default
        value = self.doc[name]
        want = f"a number greater than {lo_excl:g} and at most {hi:g}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(name, f"must be {want}, got {_describe(value)}")
        # Written so NaN fails too (every comparison with NaN is false).
        if not (lo_excl < value <= hi):
            self.fail(name, f"must be {want}, got {_show(value)}")
        return float(value)

    def string(self, name: str, default: str) -> str:
        if not self.has(name):
            return default
        value = self.doc[name]
        if not isinstance(value, str):
            self.fail(name, f"must be a string, got {_describe(value)}")
        if not value:
            self.fail(name, "must not be empty")
        return value

    def string_list(self, name: str) -> tuple[str, ...]:
        value = self.doc[name]
        if not isinstance(value, list):
            # The likeliest slip: `bind = "tcp://..."` for `bind = ["tcp://..."]`.
            hint = f" (write [{_show(value)}])" if isinstance(value, str) else ""
            self.fail(name, f"must be an array of strings, got {_describe(value)}{hint}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(name, f"must be an array of strings, item {i} is {_describe(item)}")
            if not item:
                self.fail(name, f"must be an array of non-empty strings, item {i} is empty")
        return tuple(value)

    def path(self, name: str, base: str | None) -> str:
        value = self.string(name, "")
        if "\0" in value:
            self.fail(name, "must not contain a NUL character")
        if value.startswith("~"):
            self.fail(name, f"{_show(value)}: '~' is not expanded here; write the full path")
        if os.path.isabs(value):
            return os.path.normpath(value)
        if base is None:
            self.fail(
                name,
                f"relative path {_show(value)} needs a base directory: write an absolute "
                "path, or load the file with load_config (relative paths are resolved "
                "against the config file's directory)",
            )
        return os.path.normpath(os.path.join(base, value))


# ---------------------------------------------------------------------------
# Endpoints (their syntax and clashes: agent/endpoints.py)


def _endpoints(table: _Table, name: str, *, bind: bool) -> tuple[str, ...]:
    texts = table.string_list(name)
    for text in texts:
        try:
            parse_endpoint(text, bind=bind)
        except ValueError as e:
            table.fail(name, f"endpoint {_show(text)}: {e}")
    return texts


def _check_socket_endpoints(table: _Table, bind: tuple[str, ...], connect: tuple[str, ...]) -> None:
    if not bind and not connect:
        key = "connect" if table.has("connect") and not table.has("bind") else "bind"
        table.fail(
            key,
            f"no endpoint: give at least one in {table.key('bind')} or {table.key('connect')}",
        )
    seen: dict[Endpoint, str] = {}
    for name, texts in (("bind", bind), ("connect", connect)):
        for text in texts:
            ep = parse_endpoint(text, bind=name == "bind")
            if ep in seen:
                where = "listed twice" if seen[ep] == name else f"also in {table.key(seen[ep])}"
                table.fail(name, f"endpoint {_show(text)} is {where}")
            seen[ep] = name


def _check_bind_clashes(
    ingest: IngestSettings, upstream: UpstreamSettings, http: HttpSettings
) -> None:
    binds: list[tuple[str, Endpoint]] = []
    for key, texts in (("ingest.bind", ingest.bind), ("upstream.bind", upstream.bind)):
        binds += [(key, parse_endpoint(text, bind=True)) for text in texts]
    binds.append(("http.bind", http_endpoint(http.host, http.port)))
    clash = first_bind_clash(binds)
    if clash is not None:
        ep, earlier = clash.endpoint, clash.earlier
        what = "the same path" if ep.scheme == "ipc" else f"port {ep.port}"
        raise ConfigError(
            clash.key,
            f"{_show(ep.text)} clashes with {_show(earlier.text)} in {clash.earlier_key} "
            f"({what}): the second bind would fail",
        )


# ---------------------------------------------------------------------------
# Tables


def _parse_agent(t: _Table) -> AgentSettings:
    kwargs: dict[str, Any] = {}
    if t.has("id"):
        agent_id = t.string("id", "")
        # The id travels in every upstream header and names the gateway at the
        # head-end: a host name is at most 253 characters, 255 leaves room.
        if len(agent_id) > 255:
            t.fail("id", f"must be at most 255 characters, got {len(agent_id)}")
        if agent_id != agent_id.strip() or not agent_id.isprintable():
            t.fail(
                "id",
                f"must be printable without leading/trailing space, got {_show(agent_id)}",
            )
        kwargs["id"] = agent_id
    if t.has("log_level"):
        level = t.string("log_level", "")
        if level not in LOG_LEVELS:
            t.fail(
                "log_level",
                f"must be one of {', '.join(LOG_LEVELS)}, got {_show(level)}",
            )
        kwargs["log_level"] = level
    return AgentSettings(**kwargs)


def _parse_curve(t: _Table, base: str | None) -> CurveSettings:
    secret, allowed = "secret_key_file", "allowed_keys_dir"
    # Half a CURVE setup would either fail at start or, worse, run a CURVE
    # server with no ZAP handler, which admits any client (FACTS.md).
    if t.has(secret) != t.has(allowed):
        missing, given = (allowed, secret) if t.has(secret) else (secret, allowed)
        t.fail(missing, f"required when {t.key(given)} is set (give both or neither)")
    if not t.has(secret):
        return CurveSettings()
    return CurveSettings(
        secret_key_file=t.path(secret, base), allowed_keys_dir=t.path(allowed, base)
    )


def _socket_endpoints(
    t: _Table, default_bind: tuple[str, ...], default_connect: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    connect = _endpoints(t, "connect", bind=False) if t.has("connect") else default_connect
    if t.has("bind"):
        bind = _endpoints(t, "bind", bind=True)
    else:
        # The default bind (0.0.0.0) applies only when no endpoint is given at
        # all: `connect` alone must not also open a listening port.
        bind = () if t.has("connect") else default_bind
    _check_socket_endpoints(t, bind, connect)
    return bind, connect


def _parse_ingest(t: _Table, base: str | None) -> IngestSettings:
    d = IngestSettings()
    bind, connect = _socket_endpoints(t, d.bind, d.connect)
    return IngestSettings(
        bind=bind,
        connect=connect,
        # Bytes (ZMQ_MAXMSGSIZE). Below 64 no real event fits (and "1", meant
        # as MiB, must fail loudly); above 64 MiB one frame is held and decoded
        # whole, a large slice of the memory budget for a single peer's message.
        max_frame_bytes=t.integer("max_frame_bytes", d.max_frame_bytes, 64, 64 * MiB),
        # Frames (ZMQ_RCVHWM). 0 would mean "unlimited" to libzmq: memory
        # outside the budget, and a queue ahead of every critical alert.
        rcvhwm=t.integer("rcvhwm", d.rcvhwm, 1, 1_000_000),
        curve=_parse_curve(t.sub("curve"), base),
    )


def _parse_upstream(t: _Table, base: str | None) -> UpstreamSettings:
    d = UpstreamSettings()
    bind, connect = _socket_endpoints(t, d.bind, d.connect)
    return UpstreamSettings(
        bind=bind,
        connect=connect,
        # Events per message. A head-end decodes a message whole; 65535 keeps
        # that work bounded and the header's count a 16-bit number.
        batch_max_events=t.integer("batch_max_events", d.batch_max_events, 1, 65535),
        # Body bytes per message. Below 1 KiB batching buys nothing (an event is
        # ~100-200 bytes); above 16 MiB one message sits in libzmq's FIFO ahead
        # of the next critical alert for too long on a slow link.
        batch_max_bytes=t.integer("batch_max_bytes", d.batch_max_bytes, 1 * KiB, 16 * MiB),
        # Milliseconds a partial non-critical batch may wait. 10 s is the most
        # before a quiet class looks stalled to the head-end.
        linger_ms=t.integer("linger_ms", d.linger_ms, 0, 10_000),
        # Messages (ZMQ_SNDHWM). 0 would be "unlimited": the backlog would leave
        # our class queues and the budget for libzmq's FIFO (FACTS.md).
        sndhwm=t.integer("sndhwm", d.sndhwm, 1, 100_000),
        # Bytes (SO_SNDBUF). Linux floors it near 4.6 KiB anyway; above 64 MiB
        # is a typo (the kernel clamps to net.core.wmem_max silently).
        sndbuf_bytes=t.integer("sndbuf_bytes", d.sndbuf_bytes, 4 * KiB, 64 * MiB),
        curve=_parse_curve(t.sub("curve"), base),
    )


def _parse_buffer(t: _Table) -> BufferSettings:
    d = BufferSettings()
    # Bytes. Below 4 MiB the buffers cannot hold a few default-size (1 MiB)
    # frames per class; 64 GiB is past any gateway's RAM, so more is a typo.
    budget = t.integer("budget_bytes", d.budget_bytes, 4 * MiB, 64 * GiB)
    # Bytes only critical events may use. Under half the budget so the other
    # three classes always keep at least half of it.
    reserve = t.integer("critical_reserve_bytes", d.critical_reserve_bytes, 0, None)
    if reserve * 2 >= budget:
        source = "" if t.has("critical_reserve_bytes") else " (the default)"
        t.fail(
            "critical_reserve_bytes",
            f"must be less than half of buffer.budget_bytes: got {reserve}{source} "
            f"with buffer.budget_bytes = {budget} (limit {(budget - 1) // 2})",
        )
    # Seconds. 0 would give memory back after every burst and take it again on
    # the next (thrash); past an hour a burst's memory is effectively never
    # returned.
    shrink = t.number("shrink_after_s", d.shrink_after_s, 0, 3600)
    return BufferSettings(
        budget_bytes=budget, critical_reserve_bytes=reserve, shrink_after_s=shrink
    )


# Bytes the non-critical classes need besides the critical reserve and a
# max-size frame: one ingest burst (64 KiB + a chunk per class, ~1.06 MiB,
# agent/loop.py) plus a few 256 KiB chunks to fill, publish from and drain
# spilled data back into. Below this the agent could spill but never drain.
WORKING_ROOM = 3 * MiB


def _check_buffer_room(t: _Table, buffer: BufferSettings, ingest: IngestSettings) -> None:
    need = buffer.critical_reserve_bytes + ingest.max_frame_bytes + WORKING_ROOM
    if buffer.budget_bytes < need:
        t.fail(
            "budget_bytes",
            f"must be at least buffer.critical_reserve_bytes + ingest.max_frame_bytes + "
            f"{WORKING_ROOM} (working room) = {need}, got {buffer.budget_bytes}",
        )


# The smallest class ring gets 1/8 of spill.max_bytes (agent/spill/store.py)
# and must hold at least two in-memory chunks (CHUNK_BYTES, 256 KiB, or one
# max-size frame), or that class could never spill at all. The 64 KiB beyond
# them is the 8 KiB header (DATA_OFFSET, agent/spill/format.py) of each eighth.
SPILL_MIN_CHUNKS = 16
SPILL_HEADERS_BYTES = 64 * KiB
# The least spill.max_bytes any config can have (frames up to one chunk):
# 4,259,840 bytes. Larger frames need more (_check_spill_room).
SPILL_MIN_BYTES = SPILL_MIN_CHUNKS * CHUNK_BYTES + SPILL_HEADERS_BYTES


def _check_spill_room(t: _Table, spill: SpillSettings, ingest: IngestSettings) -> None:
    need = SPILL_MIN_CHUNKS * max(CHUNK_BYTES, ingest.max_frame_bytes) + SPILL_HEADERS_BYTES
    if spill.max_bytes < need:
        t.fail(
            "max_bytes",
            f"must be at least {SPILL_MIN_CHUNKS} x max({CHUNK_BYTES}, ingest.max_frame_bytes)"
            f" + {SPILL_HEADERS_BYTES} = {need} (the smallest class ring must hold two chunks),"
            f" got {spill.max_bytes}",
        )


def _parse_spill(t: _Table, base: str | None) -> SpillSettings:
    d = SpillSettings()
    return SpillSettings(
        dir=t.path("dir", base) if t.has("dir") else d.dir,
        # Bytes, all rings together. At least SPILL_MIN_BYTES (two chunks in
        # the smallest ring; larger frames need more: _check_spill_room). No
        # upper bound: the disk is the bound, and posix_fallocate reports
        # ENOSPC cleanly at start-up.
        max_bytes=t.integer("max_bytes", d.max_bytes, SPILL_MIN_BYTES, None),
        # Milliseconds between msyncs: what a power loss can cost at most.
        # Under 10 ms the flushes (0.1-10 ms each, FACTS.md) eat the loop;
        # over a minute is more loss than an operator would accept.
        flush_interval_ms=t.integer("flush_interval_ms", d.flush_interval_ms, 10, 60_000),
        write_through=_write_through(t, d.write_through),
    )


def _write_through(t: _Table, default: tuple[str, ...]) -> tuple[str, ...]:
    """`[spill] write_through`: class names, each at most once (any order; the
    agent applies them in class order). [] turns write-through off."""
    if not t.has("write_through"):
        return default
    names = t.string_list("write_through")
    for name in names:
        if name not in CLASS_NAMES:
            t.fail(
                "write_through",
                f"unknown class {_show(name)} (the classes: {', '.join(CLASS_NAMES)})",
            )
    if len(set(names)) != len(names):
        t.fail("write_through", "names a class twice")
    return tuple(n for n in CLASS_NAMES if n in names)


def _parse_http(t: _Table) -> HttpSettings:
    d = HttpSettings()
    if not t.has("bind"):
        return d
    text = t.string("bind", "")
    try:
        host, port = parse_http_bind(text)
    except ValueError as e:
        t.fail("bind", f"{_show(text)}: {e}")
    return HttpSettings(host=host, port=port)


def _parse_classes(t: _Table) -> ClassRules:
    given: dict[EventClass, tuple[str, ...]] = {}
    claimed: dict[str, str] = {}  # type -> the key that lists it
    for cls in CLASSES:
        name = cls.wire_name
        if not t.has(name):
            continue
        types = t.string_list(name)
        for ty in types:
            if ty != ty.strip():
                t.fail(name, f"type {ty!r} has leading or trailing white space")
            if ty in claimed:
                where = (
                    "listed twice"
                    if claimed[ty] == t.key(name)
                    else f"also listed in {claimed[ty]}"
                )
                t.fail(name, f"type {ty!r} is {where}")
            claimed[ty] = t.key(name)
        given[cls] = types
    # Invariant (ClassRules): a type is in one class. Given lists win over the
    # defaults of classes not given.
    rules = {
        cls: given.get(cls, tuple(ty for ty in DEFAULT_RULES[cls] if ty not in claimed))
        for cls in CLASSES
    }
    return ClassRules(rules)


# ---------------------------------------------------------------------------
# Settings -> {dotted key: value}, for changed_keys


def _flatten(settings: Settings) -> dict[str, object]:
    flat: dict[str, object] = {}

    def walk(prefix: str, obj: object) -> None:
        for field in dataclasses.fields(obj):  # type: ignore[arg-type]
            value = getattr(obj, field.name)
            if dataclasses.is_dataclass(value):
                walk(f"{prefix}.{field.name}", value)
            else:
                flat[f"{prefix}.{field.name}"] = value

    for section in ("agent", "ingest", "upstream", "buffer", "spill"):
        walk(section, getattr(settings, section))
    flat["http.bind"] = (settings.http.host, settings.http.port)
    table = settings.classes.as_table()
    for cls in CLASSES:
        flat[f"classes.{cls.wire_name}"] = table[cls]
    return flat
