"""`GET /metrics`: the exposition text of a snapshot, read back with Prometheus' own parser.

The rendering is pure (snapshot in, bytes out), so most tests call
`metrics.render` directly; one goes through real HTTP on loopback (port 0) to
check the route, its headers and that it agrees with the JSON endpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import alarms, metrics
from agent.alarms import CATALOGUE
from agent.classes import CLASS_NAMES
from agent.stats import (
    BufferStats,
    IngestStats,
    LatencyHistogram,
    Snapshot,
    UpstreamStats,
    empty_snapshot,
)

from samples import FakeLoop, base_url, busy_snapshot, fetch, serving


def troubled_snapshot() -> Snapshot:
    """The busy agent (samples.py) with every kind of trouble counted as well, so
    that a series read from the wrong field cannot pass for zero."""
    snap = busy_snapshot()
    return dataclasses.replace(
        snap,
        spill=dataclasses.replace(snap.spill, corrupt_records=2),
        ingest=dataclasses.replace(snap.ingest, paused=True, unauthorized=7),
    )


def parse(text: bytes) -> dict[str, Any]:
    """Family name -> family, through Prometheus' own text parser."""
    return {f.name: f for f in text_string_to_metric_families(text.decode("utf-8"))}


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value; every series exactly once."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text.decode("utf-8")):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def value(series: dict[Any, float], name: str, **labels: str) -> float:
    return series[(name, tuple(sorted(labels.items())))]


# ---------------------------------------------------------------- format


@pytest.mark.parametrize("snap", [empty_snapshot("gw", "0.1.0"), troubled_snapshot()])
def test_every_family_has_help_and_type_before_its_samples(snap: Snapshot) -> None:
    text = metrics.render(snap, loop_age_s=0.5).decode("utf-8")
    assert text.endswith("\n")
    declared: dict[str, str] = {}  # family -> type
    helped: set[str] = set()
    sample_line = re.compile(
        r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$'
    )
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, help_text = line[7:].split(" ", 1)
            assert name not in helped, f"two HELP lines for {name}"
            assert help_text.strip(), f"empty HELP for {name}"
            helped.add(name)
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert name in helped, f"TYPE before HELP for {name}"
            assert name not in declared, f"two TYPE lines for {name}"
            assert kind in ("counter", "gauge", "histogram"), line
            declared[name] = kind
        else:
            m = sample_line.match(line)
            assert m, f"not a sample line: {line!r}"
            name = m.group(1)
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            owner = name if name in declared else family
            assert owner in declared, f"sample {name} before its TYPE line"
            float(m.group(3))  # the value is a number (Go float syntax)
    assert declared, "no metric at all"
    for name, kind in declared.items():
        assert name.startswith("edge_agent_"), name
        assert name.endswith("_total") == (kind == "counter"), f"{name} is a {kind}"


def test_the_disconnect_help_says_what_is_counted() -> None:
    # Every ended ingest connection is counted (the loop's monitor sees
    # EVENT_DISCONNECTED), not only the oversize-frame ones.
    family = parse(metrics.render(troubled_snapshot(), loop_age_s=0.0))[
        "edge_agent_ingest_disconnects"
    ]
    assert "for any reason" in family.documentation
    assert "collector closed" in family.documentation
    assert "ingest.max_frame_bytes" in family.documentation


def test_names_are_in_base_units() -> None:
    text = metrics.render(troubled_snapshot(), loop_age_s=0.0).decode("utf-8")
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    for name in names:
        # Bytes and seconds only: no _kib/_mb/_ms/_milliseconds/_percent.
        assert not re.search(r"_(k|m|g)i?b_|_(k|m|g)i?b$|_ms\b|milli|_percent", name), name
    assert "edge_agent_buffer_used_bytes" in names
    assert "edge_agent_loop_age_seconds" in names


def test_the_content_type_is_the_0_0_4_text_format() -> None:
    assert metrics.CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


# ---------------------------------------------------------------- values


