"""The technician endpoint: a read-only Bottle app served from its own thread.

This module owns the HTTP side of the contract (INTERFACE.md, "Technician
endpoint"): the routes, their status codes and JSON bodies, and the server
thread's life cycle. It promises:

- The HTTP thread never touches the loop's state. Its only way in is the
  `snapshot()` callable, which returns an immutable `Snapshot` (the loop swaps
  one reference); everything served is computed from that one object.
- Every answer is JSON, errors included (404 unknown path, 405 any method
  other than GET/HEAD, 500 a bug here, logged with its traceback on the
  `agent.http` logger). Nothing is written to stderr per request.
- `HttpServer.start()` binds before it returns, so a bad `[http] bind` fails
  start-up with an OSError naming host:port instead of dying later in a thread.

Routes (their paths: agent/routes.py): the backpressure JSON and `/healthz`
(here), `GET /metrics` (Prometheus text, agent/metrics.py) and `GET /` (the
technician's status page, agent/page.py). A route returns a dict (sent as JSON), a `(status, dict)`
pair, or a ready `str`/`bytes` body with its own content type.
"""

from __future__ import annotations

import functools
import json
import logging
import selectors
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import bottle

from agent import metrics, page
from agent.routes import BACKPRESSURE_PATH, HEALTHZ_PATH, METRICS_PATH, STATUS_PAGE_PATH
from agent.stats import Snapshot

log = logging.getLogger("agent.http")

# A client that connects and then sends nothing holds the only serving thread
# (wsgiref answers one request at a time). 5 s is far above any real request on
# a LAN and bounds how long a stuck peer blocks the endpoint and stop().
REQUEST_TIMEOUT_S = 5.0

Route = Callable[..., Any]


# ---------------------------------------------------------------- the app


def make_app(
    snapshot: Callable[[], Snapshot],
    *,
    stale_after_s: float,
    clock: Callable[[], float],
) -> bottle.Bottle:
    """The Bottle app. Pure request -> snapshot -> response; no thread, no socket.

    `clock` must be the clock the loop stamps `Snapshot.loop_monotonic` with
    (time.monotonic in production), so their difference is the loop's age.
    """
    app = bottle.Bottle()
    # One place turns a route's result into a response and owns the error
    # policy (`_serve_json`), instead of Bottle's JSON plugin, whose dumps()
    # runs outside any wrapper of ours and whose failures go to stderr.
    app.uninstall("json")
    app.uninstall("template")
    app.install(_serve_json)

    @app.get(BACKPRESSURE_PATH)
    def backpressure() -> dict[str, Any]:
        return snapshot().to_json()

    @app.get(HEALTHZ_PATH)
    def healthz() -> tuple[int, dict[str, Any]]:
        snap = snapshot()
        age = clock() - snap.loop_monotonic
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
        body = metrics.render(snap, loop_age_s=clock() - snap.loop_monotonic)
        bottle.response.content_type = metrics.CONTENT_TYPE
        bottle.response.set_header("Cache-Control", "no-store")
        return body

    @app.get(STATUS_PAGE_PATH)
    def status_page() -> bytes:
        # Static: the page fetches the snapshot itself (agent/page.py).
        for name, value in page.HEADERS:
            bottle.response.set_header(name, value)
        return page.BODY_BYTES

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
        # routes; it has written the traceback to wsgi.errors, which
        # _QuietRequestHandler sends to the agent.http logger.
        return _error_body(500, {"error": "internal error", "path": bottle.request.path})

    return app


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
        bottle.response.content_type = "application/json"
        # Every answer is "now": a proxy or browser cache must never show a
        # technician yesterday's queue depth.
        bottle.response.set_header("Cache-Control", "no-store")
        return body

    return wrapper


def _error_body(status: int, doc: dict[str, Any]) -> str:
    bottle.response.status = status
    bottle.response.content_type = "application/json"
    bottle.response.set_header("Cache-Control", "no-store")
    return json.dumps(doc)


# ---------------------------------------------------------------- the server


