"""The four event classes and the rule table that maps an event's type to one.

This module owns the meaning of "class": its order (critical before high before
normal before low), its wire name (the first frame of every upstream message,
so a SUB can filter on it) and the default rule table of the contract. It is
pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping


class EventClass(enum.IntEnum):
    """Lower value = more urgent. Code relies on this order when it walks classes."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3

    @property
    def wire_name(self) -> str:
        return self.name.lower()


CLASSES: tuple[EventClass, ...] = tuple(EventClass)
CLASS_NAMES: tuple[str, ...] = tuple(c.wire_name for c in CLASSES)
# The first frame of an upstream message, ready to send.
CLASS_TOPICS: tuple[bytes, ...] = tuple(n.encode("ascii") for n in CLASS_NAMES)

# The contract's default rule table (INTERFACE.md, "Events in"). Anything not
# listed is NORMAL.
DEFAULT_RULES: Mapping[EventClass, tuple[str, ...]] = {
    EventClass.CRITICAL: ("over_voltage", "under_voltage", "last_gasp", "fault"),
    EventClass.HIGH: ("power_restore", "tamper"),
    EventClass.NORMAL: (),
    EventClass.LOW: ("heartbeat", "diagnostic"),
}


def class_by_name(name: str) -> EventClass:
    """`"critical"` -> EventClass.CRITICAL; KeyError for anything else (also "CRITICAL")."""
    if name not in CLASS_NAMES:
        raise KeyError(name)
    return EventClass[name.upper()]


class ClassRules:
    """Exact, case-sensitive `type` text -> class. Unlisted types are NORMAL.

    Invariant: a type appears in at most one class (config.py rejects a table
    that lists one twice, naming the key).
    """

    __slots__ = ("_by_type",)

    def __init__(self, rules: Mapping[EventClass, Iterable[str]] = DEFAULT_RULES) -> None:
        by_type: dict[str, int] = {}
        for cls, types in rules.items():
            for t in types:
                if t in by_type and by_type[t] != cls:
                    raise ValueError(f"type {t!r} is listed in two classes")
                by_type[t] = int(cls)
        self._by_type = by_type

    @property
    def lookup(self) -> dict[str, int]:
        """The raw table for the hot path: `lookup.get(type, NORMAL)` -> class index."""
        return self._by_type

    def classify(self, event_type: str) -> EventClass:
        return EventClass(self._by_type.get(event_type, EventClass.NORMAL))

    def as_table(self) -> dict[EventClass, tuple[str, ...]]:
        table: dict[EventClass, list[str]] = {c: [] for c in CLASSES}
        for t, c in self._by_type.items():
            table[EventClass(c)].append(t)
        return {c: tuple(sorted(ts)) for c, ts in table.items()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassRules) and other._by_type == self._by_type

    def __repr__(self) -> str:
        return f"ClassRules({self.as_table()!r})"