def test_an_empty_snapshot_has_every_series_at_zero() -> None:
    snap = empty_snapshot("gw-0", "0.1.0", now=1_700_000_000.0)
    series = samples(metrics.render(snap))
    for name in CLASS_NAMES:
        assert value(series, "edge_agent_events_received_total", **{"class": name}) == 0
        assert value(series, "edge_agent_queued_bytes", **{"class": name}) == 0
    # Every known reason is there from the start, so rate() sees the first one.
    for reason in metrics.KNOWN_REASONS:
        assert value(series, "edge_agent_ingest_rejected_total", reason=reason) == 0
    assert value(series, "edge_agent_state", state="starting") == 1
    assert value(series, "edge_agent_state", state="running") == 0
    assert value(series, "edge_agent_buffer_state", state="steady") == 1
    assert value(series, "edge_agent_info", agent_id="gw-0", version="0.1.0") == 1
    assert value(series, "edge_agent_start_time_seconds") == 1_700_000_000.0
    # Without a clock reading the loop's age is not made up.
    assert not any(name == "edge_agent_loop_age_seconds" for name, _ in series)
    # The histogram is there from the start too, at zero.
    assert value(series, "edge_agent_critical_latency_seconds_count") == 0
    assert value(series, "edge_agent_critical_latency_seconds_bucket", le="+Inf") == 0


def test_values_agree_with_the_json_of_the_same_snapshot() -> None:
    snap = troubled_snapshot()
    doc = json.loads(json.dumps(snap.to_json()))
    series = samples(metrics.render(snap, loop_age_s=0.25))

    def m(name: str, **labels: str) -> float:
        return value(series, name, **labels)

    for name in CLASS_NAMES:
        c = {"class": name}
        p = doc["priorities"][name]
        assert m("edge_agent_events_received_total", **c) == p["received"]
        assert m("edge_agent_events_delivered_total", **c) == p["delivered"]
        assert m("edge_agent_events_spilled_total", **c) == p["spilled"]
        assert m("edge_agent_events_dropped_total", **c) == p["dropped"]
        assert m("edge_agent_queued_events", **c) == p["queued"]
        assert m("edge_agent_queued_bytes", **c) == p["queued_bytes"]
        on_disk = doc["spill"]["pending_by_class"][name]
        assert m("edge_agent_spill_pending_events", **c) == on_disk["events"]
        assert m("edge_agent_spill_pending_bytes", **c) == on_disk["bytes"]

    # Totals are not exposed twice: they are the sums over the class label.
    def total(name: str) -> float:
        return sum(m(name, **{"class": c}) for c in CLASS_NAMES)

    assert total("edge_agent_spill_pending_events") == doc["spill"]["pending_events"]
    assert total("edge_agent_spill_pending_bytes") == doc["spill"]["pending_bytes"]
    assert total("edge_agent_events_spilled_total") == doc["spill"]["spilled_events"]

    for field in ("used_bytes", "allocated_bytes", "capacity_bytes", "budget_bytes"):
        assert m(f"edge_agent_buffer_{field}") == doc["buffer"][field]
    assert m("edge_agent_buffer_critical_reserve_bytes") == doc["buffer"]["critical_reserve_bytes"]
    assert m("edge_agent_buffer_state", state=doc["buffer"]["state"]) == 1
    assert sum(m("edge_agent_buffer_state", state=s) for s in metrics.GOVERNOR_STATES) == 1

    spill = doc["spill"]
    assert m("edge_agent_spill_file_bytes") == spill["file_bytes"]
    assert m("edge_agent_spill_recovered_events_total") == spill["recovered_events"]
    assert m("edge_agent_spill_corrupt_records_total") == spill["corrupt_records"]
    assert m("edge_agent_spill_flushes_total") == spill["flushes"]

    by_reason = doc["rejected"]["by_reason"]
    for reason in {*metrics.KNOWN_REASONS, *by_reason}:
        assert m("edge_agent_ingest_rejected_total", reason=reason) == by_reason.get(reason, 0)
    rejected = sum(v for (n, _), v in series.items() if n == "edge_agent_ingest_rejected_total")
    assert rejected == doc["rejected"]["total"]

    ingest = doc["ingest"]
    assert m("edge_agent_ingest_frames_total") == ingest["frames"]
    assert m("edge_agent_ingest_events_total") == ingest["events"]
    assert m("edge_agent_ingest_disconnects_total") == ingest["disconnects"]
    assert m("edge_agent_ingest_paused") == int(ingest["paused"])
    assert m("edge_agent_unauthorized_peers_total", socket="ingest") == ingest["unauthorized"]

    upstream = doc["upstream"]
    assert m("edge_agent_upstream_subscribers") == upstream["subscribers"]
    assert m("edge_agent_upstream_messages_total") == upstream["messages"]
    assert m("edge_agent_upstream_events_total") == upstream["events"]
    assert m("edge_agent_upstream_blocked_total") == upstream["blocked"]

    agent = doc["agent"]
    assert m("edge_agent_info", agent_id=agent["id"], version=agent["version"]) == 1
    # Wall-clock milliseconds survive the float64 of the text format exactly.
    assert m("edge_agent_epoch") == agent["epoch"] == 1_764_000_000_123
    assert m("edge_agent_start_time_seconds") == agent["started_at"]
    assert m("edge_agent_state", state=agent["state"]) == 1
    assert m("edge_agent_loop_age_seconds") == 0.25