class _LoggerStream:
    """A file-like `wsgi.errors` / stderr that writes whole messages to the logger.

    wsgiref and Bottle print tracebacks in pieces and flush at the end; one
    flush is one log record.
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


class _QuietRequestHandler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT_S
    # The Server header says what answers, not which Python to look up CVEs for.
    server_version = "edge-agent"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        # The access log of a status endpoint polled every few seconds is noise
        # at info level; keep it for debugging only.
        log.debug("%s %s", self.address_string(), format % args)

    def get_stderr(self) -> _LoggerStream:
        return _LoggerStream()


class _WSGIServer(WSGIServer):
    # Restarting the agent must not wait out TIME_WAIT on the port of the
    # connections the old process closed.
    allow_reuse_address = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(host): a reverse DNS
        # lookup that blocks start-up for the resolver's timeout on a gateway
        # with no DNS. wsgiref only uses the name for SERVER_NAME.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Called from socketserver's `except Exception:`. The default prints a
        # traceback to stderr; a client that resets the connection is the
        # usual cause, worth a debug line and no more.
        log.debug("error serving %s: %r", client_address, sys.exc_info()[1])


class _WSGIServer6(_WSGIServer):
    address_family = socket.AF_INET6


class HttpServer:
    """The app on a wsgiref server in a daemon thread.

    start() then stop(); stop() is idempotent and a stopped server may be
    started again. Both are called from the thread that owns the agent.
    """

    def __init__(
        self,
        host: str,
        port: int,
        snapshot: Callable[[], Snapshot],
        *,
        stale_after_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # "[::1]" is how an IPv6 host is written next to a port; accept it.
        self._host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        self._port = port
        self._app = make_app(snapshot, stale_after_s=stale_after_s, clock=clock)
        self._server: _WSGIServer | None = None
        self._thread: threading.Thread | None = None
        # stop() writes one byte here to wake the serving thread at once
        # (serve_forever would poll for up to its poll_interval instead).
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    def start(self) -> None:
        """Bind now (OSError names host:port), then serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("HttpServer.start() called twice")
        server_class = _WSGIServer6 if ":" in self._host else _WSGIServer
        try:
            server = make_server(
                self._host,
                self._port,
                self._app,
                server_class=server_class,
                handler_class=_QuietRequestHandler,
            )
        except OSError as e:
            where = _host_port(self._host, self._port)
            raise OSError(e.errno, f"cannot serve HTTP on {where}: {e.strerror or e}") from e
        self._server = server
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="agent-http", daemon=True)
        self._thread.start()
        log.info("technician endpoint on http://%s", _host_port(*self.address))

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the real port when 0 was asked for."""
        if self._server is None:
            raise RuntimeError("HttpServer is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, free the port and join the thread (at most `timeout` s)."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        assert self._wake_w is not None and self._wake_r is not None
        self._wake_w.send(b"x")
        thread.join(timeout)
        server.server_close()  # the port is free from here on
        if thread.is_alive():
            # Only a request in progress can hold it, and REQUEST_TIMEOUT_S
            # bounds that. The daemon thread sees the wake byte when the request
            # ends and returns; its wake socket stays open for it until then.
            log.warning("HTTP thread still busy after %.1f s; leaving it to finish", timeout)
        else:
            self._wake_r.close()
            self._wake_w.close()
        self._server = self._thread = None
        self._wake_r = self._wake_w = None

    def _serve(self) -> None:
        server, wake = self._server, self._wake_r
        assert server is not None and wake is not None
        with selectors.DefaultSelector() as sel:
            sel.register(server.socket, selectors.EVENT_READ)
            sel.register(wake, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in sel.select()}
                if wake in ready:
                    return
                # The listening socket is readable and only this thread
                # accepts, so handle_request() does not block in accept.
                server.handle_request()


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = [
    "BACKPRESSURE_PATH",
    "HEALTHZ_PATH",
    "METRICS_PATH",
    "STATUS_PAGE_PATH",
    "HttpServer",
    "make_app",
]
