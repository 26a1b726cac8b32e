"""CURVE on the agent's two sockets, and the ZAP handler that decides who may connect.

This module owns who may talk to the agent over ZeroMQ: the CURVE options on
the ingest PULL and the upstream XPUB, the ZAP handler that admits or refuses
each handshake (`zap_reply`, a pure function over the RFC 27 wire format, and
`CurveGuard`, its socket shell), and the count of refusals. The key files are
agent/keys.py's. It promises:

- A socket secured here admits only peers whose public key is in that socket's
  `allowed_keys_dir`. FACTS.md: a CURVE server with no ZAP handler admits any
  client that knows its public key. So the handler is bound in
  `CurveGuard.__init__`, before any socket can be secured, and every secured
  socket also sets ZAP_ENFORCE_DOMAIN, which makes libzmq refuse instead of
  admit if the handler is ever missing (at shutdown, or after a wiring
  mistake). tests/test_curve.py checks both halves of that.
- Each socket has its own ZAP domain ("ingest", "upstream") and its own allowed
  set, so a collector's key does not open the upstream, and the reverse.
- Plaintext peers, peers that use a wrong server key, and raw ZMTP garbage never
  finish a handshake. libzmq refuses a mechanism mismatch in the greeting, and
  a CURVE box that does not open, before the handler is ever asked. A socket
  monitor reports those failures, and a peer that hangs up mid-handshake, and
  they are counted with the refused keys as `unauthorized`. FACTS.md: a raw ZMTP
  peer streaming a never-ending multipart message grew a receiver to 1.8 GB in
  5 s despite RCVHWM and MAXMSGSIZE. Until a peer is authenticated, libzmq reads
  only its fixed-size greeting and handshake commands (HANDSHAKE_IVL bounds a
  stalled handshake), so such a peer never gets to send a frame. An allowed peer
  still could, so an allowed key means trust.
- No thread: the loop polls `sockets` in its own Poller and calls `handle()`,
  which never blocks and does at most a fixed amount of work per call.
- Bounded: counters only, no per-peer state. Refusals are logged on the 1st,
  2nd, 4th, 8th ... of each kind per socket, so a plaintext peer that retries
  ten times a second for a day writes about 20 lines, not 864,000.

Why this does not use zmq.auth.Authenticator (pyzmq 27, zmq/auth/base.py):
its `handle_zap_message` is a coroutine, so a synchronous loop would have to
step it by hand. `configure_curve` logs an unreadable directory and carries on,
which leaves a socket that refuses everyone; here that is a CurveError at start
that names the path. It answers on a REP socket, and a REP whose reply cannot be
sent is stuck in its state machine; a ROUTER drops that reply and the peer's
handshake times out. It admits NULL for any domain by default. And it counts
nothing. The ZAP exchange itself (RFC 27) is six frames each way, done here in
a few lines.

# Invariant: a socket is secured before its first bind or connect (libzmq picks
#   the mechanism per connection when it starts, so anything bound first would
#   already have served plaintext). `secure` checks LAST_ENDPOINT and raises if
#   that is not so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import zmq
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from agent.keys import CurveError, load_allowed_keys, load_secret_key
from agent.settings import CurveSettings

log = logging.getLogger("agent.curve")

SOCKETS = ("ingest", "upstream")

# RFC 27 (ZAP): libzmq asks the handler bound at this fixed inproc address, in
# the socket's own Context, and speaks version 1.0.
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"

# ZAP requests answered per handle() call. One answer is ~20 us of Python, so 64
# take ~1.3 ms, about as long as one ingest burst (loop.py). That bounds how long
# a flood of handshakes can hold back the next critical alert. The Poller
# reports the socket again, so the rest are answered next turn.
ZAP_MAX_PER_CALL = 64
# Monitor events read per handle() call, per socket, bounded for the same reason.
MONITOR_MAX_PER_CALL = 64

# Monitor events that mean "this peer connected and did not finish a
# handshake", where the ZAP handler was never asked:
# - HANDSHAKE_FAILED_PROTOCOL: its greeting named another mechanism (a
#   plaintext peer), or its CURVE boxes did not open (a wrong server key,
#   garbage);
# - HANDSHAKE_FAILED_NO_DETAIL: it hung up mid-handshake. A plaintext libzmq
#   peer sees the mechanism mismatch too, and when it closes first, this is all
#   the server sees. Which side closes first is a race: over 2 s, 2 of 6 runs
#   here showed only this event for a plaintext PUSH, which then gave up. A TCP
#   probe that connects and closes lands here as well, and on a CURVE socket it
#   is an unauthenticated peer too.
# HANDSHAKE_FAILED_AUTH is the ZAP refusal, which the handler counts already.
# libzmq also emits DISCONNECTED after every failed handshake (libzmq 4.3.5).
REFUSAL_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL

_PROTOCOL_ERRORS = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "not CURVE (a plaintext peer?)",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "CURVE with the wrong server key, or corrupted",
    zmq.PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE: "CURVE key exchange failed",
}


@dataclasses.dataclass(frozen=True)
class SocketCurveStats:
    enabled: bool = False
    allowed_keys: int = 0  # public keys in allowed_keys_dir (as last loaded)
    unknown_keys: int = 0  # CURVE clients refused by ZAP: key not allowed
    # Failed before ZAP: plaintext, wrong server key, garbage, hung up mid-handshake.
    bad_handshakes: int = 0
    unauthorized: int = 0  # unknown_keys + bad_handshakes: refused handshakes


@dataclasses.dataclass(frozen=True)
class CurveStats:
    ingest: SocketCurveStats = SocketCurveStats()
    upstream: SocketCurveStats = SocketCurveStats()


# -- the ZAP exchange (RFC 27): pure ------------------------------------------------

# A request, after the ROUTER's envelope (routing id, empty delimiter):
#   version, request_id, domain, address, identity, mechanism, credentials...
# A reply, after the same envelope:
#   version, request_id, status_code, status_text, user_id, metadata
# The status code decides (200 admit; 300 try later; 400 refuse, and libzmq's
# client does not reconnect after it; 500 handler error); the text is for logs.
# CurveGuard tells its refusals apart by these texts.
STATUS_OK = b"OK"
STATUS_BAD_REQUEST = b"bad ZAP request"
STATUS_UNKNOWN_DOMAIN = b"unknown domain"
STATUS_CURVE_ONLY = b"CURVE only"
STATUS_KEY_NOT_ALLOWED = b"key not allowed"


def zap_reply(
    frames: Sequence[bytes], allowed_keys: Mapping[bytes, frozenset[bytes]]
) -> list[bytes] | None:
    """The ZAP reply, with its ROUTER envelope, to one request as received on a
    ROUTER socket; None when there is nothing to answer (no envelope: not from
    libzmq).

    `allowed_keys` maps a ZAP domain (the secured socket's ZAP_DOMAIN) to the
    binary (32-byte) public keys it admits. A CURVE request from an allowed key
    gets 200 with the key (Z85) as user id, which libzmq attaches to the peer's
    messages as "User-Id" metadata. Everything else gets 400: a malformed
    request, a domain not in `allowed_keys` (nothing in the agent sets another
    one, so nothing here decides for it), another mechanism or malformed
    credentials (unreachable through libzmq: a CURVE server refuses any other
    mechanism in its greeting), a key not allowed.
    """
    try:
        split = frames.index(b"")
    except ValueError:
        return None
    envelope, body = list(frames[: split + 1]), frames[split + 1 :]

    def reply(code: bytes, text: bytes, user_id: bytes = b"") -> list[bytes]:
        request_id = body[1] if len(body) > 1 else b""
        return [*envelope, ZAP_VERSION, request_id, code, text, user_id, b""]

    if len(body) < 6 or body[0] != ZAP_VERSION:
        return reply(b"400", STATUS_BAD_REQUEST)
    domain, mechanism, credentials = body[2], body[5], body[6:]
    allowed = allowed_keys.get(domain)
    if allowed is None:
        return reply(b"400", STATUS_UNKNOWN_DOMAIN)
    if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
        return reply(b"400", STATUS_CURVE_ONLY)
    if credentials[0] not in allowed:
        return reply(b"400", STATUS_KEY_NOT_ALLOWED)
    return reply(b"200", STATUS_OK, z85.encode(credentials[0]))


# -- the guard ---------------------------------------------------------------------


class _SecuredSocket:
    """CURVE state of one of the agent's sockets (ingest or upstream)."""

    __slots__ = (
        "which",
        "settings",
        "public_key",
        "secret_key",
        "allowed",
        "unknown_keys",
        "bad_handshakes",
        "monitors",
    )

    def __init__(self, which: str, settings: CurveSettings) -> None:
        assert settings.secret_key_file is not None and settings.allowed_keys_dir is not None
        self.which = which
        self.settings = settings
        self.public_key, self.secret_key = load_secret_key(
            settings.secret_key_file, f"{which}.curve.secret_key_file"
        )
        self.allowed = self.load_allowed()
        self.unknown_keys = 0
        self.bad_handshakes = 0
        # (secured socket, its monitor) for the monitors this guard owns.
        self.monitors: list[tuple[zmq.Socket, zmq.Socket]] = []

    def load_allowed(self) -> frozenset[bytes]:
        assert self.settings.allowed_keys_dir is not None
        return load_allowed_keys(
            self.settings.allowed_keys_dir, f"{self.which}.curve.allowed_keys_dir"
        )

    def statistics(self) -> SocketCurveStats:
        return SocketCurveStats(
            enabled=True,
            allowed_keys=len(self.allowed),
            unknown_keys=self.unknown_keys,
            bad_handshakes=self.bad_handshakes,
            unauthorized=self.unknown_keys + self.bad_handshakes,
        )


def _log_due(n: int) -> bool:
    """Log the 1st, 2nd, 4th, 8th ... occurrence: no clock, no per-peer state."""
    return n & (n - 1) == 0


class CurveGuard:
    """CURVE for the ingest and upstream sockets, and their ZAP handler.

    Create it in the agent's Context before any socket is bound (it binds the
    handler there). Call `secure()` on each socket before it binds or connects,
    register `sockets` for POLLIN in the loop's Poller, call `handle()` when any
    of them is ready, and `close()` after the secured sockets are closed and
    before the Context is terminated. One guard per Context, because the ZAP
    address is fixed. With CURVE configured on neither socket, the guard binds
    nothing and every method is a cheap no-op.
    """

    def __init__(self, ctx: zmq.Context, ingest: CurveSettings, upstream: CurveSettings) -> None:
        self._zap: zmq.Socket | None = None
        # Keys first: a bad key file must fail before anything is bound.
        self._secured: dict[str, _SecuredSocket] = {}
        for which, settings in (("ingest", ingest), ("upstream", upstream)):
            if settings.secret_key_file is not None:
                self._secured[which] = _SecuredSocket(which, settings)
        self._by_domain = {which.encode("ascii"): s for which, s in self._secured.items()}
        for s in self._secured.values():
            if not s.allowed:
                log.warning(
                    "%s: CURVE on, but %s holds no public keys: no peer will be admitted",
                    s.which,
                    s.settings.allowed_keys_dir,
                )
        if self._secured:
            # ROUTER, not REP: see the module docstring.
            zap = ctx.socket(zmq.ROUTER)
            zap.setsockopt(zmq.LINGER, 0)
            zap.bind(ZAP_ENDPOINT)
            self._zap = zap
            for s in self._secured.values():
                log.info(
                    "%s: CURVE on, server key %s, %d allowed peer keys from %s",
                    s.which,
                    s.public_key.decode("ascii"),
                    len(s.allowed),
                    s.settings.allowed_keys_dir,
                )

    # -- wiring ----------------------------------------------------------------

    def secure(self, sock: zmq.Socket, which: str, *, monitor: bool = True) -> None:
        """Make `sock` a CURVE server that admits only `which`'s allowed keys.
        No-op when CURVE is off for `which`. Call before bind/connect.

        monitor=True: the guard watches the socket for failed handshakes with a
        monitor of its own, listed in `sockets`. A socket has only one monitor
        (a second zmq_socket_monitor replaces the first), so when the caller
        already monitors the socket, pass monitor=False, add
        `monitor_events(which)` to the caller's event mask, and pass its events
        to `on_monitor_event`.
        """
        _check_which(which)
        s = self._secured.get(which)
        if s is None:
            return
        if sock.getsockopt(zmq.LAST_ENDPOINT):
            raise RuntimeError(f"{which}: secure() must come before bind/connect")
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, s.secret_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, s.public_key)
        sock.setsockopt(zmq.ZAP_DOMAIN, which.encode("ascii"))
        # Without a reachable handler, refuse rather than admit (libzmq's
        # default admits: FACTS.md). Checked in tests/test_curve.py.
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        if monitor:
            s.monitors.append((sock, sock.get_monitor_socket(REFUSAL_EVENTS)))

    def monitor_events(self, which: str) -> int:
        """The monitor events this guard needs on `which`'s socket (0 when off)."""
        _check_which(which)
        return REFUSAL_EVENTS if which in self._secured else 0

    @property
    def sockets(self) -> list[zmq.Socket]:
        """What the loop polls for POLLIN: the ZAP handler and the guard's own
        monitors. Empty when CURVE is off."""
        if self._zap is None:
            return []
        return [self._zap] + [m for s in self._secured.values() for _, m in s.monitors]

    # -- the loop's turn ---------------------------------------------------------

    def handle(self) -> None:
        """Answer pending ZAP requests and read the guard's monitors, without
        blocking, at most a fixed number of each per call."""
        zap = self._zap
        if zap is None:
            return
        allowed = {domain: s.allowed for domain, s in self._by_domain.items()}
        for _ in range(ZAP_MAX_PER_CALL):
            try:
                frames = zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            reply = zap_reply(frames, allowed)
            if reply is not None:
                # A ROUTER drops what it cannot route (the peer went away) and
                # never raises Again without ROUTER_MANDATORY.
                zap.send_multipart(reply, zmq.NOBLOCK)
                self._count_refusal(frames, reply)
        for s in self._secured.values():
            for _, mon in s.monitors:
                for _ in range(MONITOR_MAX_PER_CALL):
                    try:
                        msg = recv_monitor_message(mon, zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.on_monitor_event(s.which, msg)

    def on_monitor_event(self, which: str, msg: Mapping[str, Any]) -> bool:
        """Count a failed handshake reported by a socket monitor, given the dict
        that `zmq.utils.monitor.recv_monitor_message` returns. Returns True if
        the event was a refusal (consumed), False if it is the caller's."""
        s = self._secured.get(which)
        if s is None or not msg["event"] & REFUSAL_EVENTS:
            return False
        s.bad_handshakes += 1
        if _log_due(s.bad_handshakes):
            value = msg.get("value", 0)
            if msg["event"] & zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                reason = "the peer hung up during the handshake (not CURVE? a probe?)"
            else:
                reason = _PROTOCOL_ERRORS.get(value, f"protocol error {value:#x}")
            endpoint = msg.get("endpoint", b"").decode("utf-8", "replace")
            log.warning(
                "%s: refused a handshake on %s: %s (%d refused so far)",
                which,
                endpoint,
                reason,
                s.bad_handshakes,
            )
        return True

    def _count_refusal(self, frames: list[bytes], reply: list[bytes]) -> None:
        """Count (and log, sparsely) a refusal `zap_reply` gave to `frames`."""
        status_text = reply[-3]
        if status_text not in (STATUS_KEY_NOT_ALLOWED, STATUS_CURVE_ONLY):
            return  # admitted, or not about one of our sockets
        # Both texts answer a well-formed request for one of our domains.
        body = frames[frames.index(b"") + 1 :]
        domain, address, credentials = body[2], body[3], body[6:]
        s = self._by_domain[domain]
        if status_text == STATUS_CURVE_ONLY:
            s.bad_handshakes += 1
            return
        s.unknown_keys += 1
        if _log_due(s.unknown_keys):
            log.warning(
                "%s: refused CURVE client key %s from %s: not in %s (%d refused so far)",
                s.which,
                z85.encode(credentials[0]).decode("ascii"),
                address.decode("utf-8", "replace") or "?",
                s.settings.allowed_keys_dir,
                s.unknown_keys,
            )

    # -- SIGHUP ------------------------------------------------------------------

    def reload_allowed(self) -> None:
        """Re-read every allowed_keys_dir. All or nothing: on a bad file (or a
        directory or key file others could have written, agent/keys.py) this
        raises CurveError and the running sets are kept. It runs in the loop's
        thread and never waits on a file: only regular files are opened, and
        the directory holds at most keys.MAX_DIR_ENTRIES entries. A removed key stops new
        handshakes only. A peer already connected stays connected until it
        disconnects or the agent restarts, because libzmq cannot drop one peer
        by key."""
        fresh = {which: s.load_allowed() for which, s in self._secured.items()}
        for which, keys in fresh.items():
            s = self._secured[which]
            if keys != s.allowed:
                log.info(
                    "%s: allowed peer keys reloaded: %d (%d added, %d removed)",
                    which,
                    len(keys),
                    len(keys - s.allowed),
                    len(s.allowed - keys),
                )
            s.allowed = keys

    # -- snapshot and close ---------------------------------------------------------

    def statistics(self) -> CurveStats:
        def of(which: str) -> SocketCurveStats:
            s = self._secured.get(which)
            return s.statistics() if s is not None else SocketCurveStats()

        return CurveStats(ingest=of("ingest"), upstream=of("upstream"))

    def close(self) -> None:
        """Stop the guard's monitors and unbind the handler. Call after the
        secured sockets are closed: while they live, ZAP_ENFORCE_DOMAIN keeps
        them refusing every new handshake once the handler is gone."""
        for s in self._secured.values():
            for sock, mon in s.monitors:
                if not sock.closed:
                    with contextlib.suppress(zmq.ZMQError):
                        sock.disable_monitor()
                mon.close(0)
            s.monitors.clear()
        if self._zap is not None:
            self._zap.close(0)
            self._zap = None


def _check_which(which: str) -> None:
    if which not in SOCKETS:
        raise ValueError(f"unknown socket {which!r}: one of {', '.join(SOCKETS)}")


__all__ = [
    "CurveError",
    "CurveGuard",
    "CurveStats",
    "REFUSAL_EVENTS",
    "SocketCurveStats",
    "zap_reply",
]
