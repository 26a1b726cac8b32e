"""agent/curve.py with real ZeroMQ over ipc://: who gets through a secured PULL
and XPUB, who does not, and what is counted. Each test drives the guard with a
small poll loop of its own, as the agent's loop does; nothing runs in a thread.

Keys live in tmp_path and sockets in a short private directory (ipc paths are
limited to 107 bytes). Waits are for a condition with a deadline; the only
fixed waits are the ones whose assertion is "nothing arrives within 1 s".
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from agent.curve import (
    REFUSAL_EVENTS,
    ZAP_ENDPOINT,
    CurveError,
    CurveGuard,
    CurveStats,
    SocketCurveStats,
    generate_keypair,
)
from agent.settings import CurveSettings

OFF = CurveSettings()
QUIET_S = 1.0  # "nothing arrives within 1 s": the assertion, not a settling wait


# -- keys ----------------------------------------------------------------------


class Keys:
    """Key pairs in tmp_path/keys, and allowed dirs holding chosen public keys."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "keys"
        self.pairs: dict[str, tuple[str, str]] = {}

    def pair(self, name: str) -> tuple[str, str]:
        if name not in self.pairs:
            self.pairs[name] = generate_keypair(str(self.dir), name)
        return self.pairs[name]

    def public(self, name: str) -> bytes:
        return zmq.auth.load_certificate(self.pair(name)[0])[0]

    def secret_file(self, name: str) -> str:
        return self.pair(name)[1]

    def allowed(self, dirname: str, *names: str) -> str:
        d = self.root / dirname
        d.mkdir(exist_ok=True)
        for name in names:
            shutil.copy(self.pair(name)[0], d)
        return str(d)

    def server(self, dirname: str, *allowed: str) -> CurveSettings:
        """The agent's CurveSettings: key pair "agent", these peers allowed."""
        return CurveSettings(self.secret_file("agent"), self.allowed(dirname, *allowed))


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


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
    keys: Keys | None = None,
    name: str | None = None,
    server_key: bytes | None = None,
) -> zmq.Socket:
    """A peer: CURVE client with key pair `name` when given, else plaintext."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if name is not None:
        assert keys is not None
        public, secret = zmq.auth.load_certificate(keys.secret_file(name))
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key or keys.public("agent"))
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
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


# -- ingest: PULL ------------------------------------------------------------------


def test_ingest_admits_allowed_key_and_refuses_unknown_key_and_plaintext(
    keys: Keys, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
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
    keys: Keys, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
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
    keys: Keys, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
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
    keys: Keys, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
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
    keys: Keys, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
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
    keys: Keys, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
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


def test_secure_before_bind_only(keys: Keys, server_ctx: zmq.Context, workdir: str) -> None:
    guard = CurveGuard(server_ctx, keys.server("allowed", "alice"), OFF)
    pull = server_ctx.socket(zmq.PULL)
    pull.bind(f"ipc://{workdir}/in")
    with pytest.raises(RuntimeError, match="before bind"):
        guard.secure(pull, "ingest")
    with pytest.raises(ValueError, match="unknown socket"):
        guard.secure(server_ctx.socket(zmq.PULL), "ingress")


# -- one socket secured, the other not; CURVE off --------------------------------------


def test_plaintext_socket_beside_a_secured_one_is_unaffected(
    keys: Keys, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
) -> None:
    """Upstream secured, ingest not: the ZAP handler in the same Context is not
    asked about the plaintext PULL (NULL without ZAP_DOMAIN), so it still works."""
    guard = CurveGuard(server_ctx, OFF, keys.server("allowed", "headend"))
    assert guard.enabled("upstream") and not guard.enabled("ingest")
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
    keys: Keys, server_ctx: zmq.Context
) -> None:
    guard = CurveGuard(server_ctx, keys.server("allowed", "alice"), OFF)
    guard.secure(server_ctx.socket(zmq.PULL), "ingest")
    t0 = time.monotonic()
    for _ in range(100):
        guard.handle()
    assert time.monotonic() - t0 < 0.5


# -- a caller that owns the socket's monitor ------------------------------------------


def test_caller_owned_monitor_forwards_refusals(
    keys: Keys, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
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
    keys: Keys, server_ctx: zmq.Context, caplog: pytest.LogCaptureFixture
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
    keys: Keys, server_ctx: zmq.Context, zctx: zmq.Context, workdir: str
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


def test_reload_with_a_bad_file_keeps_the_running_keys(keys: Keys, server_ctx: zmq.Context) -> None:
    settings = keys.server("allowed", "alice")
    guard = CurveGuard(server_ctx, settings, OFF)
    assert settings.allowed_keys_dir is not None
    bad = os.path.join(settings.allowed_keys_dir, "broken.key")
    Path(bad).write_text('metadata\ncurve\n    public-key = "tooshort"\n')
    with pytest.raises(CurveError, match="broken.key"):
        guard.reload_allowed()
    assert guard.statistics().ingest.allowed_keys == 1


# -- key files -------------------------------------------------------------------------


def test_generate_keypair_writes_zpl_files_with_safe_modes(tmp_path: Path) -> None:
    d = tmp_path / "new" / "keys"  # created, mode 0700
    public_path, secret_path = generate_keypair(str(d), "gw-01")
    assert (public_path, secret_path) == (str(d / "gw-01.key"), str(d / "gw-01.key_secret"))
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(secret_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public_path).st_mode) == 0o644
    public, secret = zmq.auth.load_certificate(secret_path)
    assert secret is not None and zmq.curve_public(secret) == public
    assert zmq.auth.load_certificate(public_path) == (public, None)
    assert sorted(os.listdir(d)) == ["gw-01.key", "gw-01.key_secret"]  # no temp left over
    # Each call makes a new pair.
    other, _ = generate_keypair(str(d), "gw-02")
    assert zmq.auth.load_certificate(other)[0] != public


@pytest.mark.parametrize("existing", ["gw.key", "gw.key_secret"])
def test_generate_keypair_never_overwrites(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious")
    with pytest.raises(CurveError, match="already exists"):
        generate_keypair(str(tmp_path), "gw")
    assert (tmp_path / existing).read_text() == "precious"
    assert os.listdir(tmp_path) == [existing]


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "."])
def test_generate_keypair_wants_a_plain_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(CurveError, match="plain file name"):
        generate_keypair(str(tmp_path), name)


def _bad_secret_files(keys: Keys, tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (path, expected message fragment)."""
    pub, sec = zmq.auth.load_certificate(keys.secret_file("agent"))
    _, other_sec = zmq.auth.load_certificate(keys.secret_file("other"))
    assert sec is not None and other_sec is not None
    cases = {
        "missing": (str(tmp_path / "nope.key_secret"), "cannot read"),
        "public file": (keys.pair("agent")[0], "no secret-key"),
        "not a certificate": (str(tmp_path / "junk"), "not a ZeroMQ certificate"),
        "short key": (
            f'curve\n    public-key = "{pub.decode()}"\n    secret-key = "abc"\n',
            "secret-key is not a 40-character Z85 key",
        ),
        "not z85": (
            f'curve\n    public-key = "{pub.decode()}"\n    secret-key = "{"~" * 40}"\n',
            "secret-key is not a 40-character Z85 key",
        ),
        "mismatch": (
            f'curve\n    public-key = "{pub.decode()}"\n    secret-key = "{other_sec.decode()}"\n',
            "does not belong",
        ),
        "a directory": (str(tmp_path), "cannot read"),
    }
    (tmp_path / "junk").write_text("hello\n")
    out = {}
    for name, (what, fragment) in cases.items():
        if what.startswith("curve\n"):
            d = tmp_path / name.replace(" ", "-")
            d.mkdir()
            p = d / "agent.key_secret"
            p.write_text(what)
            what = str(p)
        out[name] = (what, fragment)
    return out


