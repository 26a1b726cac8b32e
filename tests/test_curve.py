"""agent/curve.py: `zap_reply` over the ZAP wire format (RFC 27) without any
socket, then the guard with real ZeroMQ over ipc://: who gets through a secured
PULL and XPUB, who does not, and what is counted. Each socket test drives the
guard with a small poll loop of its own, as the agent's loop does; nothing runs
in a thread.

Keys live in tmp_path (tests/curvekeys.py; the key files themselves:
tests/test_keys.py) and sockets in a short private directory (ipc paths are
limited to 107 bytes). Waits are for a condition with a deadline; the only
fixed waits are the ones whose assertion is "nothing arrives within 1 s".
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth
from hypothesis import given
from hypothesis import strategies as st
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from agent.curve import (
    REFUSAL_EVENTS,
    STATUS_BAD_REQUEST,
    STATUS_CURVE_ONLY,
    STATUS_KEY_NOT_ALLOWED,
    STATUS_OK,
    STATUS_UNKNOWN_DOMAIN,
    ZAP_ENDPOINT,
    CurveError,
    CurveGuard,
    CurveStats,
    SocketCurveStats,
    zap_reply,
)
from agent.settings import CurveSettings

from curvekeys import KeyPairs

OFF = CurveSettings()
QUIET_S = 1.0  # "nothing arrives within 1 s": the assertion, not a settling wait


@pytest.fixture(autouse=True)
def _umask_022() -> Iterator[None]:
    """Key files and allowed dirs made here must not be group-writable, or the
    agent refuses them (agent/keys.py); a user umask of 002 (Ubuntu's default
    for user private groups) would make them so."""
    old = os.umask(0o022)
    yield
    os.umask(old)


# -- keys ----------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> KeyPairs:
    return KeyPairs(tmp_path)


@pytest.fixture
def server_ctx() -> Iterator[zmq.Context]:
    """The agent's side: the guard and the sockets it secures share this Context."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def client(
    ctx: zmq.Context,
    kind: int,
    endpoint: str,
    keys: KeyPairs | None = None,
    name: str | None = None,
    server_key: bytes | None = None,
) -> zmq.Socket:
    """A peer: CURVE client with key pair `name` when given, else plaintext."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if name is not None:
        assert keys is not None
        keys.make_client(sock, name, server_key)
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


# -- the test's own loop -----------------------------------------------------------


class Server:
    """One secured socket and the guard, driven like the agent's loop does:
    poll, then guard.handle() when one of its sockets is ready."""

    def __init__(self, guard: CurveGuard, sock: zmq.Socket) -> None:
        self.guard = guard
        self.sock = sock
        self.got: list[bytes] = []  # PULL: messages; XPUB: subscription messages
        self.poller = zmq.Poller()
        self.poller.register(sock, zmq.POLLIN)
        for s in guard.sockets:
            self.poller.register(s, zmq.POLLIN)

    def turn(self, timeout_ms: int = 10) -> None:
        ready = dict(self.poller.poll(timeout_ms))
        if any(s in ready for s in self.guard.sockets):
            self.guard.handle()
        if self.sock in ready:
            while True:
                try:
                    self.got.append(self.sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break

    def until(self, condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            self.turn()

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.turn()

    def stats(self, which: str) -> SocketCurveStats:
        return getattr(self.guard.statistics(), which)


def receive(server: Server, sub: zmq.Socket, timeout: float = 10.0) -> bytes:
    """Pump the server until `sub` has a message; return it."""
    out: list[bytes] = []

    def got() -> bool:
        if sub.poll(0):
            out.append(sub.recv())
        return bool(out)

    server.until(got, timeout, "a message on the subscriber")
    return out[0]


def nothing_within(server: Server, socks: list[zmq.Socket], seconds: float = QUIET_S) -> None:
    server.run_for(seconds)
    for s in socks:
        assert not s.poll(0), "a refused peer received a message"


# -- zap_reply: the ZAP wire format, no sockets ----------------------------------------

ALICE = bytes(range(32))  # binary Curve25519 public keys, as a ZAP request carries them
BOB = bytes(range(1, 33))
ALLOWED = {b"ingest": frozenset({ALICE}), b"upstream": frozenset({BOB})}
ENVELOPE = [b"\x00\x80\x00\x00\x29", b""]  # a ROUTER routing id, then the delimiter


def request(
    domain: bytes = b"ingest",
    mechanism: bytes = b"CURVE",
    *credentials: bytes,
    request_id: bytes = b"42",
) -> list[bytes]:
    """A ZAP request as the handler's ROUTER receives it from libzmq."""
    body = [b"1.0", request_id, domain, b"192.0.2.7", b"", mechanism, *credentials]
    return [*ENVELOPE, *body]