def test_an_unknown_reason_and_state_are_shown_not_lost() -> None:
    snap = dataclasses.replace(
        troubled_snapshot(),
        buffer=BufferStats(state="hibernating"),
        ingest=IngestStats(rejected_total=5, rejected_by_reason=(("from_the_future", 5),)),
    )
    series = samples(metrics.render(snap))
    assert value(series, "edge_agent_ingest_rejected_total", reason="from_the_future") == 5
    assert value(series, "edge_agent_buffer_state", state="hibernating") == 1
    assert value(series, "edge_agent_buffer_state", state="steady") == 0


def test_refused_handshakes_are_counted_per_socket() -> None:
    snap = dataclasses.replace(troubled_snapshot(), upstream=UpstreamStats(unauthorized=4))
    series = samples(metrics.render(snap))
    assert value(series, "edge_agent_unauthorized_peers_total", socket="upstream") == 4
    assert value(series, "edge_agent_unauthorized_peers_total", socket="ingest") == 7


# ---------------------------------------------------------------- escaping


@pytest.mark.parametrize(
    "agent_id",
    ['gw "north" 07', "back\\slash\\", "two\nlines", "ümlaut-Ω-站", "{braces}=,#"],
)
def test_label_values_are_escaped_and_read_back_exactly(agent_id: str) -> None:
    snap = dataclasses.replace(
        troubled_snapshot(),
        agent_id=agent_id,
        ingest=IngestStats(rejected_total=1, rejected_by_reason=((agent_id, 1),)),
    )
    text = metrics.render(snap)
    # One sample per line: a newline inside a label never splits a line.
    info = [line for line in text.decode().splitlines() if line.startswith("edge_agent_info{")]
    assert len(info) == 1
    series = samples(text)
    assert value(series, "edge_agent_info", agent_id=agent_id, version="0.1.0") == 1
    assert value(series, "edge_agent_ingest_rejected_total", reason=agent_id) == 1


def test_escaping_follows_the_text_format() -> None:
    snap = dataclasses.replace(troubled_snapshot(), agent_id='a"b\\c\nd')
    text = metrics.render(snap).decode()
    # https://prometheus.io/docs/instrumenting/exposition_formats/ : in label
    # values backslash, double quote and line feed are \\, \" and \n.
    assert 'agent_id="a\\"b\\\\c\\nd"' in text


# ---------------------------------------------------------------- latency histogram

BOUNDS = (0.001, 0.005, 0.025, 0.1, 0.5)


def latency_snapshot(counts: tuple[int, ...], sum_s: float, count: int) -> Snapshot:
    hist = LatencyHistogram(
        buckets=tuple(zip(BOUNDS, counts, strict=True)), sum_s=sum_s, count=count
    )
    return dataclasses.replace(troubled_snapshot(), critical_latency=hist)


def test_the_critical_latency_histogram_is_rendered() -> None:
    snap = latency_snapshot((10, 50, 90, 99, 100), sum_s=1.25, count=101)
    text = metrics.render(snap)
    family = parse(text)["edge_agent_critical_latency_seconds"]
    assert family.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert buckets == {"0.001": 10, "0.005": 50, "0.025": 90, "0.1": 99, "0.5": 100, "+Inf": 101}
    series = samples(text)
    assert value(series, "edge_agent_critical_latency_seconds_count") == 101
    assert value(series, "edge_agent_critical_latency_seconds_sum") == 1.25
    # Cumulative and ending at the count, as Prometheus' histogram_quantile needs.
    ordered = sorted(buckets.items(), key=lambda kv: math.inf if kv[0] == "+Inf" else float(kv[0]))
    assert [v for _, v in ordered] == sorted(buckets.values())


def test_an_empty_histogram_still_has_its_buckets_at_zero() -> None:
    series = samples(metrics.render(latency_snapshot((0, 0, 0, 0, 0), sum_s=0.0, count=0)))
    assert value(series, "edge_agent_critical_latency_seconds_bucket", le="+Inf") == 0
    assert value(series, "edge_agent_critical_latency_seconds_bucket", le="0.1") == 0
    assert value(series, "edge_agent_critical_latency_seconds_count") == 0


# ---------------------------------------------------------------- over HTTP


@pytest.fixture
def served() -> Iterator[tuple[str, FakeLoop]]:
    loop = FakeLoop(troubled_snapshot(), age_s=1.5)
    with serving(loop.snapshot, stale_after_s=3.0, clock=loop.clock) as srv:
        yield base_url(srv), loop


