"""The technician endpoint over real HTTP on loopback, port 0 only (parallel-safe)."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from agent import http, routes
from agent import status as status_client
from agent.classes import CLASS_NAMES
from agent.http import HttpServer, _LoggerStream, make_app
from agent.stats import BufferStats, ClassStats, IngestStats, SpillStats

from samples import OPENER, FakeLoop, base_url, failing_snapshot, fetch, running, serving


@pytest.fixture
def box() -> FakeLoop:
    """An agent running since 1.7e9 that published at loop time 1000.0, the clock there too."""
    return FakeLoop(running("gw-test", started=1.7e9, loop_monotonic=1000.0))


@pytest.fixture
def server(box: FakeLoop) -> Iterator[HttpServer]:
    with serving(box.snapshot, stale_after_s=3.0, clock=box.clock) as srv:
        yield srv


@pytest.fixture
def broken_server(box: FakeLoop) -> Iterator[HttpServer]:
    with serving(failing_snapshot, clock=box.clock) as srv:
        yield srv


def request(srv: HttpServer, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return fetch(base_url(srv, path), method)


def get_json(srv: HttpServer, path: str) -> tuple[int, Any]:
    status, headers, body = request(srv, path)
    assert headers["Content-Type"].startswith("application/json")
    return status, json.loads(body)


# ---------------------------------------------------------------- backpressure


def test_the_contracts_path_is_defined_once() -> None:
    # The server and the `edge-agent status` client share agent/routes.py's
    # constant; the contract spells it (INTERFACE.md).
    assert routes.BACKPRESSURE_PATH == "/api/v1/gateway/backpressure"
    assert http.BACKPRESSURE_PATH is routes.BACKPRESSURE_PATH
    assert status_client.BACKPRESSURE_PATH is routes.BACKPRESSURE_PATH
    assert "bottle" not in vars(status_client), "the status client must not need the server"


CONTRACT: dict[str, dict[str, type | tuple[type, ...]]] = {
    "buffer": {
        "used_bytes": int,
        "capacity_bytes": int,
        "budget_bytes": int,
        "utilization": (int, float),
    },
    "spill": {
        "spilled_events": int,
        "pending_events": int,
        "pending_bytes": int,
        "recovered_events": int,
        "file_bytes": int,
    },
    "rejected": {"total": int, "by_reason": dict},
}
CLASS_FIELDS = ("received", "queued", "spilled", "delivered", "dropped")


def check_contract(doc: dict[str, Any]) -> None:
    for section, fields in CONTRACT.items():
        for field, kind in fields.items():
            value = doc[section][field]
            assert isinstance(value, kind) and not isinstance(value, bool), (section, field)
    assert set(doc["priorities"]) >= set(CLASS_NAMES)
    for name in CLASS_NAMES:
        for field in CLASS_FIELDS:
            value = doc["priorities"][name][field]
            assert isinstance(value, int) and not isinstance(value, bool), (name, field)


def test_backpressure_of_an_empty_snapshot_has_every_contract_field(server: HttpServer) -> None:
    status, headers, body = request(server, "/api/v1/gateway/backpressure")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Cache-Control"] == "no-store"
    check_contract(json.loads(body))


def test_backpressure_serves_the_current_snapshot(server: HttpServer, box: FakeLoop) -> None:
    mib = 1 << 20
    box.snap = dataclasses.replace(
        box.snap,
        classes=tuple(
            ClassStats(received=10 * i + 1, queued=i, delivered=10 * i, dropped=i // 3)
            for i in range(len(CLASS_NAMES))
        ),
        buffer=BufferStats(used_bytes=64 * mib, capacity_bytes=128 * mib, budget_bytes=512 * mib),
        spill=SpillStats(enabled=True, pending_events=7, pending_bytes=700, file_bytes=mib),
        ingest=IngestStats(rejected_total=3, rejected_by_reason=(("not_cbor", 2), ("no_ts", 1))),
    )
    status, doc = get_json(server, "/api/v1/gateway/backpressure")
    assert status == 200
    check_contract(doc)
    assert doc == json.loads(json.dumps(box.snap.to_json()))
    assert doc["buffer"]["utilization"] == 0.125
    assert doc["priorities"]["low"] == {**doc["priorities"]["low"], "received": 31, "dropped": 1}
    assert doc["rejected"] == {"total": 3, "by_reason": {"not_cbor": 2, "no_ts": 1}}

    # The next request sees the next snapshot: nothing is cached.
    box.snap = dataclasses.replace(box.snap, buffer=BufferStats(budget_bytes=512 * mib))
    assert get_json(server, "/api/v1/gateway/backpressure")[1]["buffer"]["used_bytes"] == 0


def test_head_answers_like_get_without_a_body(server: HttpServer) -> None:
    status, headers, body = request(server, "/api/v1/gateway/backpressure", "HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Type"].startswith("application/json")


# ---------------------------------------------------------------- healthz


def test_healthz_ok_while_the_loop_is_fresh(server: HttpServer, box: FakeLoop) -> None:
    box.now += 3.0  # exactly the limit still counts as fresh
    status, doc = get_json(server, "/healthz")
    assert status == 200
    assert doc["status"] == "ok"
    assert doc["loop_age_s"] == pytest.approx(3.0)


def test_healthz_stalled_when_the_loop_stops_publishing(server: HttpServer, box: FakeLoop) -> None:
    box.now += 3.5
    status, doc = get_json(server, "/healthz")
    assert status == 503
    assert doc["status"] == "stalled"
    assert doc["loop_age_s"] == pytest.approx(3.5)

    # The loop turns again: healthy again.
    box.snap = dataclasses.replace(box.snap, loop_monotonic=box.now)
    assert get_json(server, "/healthz") == (
        200,
        {"status": "ok", "loop_age_s": 0.0, "state": "running"},
    )


def test_healthz_unavailable_while_starting(server: HttpServer, box: FakeLoop) -> None:
    box.snap = dataclasses.replace(box.snap, state="starting")
    status, doc = get_json(server, "/healthz")
    assert status == 503
    assert doc["status"] == "starting"
    assert "loop_age_s" in doc


def test_healthz_honours_stale_after(box: FakeLoop) -> None:
    srv = HttpServer("127.0.0.1", 0, box.snapshot, stale_after_s=10.0, clock=box.clock)
    srv.start()
    try:
        box.now += 5.0
        assert get_json(srv, "/healthz")[0] == 200
        box.now += 6.0
        assert get_json(srv, "/healthz")[0] == 503
    finally:
        srv.stop()


# ---------------------------------------------------------------- errors


def test_unknown_path_is_a_json_404(server: HttpServer) -> None:
    status, doc = get_json(server, "/api/v1/gateway/nope")
    assert status == 404
    assert doc == {"error": "not found", "path": "/api/v1/gateway/nope"}


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_the_endpoint_is_read_only(server: HttpServer, method: str) -> None:
    status, headers, body = request(server, "/api/v1/gateway/backpressure", method)
    assert status == 405
    assert headers["Content-Type"].startswith("application/json")
    assert "GET" in headers["Allow"]
    doc = json.loads(body)
    assert doc["error"] == "method not allowed"
    assert doc["method"] == method


def assert_logged_500(srv: HttpServer, path: str, caplog: pytest.LogCaptureFixture) -> None:
    """`path` answers a JSON 500 and the snapshot's exception reaches the log."""
    with caplog.at_level(logging.ERROR, logger="agent.http"):
        status, doc = get_json(srv, path)
    assert status == 500
    assert doc["error"] == "internal error"
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)