def test_an_allowed_key_is_admitted_with_its_z85_as_user_id() -> None:
    assert zap_reply(request(b"ingest", b"CURVE", ALICE), ALLOWED) == [
        *ENVELOPE,
        b"1.0",
        b"42",
        b"200",
        STATUS_OK,
        z85.encode(ALICE),
        b"",
    ]


@pytest.mark.parametrize(
    ("frames", "status_text"),
    [
        (request(b"ingest", b"CURVE", BOB), STATUS_KEY_NOT_ALLOWED),  # upstream's key only
        (request(b"upstream", b"CURVE", ALICE), STATUS_KEY_NOT_ALLOWED),
        (request(b"lane", b"CURVE", ALICE), STATUS_UNKNOWN_DOMAIN),
        (request(b"", b"NULL"), STATUS_UNKNOWN_DOMAIN),  # a plaintext socket's request
        (request(b"ingest", b"NULL"), STATUS_CURVE_ONLY),
        (request(b"ingest", b"PLAIN", b"alice", b"secret"), STATUS_CURVE_ONLY),
        (request(b"ingest", b"CURVE", ALICE[:31]), STATUS_CURVE_ONLY),
        (request(b"ingest", b"CURVE", ALICE, ALICE), STATUS_CURVE_ONLY),
        ([*ENVELOPE, b"2.0", b"42", b"ingest", b"", b"", b"CURVE", ALICE], STATUS_BAD_REQUEST),
        ([*ENVELOPE, b"1.0", b"42", b"ingest", b"", b""], STATUS_BAD_REQUEST),  # 5 frames
    ],
)
def test_everything_else_is_refused_for_good(frames: list[bytes], status_text: bytes) -> None:
    # 400 (permanent): libzmq's client does not reconnect after it.
    assert zap_reply(frames, ALLOWED) == [
        *ENVELOPE,
        b"1.0",
        b"42",
        b"400",
        status_text,
        b"",
        b"",
    ]


def test_a_request_too_short_for_an_id_is_answered_with_an_empty_one() -> None:
    assert zap_reply([*ENVELOPE, b"1.0"], ALLOWED) == [
        *ENVELOPE,
        *(b"1.0", b"", b"400", STATUS_BAD_REQUEST, b"", b""),
    ]
    assert zap_reply([*ENVELOPE], ALLOWED) == [
        *ENVELOPE,
        *(b"1.0", b"", b"400", STATUS_BAD_REQUEST, b"", b""),
    ]


def test_no_envelope_no_answer() -> None:
    # The first empty frame ends the envelope; a request without one was not
    # routed by a ROUTER from libzmq.
    body = [b"1.0", b"42", b"ingest", b"192.0.2.7", b"id", b"CURVE", ALICE]
    assert zap_reply(body, ALLOWED) is None
    assert zap_reply([], ALLOWED) is None


def test_the_whole_envelope_is_echoed_and_the_answer_follows_the_allowed_sets() -> None:
    frames = [b"hop-1", b"hop-2", *request(b"upstream", b"CURVE", BOB)[1:]]
    reply = zap_reply(frames, ALLOWED)
    assert reply is not None and reply[:3] == [b"hop-1", b"hop-2", b""] and reply[5] == b"200"
    assert zap_reply(frames, {b"upstream": frozenset()}) == [
        *(b"hop-1", b"hop-2", b""),
        *(b"1.0", b"42", b"400", STATUS_KEY_NOT_ALLOWED, b"", b""),
    ]


