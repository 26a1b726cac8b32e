"""The config file: TOML text -> validated `Settings` (agent/settings.py).

This module owns every rule about what an operator may write in the config file:
the tables and keys, their types and bounds, how defaults combine with what is
given, and the wording of the error that names the key at fault. Three modules
hold parts of it: agent/configtable.py the generic reading of a typed value out
of a table (and `ConfigError`, re-exported here), agent/configendpoints.py the
rules between endpoint keys, agent/sizing.py the room the buffer budget and the
spill need for a frame. settings.py owns only the shape and the defaults.
Pure apart from `load_config`, which reads one file: no socket is opened, no
name is resolved, no directory is created.

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
  their syntax and when two are the same place is agent/endpoints.py's, the
  rules between endpoint keys (below) agent/configendpoints.py's.
- `bind` defaults to the contract's port on loopback (tcp://127.0.0.1:5557,
  :5558) only when neither `bind` nor `connect` is given for that socket: a
  config that says only `connect = [...]` does not also open a port.
- Protected mode (INTERFACE.md, agent/protected.py) is checked last: a
  plaintext endpoint beyond loopback/ipc needs `insecure_plaintext = true` in
  its table (`[ingest]`, `[upstream]`), else the error names its key and text.
- Two binds that the kernel would refuse (same tcp port on the same address or
  a wildcard, the same ipc path) are an error, across ingest, upstream and http:
  check-config catches at once what would otherwise fail at start-up (or, for
  ipc, silently steal the other socket's file). Names are not resolved, so
  `localhost` vs `127.0.0.1` is not detected.
- The alert lane (`ingest.priority_bind` / `ingest.priority_connect`) is
  optional: no endpoint, no lane. Its binds join the clash check above, and
  any lane endpoint that is also an endpoint of the bulk or upstream socket
  (bind or connect) is an error naming both keys: the lane must be a place of
  its own. It shares every other [ingest] key (frame size, buffers, CURVE).
- `[classes]`: each list given replaces that class's default list; classes not
  given keep their defaults minus any type that a given list claims. So
  `low = ["fault"]` alone moves `fault` from critical to low and leaves the
  other critical defaults in place. A type in two given lists is an error
  naming both keys; so is a type listed twice in one list, or one with leading
  or trailing white space (it could never match: classes match exactly).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
from collections.abc import Mapping
from typing import Any

from agent.classes import CLASS_NAMES, CLASSES, DEFAULT_RULES, ClassRules, EventClass
from agent.configendpoints import (
    check_bind_clashes,
    check_lane_endpoints,
    lane_endpoints,
    socket_endpoints,
)
from agent.configtable import ConfigError, Table, check_shape, show, value_keys
from agent.endpoints import http_endpoint, parse_http_bind
from agent.protected import first_exposure
from agent.settings import (
    SCALED_DEFAULT,
    AgentSettings,
    BufferSettings,
    CurveSettings,
    HttpSettings,
    IngestSettings,
    Settings,
    SpillSettings,
    UpstreamSettings,
)
from agent.sizing import SPILL_MIN_BYTES, check_buffer_room, check_spill_room

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

# The largest `ingest.max_frame_bytes`, in bytes: what the memory sizing
# covers. Outside the buffer budget each frame exists whole in libzmq, as a
# Python bytes, and as what cbor2 builds while decoding it: a few times the
# frame for ordinary events, and far more for a frame of tiny nested items
# (issue 13: 36-72 MiB for 1 MiB; a 64 MiB frame, the old ceiling, took ~40 s
# and ~4.6 GB, past any unit's MemoryMax). The unit leaves 512 MiB above the
# budget (MemoryMax = budget + 512M, agent/cgroup.py): 16 MiB x a few stays
# well inside it. Each collector may also have up to `ingest.rcvhwm` frames of
# this size waiting in libzmq: that per-peer worst case is bounded separately
# (issue 13 item 6).
MAX_FRAME_CEILING = 16 * MiB

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
    "ingest": (
        "bind",
        "connect",
        "priority_bind",
        "priority_connect",
        "max_frame_bytes",
        "rcvhwm",
        "rcvbuf_bytes",
        "max_peers",
        "curve",
        "insecure_plaintext",
    ),
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
        "insecure_plaintext",
    ),
    "upstream.curve": ("secret_key_file", "allowed_keys_dir"),
    "buffer": ("budget_bytes", "critical_reserve_bytes", "shrink_after_s"),
    "spill": ("dir", "max_bytes", "flush_interval_ms", "write_through"),
    "http": ("bind", "allowed_hosts"),
    "classes": CLASS_NAMES,
}

# Every dotted key that holds a value (not a table), in file order.
_VALUE_KEYS = value_keys(_TABLES)


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
    check_shape(_TABLES, doc)
    base = None if base_dir is None else os.fspath(base_dir)
    root = Table("", doc)
    agent = _parse_agent(root.sub("agent"))
    ingest = _parse_ingest(root.sub("ingest"), base)
    upstream = _parse_upstream(root.sub("upstream"), base)
    buffer = _parse_buffer(root.sub("buffer"))
    spill = _parse_spill(root.sub("spill"), base)
    http = _parse_http(root.sub("http"))
    classes = _parse_classes(root.sub("classes"))
    check_bind_clashes(ingest, upstream, http)
    check_lane_endpoints(ingest, upstream)
    check_buffer_room(root.sub("buffer"), buffer, ingest)
    check_spill_room(root.sub("spill"), spill, ingest)
    _check_protected_mode(ingest, upstream)
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
# Tables


def _parse_agent(t: Table) -> AgentSettings:
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
                f"must be printable without leading/trailing space, got {show(agent_id)}",
            )
        kwargs["id"] = agent_id
    if t.has("log_level"):
        level = t.string("log_level", "")
        if level not in LOG_LEVELS:
            t.fail(
                "log_level",
                f"must be one of {', '.join(LOG_LEVELS)}, got {show(level)}",
            )
        kwargs["log_level"] = level
    return AgentSettings(**kwargs)


def _parse_curve(t: Table, base: str | None) -> CurveSettings:
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


def _parse_ingest(t: Table, base: str | None) -> IngestSettings:
    d = IngestSettings()
    bind, connect = socket_endpoints(t, d.bind, d.connect)
    priority_bind, priority_connect = lane_endpoints(t)
    return IngestSettings(
        bind=bind,
        connect=connect,
        priority_bind=priority_bind,
        priority_connect=priority_connect,
        # Bytes (ZMQ_MAXMSGSIZE). Below 64 no real event fits (and "1", meant
        # as MiB, must fail loudly). MAX_FRAME_CEILING above: why 16 MiB.
        max_frame_bytes=t.integer("max_frame_bytes", d.max_frame_bytes, 64, MAX_FRAME_CEILING),
        # Frames (ZMQ_RCVHWM). 0 would mean "unlimited" to libzmq: memory
        # outside the budget, and a queue ahead of every critical alert.
        rcvhwm=t.integer("rcvhwm", d.rcvhwm, 1, 1_000_000),
        # Bytes (SO_RCVBUF). Linux floors it near 2.3 KiB (it doubles what is
        # asked and keeps at least SOCK_MIN_RCVBUF); above 64 MiB is a typo
        # (the kernel clamps to net.core.rmem_max silently).
        rcvbuf_bytes=t.integer("rcvbuf_bytes", d.rcvbuf_bytes, 4 * KiB, 64 * MiB),
        # Connections per PULL socket. 10,000 is past any gateway's collector
        # count and the unit's descriptor limit; each may hold up to rcvhwm
        # frames in libzmq (README, worst case).
        max_peers=t.integer("max_peers", d.max_peers, 1, 10_000),
        curve=_parse_curve(t.sub("curve"), base),
        insecure_plaintext=t.boolean("insecure_plaintext", d.insecure_plaintext),
    )


def _parse_upstream(t: Table, base: str | None) -> UpstreamSettings:
    d = UpstreamSettings()
    bind, connect = socket_endpoints(t, d.bind, d.connect)
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
        insecure_plaintext=t.boolean("insecure_plaintext", d.insecure_plaintext),
    )


def _check_protected_mode(ingest: IngestSettings, upstream: UpstreamSettings) -> None:
    """Protected mode (INTERFACE.md; the rule and its wording are
    agent/protected.py's): a plaintext endpoint beyond loopback/ipc needs
    `insecure_plaintext = true` in its socket's table. Checked last, on
    endpoints already known to be valid."""
    exposure = first_exposure(ingest, upstream)
    if exposure is not None:
        raise ConfigError(exposure.key, exposure.problem())


def _parse_buffer(t: Table) -> BufferSettings:
    d = BufferSettings()
    # Bytes. Below 4 MiB the buffers cannot hold a max-size (default 1 MiB)
    # frame, one ingest burst and the working room besides (see
    # `check_buffer_room`, agent/sizing.py); 64 GiB is past any gateway's RAM, so more is a typo.
    budget = t.integer("budget_bytes", d.budget_bytes, 4 * MiB, 64 * GiB)
    # Bytes only critical events may use; by default a share of the budget
    # (settings.default_critical_reserve). Whether it fits is checked with the
    # frame size in `check_buffer_room`, agent/sizing.py.
    reserve = t.integer("critical_reserve_bytes", SCALED_DEFAULT, 0, None)
    # Seconds. 0 would give memory back after every burst and take it again on
    # the next (thrash); past an hour a burst's memory is effectively never
    # returned.
    shrink = t.number("shrink_after_s", d.shrink_after_s, 0, 3600)
    return BufferSettings(
        budget_bytes=budget, critical_reserve_bytes=reserve, shrink_after_s=shrink
    )


def _parse_spill(t: Table, base: str | None) -> SpillSettings:
    d = SpillSettings()
    return SpillSettings(
        dir=t.path("dir", base) if t.has("dir") else d.dir,
        # Bytes, all rings together. At least SPILL_MIN_BYTES (two chunks in
        # the smallest ring; larger frames need more: agent/sizing.py). No
        # upper bound: the disk is the bound, and posix_fallocate reports
        # ENOSPC cleanly at start-up.
        max_bytes=t.integer("max_bytes", d.max_bytes, SPILL_MIN_BYTES, None),
        # Milliseconds between msyncs: what a power loss can cost at most.
        # Under 10 ms the flushes (0.1-10 ms each, FACTS.md) eat the loop;
        # over a minute is more loss than an operator would accept.
        flush_interval_ms=t.integer("flush_interval_ms", d.flush_interval_ms, 10, 60_000),
        write_through=_write_through(t, d.write_through),
    )


def _write_through(t: Table, default: tuple[str, ...]) -> tuple[str, ...]:
    """`[spill] write_through`: class names, each at most once (any order; the
    agent applies them in class order). [] turns write-through off."""
    if not t.has("write_through"):
        return default
    names = t.string_list("write_through")
    for name in names:
        if name not in CLASS_NAMES:
            t.fail(
                "write_through",
                f"unknown class {show(name)} (the classes: {', '.join(CLASS_NAMES)})",
            )
    if len(set(names)) != len(names):
        t.fail("write_through", "names a class twice")
    return tuple(n for n in CLASS_NAMES if n in names)


def _parse_http(t: Table) -> HttpSettings:
    d = HttpSettings()
    allowed = d.allowed_hosts
    if t.has("allowed_hosts"):
        allowed = t.string_list("allowed_hosts")
        for i, name in enumerate(allowed):
            # A Host header is a name or an address, without scheme, port or path.
            if not all(c.isalnum() or c in "-." for c in name):
                t.fail(
                    "allowed_hosts",
                    f"item {i} {show(name)} is not a host name (letters, digits, '-' and '.' "
                    "only; no scheme, port or path)",
                )
    if not t.has("bind"):
        return dataclasses.replace(d, allowed_hosts=allowed)
    text = t.string("bind", "")
    try:
        host, port = parse_http_bind(text)
    except ValueError as e:
        t.fail("bind", f"{show(text)}: {e}")
    return HttpSettings(host=host, port=port, allowed_hosts=allowed)


def http_bind_warning(http: HttpSettings) -> str | None:
    """A warning when the technician endpoint listens beyond this box, else None.

    The endpoint is read-only but unauthenticated (it shows the counters, the
    agent id and the spill dir), so the README says to keep it on loopback and
    reach it through SSH. A non-loopback `http.bind` is accepted (a lab or an
    isolated maintenance LAN may want it) but `check-config` prints this on
    stderr and `run` logs it at WARNING (stderr; the journal under systemd).
    Names are not resolved: only "localhost" counts as loopback."""
    host = http.host
    if host.lower() == "localhost":
        return None
    shown = f"http.bind = {show(http_endpoint(http.host, http.port).text)}"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and address.is_loopback:
        return None
    if address is not None and address.is_unspecified:
        return (
            f"{shown} listens on every interface, the substation and head-end networks "
            "included; the endpoint is read-only but has no authentication: bind the "
            "maintenance interface's address (firewalled) or 127.0.0.1 with an SSH tunnel"
        )
    return (
        f"{shown} is not a loopback address: the endpoint is read-only but has no "
        "authentication; make sure only the maintenance subnet reaches that address "
        "(firewall), or bind 127.0.0.1 and use an SSH tunnel"
    )


def _parse_classes(t: Table) -> ClassRules:
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
    flat["http.allowed_hosts"] = settings.http.allowed_hosts
    table = settings.classes.as_table()
    for cls in CLASSES:
        flat[f"classes.{cls.wire_name}"] = table[cls]
    return flat
