"""What the agent says about itself: at start, at a reload, on evictions, at stop.

Owns: the start-up lines that let a technician find everything (issue 12 item
7: the config file, the spill dir, which ingest core runs, every endpoint),
what a start recovered, evictions, the last line of a stop (what was
delivered, parked and lost), and the SIGHUP decision (what a reload applies,
what needs a restart). Pure: the loop passes in what it opened and applies
what `plan_reload` returns.

Promises: the lines name every endpoint as configured (binds before
connects), the HTTP address as actually bound; a reload never changes a key
outside config.RELOADABLE, and lists every changed key either as applied or as
needing a restart.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from agent.classes import EventClass
from agent.config import RELOADABLE, apply_reloadable, changed_keys
from agent.routes import BACKPRESSURE_PATH
from agent.settings import Settings


def endpoint_list(bind: Sequence[str], connect: Sequence[str]) -> str:
    """`bind A, B connect C` for the start-up log; `none` when neither."""
    parts = []
    if bind:
        parts.append("bind " + ", ".join(bind))
    if connect:
        parts.append("connect " + ", ".join(connect))
    return " ".join(parts) or "none"


def startup_lines(
    settings: Settings,
    config_path: str | None,
    *,
    ingest_path: str,
    core: str,
    readers: Sequence[str],
    http_address: tuple[str, int],
) -> tuple[str, str]:
    """The two lines before `ready:`: where things are, and every endpoint."""
    s, i = settings, settings.ingest
    where = (
        f"config {config_path or '(none: built-in defaults)'}; spill dir {s.spill.dir}; "
        f"ingest path {ingest_path} ({core}; burst reader {'/'.join(readers)})"
    )
    host, port = http_address
    lane = endpoint_list(i.priority_bind, i.priority_connect) if i.lane else "off"
    endpoints = (
        f"endpoints: ingest {endpoint_list(i.bind, i.connect)}; lane {lane}; "
        f"upstream {endpoint_list(s.upstream.bind, s.upstream.connect)}; "
        f"http http://{f'[{host}]' if ':' in host else host}:{port}{BACKPRESSURE_PATH}"
    )
    return where, endpoints


def recovery_line(pending_events: int, corrupt_records: int) -> str:
    """What a start found in the spill files."""
    return (
        f"spill recovery: {pending_events} events pending on disk, "
        f"{corrupt_records} corrupt records skipped"
    )


def eviction_lines(dropped_by_class: Sequence[int]) -> list[str]:
    """One line per class that lost events since the last report (the loop
    reports at most once a second: per chunk would be hundreds a second)."""
    return [
        f"memory and spill both full: evicted {n} oldest {EventClass(cls).wire_name} events"
        for cls, n in enumerate(dropped_by_class)
        if n
    ]


def paused_line(paused: bool, in_use_bytes: int, budget_bytes: int) -> tuple[int, str]:
    """(log level, text) when ingest stops or resumes being read."""
    if not paused:
        return logging.INFO, "ingest resumed"
    return (
        logging.WARNING,
        f"buffers full ({in_use_bytes} bytes in use, budget {budget_bytes}) and critical "
        "events fill the spill ring: not reading ingest until there is room",
    )


def stopped_line(delivered: int, parked: int, lost: int) -> tuple[int, str]:
    """(log level, text) of the last line of a stop: ERROR when anything was
    lost (only possible when a class's spill share is full at that moment)."""
    if lost:
        return (
            logging.ERROR,
            f"stopped: {delivered} delivered, {parked} events parked on disk, "
            f"{lost} LOST (spill full)",
        )
    return (
        logging.INFO,
        f"stopped: {delivered} delivered, {parked} events parked on disk, nothing lost",
    )


@dataclasses.dataclass(frozen=True)
class Reload:
    settings: Settings  # what runs after the reload
    applied: tuple[str, ...]  # changed keys applied now
    restart: tuple[str, ...]  # changed keys that need a restart (not applied)


def plan_reload(running: Settings, new: Settings) -> Reload:
    """SIGHUP with a valid file: `running` with every RELOADABLE key taken
    from `new` (class rules, batching, log level); the rest keeps running as
    it is, so the next reload compares against the truth and repeats the
    restart warning."""
    changed = changed_keys(running, new)
    return Reload(
        apply_reloadable(running, new),
        tuple(k for k in changed if k in RELOADABLE),
        tuple(k for k in changed if k not in RELOADABLE),
    )