frames_strategy = st.lists(
    st.one_of(
        st.sampled_from([b"", b"1.0", b"ingest", b"upstream", b"CURVE", ALICE, BOB]),
        st.binary(max_size=40),
    ),
    max_size=10,
)


@given(frames_strategy)
def test_any_frames_get_a_well_formed_answer_or_none(frames: list[bytes]) -> None:
    reply = zap_reply(frames, ALLOWED)
    if b"" not in frames:
        assert reply is None
        return
    assert reply is not None
    split = frames.index(b"")
    assert reply[: split + 1] == frames[: split + 1]
    version, request_id, code, text, user_id, metadata = reply[split + 1 :]
    assert version == b"1.0" and metadata == b""
    body = frames[split + 1 :]
    assert request_id == (body[1] if len(body) > 1 else b"")
    # Admitted only for a well-formed CURVE request with a key of that domain.
    admitted = (
        len(body) == 7
        and body[0] == b"1.0"
        and body[5] == b"CURVE"
        and body[6] in ALLOWED.get(body[2], frozenset())
    )
    assert (code, text) == ((b"200", STATUS_OK) if admitted else (b"400", text))
    assert user_id == (z85.encode(body[6]) if admitted else b"")


def test_the_guard_counts_a_non_curve_request_as_a_bad_handshake(
    keys: KeyPairs, server_ctx: zmq.Context
) -> None:
    """libzmq never asks about another mechanism on a CURVE socket; a request
    that does anyway (sent by hand here) is refused and counted."""
    guard = CurveGuard(server_ctx, keys.server("allowed", "alice"), OFF)
    asker = server_ctx.socket(zmq.DEALER)
    asker.setsockopt(zmq.LINGER, 0)
    asker.connect(ZAP_ENDPOINT)
    asker.send_multipart([b"", *request(b"ingest", b"PLAIN", b"alice", b"pw")[2:]])
    deadline = time.monotonic() + 10
    while not asker.poll(10):
        assert time.monotonic() < deadline, "no ZAP answer"
        guard.handle()
    assert asker.recv_multipart() == [b"", b"1.0", b"42", b"400", STATUS_CURVE_ONLY, b"", b""]
    assert guard.statistics().ingest.bad_handshakes == 1
    assert guard.statistics().ingest.unknown_keys == 0
    asker.close(0)
    guard.close()


# -- ingest: PULL ------------------------------------------------------------------


def test_ingest_admits_allowed_key_and_refuses_unknown_key_and_plaintext(
    keys: KeyPairs, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
) -> None:
    guard = CurveGuard(server_ctx, keys.server("allowed", "alice"), OFF)
    pull = server_ctx.socket(zmq.PULL)
    guard.secure(pull, "ingest")
    ep = f"ipc://{workdir}/in"
    pull.bind(ep)
    srv = Server(guard, pull)
    assert srv.stats("ingest") == SocketCurveStats(enabled=True, allowed_keys=1)

    alice = client(zctx, zmq.PUSH, ep, keys, "alice")
    alice.send(b"alice-1")
    srv.until(lambda: b"alice-1" in srv.got, what="alice's first message")

    mallory = client(zctx, zmq.PUSH, ep, keys, "mallory")  # a key not in the allowed dir
    mallory.send(b"mallory-1")
    srv.until(lambda: srv.stats("ingest").unknown_keys >= 1, what="mallory refused")

    plain = client(zctx, zmq.PUSH, ep)  # no CURVE at all
    plain.send(b"plain-1")
    srv.until(lambda: srv.stats("ingest").bad_handshakes >= 1, what="plaintext refused")

    # Alice keeps getting through while the others knock.
    alice.send(b"alice-2")
    srv.until(lambda: b"alice-2" in srv.got, what="alice's second message")
    srv.run_for(QUIET_S)
    alice.send(b"alice-3")
    srv.until(lambda: b"alice-3" in srv.got, what="alice's third message")

    assert srv.got == [b"alice-1", b"alice-2", b"alice-3"]
    st = srv.stats("ingest")
    assert st.unknown_keys == 1  # libzmq does not reconnect after a ZAP 400
    assert st.bad_handshakes >= 1  # a plaintext peer retries every reconnect interval
    assert st.unauthorized == st.unknown_keys + st.bad_handshakes
    assert guard.statistics().upstream == SocketCurveStats()  # off there


