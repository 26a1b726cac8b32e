"""`edge-agent status`: rendering any document, and talking to a live endpoint."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from agent.classes import CLASS_NAMES
from agent.stats import (
    BufferStats,
    ClassStats,
    IngestStats,
    Snapshot,
    UpstreamStats,
    empty_snapshot,
)
from agent.status import DEFAULT_URL, StatusError, fetch, main, render

from samples import FakeLoop, GiB, MiB, base_url, failing_snapshot, running, serving, spilling


def busy_snapshot() -> Snapshot:
    classes = (
        ClassStats(received=120, delivered=120),
        ClassStats(received=4512, queued=12, delivered=4500),
        ClassStats(
            received=1_204_331,
            queued=40_112,
            spilled=300_000,
            pending=210_003,
            pending_bytes=98 * MiB,
            delivered=954_216,
        ),
        ClassStats(
            received=88_001,
            queued=9_001,
            spilled=60_000,
            pending=60_000,
            pending_bytes=5 * MiB,
            delivered=19_000,
            dropped=1_204,
        ),
    )
    return running(
        "gw-substation-07",
        started=1.7e9,
        uptime_s=3 * 86400 + 4 * 3600 + 12 * 60,
        epoch=17,
        classes=classes,
        buffer=BufferStats(
            used_bytes=int(61.4 * MiB),
            allocated_bytes=64 * MiB,
            capacity_bytes=200 * MiB,
            budget_bytes=512 * MiB,
            state="spilling",
        ),
        spill=spilling(classes, recovered_events=90_000, file_bytes=2 * GiB, drain_eta_s=252.0),
        ingest=IngestStats(
            frames=500_000,
            events=1_296_844,
            rejected_total=1_234,
            rejected_by_reason=(("missing_key", 200), ("not_cbor", 1_000), ("too_large", 34)),
        ),
        upstream=UpstreamStats(
            subscribers=2, peers=2, messages=12_000, events=1_097_836, blocked=3
        ),
    )


def contract_only() -> dict[str, Any]:
    """Exactly the fields INTERFACE.md guarantees, nothing more."""
    zeros = dict.fromkeys(("received", "queued", "spilled", "delivered", "dropped"), 0)
    return {
        "buffer": {"used_bytes": 0, "capacity_bytes": 0, "budget_bytes": 0, "utilization": 0.0},
        "spill": dict.fromkeys(
            ("spilled_events", "pending_events", "pending_bytes", "recovered_events", "file_bytes"),
            0,
        ),
        "priorities": {name: dict(zeros) for name in CLASS_NAMES},
        "rejected": {"total": 0, "by_reason": {}},
    }


def class_row(text: str, name: str) -> list[str]:
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return line.split()[1:]


def assert_plain(text: str, width: int = 72) -> None:
    assert text.isascii()
    assert "\x1b" not in text
    for line in text.splitlines():
        assert len(line) <= width, line


# ---------------------------------------------------------------- render


def test_render_an_empty_snapshot() -> None:
    text = render(empty_snapshot("gw-01", "0.1.0").to_json())
    assert_plain(text)
    assert "gw-01" in text
    assert "starting" in text
    assert "NOT CONNECTED" in text  # no subscriber yet, and it says so
    for name in CLASS_NAMES:
        assert class_row(text, name) == ["0", "0", "0", "0", "0"]
    assert "DROPPED" not in text


def test_render_a_busy_agent() -> None:
    text = render(busy_snapshot().to_json())
    print(text)  # shown by pytest -s: the reference look
    assert_plain(text)
    assert "gw-substation-07" in text
    assert "running" in text
    assert "up 3d 4h 12m" in text
    # Buffer: the bar, human units, percentages against the budget.
    (bar,) = [line for line in text.splitlines() if line.startswith("memory")]
    assert bar.endswith("]")
    assert bar.count("#") == round(62 * 61.4 / 512)
    assert "61.4 MiB" in text
    assert "200.0 MiB" in text
    assert "512.0 MiB" in text
    assert "12.0% of budget" in text
    assert "30.7% of capacity" in text
    assert "governor: spilling" in text
    # Per class: received, queued, on disk, delivered, dropped.
    assert class_row(text, "normal") == ["1,204,331", "40,112", "210,003", "954,216", "0"]
    assert class_row(text, "low") == ["88,001", "9,001", "60,000", "19,000", "1,204"]
    assert "DROPPED: 1,204 low" in text
    # Spill, rejects (largest first), upstream.
    assert "270,003 events on disk (103.0 MiB), drain ETA 4m 12s" in text
    assert "files 2.0 GiB" in text
    assert "1,234 total: not_cbor 1,000, missing_key 200, too_large 34" in text
    assert "connected (2 subscribers, 2 peers)" in text
    assert "NOT CONNECTED" not in text
    # The start as a time, not the 13-digit epoch (issue 12 item 8).
    assert "since 2023-11-14 22:13 UTC" in text and "epoch" not in text
    # Refused sends are counted, not called a slow subscriber (issue 12 item 3).
    assert "3 sends refused by a full pipe" in text
    assert "slow" not in text.lower()


def test_render_no_subscriber_is_loud() -> None:
    snap = dataclasses.replace(busy_snapshot(), upstream=UpstreamStats(subscribers=0))
    text = render(snap.to_json())
    (line,) = [line for line in text.splitlines() if line.startswith("upstream")]
    assert "NOT CONNECTED" in line
    colored = render(snap.to_json(), color=True)
    assert "\x1b[1;31mNOT CONNECTED" in colored


def test_render_a_contract_only_document() -> None:
    text = render(contract_only())
    assert_plain(text)
    for name in CLASS_NAMES:
        # on disk per class is not in the contract: shown as unknown, not as 0
        assert class_row(text, name) == ["0", "0", "-", "0", "0"]
    assert "upstream  not reported" in text
    assert "rejected  0 total" in text


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"buffer": "full", "priorities": [], "spill": None, "rejected": 7},
        {"agent": {"id": 5, "uptime_s": "long", "state": None}, "upstream": {"subscribers": "2"}},
        {"buffer": {"used_bytes": True, "budget_bytes": 100, "capacity_bytes": -5}},
        {"buffer": {"used_bytes": 10**15, "budget_bytes": 1, "capacity_bytes": 10**15}},
        {"rejected": {"total": 1.5, "by_reason": {"x": "many", "y": None, "z": 2}}},
        {"spill": {"enabled": True, "pending_events": 3, "drain_eta_s": None}},
    ],
)
def test_render_survives_odd_documents(doc: dict[str, Any]) -> None:
    text = render(doc)
    assert_plain(text)
    assert text.startswith("agent")


@pytest.mark.parametrize("width", [40, 60, 72, 100])
def test_render_fits_the_width(width: int) -> None:
    text = render(busy_snapshot().to_json(), width=width)
    # The class table is as wide as its numbers; everything else wraps.
    for line in text.splitlines():
        if not line.startswith(("class", *CLASS_NAMES)):
            assert len(line) <= max(width, 30), line


def test_color_only_when_asked() -> None:
    doc = busy_snapshot().to_json()
    assert "\x1b[" not in render(doc)
    colored = render(doc, color=True)
    assert "\x1b[" in colored
    # Stripping the escapes gives back the plain rendering.
    assert re.sub(r"\x1b\[[0-9;]*m", "", colored) == render(doc)


# ---------------------------------------------------------------- against a live endpoint


@pytest.fixture
def live() -> Iterator[tuple[str, FakeLoop]]:
    loop = FakeLoop(busy_snapshot())
    with serving(loop.snapshot, clock=loop.clock) as srv:
        yield base_url(srv), loop


@pytest.fixture
def closed_url() -> Iterator[str]:
    # Bound but not listening: connections to it are refused, and holding the
    # port keeps any other test from taking it meanwhile.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_fetch_returns_the_document(live: tuple[str, FakeLoop]) -> None:
    url, agent = live
    doc = fetch(url)
    # The snapshot's document, and what the agent adds from its history.
    assert [a["name"] for a in doc.pop("alarms")] == ["DROPPED"]
    assert doc.pop("rates") is None  # no history in this test
    assert doc == json.loads(json.dumps(agent.snap.to_json()))
    # A trailing slash and a missing scheme are what people type.
    assert fetch(url + "/") == fetch(url.removeprefix("http://"))


def test_main_prints_the_summary(live: tuple[str, FakeLoop]) -> None:
    url, _ = live
    out, err = io.StringIO(), io.StringIO()
    assert main(url, as_json=False, out=out, err=err) == 0
    assert err.getvalue() == ""
    assert out.getvalue() == render(fetch(url))  # a StringIO is no tty
    assert "DROPPED: 1,204 low" in out.getvalue()


def test_main_json_is_the_raw_document_pretty_and_sorted(live: tuple[str, FakeLoop]) -> None:
    url, agent = live
    out, err = io.StringIO(), io.StringIO()
    assert main(url, as_json=True, out=out, err=err) == 0
    text = out.getvalue()
    doc = json.loads(text)
    assert {doc.pop("rates") is None, bool(doc.pop("alarms"))} == {True}
    assert doc == json.loads(json.dumps(agent.snap.to_json()))
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_main_against_a_closed_port(closed_url: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main(closed_url, as_json=False, out=out, err=err) == 1
    assert out.getvalue() == ""
    message = err.getvalue()
    assert message.startswith("edge-agent status: connection refused")
    assert closed_url in message
    assert message.count("\n") == 1  # one readable line, no traceback


def test_fetch_times_out_on_a_silent_peer() -> None:
    # Listening, never answering: the kernel completes the handshake for us.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(StatusError, match=r"no answer from .* within 0.2 s"):
            fetch(url, timeout=0.2)


def test_fetch_reports_an_http_error() -> None:
    with serving(failing_snapshot) as srv, pytest.raises(StatusError, match="HTTP 500"):
        fetch(base_url(srv))


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def not_an_agent() -> Iterator[str]:
    """A web server that answers 200 with HTML, like a wrong --url would."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        return [b"<html>router login</html>"]

    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_fetch_reports_a_body_that_is_not_json(not_an_agent: str) -> None:
    with pytest.raises(StatusError, match="did not answer JSON"):
        fetch(not_an_agent)
    err = io.StringIO()
    assert main(not_an_agent, as_json=True, out=io.StringIO(), err=err) == 1
    assert "is this an edge-agent?" in err.getvalue()