def test_a_failing_snapshot_is_a_logged_json_500(
    broken_server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert_logged_500(broken_server, "/api/v1/gateway/backpressure", caplog)
    # The server survives its own bug.
    assert get_json(broken_server, "/nope")[0] == 404


def test_a_non_finite_number_is_a_500_not_invalid_json(
    server: HttpServer, box: FakeLoop, caplog: pytest.LogCaptureFixture
) -> None:
    box.snap = dataclasses.replace(box.snap, spill=SpillStats(drain_eta_s=float("inf")))
    with caplog.at_level(logging.ERROR, logger="agent.http"):
        status, doc = get_json(server, "/api/v1/gateway/backpressure")
    assert status == 500
    assert doc["error"] == "internal error"
    assert caplog.records


# ---------------------------------------------------------------- life cycle


def test_stop_frees_the_port_and_ends_the_thread(box: FakeLoop) -> None:
    before = set(threading.enumerate())
    srv = HttpServer("127.0.0.1", 0, box.snapshot, clock=box.clock)
    srv.start()
    host, port = srv.address
    assert port != 0
    assert get_json(srv, "/healthz")[0] == 200
    (thread,) = set(threading.enumerate()) - before
    srv.stop()
    assert not thread.is_alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=5).close()
    # The same port can be served again at once (a restart of the agent).
    again = HttpServer(host, port, box.snapshot, clock=box.clock)
    again.start()
    try:
        assert again.address == (host, port)
        assert get_json(again, "/healthz")[0] == 200
    finally:
        again.stop()