def test_ingest_refuses_a_client_that_uses_the_wrong_server_key(
    keys: KeyPairs, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
) -> None:
    # Alice's key is allowed, but she talks to the wrong server key: the CURVE
    # boxes do not open, ZAP is never asked, the handshake fails.
    guard = CurveGuard(server_ctx, keys.server("allowed", "alice"), OFF)
    pull = server_ctx.socket(zmq.PULL)
    guard.secure(pull, "ingest")
    ep = f"ipc://{workdir}/in"
    pull.bind(ep)
    srv = Server(guard, pull)
    lost = client(zctx, zmq.PUSH, ep, keys, "alice", server_key=keys.public("other"))
    lost.send(b"lost")
    srv.until(lambda: srv.stats("ingest").bad_handshakes >= 1, what="the refusal")
    nothing_within(srv, [])
    assert srv.got == []
    assert srv.stats("ingest").unknown_keys == 0


# -- upstream: XPUB ----------------------------------------------------------------


def test_upstream_publishes_to_allowed_subscriber_only(
    keys: KeyPairs, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
) -> None:
    guard = CurveGuard(server_ctx, OFF, keys.server("allowed", "headend"))
    xpub = server_ctx.socket(zmq.XPUB)
    guard.secure(xpub, "upstream")
    ep = f"ipc://{workdir}/out"
    xpub.bind(ep)
    srv = Server(guard, xpub)

    headend = client(zctx, zmq.SUB, ep, keys, "headend")
    srv.until(lambda: b"\x01" in srv.got, what="the head-end's subscription")
    mallory = client(zctx, zmq.SUB, ep, keys, "mallory")
    plain = client(zctx, zmq.SUB, ep)
    srv.until(
        lambda: (
            srv.stats("upstream").unknown_keys >= 1 and srv.stats("upstream").bad_handshakes >= 1
        ),
        what="both refusals",
    )

    xpub.send(b"m1")
    assert receive(srv, headend) == b"m1"
    nothing_within(srv, [mallory, plain])
    xpub.send(b"m2")
    assert receive(srv, headend) == b"m2"
    assert not mallory.poll(0) and not plain.poll(0)
    assert srv.got == [b"\x01"]  # only the head-end ever subscribed
    st = srv.stats("upstream")
    assert st.unauthorized == st.unknown_keys + st.bad_handshakes >= 2
    assert guard.statistics().ingest == SocketCurveStats()


def test_each_socket_admits_only_its_own_allowed_keys(
    keys: KeyPairs, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
) -> None:
    """ZAP_DOMAIN per socket: a collector's key does not open the upstream, nor
    the head-end's the ingest."""
    guard = CurveGuard(
        server_ctx, keys.server("ingest-ok", "collector"), keys.server("upstream-ok", "headend")
    )
    pull = server_ctx.socket(zmq.PULL)
    xpub = server_ctx.socket(zmq.XPUB)
    guard.secure(pull, "ingest")
    guard.secure(xpub, "upstream")
    pull.bind(f"ipc://{workdir}/in")
    xpub.bind(f"ipc://{workdir}/out")
    srv = Server(guard, pull)
    srv.poller.register(xpub, zmq.POLLIN)

    wrong_in = client(zctx, zmq.PUSH, f"ipc://{workdir}/in", keys, "headend")
    wrong_in.send(b"from the head-end")
    wrong_out = client(zctx, zmq.SUB, f"ipc://{workdir}/out", keys, "collector")
    srv.until(
        lambda: srv.stats("ingest").unknown_keys == 1 and srv.stats("upstream").unknown_keys == 1,
        what="both cross-socket refusals",
    )
    collector = client(zctx, zmq.PUSH, f"ipc://{workdir}/in", keys, "collector")
    collector.send(b"from the collector")
    srv.until(lambda: srv.got, what="the collector's message")
    assert srv.got == [b"from the collector"]
    assert not xpub.poll(0), "the collector's SUB was admitted on the upstream"
    assert not wrong_out.poll(0)


