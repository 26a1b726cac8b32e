"""The technician endpoint: a read-only Bottle app on a waitress server.

This module owns the HTTP side of the contract (INTERFACE.md, "Technician
endpoint"): the routes, their status codes, headers and JSON bodies, who may
ask (the Host check), and the server's life cycle. It promises:

- The HTTP threads never touch the loop's state. Their only ways in are the
  `snapshot()` callable, which returns an immutable `Snapshot` (the loop swaps
  one reference), and the `History`, whose samples are an immutable tuple the
  loop replaces whole. Each answer is computed from one snapshot.
- Every answer is JSON, errors included (404 unknown path, 405 any method
  other than GET/HEAD, 421 a Host this agent does not answer for, 500 a bug
  here, logged with its traceback on the `agent.http` logger). JSON carries
  `X-Content-Type-Options: nosniff`; no answer names the server software or
  the Python version (no `Server` header at all). Nothing is written to
  stderr per request; the access log is at debug level, with the request's
  method and target escaped (a `%0A` in a path cannot start a forged line).
- Slow or stuck clients cannot take the endpoint down (issue 12 item 6):
  waitress reads and writes every connection from one asynchronous loop and
  hands only complete requests to its small thread pool, so a connection that
  sends half a request, or reads its answer slowly, holds no thread. Idle
  connections are closed after `CHANNEL_TIMEOUT_S`; at most
  `CONNECTION_LIMIT` are open at once (beyond it the kernel's listen backlog
  holds new ones until a slot frees).
- `HttpServer.start()` binds before it returns, so a bad `[http] bind` fails
  start-up with an OSError naming host:port instead of dying later in a thread.

Routes (their paths: agent/routes.py): the backpressure JSON, the history
JSON for the page's charts and `/healthz` (here), `GET /metrics` (Prometheus
text, agent/metrics.py) and `GET /` (the status page, agent/page.py). The
backpressure document is `Snapshot.to_json()` plus two sections only the
history can give: `rates` (per second over the last 5 s, agent/history.py)
and `alarms` (agent/alarms.py), so the page, `edge-agent status` and a script
read the same figures and the same alarm names.

The Host check (DNS rebinding): a web page elsewhere can make a browser on the
technician's laptop resolve its own name to this box and then read the
answers as that page's origin. Only a request whose Host is a name the agent
answers for gets through: any IP address literal (a browser sends one only
when the user typed it, and no page can rebind an address), `localhost` and
names under `.localhost` (RFC 6761: always loopback), this machine's own host
name (with or without `.local`), and the names given in `allowed_hosts`. A
request without Host (HTTP/1.0 tools) is answered: browsers always send one.
Anything else is 421 Misdirected Request, with the allowed forms in the body.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import bottle
import waitress
from waitress import wasyncore

from agent import alarms, metrics, page
from agent.history import History, rates, series
from agent.routes import (
    BACKPRESSURE_PATH,
    HEALTHZ_PATH,
    HISTORY_PATH,
    METRICS_PATH,
    STATUS_PAGE_PATH,
)
from agent.stats import Snapshot

log = logging.getLogger("agent.http")

# Connections idle this long are closed (waitress' channel_timeout; its
# cleanup runs every CLEANUP_INTERVAL_S, so a stuck peer goes within ~12 s).
# The page polls every second over keep-alive, far inside it; a half request
# from a port scanner or a stalled browser is gone soon after.
CHANNEL_TIMEOUT_S = 10
CLEANUP_INTERVAL_S = 2
# Open connections at once. A technician's page, `status`, a Prometheus
# scrape and a supervisor's /healthz need a handful; 64 leaves room for a
# dozen stuck clients and a few browser tabs, and bounds descriptors (the
# unit's LimitNOFILE is far above) and per-connection buffers (~100 KiB each).
CONNECTION_LIMIT = 64
# Worker threads. Every request takes the GIL the event loop also needs, so
# more threads would not answer faster: two let /metrics and the page overlap.
THREADS = 2
# The endpoint is read-only and its requests are a request line and a few
# headers: 16 KiB of headers is four times what a browser sends with cookies
# for another app on the same host, and a body is never read (waitress would
# otherwise buffer up to 1 GiB of it, in temporary files past 512 KiB).
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024
# How often the server's loop looks at the stop flag: stop() takes at most this.
STOP_POLL_S = 0.2
# A request target longer than this is cut in the debug log.
LOG_TARGET_CHARS = 200

LOCAL_NAMES = ("localhost",)

Route = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


# ---------------------------------------------------------------- the app


def make_app(
    snapshot: Callable[[], Snapshot],
    *,
    stale_after_s: float,
    clock: Callable[[], float],
    history: History | None = None,
    allowed_hosts: Iterable[str] = (),
) -> _App:
    """The WSGI app. Pure request -> snapshot -> response; no thread, no socket.

    `clock` must be the clock the loop stamps `Snapshot.loop_monotonic` with
    (time.monotonic in production), so their difference is the loop's age.
    `history` is the loop's ring (an empty one when None: no rates, and only
    the alarms that need no trend). `allowed_hosts`: Host names accepted beyond
    the built-in ones (module docstring).
    """
    ring = history if history is not None else History()
    app = _App(HostPolicy(allowed_hosts))
    # One place turns a route's result into a response and owns the error
    # policy (`_serve_json`), instead of Bottle's JSON plugin, whose dumps()
    # runs outside any wrapper of ours and whose failures go to stderr.
    app.uninstall("json")
    app.uninstall("template")
    app.install(_serve_json)

    def loop_age(snap: Snapshot) -> float:
        return clock() - snap.loop_monotonic

    def current_alarms(snap: Snapshot, doc: dict[str, Any]) -> tuple[alarms.Alarm, ...]:
        return alarms.evaluate(
            doc, ring.samples(), loop_age_s=loop_age(snap), stale_after_s=stale_after_s
        )

    @app.get(BACKPRESSURE_PATH)
    def backpressure() -> dict[str, Any]:
        snap = snapshot()
        doc = snap.to_json()
        doc["rates"] = rates(ring.samples())
        doc["alarms"] = [a.to_json() for a in current_alarms(snap, doc)]
        return doc

    @app.get(HISTORY_PATH)
    def history_series() -> dict[str, Any]:
        snap = snapshot()
        since = _float_param("since")
        return {
            "agent": {"id": snap.agent_id, "epoch": snap.epoch},
            "interval_s": ring.every_s,
            "capacity": ring.capacity,
            "series": series(ring.samples(), since=since),
        }

    @app.get(HEALTHZ_PATH)
    def healthz() -> tuple[int, dict[str, Any]]:
        snap = snapshot()
        age = loop_age(snap)
        if snap.state == "starting":
            # Spill recovery and socket binding are not done: a supervisor
            # must not route traffic or declare the agent healthy yet.
            status, code = "starting", 503
        elif age > stale_after_s:
            # The loop builds a snapshot every turn; an old one means the loop
            # is stuck (or dead) while this thread still answers.
            status, code = "stalled", 503
        else:
            status, code = "ok", 200
        return code, {"status": status, "loop_age_s": round(age, 3), "state": snap.state}

    @app.get(METRICS_PATH)
    def metrics_text() -> bytes:
        snap = snapshot()
        doc = snap.to_json()
        body = metrics.render(
            snap,
            loop_age_s=loop_age(snap),
            alarms=current_alarms(snap, doc),
            document=doc,
        )
        bottle.response.content_type = metrics.CONTENT_TYPE
        bottle.response.set_header("Cache-Control", "no-store")
        bottle.response.set_header("X-Content-Type-Options", "nosniff")
        return body

    @app.get(STATUS_PAGE_PATH)
    def status_page() -> bytes:
        # Static: the page fetches the snapshot itself (agent/page.py).
        for name, value in page.HEADERS:
            bottle.response.set_header(name, value)
        return page.BODY_BYTES

    @app.error(400)
    def bad_request(err: bottle.HTTPError) -> str:
        return _error_body(400, {"error": "bad request", "detail": str(err.body)})

    @app.error(404)
    def not_found(err: bottle.HTTPError) -> str:
        return _error_body(404, {"error": "not found", "path": bottle.request.path})

    @app.error(405)
    def method_not_allowed(err: bottle.HTTPError) -> str:
        # Bottle has already put the Allow header on the response.
        return _error_body(
            405,
            {
                "error": "method not allowed",
                "method": bottle.request.method,
                "path": bottle.request.path,
                "detail": "the technician endpoint is read-only",
            },
        )

    @app.error(500)
    def internal_error(err: bottle.HTTPError) -> str:
        # Reached only when Bottle itself caught an exception outside our
        # routes; it has written the traceback to wsgi.errors, which _App
        # sends to the agent.http logger.
        return _error_body(500, {"error": "internal error", "path": bottle.request.path})

    return app


def _float_param(name: str) -> float | None:
    raw = bottle.request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        bottle.abort(400, f"{name} must be a number (Unix seconds), not {raw[:40]!r}")
    if value != value or value in (float("inf"), float("-inf")):
        bottle.abort(400, f"{name} must be a finite number")
    return value


def _serve_json(callback: Route) -> Route:
    """Bottle plugin: dict or (status, dict) -> JSON; an unexpected error -> logged 500 JSON."""

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = callback(*args, **kwargs)
            status = 200
            if isinstance(result, tuple):
                status, result = result
            if not isinstance(result, dict):
                return result  # a route that renders its own body (text, HTML)
            # allow_nan=False: NaN/Infinity are not JSON and strict parsers
            # reject the whole document; a non-finite number is a bug upstream
            # and surfaces here as a logged 500 rather than a broken document.
            body = json.dumps(result, allow_nan=False)
        except bottle.HTTPResponse:
            raise  # bottle.abort() / redirect: Bottle's own control flow
        except Exception:
            # A bug in a snapshot or a route must not take the endpoint down
            # nor print to stderr: the technician gets a JSON 500, the log the
            # traceback.
            log.exception("%s %s failed", bottle.request.method, bottle.request.path)
            return _error_body(500, {"error": "internal error", "path": bottle.request.path})
        bottle.response.status = status
        _json_headers()
        return body

    return wrapper


def _error_body(status: int, doc: dict[str, Any]) -> str:
    bottle.response.status = status
    _json_headers()
    return json.dumps(doc)


def _json_headers() -> None:
    bottle.response.content_type = "application/json"
    # Every answer is "now": a proxy or browser cache must never show a
    # technician yesterday's queue depth.
    bottle.response.set_header("Cache-Control", "no-store")
    # A browser must take JSON for JSON, never sniff it into HTML or script.
    bottle.response.set_header("X-Content-Type-Options", "nosniff")


# ---------------------------------------------------------------- who may ask


class HostPolicy:
    """Which Host header values the endpoint answers (module docstring)."""

    def __init__(self, allowed_hosts: Iterable[str] = (), hostname: str | None = None) -> None:
        names = {_normal_host(h) for h in allowed_hosts if h.strip()}
        own = _normal_host(hostname if hostname is not None else socket.gethostname())
        if own:
            short = own.split(".", 1)[0]
            names |= {own, short, short + ".local"}
        self.names = frozenset(names)

    def allows(self, host_header: str | None) -> bool:
        if host_header is None:
            return True
        host = _normal_host(_strip_port(host_header))
        if not host:
            return False
        if host in LOCAL_NAMES or host.endswith(".localhost") or host in self.names:
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True

    def describe(self) -> str:
        extra = ", ".join(sorted(self.names))
        return "an IP address, localhost" + (f", {extra}" if extra else "")


def _strip_port(host: str) -> str:
    host = host.strip()
    if host.startswith("["):  # "[::1]:8080"
        end = host.find("]")
        return host[1:end] if end > 0 else ""
    if host.count(":") == 1:  # "name:8080" (a bare IPv6 address has several)
        return host.split(":", 1)[0]
    return host


def _normal_host(host: str) -> str:
    # Names are case-insensitive; a trailing dot names the same host.
    return host.strip().lower().rstrip(".")


def printable(text: str, limit: int = LOG_TARGET_CHARS) -> str:
    """`text` for a log line: control and non-ASCII characters escaped (Python
    `ascii()` style, so a backslash is doubled), cut at `limit` characters."""
    cut = len(text) > limit
    shown = ascii(text[:limit])[1:-1]
    return shown + ("..." if cut else "")


class _App(bottle.Bottle):
    """Bottle, behind the Host check, the access log and the error stream."""

    def __init__(self, hosts: HostPolicy) -> None:
        super().__init__()
        self.hosts = hosts

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        # Tracebacks Bottle writes for errors outside our routes go to the log,
        # not to the server's stderr.
        environ["wsgi.errors"] = _LoggerStream()
        if not self.hosts.allows(environ.get("HTTP_HOST")):
            return self._misdirected(environ, start_response)
        if not log.isEnabledFor(logging.DEBUG):
            return super().__call__(environ, start_response)

        def logged_start(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            log.debug(
                "%s %s -> %s",
                _request_line(environ),
                printable(environ["REMOTE_ADDR"], 64),
                status[:3],
            )
            return start_response(status, headers, *exc)

        return super().__call__(environ, logged_start)

    def _misdirected(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> list[bytes]:
        host = str(environ.get("HTTP_HOST", ""))
        log.debug("refused Host %s: %s", printable(host, 100), _request_line(environ))
        body = json.dumps(
            {
                "error": "misdirected request",
                "host": host[:200],
                "detail": "this agent answers only for "
                + self.hosts.describe()
                + " (a DNS-rebinding guard); use its address, or add the name to allowed_hosts",
            }
        ).encode()
        start_response(
            "421 Misdirected Request",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"),
            ],
        )
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def _request_line(environ: dict[str, Any]) -> str:
    target = environ.get("PATH_INFO", "")
    if environ.get("QUERY_STRING"):
        target += "?" + environ["QUERY_STRING"]
    return printable(str(environ.get("REQUEST_METHOD", "")), 16) + " " + printable(target)


class _LoggerStream:
    """A file-like `wsgi.errors` that writes whole messages to the logger.

    Bottle prints tracebacks in pieces and flushes at the end; one flush is
    one log record.
    """

    def __init__(self) -> None:
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        self._parts.append(text)
        return len(text)

    def writelines(self, lines: list[str]) -> None:
        self._parts.extend(lines)

    def flush(self) -> None:
        text = "".join(self._parts).rstrip()
        self._parts.clear()
        if text:
            log.error("%s", text)


# ---------------------------------------------------------------- the server


class HttpServer:
    """The app on a waitress server: its asynchronous loop in one daemon thread,
    its `THREADS` workers beside it.

    start() then stop(); stop() is idempotent and a stopped server may be
    started again. Both are called from the thread that owns the agent.
    """

    def __init__(
        self,
        host: str,
        port: int,
        snapshot: Callable[[], Snapshot],
        *,
        history: History | None = None,
        stale_after_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        allowed_hosts: Iterable[str] = (),
        channel_timeout_s: int = CHANNEL_TIMEOUT_S,
        cleanup_interval_s: int = CLEANUP_INTERVAL_S,
    ) -> None:
        # "[::1]" is how an IPv6 host is written next to a port; accept it.
        self._host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        self._port = port
        self._app = make_app(
            snapshot,
            stale_after_s=stale_after_s,
            clock=clock,
            history=history,
            allowed_hosts=allowed_hosts,
        )
        self._channel_timeout_s = channel_timeout_s
        self._cleanup_interval_s = cleanup_interval_s
        self._server: Any = None  # waitress' TcpWSGIServer (untyped)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        """Bind now (OSError names host:port), then serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("HttpServer.start() called twice")
        sock = self._bind()
        try:
            server = waitress.create_server(
                self._app,
                sockets=[sock],
                threads=THREADS,
                # No Server header: what answers is no business of a scanner's.
                ident="",
                channel_timeout=self._channel_timeout_s,
                cleanup_interval=self._cleanup_interval_s,
                connection_limit=CONNECTION_LIMIT,
                max_request_header_size=MAX_HEADER_BYTES,
                max_request_body_size=MAX_BODY_BYTES,
                expose_tracebacks=False,
                # poll(), not select(): no 1024-descriptor ceiling.
                asyncore_use_poll=True,
                # No proxy sits in front of a gateway's endpoint: X-Forwarded-*
                # headers are a client's claims, removed before Bottle (which
                # would build URLs from them) sees them. waitress' default,
                # said here because it matters.
                clear_untrusted_proxy_headers=True,
            )
        except BaseException:
            sock.close()
            raise
        self._server = server
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="agent-http", daemon=True)
        self._thread.start()
        log.info("technician endpoint on http://%s", _host_port(*self.address))

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Restarting the agent must not wait out TIME_WAIT on the port of
            # the connections the old process closed.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # No reverse DNS (HTTPServer's getfqdn blocked start-up on a
            # gateway without DNS): an address in, an address bound.
            sock.bind((self._host, self._port))
        except OSError as e:
            sock.close()
            where = _host_port(self._host, self._port)
            raise OSError(e.errno, f"cannot serve HTTP on {where}: {e.strerror or e}") from e
        return sock

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the real port when 0 was asked for."""
        if self._server is None:
            raise RuntimeError("HttpServer is not started")
        return str(self._server.effective_host), int(self._server.effective_port)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, free the port and end the threads (at most ~`timeout` s each)."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        # The asynchronous loop's own thread closes every socket of the server
        # (listening, connections, waitress' trigger) when it sees the flag,
        # within STOP_POLL_S: closing them from here would race its poll().
        self._stopping.set()
        thread.join(timeout)
        if thread.is_alive():
            log.warning("HTTP thread still busy after %.1f s; leaving it to finish", timeout)
        # Workers finish the request in hand (every one is short) and exit.
        server.task_dispatcher.shutdown(timeout=timeout)
        self._server = self._thread = None

    def _serve(self) -> None:
        server, stopping = self._server, self._stopping
        assert server is not None
        while not stopping.is_set():
            # One poll at a time (waitress' own run() loops forever): a request
            # waits for no poll timeout, stop() for at most one.
            wasyncore.loop(timeout=STOP_POLL_S, map=server._map, use_poll=True, count=1)
        wasyncore.close_all(server._map, True)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = [
    "BACKPRESSURE_PATH",
    "HEALTHZ_PATH",
    "HISTORY_PATH",
    "METRICS_PATH",
    "STATUS_PAGE_PATH",
    "HostPolicy",
    "HttpServer",
    "make_app",
    "printable",
]
