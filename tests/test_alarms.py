"""agent/alarms.py: each alarm fires on what needs a person, and only then.

Scenarios are timelines of backpressure documents, one a second, recorded into
a real History the way the loop does; the alarms are evaluated on the last.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent import alarms
from agent.alarms import BAD, CATALOGUE, WARN, Alarm, evaluate
from agent.history import History

from samples import busy_snapshot, running

Doc = dict[str, Any]


def quiet(t: int) -> Doc:
    """A running agent, one subscriber, nothing queued, at second `t`."""
    doc = running("gw", started=1.7e9, uptime_s=100.0 + t).to_json()
    doc["upstream"]["subscribers"] = 1
    doc["upstream"]["connected"] = True
    return doc


def timeline(make: Callable[[int], Doc], seconds: int = 12, **options: Any) -> tuple[Alarm, ...]:
    ring = History()
    doc: Doc = {}
    for t in range(seconds):
        doc = make(t)
        ring.record(doc, 1000.0 + t)
    return evaluate(doc, ring.samples(), **options)


def names(found: tuple[Alarm, ...]) -> list[str]:
    return [a.name for a in found]


def with_class(doc: Doc, name: str, **fields: int) -> Doc:
    doc["priorities"][name].update(fields)
    return doc


# ---------------------------------------------------------------- no false alarms


def test_a_quiet_agent_has_no_alarm() -> None:
    assert timeline(quiet) == ()


def test_refused_sends_alone_are_not_a_slow_subscriber() -> None:
    """Issue 12 item 3: a local subscriber keeping up at 1,000 events/s, 0
    queued, 0 on disk, while the shallow upstream pipe refuses sends often."""

    def keeping_up(t: int) -> Doc:
        doc = quiet(t)
        with_class(doc, "normal", received=1000 * t, delivered=1000 * t - 3, queued=3)
        doc["upstream"]["blocked"] = 40 * t
        return doc

    assert timeline(keeping_up) == ()


def test_a_brief_burst_that_drains_is_not_slow() -> None:
    def burst(t: int) -> Doc:
        doc = quiet(t)
        # 5,000 waiting at t=3, gone by t=6; the pipe refused sends meanwhile.
        with_class(doc, "normal", queued={3: 5000, 4: 3000, 5: 900}.get(t, 0))
        doc["upstream"]["blocked"] = 10 * t
        return doc

    assert "SLOW SUBSCRIBER" not in names(timeline(burst))


# ---------------------------------------------------------------- each alarm


def test_a_growing_backlog_is_a_slow_subscriber() -> None:
    def growing(t: int) -> Doc:
        return with_class(quiet(t), "normal", queued=500 * t)

    (alarm,) = timeline(growing)
    assert alarm.name == "SLOW SUBSCRIBER" and alarm.level == WARN
    assert "backlog 5,500 events, +5,000 in the last 10 s" in alarm.detail


def test_a_class_nobody_reads_is_named() -> None:
    def critical_only(t: int) -> Doc:
        doc = with_class(quiet(t), "critical", received=10 * t, delivered=10 * t)
        return with_class(doc, "low", received=400 * t, queued=400 * t)

    (alarm,) = timeline(critical_only)
    assert alarm.name == "SLOW SUBSCRIBER"
    assert "nothing of low delivered: is a head-end subscribed to it?" in alarm.detail


def test_refused_sends_while_events_keep_waiting_are_a_slow_subscriber() -> None:
    def not_draining(t: int) -> Doc:
        doc = quiet(t)
        doc["spill"]["pending_events"] = 50_000  # on disk, not moving
        doc["upstream"]["blocked"] = 7 * t
        return doc

    (alarm,) = timeline(not_draining)
    assert alarm.name == "SLOW SUBSCRIBER"
    assert "70 sends refused in the last 10 s while 50,000 events wait" in alarm.detail


def test_no_subscriber_is_bad_with_events_waiting_and_a_warning_without() -> None:
    def nobody(t: int) -> Doc:
        doc = quiet(t)
        doc["upstream"].update(subscribers=0, connected=False)
        return doc

    (alarm,) = timeline(nobody)
    assert (alarm.name, alarm.level) == ("NOT CONNECTED", WARN)

    def nobody_with_backlog(t: int) -> Doc:
        doc = with_class(nobody(t), "high", queued=12)
        doc["spill"]["pending_events"] = 3
        return doc

    found = timeline(nobody_with_backlog)
    assert names(found) == ["NOT CONNECTED"]  # not also SLOW SUBSCRIBER
    assert found[0].level == BAD
    assert "12 in memory, 3 on disk" in found[0].detail


def test_a_stuck_subscriber() -> None:
    def stuck(t: int) -> Doc:
        doc = quiet(t)
        doc["upstream"].update(
            peers=2, stalled=t >= 5, stuck_dropped_messages=4 * t, stuck_dropped_events=400 * t
        )
        doc["upstream"]["blocked"] = 100 * t
        with_class(doc, "normal", queued=2000)
        return doc

    found = timeline(stuck)
    # Its refused sends are the stuck one's, not a slow subscriber's.
    assert names(found) == ["STUCK SUBSCRIBER"]
    assert found[0].level == BAD
    assert "40 messages (4,000 events) dropped" in found[0].detail


def test_a_stall_reported_before_any_drop() -> None:
    def stalled(t: int) -> Doc:
        doc = quiet(t)
        doc["upstream"]["stalled"] = True
        return doc

    assert names(timeline(stalled, seconds=1)) == ["STUCK SUBSCRIBER"]


def test_spilling_and_evicting_and_dropped() -> None:
    def filling(t: int) -> Doc:
        doc = quiet(t)
        doc["spill"]["pending_events"] = 10_000 * t
        with_class(doc, "low", dropped=0 if t < 6 else 50 * t)
        return doc

    found = timeline(filling)
    assert names(found) == ["EVICTING", "SLOW SUBSCRIBER", "SPILLING"]
    assert "550 low evicted in the last 10 s" in found[0].detail

    def dropped_earlier(t: int) -> Doc:
        return with_class(quiet(t), "low", dropped=1200)

    (alarm,) = timeline(dropped_earlier)
    assert alarm.name == "DROPPED" and "1,200 low evicted since start" in alarm.detail


def test_ingest_paused_and_loop_stalled() -> None:
    def paused(t: int) -> Doc:
        doc = quiet(t)
        doc["ingest"]["paused"] = True
        return doc

    assert names(timeline(paused, loop_age_s=9.0, stale_after_s=3.0)) == [
        "LOOP STALLED",
        "INGEST PAUSED",
    ]
    assert names(timeline(quiet, loop_age_s=2.0, stale_after_s=3.0)) == []


def test_lane_traffic_that_is_not_critical() -> None:
    def misused(t: int) -> Doc:
        doc = quiet(t)
        doc["ingest"]["lane"] = {
            "configured": True,
            "frames": t,
            "events": 30 * t,
            "noncritical": 20 * t,
        }
        return doc

    (alarm,) = timeline(misused)
    assert alarm.name == "LANE MISUSED" and "200 non-critical events" in alarm.detail

    def lane_ok(t: int) -> Doc:
        doc = quiet(t)
        doc["ingest"]["lane"] = {"configured": True, "frames": t, "events": 3 * t, "noncritical": 5}
        return doc

    assert timeline(lane_ok) == ()


def test_critical_latency_over_the_bound() -> None:
    def slow_alerts(t: int) -> Doc:
        doc = quiet(t)
        # 10 a second, one of them between 100 and 250 ms: p99 <= 250 ms.
        bounds = [0.01, 0.1, 0.25, 1.0]
        per = [9 * t, 0, t, 0]
        cumulative = [sum(per[: i + 1]) for i in range(4)]
        doc["latency"]["critical"] = {
            "count": 10 * t,
            "sum_s": 0.0,
            "buckets": [[b, n] for b, n in zip(bounds, cumulative, strict=True)],
        }
        return doc

    (alarm,) = timeline(slow_alerts)
    assert alarm.name == "CRITICAL LATENCY" and "p99 <= 250 ms" in alarm.detail


def test_latency_beyond_the_last_bucket_or_without_buckets() -> None:
    def beyond(t: int) -> Doc:
        doc = quiet(t)
        # Every critical event slower than the last bound (1 s).
        doc["latency"]["critical"] = {"count": 5 * t, "sum_s": 0.0, "buckets": [[1.0, 0]]}
        return doc

    (alarm,) = timeline(beyond)
    assert alarm.name == "CRITICAL LATENCY" and "p99 > 1 s" in alarm.detail

    def no_buckets(t: int) -> Doc:
        doc = quiet(t)
        doc["latency"]["critical"] = {"count": 5 * t, "sum_s": 0.0, "buckets": []}
        return doc

    (alarm,) = timeline(no_buckets)
    assert "p99 unknown" in alarm.detail


def test_starting_and_stopping() -> None:
    def state(name: str) -> Callable[[int], Doc]:
        def make(t: int) -> Doc:
            doc = quiet(t)
            doc["agent"]["state"] = name
            return doc

        return make

    assert names(timeline(state("starting"), seconds=1)) == ["STARTING"]
    assert names(timeline(state("stopping"), seconds=1)) == ["STOPPING"]


# ---------------------------------------------------------------- the list as a whole


def test_every_alarm_in_the_catalogue_has_a_level_a_meaning_and_an_action() -> None:
    for name, (level, when, action) in CATALOGUE.items():
        assert name == name.upper() and level in (BAD, WARN)
        assert when and action, name


def test_the_worst_come_first() -> None:
    def everything(t: int) -> Doc:
        doc = quiet(t)
        doc["upstream"].update(subscribers=0, connected=False)
        doc["ingest"]["paused"] = True
        with_class(doc, "low", dropped=10 * t, queued=9)
        doc["spill"]["pending_events"] = 5000 * t
        return doc

    found = timeline(everything)
    levels = [a.level for a in found]
    assert levels == sorted(levels, key=lambda level: level != BAD)
    assert names(found)[:3] == ["INGEST PAUSED", "EVICTING", "NOT CONNECTED"]


def test_the_busy_sample_agent_shows_its_drop() -> None:
    ring = History()
    for n in range(12):
        ring.record(busy_snapshot(n), 1000.0 + n)
    found = evaluate(busy_snapshot(11).to_json(), ring.samples(), loop_age_s=0.2)
    assert names(found) == ["DROPPED"]


@settings(max_examples=50)
@given(
    st.dictionaries(
        st.sampled_from(["priorities", "spill", "upstream", "ingest", "agent", "latency"]),
        st.none() | st.integers() | st.text() | st.dictionaries(st.text(), st.integers()),
    )
)
def test_any_document_is_evaluated_without_error(doc: Doc) -> None:
    evaluate(doc, (), loop_age_s=None)


def test_json_form() -> None:
    (alarm,) = timeline(lambda t: with_class(quiet(t), "low", dropped=5))
    assert alarm.to_json() == {
        "name": "DROPPED",
        "level": "warn",
        "detail": "5 low evicted since start (memory and disk were full)",
        "action": CATALOGUE["DROPPED"][2],
    }


def test_growth_just_under_the_floor_is_quiet() -> None:
    floor = alarms.WAITING_FLOOR_EVENTS

    def almost(t: int) -> Doc:
        return with_class(quiet(t), "normal", queued=(floor - 1) * t // 11)

    assert timeline(almost) == ()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 5000),  # queued normal
            st.integers(0, 50_000),  # on disk
            st.integers(0, 100),  # refused sends this second
            st.integers(0, 3),  # dropped this second
            st.integers(0, 2),  # subscribers
            st.booleans(),  # paused
        ),
        min_size=1,
        max_size=15,
    )
)
def test_any_timeline_gives_known_alarms_worst_first(steps: list[tuple[int, ...]]) -> None:
    blocked = dropped = 0
    docs = []
    for t, (queued, disk, refused, evicted, subs, paused) in enumerate(steps):
        blocked += refused
        dropped += evicted
        doc = with_class(quiet(t), "normal", queued=queued)
        with_class(doc, "low", dropped=dropped)
        doc["spill"]["pending_events"] = disk
        doc["upstream"].update(blocked=blocked, subscribers=subs, connected=subs > 0)
        doc["ingest"]["paused"] = paused
        docs.append(doc)
    found = timeline(lambda t: docs[t], seconds=len(docs))
    assert all(a.name in CATALOGUE for a in found)
    assert len({a.name for a in found}) == len(found)
    levels = [a.level for a in found]
    assert levels == sorted(levels, key=lambda level: level != BAD)
    # Without a subscriber it is NOT CONNECTED, never a slow one.
    if steps[-1][4] == 0:
        assert "NOT CONNECTED" in names(found) and "SLOW SUBSCRIBER" not in names(found)
