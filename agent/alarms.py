"""The alarms: what a technician must act on, named once for every screen.

This module owns the list of alarms, their names, their conditions and what
each tells the technician to do. The status page, `edge-agent status` and
/metrics all show the list this module computes (the HTTP side puts it in the
backpressure document as `alarms`), so one condition has one name everywhere,
and the README's table is this module's `CATALOGUE`.

Pure: it reads the current backpressure document (Snapshot.to_json()), the
history's samples (agent/history.py) for anything that needs a trend, and the
loop's age as measured by the HTTP side. No clock of its own.

Alarms fire on what needs a person, not on what merely happens: a refused
send is normal on the deliberately shallow upstream pipe (SNDHWM 2, 64 KiB
SO_SNDBUF) while a subscriber keeps up, so refused sends alone are not a
SLOW SUBSCRIBER (issue 12 item 3); a backlog that grows, or refused sends
while events keep waiting, are. Trends are read over `TREND_WINDOW_S`; with
less history than that (the first seconds after a start) only the alarms that
need no trend can fire.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from agent.classes import CLASS_NAMES
from agent.history import Sample, interval_latency, window

# How far back a trend is read: 10 samples at 1 s, long enough that one
# batch's ups and downs (a 5 ms linger, 256-event batches) do not look like
# growth, short enough that a new problem shows within seconds.
TREND_WINDOW_S = 10.0
# "Events waiting": more than this many in memory and on disk. Four full
# upstream batches (256 events each), above what a subscriber that keeps up
# leaves queued between two sends: one 5 ms linger at 200,000 events/s.
WAITING_FLOOR_EVENTS = 1_000
# The critical latency window and bound (INTERFACE.md: 100 ms).
LATENCY_WINDOW_S = 60.0
LATENCY_BOUND_S = 0.1

BAD = "bad"  # events are lost or about to be; act now
WARN = "warn"  # nothing lost yet; find the cause


@dataclasses.dataclass(frozen=True)
class Alarm:
    name: str  # upper case, as printed everywhere
    level: str  # BAD or WARN
    detail: str  # what is happening, with the numbers
    action: str  # what the technician does about it

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


# name -> (level, when it fires, what to do). The README's alarm table is
# this; tests/test_alarms.py checks that every name here can fire.
CATALOGUE: dict[str, tuple[str, str, str]] = {
    "LOOP STALLED": (
        BAD,
        "the event loop has not published its state for longer than the stall limit (3 s)",
        "if it lasts more than a minute, restart the service (systemctl restart "
        "edge-agent) after saving the journal (journalctl -u edge-agent)",
    ),
    "INGEST PAUSED": (
        BAD,
        "memory and the spill files are full: the agent stopped reading collectors",
        "get the head-end reading again (see NOT CONNECTED / SLOW SUBSCRIBER); "
        "collectors wait meanwhile, nothing accepted is lost",
    ),
    "EVICTING": (
        BAD,
        "events were evicted in the last 10 s (memory and disk full): lowest class, oldest first",
        "events are being lost: restore the head-end link first; a larger "
        "spill.max_bytes buys time",
    ),
    "NOT CONNECTED": (
        BAD,
        "no head-end subscribes upstream (bad while events wait, a warning while none do)",
        "check the head-end is running and reaches the upstream port; events "
        "wait in memory, then on disk, until it does",
    ),
    "STUCK SUBSCRIBER": (
        BAD,
        "one subscriber stopped reading: messages are dropped for it so the others get everything",
        "find the head-end that stopped reading (its seq numbers have gaps) and restart it",
    ),
    "SLOW SUBSCRIBER": (
        WARN,
        "the backlog grew by 1,000+ events in 10 s, or sends were refused while "
        "1,000+ events waited the whole time",
        "check the head-end's load and the network to it; the backlog waits in "
        "memory, then on disk",
    ),
    "SPILLING": (
        WARN,
        "events on disk grew by 1,000+ in the last 10 s: memory is full",
        "nothing is lost; fix the cause (NOT CONNECTED / SLOW SUBSCRIBER) and "
        "watch the disk: eviction starts when the spill files are full",
    ),
    "LANE MISUSED": (
        WARN,
        "non-critical events arrived on the alert lane in the last 10 s",
        "a collector sends ordinary traffic to the lane's port: fix its "
        "configuration, alerts lose their head start meanwhile",
    ),
    "CRITICAL LATENCY": (
        WARN,
        "critical events took longer than 100 ms in the agent (p99, last 60 s)",
        "look for SPILLING or EVICTING, and for another process using the CPU",
    ),
    "DROPPED": (
        WARN,
        "events were evicted since start, but none in the last 10 s",
        "find when in the journal ('evicted'); the count resets at restart",
    ),
    "STARTING": (WARN, "the agent is recovering its spill files", "wait; it is brief"),
    "STOPPING": (WARN, "the agent is parking its events on disk", "wait for it to exit"),
}


def evaluate(
    doc: Mapping[str, Any],
    samples: Sequence[Sample] = (),
    *,
    loop_age_s: float | None = None,
    stale_after_s: float = 3.0,
) -> tuple[Alarm, ...]:
    """Every alarm that holds now, the worst first."""
    found: list[Alarm] = []

    def fire(name: str, detail: str, level: str | None = None) -> None:
        default_level, _, action = CATALOGUE[name]
        found.append(Alarm(name, level or default_level, detail, action))

    trend = window(samples, TREND_WINDOW_S)
    old, new = trend if trend is not None else (None, None)
    span = f"{new.mono - old.mono:.0f} s" if old is not None and new is not None else ""

    if loop_age_s is not None and loop_age_s > stale_after_s:
        fire("LOOP STALLED", f"no new state for {loop_age_s:.0f} s: the event loop may be stuck")

    if _get(doc, "ingest", "paused") is True:
        fire("INGEST PAUSED", "memory and spill files full: collectors are not being read")

    dropped_now = {name: _int(doc, "priorities", name, "dropped") for name in CLASS_NAMES}
    if old is not None and new is not None and sum(new.dropped) > sum(old.dropped):
        growth = [
            f"{_count(b - a)} {name}"
            for name, a, b in zip(CLASS_NAMES, old.dropped, new.dropped, strict=True)
            if b > a
        ]
        fire("EVICTING", ", ".join(growth) + f" evicted in the last {span} (memory and disk full)")
    elif any(dropped_now.values()):
        lost = [f"{_count(n)} {name}" for name, n in dropped_now.items() if n]
        fire("DROPPED", ", ".join(lost) + " evicted since start (memory and disk were full)")

    held = sum(_int(doc, "priorities", name, "queued") for name in CLASS_NAMES)
    on_disk = _int(doc, "spill", "pending_events")
    waiting = held + on_disk
    subscribers = _num(doc, "upstream", "subscribers")
    connected = _get(doc, "upstream", "connected")
    if not isinstance(connected, bool):
        connected = None if subscribers is None else subscribers > 0
    if connected is False:
        where = f"{_count(held)} in memory, {_count(on_disk)} on disk"
        if waiting:
            fire("NOT CONNECTED", f"no head-end subscriber; events wait here ({where})")
        else:
            fire("NOT CONNECTED", "no head-end subscriber; no event waiting yet", WARN)

    stuck = _stuck(doc, old, new)
    if stuck is not None:
        fire("STUCK SUBSCRIBER", stuck)

    if connected and stuck is None and old is not None and new is not None:
        slow = _slow(old, new, samples, span)
        if slow is not None:
            fire("SLOW SUBSCRIBER", slow)

    if old is not None and new is not None:
        grew = new.pending_events - old.pending_events
        if grew >= WAITING_FLOOR_EVENTS:
            fire(
                "SPILLING",
                f"{_count(new.pending_events)} events on disk, +{_count(grew)} in the last {span}",
            )
        if (
            old.lane_noncritical is not None
            and new.lane_noncritical is not None
            and new.lane_noncritical > old.lane_noncritical
        ):
            n = new.lane_noncritical - old.lane_noncritical
            fire("LANE MISUSED", f"{_count(n)} non-critical events on the alert lane in {span}")

    latency = window(samples, LATENCY_WINDOW_S)
    if latency is not None:
        first, last = latency
        p99 = interval_latency(first, last, 0.99)
        if p99 is not None and p99 > LATENCY_BOUND_S:
            if p99 != math.inf:
                shown = f"<= {_seconds(p99)}"
            elif last.latency_buckets:
                shown = f"> {_seconds(last.latency_buckets[-1][0])}"
            else:  # an agent that counts critical events but reports no buckets
                shown = "unknown"
            n = last.latency_count - first.latency_count
            fire(
                "CRITICAL LATENCY",
                f"p99 {shown} over the last {last.mono - first.mono:.0f} s "
                f"({_count(n)} critical events; bound 100 ms)",
            )

    state = _get(doc, "agent", "state")
    if state == "starting":
        fire("STARTING", "recovering the spill files; not serving yet")
    elif state == "stopping":
        fire("STOPPING", "parking events on disk before exit")

    order = list(CATALOGUE)
    found.sort(key=lambda a: (a.level != BAD, order.index(a.name)))
    return tuple(found)


def _stuck(doc: Mapping[str, Any], old: Sample | None, new: Sample | None) -> str | None:
    """STUCK SUBSCRIBER's detail, or None: stalled now, or messages dropped
    for a stuck peer within the window."""
    stalled = _get(doc, "upstream", "stalled") is True
    dropped_msgs = dropped_events = 0
    if old is not None and new is not None:
        if old.stuck_dropped_messages is not None and new.stuck_dropped_messages is not None:
            dropped_msgs = new.stuck_dropped_messages - old.stuck_dropped_messages
        if old.stuck_dropped_events is not None and new.stuck_dropped_events is not None:
            dropped_events = new.stuck_dropped_events - old.stuck_dropped_events
    if not stalled and dropped_msgs <= 0:
        return None
    if dropped_msgs > 0:
        what = f"{_count(dropped_msgs)} messages"
        if dropped_events > 0:
            what += f" ({_count(dropped_events)} events)"
        return f"a subscriber stopped reading: {what} dropped for it lately; the others get all"
    return "a subscriber stopped reading; the others get every event"


def _slow(old: Sample, new: Sample, samples: Sequence[Sample], span: str) -> str | None:
    """SLOW SUBSCRIBER's detail, or None.

    Fires when the backlog grew by WAITING_FLOOR_EVENTS or more over the window
    and is at least that now, or when sends were refused over the window while
    at least WAITING_FLOOR_EVENTS waited in every sample of it (a backlog that
    does not drain, such as events on disk behind a slow reader).
    """
    grew = new.backlog - old.backlog
    refused = new.blocked - old.blocked
    detail = None
    if grew >= WAITING_FLOOR_EVENTS and new.backlog >= WAITING_FLOOR_EVENTS:
        detail = f"backlog {_count(new.backlog)} events, +{_count(grew)} in the last {span}"
    else:
        in_window = [s for s in samples if old.mono <= s.mono <= new.mono]
        if refused > 0 and all(s.backlog >= WAITING_FLOOR_EVENTS for s in in_window):
            detail = (
                f"{_count(refused)} sends refused in the last {span} while "
                f"{_count(new.backlog)} events wait"
            )
    if detail is None:
        return None
    # A class that waits in memory while nothing of it leaves may simply have
    # no subscriber (a head-end that subscribes to some classes only).
    unread = [
        name
        for i, name in enumerate(CLASS_NAMES)
        if new.queued[i] >= WAITING_FLOOR_EVENTS and new.delivered[i] == old.delivered[i]
    ]
    if unread:
        detail += f"; nothing of {', '.join(unread)} delivered: is a head-end subscribed to it?"
    return detail


# ---------------------------------------------------------------- helpers


def _get(doc: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


def _num(doc: Any, *keys: str) -> float | None:
    value = _get(doc, *keys)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _int(doc: Any, *keys: str) -> int:
    value = _num(doc, *keys)
    return int(value) if value is not None else 0


def _count(n: float) -> str:
    return f"{int(n):,}"


def _seconds(s: float) -> str:
    return f"{s * 1000:g} ms" if s < 1 else f"{s:g} s"