def test_bad_secret_key_files_name_the_key_and_the_path(
    keys: Keys, tmp_path: Path, server_ctx: zmq.Context
) -> None:
    allowed = keys.allowed("allowed", "alice")
    for name, (path, fragment) in _bad_secret_files(keys, tmp_path).items():
        with pytest.raises(CurveError) as e:
            CurveGuard(server_ctx, OFF, CurveSettings(path, allowed))
        msg = str(e.value)
        assert msg.startswith(f"upstream.curve.secret_key_file: {path}"), (name, msg)
        assert fragment in msg, (name, msg)
    # Nothing was bound by the failed attempts.
    probe = server_ctx.socket(zmq.ROUTER)
    probe.bind(ZAP_ENDPOINT)
    probe.close(0)


def test_bad_allowed_keys_dirs_name_the_key_and_the_path(keys: Keys, tmp_path: Path) -> None:
    secret = keys.secret_file("agent")
    afile = tmp_path / "a-file"
    afile.write_text("")
    broken = Path(keys.allowed("broken", "alice"))
    (broken / "zz.key").write_text('curve\n    secret-key = "x"\n')
    cases = {
        str(tmp_path / "missing"): "no such directory",
        str(afile): "not a directory",
        str(broken): f"{broken / 'zz.key'}: not a ZeroMQ certificate",
    }
    ctx = zmq.Context()
    try:
        for path, fragment in cases.items():
            with pytest.raises(CurveError) as e:
                CurveGuard(ctx, CurveSettings(secret, path), OFF)
            msg = str(e.value)
            assert msg.startswith("ingest.curve.allowed_keys_dir: "), msg
            assert fragment in msg, msg
    finally:
        ctx.destroy(linger=0)


def test_warnings_for_risky_key_files(
    keys: Keys, server_ctx: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    settings = keys.server("allowed")  # empty
    assert settings.secret_key_file is not None and settings.allowed_keys_dir is not None
    os.chmod(settings.secret_key_file, 0o644)
    shutil.copy(keys.secret_file("alice"), settings.allowed_keys_dir)
    with caplog.at_level(logging.WARNING, logger="agent.curve"):
        guard = CurveGuard(server_ctx, settings, OFF)
    text = caplog.text
    assert "chmod 600" in text
    assert "alice.key_secret is a secret key" in text
    assert "no peer will be admitted" in text
    assert guard.statistics().ingest.allowed_keys == 0