def test_stop_is_idempotent_and_safe_before_start(box: FakeLoop) -> None:
    srv = HttpServer("127.0.0.1", 0, box.snapshot)
    srv.stop()
    srv.start()
    srv.stop()
    srv.stop()


def test_a_port_in_use_fails_start_with_oserror_naming_it(
    server: HttpServer, box: FakeLoop
) -> None:
    host, port = server.address
    other = HttpServer(host, port, box.snapshot)
    with pytest.raises(OSError) as info:
        other.start()
    assert info.value.errno == errno.EADDRINUSE
    assert f"{host}:{port}" in str(info.value)
    # The first server is unharmed.
    assert get_json(server, "/healthz")[0] == 200


def test_an_address_not_on_this_host_fails_start(box: FakeLoop) -> None:
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never assigned to a real interface.
    srv = HttpServer("192.0.2.1", 0, box.snapshot)
    with pytest.raises(OSError, match=r"192\.0\.2\.1:0"):
        srv.start()


def test_ipv6_loopback(box: FakeLoop) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    srv = HttpServer("::1", 0, box.snapshot, clock=box.clock)
    try:
        srv.start()
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    try:
        host, port = srv.address
        assert host == "::1"
        with OPENER.open(f"http://[::1]:{port}/healthz", timeout=5) as resp:
            assert json.loads(resp.read())["status"] == "ok"
    finally:
        srv.stop()


def test_requests_are_not_printed_to_stderr(
    server: HttpServer, capfd: pytest.CaptureFixture[str]
) -> None:
    request(server, "/healthz")
    request(server, "/nope")
    request(server, "/healthz", "POST")
    assert capfd.readouterr().err == ""


def test_an_error_outside_any_route_is_still_json_and_logged(
    box: FakeLoop, caplog: pytest.LogCaptureFixture
) -> None:
    # Straight through WSGI, no server: Bottle's own catch-all (a failing hook
    # here) must answer JSON too, and its traceback must reach the log.
    app = make_app(box.snapshot, stale_after_s=3.0, clock=box.clock)

    def boom() -> None:
        raise RuntimeError("hook failed")

    app.add_hook("before_request", boom)
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = "/healthz"
    environ["wsgi.errors"] = _LoggerStream()
    started: list[Any] = []
    with caplog.at_level(logging.ERROR, logger="agent.http"):
        body = b"".join(app(environ, lambda status, headers, *exc: started.append(status)))
    assert started[0].startswith("500")
    assert json.loads(body)["error"] == "internal error"
    assert any("hook failed" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- metrics and the status page


@pytest.mark.parametrize("path", ["/", "/metrics"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_the_status_page_and_metrics_are_read_only(
    server: HttpServer, path: str, method: str
) -> None:
    status, headers, body = request(server, path, method)
    assert status == 405
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"] == "method not allowed"


def test_metrics_and_the_page_answer_get_and_head(server: HttpServer) -> None:
    for path, kind in (("/metrics", "text/plain; version=0.0.4"), ("/", "text/html")):
        status, headers, body = request(server, path)
        assert status == 200 and body, path
        assert headers["Content-Type"].startswith(kind), path
        assert headers["Cache-Control"] == "no-store", path
        status, headers, body = request(server, path, "HEAD")
        assert (status, body) == (200, b""), path


def test_a_failing_snapshot_makes_metrics_a_logged_json_500(
    broken_server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert_logged_500(broken_server, "/metrics", caplog)
    # The page itself does not need a snapshot: it still loads.
    assert request(broken_server, "/")[0] == 200


def test_page_and_metrics_requests_are_not_printed_to_stderr(
    server: HttpServer, capfd: pytest.CaptureFixture[str]
) -> None:
    request(server, "/")
    request(server, "/metrics")
    assert capfd.readouterr().err == ""