# -- the handler must be there -----------------------------------------------------


def test_curve_server_without_a_zap_handler_admits_any_key(
    keys: KeyPairs, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
) -> None:
    """Pins the libzmq behaviour the guard exists for (FACTS.md): CURVE alone,
    without ZAP, lets in anyone who knows the server's public key."""
    public, secret = zmq.auth.load_certificate(keys.secret_file("agent"))
    pull = server_ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.CURVE_SERVER, 1)
    pull.setsockopt(zmq.CURVE_SECRETKEY, secret)
    pull.bind(f"ipc://{workdir}/in")
    mallory = client(zctx, zmq.PUSH, f"ipc://{workdir}/in", keys, "mallory")
    mallory.send(b"anyone")
    assert pull.poll(10_000)
    assert pull.recv() == b"anyone"


def test_secured_socket_refuses_everyone_when_the_handler_is_gone(
    keys: KeyPairs, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
) -> None:
    """ZAP_ENFORCE_DOMAIN: once the guard is closed (shutdown), a socket still
    open refuses even an allowed key instead of admitting everyone."""
    guard = CurveGuard(server_ctx, keys.server("allowed", "alice"), OFF)
    pull = server_ctx.socket(zmq.PULL)
    guard.secure(pull, "ingest")
    pull.bind(f"ipc://{workdir}/in")
    guard.close()
    assert guard.sockets == []
    alice = client(zctx, zmq.PUSH, f"ipc://{workdir}/in", keys, "alice")
    alice.send(b"alice")
    assert not pull.poll(int(QUIET_S * 1000))


def test_secure_before_bind_only(keys: KeyPairs, server_ctx: zmq.Context, workdir: str) -> None:
    guard = CurveGuard(server_ctx, keys.server("allowed", "alice"), OFF)
    pull = server_ctx.socket(zmq.PULL)
    pull.bind(f"ipc://{workdir}/in")
    with pytest.raises(RuntimeError, match="before bind"):
        guard.secure(pull, "ingest")
    with pytest.raises(ValueError, match="unknown socket"):
        guard.secure(server_ctx.socket(zmq.PULL), "ingress")


# -- one socket secured, the other not; CURVE off --------------------------------------


def test_plaintext_socket_beside_a_secured_one_is_unaffected(
    keys: KeyPairs, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
) -> None:
    """Upstream secured, ingest not: the ZAP handler in the same Context is not
    asked about the plaintext PULL (NULL without ZAP_DOMAIN), so it still works."""
    guard = CurveGuard(server_ctx, OFF, keys.server("allowed", "headend"))
    assert guard.monitor_events("upstream") and not guard.monitor_events("ingest")
    pull = server_ctx.socket(zmq.PULL)
    guard.secure(pull, "ingest")  # a no-op
    assert pull.getsockopt(zmq.MECHANISM) == zmq.NULL
    pull.bind(f"ipc://{workdir}/in")
    srv = Server(guard, pull)
    plain = client(zctx, zmq.PUSH, f"ipc://{workdir}/in")
    plain.send(b"hello")
    srv.until(lambda: srv.got, what="the plaintext message")
    assert srv.got == [b"hello"]
    assert guard.statistics().ingest == SocketCurveStats()


def test_curve_off_binds_nothing_and_costs_nothing(server_ctx: zmq.Context) -> None:
    guard = CurveGuard(server_ctx, OFF, OFF)
    assert guard.sockets == []
    assert guard.monitor_events("ingest") == 0
    sock = server_ctx.socket(zmq.XPUB)
    guard.secure(sock, "upstream")
    assert sock.getsockopt(zmq.MECHANISM) == zmq.NULL
    guard.handle()
    assert guard.statistics() == CurveStats()
    # No handler was bound: the fixed ZAP address is still free.
    probe = server_ctx.socket(zmq.ROUTER)
    probe.bind(ZAP_ENDPOINT)
    probe.close(0)
    guard.close()


def test_handle_returns_at_once_when_nothing_is_pending(
    keys: KeyPairs, server_ctx: zmq.Context
) -> None:
    guard = CurveGuard(server_ctx, keys.server("allowed", "alice"), OFF)
    guard.secure(server_ctx.socket(zmq.PULL), "ingest")
    t0 = time.monotonic()
    for _ in range(100):
        guard.handle()
    assert time.monotonic() - t0 < 0.5