def test_default_url_is_the_default_bind() -> None:
    assert DEFAULT_URL == "http://127.0.0.1:8080"


# ---------------------------------------------------------------- alarms, rates, newer fields


def test_the_agents_alarms_are_printed_worst_first_with_what_to_do() -> None:
    doc = busy_snapshot().to_json()
    doc["alarms"] = [
        {
            "name": "STUCK SUBSCRIBER",
            "level": "bad",
            "detail": "40 messages dropped",
            "action": "restart it",
        },
        {
            "name": "SLOW SUBSCRIBER",
            "level": "warn",
            "detail": "backlog 5,500",
            "action": "check it",
        },
    ]
    text = render(doc)
    lines = text.splitlines()
    first = lines.index("!!        STUCK SUBSCRIBER: 40 messages dropped")
    assert lines[first + 1] == "          -> restart it"
    assert lines[first + 2] == "!!        SLOW SUBSCRIBER: backlog 5,500"
    assert "DROPPED" not in text  # the agent's list is the list
    colored = render(doc, color=True)
    assert "\x1b[1;31m!!        STUCK SUBSCRIBER" in colored
    assert "\x1b[33m!!        SLOW SUBSCRIBER" in colored


def test_alarms_from_an_agent_that_does_not_send_them() -> None:
    doc = busy_snapshot().to_json()
    doc["ingest"]["paused"] = True
    text = render(doc)
    assert "INGEST PAUSED: memory and spill files full" in text
    assert "DROPPED: 1,204 low evicted since start" in text
    assert text.index("INGEST PAUSED") < text.index("DROPPED")


