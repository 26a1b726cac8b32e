"""agent/classes.py: the four classes, their wire names and the type -> class rules."""

from __future__ import annotations

import pytest

from agent.classes import (
    CLASS_NAMES,
    CLASS_TOPICS,
    CLASSES,
    DEFAULT_RULES,
    ClassRules,
    EventClass,
    class_by_name,
)

C, H, N, L = EventClass.CRITICAL, EventClass.HIGH, EventClass.NORMAL, EventClass.LOW


def test_order_names_and_topics() -> None:
    # Lower value = more urgent; the loop walks CLASSES in this order.
    assert CLASSES == (C, H, N, L)
    assert [int(c) for c in CLASSES] == [0, 1, 2, 3]
    assert CLASS_NAMES == ("critical", "high", "normal", "low")
    assert CLASS_TOPICS == (b"critical", b"high", b"normal", b"low")
    assert [c.wire_name for c in CLASSES] == list(CLASS_NAMES)


@pytest.mark.parametrize(
    ("event_type", "expected"),
    [
        ("over_voltage", C),
        ("under_voltage", C),
        ("last_gasp", C),
        ("fault", C),
        ("power_restore", H),
        ("tamper", H),
        ("heartbeat", L),
        ("diagnostic", L),
        ("reading", N),
        ("", N),
    ],
)
def test_default_rules_follow_the_contract(event_type: str, expected: EventClass) -> None:
    assert ClassRules().classify(event_type) is expected
    assert ClassRules().lookup.get(event_type, N) == expected


def test_default_table_is_exactly_the_contracts() -> None:
    assert ClassRules().as_table() == {
        C: ("fault", "last_gasp", "over_voltage", "under_voltage"),
        H: ("power_restore", "tamper"),
        N: (),
        L: ("diagnostic", "heartbeat"),
    }
    assert ClassRules() == ClassRules(DEFAULT_RULES)


@pytest.mark.parametrize(
    "event_type",
    ["Fault", "FAULT", "fault ", " fault", "faul", "faults", "over-voltage", "Heartbeat"],
)
def test_match_is_exact_and_case_sensitive(event_type: str) -> None:
    assert ClassRules().classify(event_type) is N


def test_custom_rules_replace_the_defaults() -> None:
    rules = ClassRules({C: ("breaker_trip",), L: ("fault",)})
    assert rules.classify("breaker_trip") is C
    assert rules.classify("fault") is L
    assert rules.classify("over_voltage") is N
    assert rules != ClassRules()


def test_a_type_in_two_classes_raises() -> None:
    with pytest.raises(ValueError, match="tamper"):
        ClassRules({C: ("fault", "tamper"), H: ("tamper",)})


def test_a_type_listed_twice_in_one_class_is_harmless() -> None:
    rules = ClassRules({C: ("fault", "fault")})
    assert rules.classify("fault") is C
    assert rules.as_table()[C] == ("fault",)


def test_class_by_name() -> None:
    for cls in CLASSES:
        assert class_by_name(cls.wire_name) is cls
    for bad in ("CRITICAL", "Critical", "urgent", "", "critical "):
        with pytest.raises(KeyError):
            class_by_name(bad)