# -- a caller that owns the socket's monitor ------------------------------------------


def test_caller_owned_monitor_forwards_refusals(
    keys: KeyPairs, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
) -> None:
    """The agent's loop already monitors the PULL for disconnects; a socket has
    one monitor, so it adds the guard's events to its mask and forwards them."""
    guard = CurveGuard(server_ctx, keys.server("allowed", "alice"), OFF)
    pull = server_ctx.socket(zmq.PULL)
    guard.secure(pull, "ingest", monitor=False)
    assert guard.monitor_events("ingest") == REFUSAL_EVENTS
    mon = pull.get_monitor_socket(zmq.EVENT_DISCONNECTED | guard.monitor_events("ingest"))
    pull.bind(f"ipc://{workdir}/in")
    assert mon not in guard.sockets and len(guard.sockets) == 1  # the ZAP handler only
    plain = client(zctx, zmq.PUSH, f"ipc://{workdir}/in")
    plain.send(b"plain")
    disconnects = 0
    deadline = time.monotonic() + 10
    while guard.statistics().ingest.bad_handshakes < 1 or not disconnects:
        assert time.monotonic() < deadline, "no refusal forwarded"
        if mon.poll(10):
            msg = recv_monitor_message(mon)
            if not guard.on_monitor_event("ingest", msg):
                assert msg["event"] == zmq.EVENT_DISCONNECTED
                disconnects += 1
    assert not pull.poll(0)
    pull.disable_monitor()
    mon.close(0)


# -- counting and logging stay bounded -----------------------------------------------