def test_rates_are_shown_when_the_agent_sends_them() -> None:
    doc = busy_snapshot().to_json()
    doc["rates"] = {
        "window_s": 5.0,
        "events_in": 6440.0,
        "events_out": 6400.0,
        "rejected": 2.0,
        "classes": {"critical": {"in": 40.0, "out": 40.0}},
    }
    text = " ".join(render(doc).split())  # wrapped at 72 columns
    assert "rates in 6,440/s, out 6,400/s; critical in 40/s; rejected 2.0/s (last 5 s)" in text
    assert "rates " not in render(busy_snapshot().to_json())


def test_the_lane_the_ingest_path_stuck_subscribers_and_write_through() -> None:
    doc = busy_snapshot().to_json()
    doc["agent"]["ingest_path"] = "compiled"
    doc["ingest"]["lane"] = {"configured": True, "frames": 12, "events": 40, "noncritical": 3}
    doc["upstream"].update(
        peers=3, stalled=True, stuck_dropped_messages=41, stuck_dropped_events=4100
    )
    doc["spill"]["write_through"] = ["critical", "high"]
    text = render(doc)
    assert_plain(text)
    assert "compiled ingest" in text
    assert "lane      40 events in 12 frames; 3 not critical" in text
    assert "connected (2 subscribers, 3 peers)" in text
    assert "a subscriber stopped reading" in text
    assert "41 messages dropped for stuck subscribers (4,100 events)" in text
    assert "write-through: critical, high" in text
    doc["ingest"]["lane"] = {"configured": False}
    doc["spill"]["write_through"] = {"critical": {"enabled": True}, "high": False}
    text = render(doc)
    assert "lane      no alert lane configured" in text
    assert "write-through: critical" in text and "write-through: critical," not in text
