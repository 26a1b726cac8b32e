"""The technician endpoint over real HTTP on loopback, port 0 only (parallel-safe)."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from agent import http, routes
from agent import status as status_client
from agent.classes import CLASS_NAMES
from agent.history import History
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
    # The snapshot's document, plus what only the history gives (no history
    # here: no rates yet; alarms from this one snapshot).
    rates, alarms = doc.pop("rates"), doc.pop("alarms")
    assert doc == json.loads(json.dumps(box.snap.to_json()))
    assert rates is None
    assert [a["name"] for a in alarms] == ["NOT CONNECTED", "DROPPED"]
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
    # The server's loop and its worker threads.
    threads = set(threading.enumerate()) - before
    assert len(threads) == 1 + http.THREADS
    srv.stop()
    assert not any(t.is_alive() for t in threads)
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


# ---------------------------------------------------------------- hardening (issues 12 and 13)


def raw_request(srv: HttpServer, head: bytes, timeout: float = 5.0) -> bytes:
    """Send `head` as is and read the whole answer (the server closes: Connection: close)."""
    with socket.create_connection(srv.address, timeout=timeout) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def answer(srv: HttpServer, path: str, host: str | None) -> tuple[int, dict[str, str], bytes]:
    head = f"GET {path} HTTP/1.1\r\nConnection: close\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    raw = raw_request(srv, (head + "\r\n").encode("latin-1"))
    status_line, _, rest = raw.partition(b"\r\n")
    header_text, _, body = rest.partition(b"\r\n\r\n")
    headers = dict(
        line.split(": ", 1) for line in header_text.decode("latin-1").split("\r\n") if line
    )
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/gateway/backpressure",
        "/api/v1/gateway/history",
        "/healthz",
        "/metrics",
        "/",
        "/nope",
    ],
)
def test_no_answer_names_the_server_software(server: HttpServer, path: str) -> None:
    status, headers, _ = request(server, path)
    assert status in (200, 404)
    assert "Server" not in headers, headers.get("Server")
    assert "Via" not in headers
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_json_errors_carry_nosniff(server: HttpServer) -> None:
    for path, method in (("/nope", "GET"), ("/healthz", "POST")):
        status, headers, _ = request(server, path, method)
        assert status in (404, 405)
        assert headers["Content-Type"].startswith("application/json")
        assert headers["X-Content-Type-Options"] == "nosniff"


def test_a_dozen_stuck_clients_never_delay_a_healthy_request(server: HttpServer) -> None:
    """Issue 12 item 6: wsgiref served one request at a time with no timeout,
    so one half-sent request took the page, `status` and /metrics down."""
    stuck: list[socket.socket] = []
    try:
        for i in range(12):
            sock = socket.create_connection(server.address, timeout=5)
            if i % 3 == 0:
                pass  # connected, says nothing (a port scanner)
            elif i % 3 == 1:
                # Half a request: the header block never ends (a stalled browser).
                sock.sendall(b"GET /api/v1/gateway/backpressure HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            else:
                # A whole request whose answer is never read.
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            stuck.append(sock)
        for path in ("/healthz", "/api/v1/gateway/backpressure", "/metrics", "/") * 3:
            started = time.monotonic()
            status, _, _ = request(server, path)
            elapsed = time.monotonic() - started
            assert status == 200, path
            assert elapsed < 1.0, (path, elapsed)
    finally:
        for sock in stuck:
            sock.close()


def test_an_idle_connection_is_closed_after_the_channel_timeout(box: FakeLoop) -> None:
    options = {"clock": box.clock, "channel_timeout_s": 1, "cleanup_interval_s": 1}
    with (
        serving(box.snapshot, **options) as srv,
        socket.create_connection(srv.address, timeout=10) as sock,
    ):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server, not by our timeout
        assert time.monotonic() - started < 8.0


def test_a_request_body_is_refused_not_buffered(server: HttpServer) -> None:
    body = b"x" * (http.MAX_BODY_BYTES + 1)
    head = (
        b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    raw = raw_request(server, head + body)
    assert raw.startswith(b"HTTP/1.1 413 ")
    assert b"\r\nServer:" not in raw.partition(b"\r\n\r\n")[0]


@pytest.mark.parametrize(
    "host",
    [
        None,  # HTTP/1.0 tools; browsers always send one
        "127.0.0.1",
        "127.0.0.1:8080",
        "10.1.2.3:8080",  # the box's LAN address, typed by the technician
        "[::1]:8080",
        "localhost:8080",
        "LOCALHOST.",
        "gw.localhost",
        "gw-01",  # this machine's name (HostPolicy is given it below)
        "gw-01.local:8080",
        "edge.example.net",  # named in allowed_hosts
    ],
)
def test_host_names_the_agent_answers_for(host: str | None) -> None:
    policy = http.HostPolicy(["Edge.Example.Net"], hostname="gw-01.substation.example")
    assert policy.allows(host)


@pytest.mark.parametrize(
    "host",
    [
        "evil.example.com",  # DNS rebinding: a page's own name, resolved to this box
        "evil.example.com:8080",
        "127.0.0.1.nip.io",
        "localhost.evil.example.com",
        "",
        "[::1",
    ],
)
def test_other_hosts_are_refused(host: str) -> None:
    policy = http.HostPolicy(["edge.example.net"], hostname="gw-01")
    assert not policy.allows(host)


def test_a_wrong_host_gets_a_json_421(server: HttpServer) -> None:
    status, headers, body = answer(server, "/api/v1/gateway/backpressure", "evil.example.com")
    assert status == 421
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    doc = json.loads(body)
    assert doc["error"] == "misdirected request" and doc["host"] == "evil.example.com"
    assert "localhost" in doc["detail"]
    # The same request by address is answered.
    assert answer(server, "/api/v1/gateway/backpressure", "127.0.0.1")[0] == 200
    assert answer(server, "/", f"localhost:{server.address[1]}")[0] == 200


def test_allowed_hosts_are_accepted(box: FakeLoop) -> None:
    with serving(box.snapshot, clock=box.clock, allowed_hosts=["gw.example.net"]) as srv:
        assert answer(srv, "/healthz", "gw.example.net:80")[0] == 200
        assert answer(srv, "/healthz", "other.example.net")[0] == 421


def test_the_access_log_escapes_the_request_line(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    forged = "/x%0A2026-01-01%20CRITICAL%20agent.loop:%20stopped%0D%1B[31m"
    with caplog.at_level(logging.DEBUG, logger="agent.http"):
        assert request(server, forged)[0] == 404
        assert answer(server, "/y%0Aforged", "evil.example.com")[0] == 421
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.http"]
    assert any("GET /x\\n2026-01-01 CRITICAL" in line and "-> 404" in line for line in lines)
    assert any("refused Host evil.example.com" in line and "/y\\nforged" in line for line in lines)
    for line in lines:
        assert "\n" not in line and "\r" not in line and "\x1b" not in line


def test_printable_escapes_and_cuts() -> None:
    assert http.printable("a\nb\\c\x1b\u00e9") == "a\\nb\\\\c\\x1b\\xe9"
    assert http.printable("x" * 300, 10) == "x" * 10 + "..."


# ---------------------------------------------------------------- history and rates


def test_history_serves_columns_and_since(box: FakeLoop) -> None:
    ring = History(capacity=10)
    for n in range(4):
        snap = dataclasses.replace(
            box.snap,
            taken_at=1.7e9 + n,
            classes=tuple(ClassStats(received=100 * n * (i + 1)) for i in range(4)),
        )
        ring.record(snap, 1000.0 + n)
    with serving(box.snapshot, clock=box.clock, history=ring) as srv:
        status, doc = get_json(srv, "/api/v1/gateway/history")
        assert status == 200
        assert doc["interval_s"] == 1.0 and doc["capacity"] == 10
        assert doc["series"]["t"] == [1.7e9 + 1, 1.7e9 + 2, 1.7e9 + 3]
        assert doc["series"]["in"]["normal"] == [300.0, 300.0, 300.0]
        status, doc = get_json(srv, f"/api/v1/gateway/history?since={1.7e9 + 2}")
        assert doc["series"]["t"] == [1.7e9 + 3]
        status, doc = get_json(srv, "/api/v1/gateway/history?since=nan")
        assert status == 400 and "since" in doc["detail"]
        status, doc = get_json(srv, "/api/v1/gateway/history?since=soon")
        assert status == 400 and "since" in doc["detail"]
        # The backpressure document carries the rates of the same ring.
        status, doc = get_json(srv, "/api/v1/gateway/backpressure")
        assert doc["rates"]["classes"]["normal"]["in"] == 300.0
        assert doc["rates"]["events_in"] == 100.0 + 200.0 + 300.0 + 400.0