def test_refusals_are_logged_on_powers_of_two(
    keys: KeyPairs, server_ctx: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    guard = CurveGuard(server_ctx, keys.server("allowed", "alice"), OFF)
    refusal = {
        "event": zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
        "value": zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH,
        "endpoint": b"tcp://0.0.0.0:5557",
    }
    with caplog.at_level(logging.WARNING, logger="agent.curve"):
        for _ in range(1000):
            assert guard.on_monitor_event("ingest", refusal)
    assert guard.statistics().ingest.bad_handshakes == 1000
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10  # 1, 2, 4, ..., 512
    assert "not CURVE" in lines[0] and "tcp://0.0.0.0:5557" in lines[0]
    # Not ours: other events, other sockets.
    assert not guard.on_monitor_event("ingest", {"event": zmq.EVENT_DISCONNECTED, "value": 0})
    assert not guard.on_monitor_event("upstream", refusal)


# -- SIGHUP: reloading the allowed keys -------------------------------------------------


def test_reload_allowed_admits_added_keys_and_refuses_removed_ones(
    keys: KeyPairs, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
) -> None:
    settings = keys.server("allowed")  # empty: nobody admitted yet
    guard = CurveGuard(server_ctx, settings, OFF)
    pull = server_ctx.socket(zmq.PULL)
    guard.secure(pull, "ingest")
    ep = f"ipc://{workdir}/in"
    pull.bind(ep)
    srv = Server(guard, pull)

    first = client(zctx, zmq.PUSH, ep, keys, "alice")
    first.send(b"too early")
    srv.until(lambda: srv.stats("ingest").unknown_keys == 1, what="the refusal")

    keys.allowed("allowed", "alice")
    guard.reload_allowed()
    assert srv.stats("ingest").allowed_keys == 1
    # A refused client does not retry (ZAP 400): a new connection is needed.
    second = client(zctx, zmq.PUSH, ep, keys, "alice")
    second.send(b"welcome")
    srv.until(lambda: srv.got, what="the admitted message")
    assert srv.got == [b"welcome"]

    assert settings.allowed_keys_dir is not None
    os.unlink(os.path.join(settings.allowed_keys_dir, "alice.key"))
    guard.reload_allowed()
    third = client(zctx, zmq.PUSH, ep, keys, "alice")
    third.send(b"revoked")
    srv.until(lambda: srv.stats("ingest").unknown_keys == 2, what="the revoked key refused")
    second.send(b"still connected")  # revocation applies to new handshakes only
    srv.until(lambda: b"still connected" in srv.got, what="the old connection")
    assert b"revoked" not in srv.got


def test_reload_with_a_bad_file_keeps_the_running_keys(
    keys: KeyPairs, server_ctx: zmq.Context
) -> None:
    settings = keys.server("allowed", "alice")
    guard = CurveGuard(server_ctx, settings, OFF)
    assert settings.allowed_keys_dir is not None
    bad = os.path.join(settings.allowed_keys_dir, "broken.key")
    Path(bad).write_text('metadata\ncurve\n    public-key = "tooshort"\n')
    with pytest.raises(CurveError, match="broken.key"):
        guard.reload_allowed()
    assert guard.statistics().ingest.allowed_keys == 1


def test_reload_refuses_a_dir_others_can_write_and_keeps_the_running_keys(
    keys: KeyPairs, server_ctx: zmq.Context
) -> None:
    settings = keys.server("allowed", "alice")
    guard = CurveGuard(server_ctx, settings, OFF)
    assert settings.allowed_keys_dir is not None
    keys.allowed("allowed", "mallory")
    os.chmod(settings.allowed_keys_dir, 0o777)  # whoever wrote mallory.key could be anyone
    with pytest.raises(CurveError, match="writable by group or others"):
        guard.reload_allowed()
    assert guard.statistics().ingest.allowed_keys == 1


def test_reload_skips_a_fifo_without_waiting_on_it(
    keys: KeyPairs, server_ctx: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    settings = keys.server("allowed", "alice")
    guard = CurveGuard(server_ctx, settings, OFF)
    assert settings.allowed_keys_dir is not None
    os.mkfifo(os.path.join(settings.allowed_keys_dir, "evil.key"))
    keys.allowed("allowed", "bob")
    fifo = os.path.join(settings.allowed_keys_dir, "evil.key")
    with caplog.at_level(logging.WARNING, logger="agent.keys"):
        # Opening the FIFO would block for good: in a thread, to fail, not hang.
        t = threading.Thread(target=guard.reload_allowed)
        t.start()
        t.join(timeout=10)
    if t.is_alive():
        with open(fifo, "wb"):  # let the reader go
            pass
        pytest.fail("reload_allowed waited on a FIFO")
    assert guard.statistics().ingest.allowed_keys == 2
    assert "evil.key: not a regular file (a FIFO)" in caplog.text


# -- bad key files stop the guard before anything is bound -------------------------
# (every kind of bad file: tests/test_keys.py)


def test_a_bad_secret_key_file_names_the_socket_key_and_binds_nothing(
    keys: KeyPairs, server_ctx: zmq.Context
) -> None:
    public_file = keys.public_file("agent")  # the public file where the secret belongs
    allowed = keys.allowed("allowed", "alice")
    with pytest.raises(CurveError) as e:
        CurveGuard(server_ctx, OFF, CurveSettings(public_file, allowed))
    assert str(e.value).startswith(f"upstream.curve.secret_key_file: {public_file}: no secret-key")
    # Nothing was bound by the failed attempt.
    probe = server_ctx.socket(zmq.ROUTER)
    probe.bind(ZAP_ENDPOINT)
    probe.close(0)


def test_a_bad_allowed_keys_dir_names_the_socket_key(
    keys: KeyPairs, tmp_path: Path, server_ctx: zmq.Context
) -> None:
    missing = str(tmp_path / "missing")
    with pytest.raises(CurveError) as e:
        CurveGuard(server_ctx, CurveSettings(keys.secret_file("agent"), missing), OFF)
    assert str(e.value) == f"ingest.curve.allowed_keys_dir: {missing}: no such directory"


def test_an_empty_allowed_dir_is_warned_about(
    keys: KeyPairs, server_ctx: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.curve"):
        guard = CurveGuard(server_ctx, keys.server("allowed"), OFF)
    assert "ingest: CURVE on, but" in caplog.text and "no peer will be admitted" in caplog.text
    assert guard.statistics().ingest == SocketCurveStats(enabled=True, allowed_keys=0)