def test_get_metrics_over_http_agrees_with_the_json_endpoint(
    served: tuple[str, FakeLoop],
) -> None:
    base, loop = served
    status, headers, body = fetch(base + "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    _, _, doc_body = fetch(base + "/api/v1/gateway/backpressure")
    doc = json.loads(doc_body)
    series = samples(body)
    assert value(series, "edge_agent_loop_age_seconds") == 1.5
    assert (
        value(series, "edge_agent_queued_events", **{"class": "normal"})
        == (doc["priorities"]["normal"]["queued"])
    )
    assert value(series, "edge_agent_upstream_subscribers") == doc["upstream"]["subscribers"]
    # The same alarms as the document, by the same names.
    for name in CATALOGUE:
        active = name in {a["name"] for a in doc["alarms"]}
        assert value(series, "edge_agent_alarm", alarm=name) == int(active), name

    # The next scrape sees the next snapshot: nothing is cached.
    loop.snap = dataclasses.replace(loop.snap, upstream=UpstreamStats(subscribers=0))
    _, _, body = fetch(base + "/metrics")
    assert value(samples(body), "edge_agent_upstream_subscribers") == 0


def test_metrics_is_read_only(served: tuple[str, FakeLoop]) -> None:
    base, _ = served
    status, _, _ = fetch(base + "/metrics", "POST")
    assert status == 405


# ---------------------------------------------------------------- alarms and reported fields


def test_every_known_alarm_is_a_series_at_zero_or_one() -> None:
    snap = busy_snapshot()
    found = alarms.evaluate(snap.to_json())
    assert [a.name for a in found] == ["DROPPED"]
    series = samples(metrics.render(snap, alarms=found))
    for name in CATALOGUE:
        assert value(series, "edge_agent_alarm", alarm=name) == int(name == "DROPPED")
    # Not evaluated (no HTTP side): no alarm family at all, rather than all zero.
    assert "edge_agent_alarm" not in parse(metrics.render(snap))


def test_fields_an_agent_may_report_appear_exactly_when_reported() -> None:
    snap = busy_snapshot()
    plain = parse(metrics.render(snap))
    # The lane, the ingest path, the upstream peers and the write-through state
    # are in every Snapshot; an older agent's document may lack them.
    for name in (
        "edge_agent_lane_events",
        "edge_agent_ingest_path",
        "edge_agent_upstream_peers",
        "edge_agent_upstream_stalled",
        "edge_agent_upstream_stuck_dropped_messages",
        "edge_agent_spill_write_through",
    ):
        assert name in plain, name
    doc = snap.to_json()
    old = {k: v for k, v in doc.items()}
    old["spill"] = {k: v for k, v in doc["spill"].items() if k != "write_through"}
    assert "edge_agent_spill_write_through" not in parse(metrics.render(snap, document=old))
    doc["agent"]["ingest_path"] = "compiled"
    doc["ingest"]["lane"] = {"configured": True, "frames": 12, "events": 40, "noncritical": 3}
    doc["upstream"].update(
        peers=3, stalled=True, stuck_dropped_messages=41, stuck_dropped_events=4100
    )
    doc["spill"]["write_through"] = {"critical": True, "high": {"enabled": True}, "normal": False}
    series = samples(metrics.render(snap, document=doc))
    assert value(series, "edge_agent_lane_configured") == 1
    assert value(series, "edge_agent_lane_frames_total") == 12
    assert value(series, "edge_agent_lane_events_total") == 40
    assert value(series, "edge_agent_lane_noncritical_events_total") == 3
    assert value(series, "edge_agent_ingest_path", state="compiled") == 1
    assert value(series, "edge_agent_ingest_path", state="python") == 0
    assert value(series, "edge_agent_upstream_peers") == 3
    assert value(series, "edge_agent_upstream_stalled") == 1
    assert value(series, "edge_agent_upstream_stuck_dropped_messages_total") == 41
    assert value(series, "edge_agent_upstream_stuck_dropped_events_total") == 4100
    assert value(series, "edge_agent_spill_write_through", **{"class": "critical"}) == 1
    assert value(series, "edge_agent_spill_write_through", **{"class": "high"}) == 1
    assert value(series, "edge_agent_spill_write_through", **{"class": "normal"}) == 0
    doc["spill"]["write_through"] = ["critical"]
    series = samples(metrics.render(snap, document=doc))
    assert value(series, "edge_agent_spill_write_through", **{"class": "low"}) == 0
