"""agent/notify.py against a fake service manager: a unix datagram socket that
plays systemd's NOTIFY_SOCKET (a path in tmp_path, and an abstract name), the
exact datagrams sent, WATCHDOG_* parsing per sd_watchdog_enabled(3), and the
no-op notifier without the environment."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from agent.notify import Notifier


class FakeManager:
    """The receiving end of NOTIFY_SOCKET."""

    def __init__(self, env_value: str, bind_to: str | bytes) -> None:
        self.env_value = env_value
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(2.0)

    def recv(self) -> bytes:
        return self.sock.recv(4096)

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(2.0)
        return False


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, tmp_path) -> Iterator[FakeManager]:
    if request.param == "path":
        path = str(tmp_path / "notify.sock")
        m = FakeManager(path, path)
    else:
        # Unique per test: abstract names are shared by every process on the host.
        name = f"edge-agent-test-{uuid.uuid4().hex}"
        m = FakeManager("@" + name, b"\0" + name.encode())
    yield m
    m.sock.close()


def notifier_for(m: FakeManager, **extra: str) -> Notifier:
    return Notifier.from_environ({"NOTIFY_SOCKET": m.env_value, **extra})


def test_ready_is_one_datagram(manager: FakeManager) -> None:
    n = notifier_for(manager)
    assert n.enabled
    n.ready()
    assert manager.recv() == b"READY=1"
    n.ready("listening on tcp://0.0.0.0:5557")
    assert manager.recv() == b"READY=1\nSTATUS=listening on tcp://0.0.0.0:5557"
    n.close()


def test_every_message_exactly(manager: FakeManager) -> None:
    n = notifier_for(manager, WATCHDOG_USEC="10000000")
    n.status("draining 120 events")
    assert manager.recv() == b"STATUS=draining 120 events"
    n.watchdog()
    assert manager.recv() == b"WATCHDOG=1"
    n.stopping()
    assert manager.recv() == b"STOPPING=1"
    n.stopping("parking 3 MiB on disk")
    assert manager.recv() == b"STOPPING=1\nSTATUS=parking 3 MiB on disk"
    n.extend_timeout(30_000_000)
    assert manager.recv() == b"EXTEND_TIMEOUT_USEC=30000000"
    n.close()


def test_reloading_carries_the_monotonic_clock(manager: FakeManager) -> None:
    n = notifier_for(manager)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = manager.recv().split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after
    n.close()


def test_status_is_one_bounded_line(manager: FakeManager) -> None:
    n = notifier_for(manager)
    n.status("line one\nREADY=1\tand  more")
    # A newline would start a new assignment: a status must never smuggle READY=1.
    assert manager.recv() == b"STATUS=line one READY=1 and more"
    n.status("x" * 1000)
    assert manager.recv() == b"STATUS=" + b"x" * 200
    n.close()


def test_no_watchdog_ping_when_systemd_expects_none(manager: FakeManager) -> None:
    n = notifier_for(manager)
    n.watchdog()
    n.extend_timeout(0)  # nothing to extend by
    assert manager.nothing_pending()
    n.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "10000000"}, 10.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "4242"}, 10.0),
        ({"WATCHDOG_USEC": "250000", "WATCHDOG_PID": "4242"}, 0.25),
        # Set for another process (we are a child that inherited it): not ours.
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "ten"}, None),
        ({"WATCHDOG_USEC": str(2**64 - 1)}, None),  # USEC_INFINITY
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    n = Notifier.from_environ({"NOTIFY_SOCKET": "/run/systemd/notify", **env}, pid=4242)
    assert n.watchdog_interval_s() == expected


def test_watchdog_pid_defaults_to_this_process() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environ(env).watchdog_interval_s() == 2.0


def test_no_op_without_notify_socket(tmp_path) -> None:
    env = {"WATCHDOG_USEC": "10000000"}  # without a socket there is no one to ping
    for n in (Notifier.from_environ(env), Notifier.from_environ({"NOTIFY_SOCKET": ""})):
        assert not n.enabled
        assert n.watchdog_interval_s() is None
        n.ready("x")
        n.reloading()
        n.status("x")
        n.watchdog()
        n.stopping()
        n.extend_timeout(1_000_000)
        n.close()
        assert n.failed_sends == 0


def test_from_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not Notifier.from_environ().enabled


def test_unsupported_socket_kind_is_a_no_op(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.notify"):
        n = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234", "WATCHDOG_USEC": "1000000"})
    assert not n.enabled
    assert n.watchdog_interval_s() is None
    assert "not a unix socket path" in caplog.text


def test_send_errors_are_logged_once_and_never_raised(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level(logging.WARNING, logger="agent.notify"):
        for _ in range(5):
            n.ready()
            n.status("still here")
    assert n.failed_sends == 10
    warnings = [r for r in caplog.records if r.name == "agent.notify"]
    assert len(warnings) == 1
    assert "READY=1" in warnings[0].getMessage()
    n.close()


def test_a_full_manager_queue_does_not_block(tmp_path) -> None:
    path = str(tmp_path / "slow.sock")
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    slow.bind(path)  # never read: its queue fills (net.unix.max_dgram_qlen)
    try:
        n = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
        started = time.monotonic()
        for _ in range(2000):
            n.watchdog()
        assert time.monotonic() - started < 5.0
        assert n.failed_sends > 0  # EAGAIN, counted instead of waiting
        n.close()
    finally:
        slow.close()


def test_manager_restart_is_survived(tmp_path) -> None:
    """systemd re-executing (daemon-reexec) rebinds its socket: the next send
    reaches the new one, because the address is resolved at every send."""
    path = str(tmp_path / "notify.sock")
    first = FakeManager(path, path)
    n = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    n.watchdog()
    assert first.recv() == b"WATCHDOG=1"
    first.sock.close()
    os.unlink(path)
    n.watchdog()  # nobody there: logged, counted
    second = FakeManager(path, path)
    n.watchdog()
    assert second.recv() == b"WATCHDOG=1"
    assert n.failed_sends == 1
    n.close()
    second.sock.close()
