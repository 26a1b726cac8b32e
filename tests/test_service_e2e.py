"""The agent as a systemd service sees it: the notify protocol against a fake
NOTIFY_SOCKET, and SIGHUP reload semantics. The real agent process."""

from __future__ import annotations

import os
import signal
import socket

import cbor2
import pytest
import zmq

from harness import Subscriber, event, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def notify_socket(workdir):
    path = os.path.join(workdir, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.05)
    yield path, sock
    sock.close()


def datagrams(sock: socket.socket, into: list[str]) -> list[str]:
    while True:
        try:
            into.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            return into


def test_ready_watchdog_and_stopping_reach_systemd(make_agent, notify_socket) -> None:
    path, sock = notify_socket
    agent = make_agent()
    agent.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    got: list[str] = []
    wait_for(lambda: any("READY=1" in d for d in datagrams(sock, got)), what="READY=1")
    # READY only once the endpoint answers: sockets bound, rings recovered.
    assert agent.get()["agent"]["state"] == "running"
    # The loop pings at half of WATCHDOG_USEC.
    wait_for(lambda: sum("WATCHDOG=1" in d for d in datagrams(sock, got)) >= 3, what="pings")
    assert agent.stop() == 0
    datagrams(sock, got)
    assert any("STOPPING=1" in d for d in got)
    assert any("EXTEND_TIMEOUT_USEC=" in d for d in got)


def test_sighup_reloads_class_rules_without_reordering(make_agent, zctx) -> None:
    agent = make_agent().start()
    push = zctx.socket(zmq.PUSH)
    push.connect(agent.ingest)
    before = [event(i, "voltage_sag", n=i) for i in range(100)]
    for e in before:
        push.send(e)
    agent.wait_state(lambda d: d["priorities"]["normal"]["received"] == 100)

    agent.doc["classes"] = {"critical": ["over_voltage", "voltage_sag"]}
    agent.doc["upstream"]["sndhwm"] = 16  # not reloadable: needs a restart
    agent.write_config()
    agent.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: reloaded" in agent.log, what="the reload log line")
    assert "classes.critical" in agent.log
    assert "need a restart" in agent.log and "upstream.sndhwm" in agent.log

    after = [event(i, "voltage_sag", n=i) for i in range(100, 150)]
    for e in after:
        push.send(e)
    agent.wait_state(lambda d: d["priorities"]["critical"]["received"] == 50)
    sub = Subscriber(zctx, agent.upstream)
    sub.collect(150)
    # Queued events kept their class and order; new ones follow the new rule.
    assert sub.events("normal") == before
    assert sub.events("critical") == after
    push.close(0)
    assert agent.stop() == 0


def test_a_bad_config_on_sighup_keeps_the_running_one(make_agent, zctx) -> None:
    agent = make_agent().start()
    agent.doc["ingest"]["bogus"] = 1
    agent.write_config()
    agent.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config not reloaded" in agent.log, what="the refusal")
    assert "bogus" in agent.log
    assert agent.get()["agent"]["state"] == "running"
    push = zctx.socket(zmq.PUSH)
    push.connect(agent.ingest)
    push.send(event(1, "fault"))
    sub = Subscriber(zctx, agent.upstream)
    assert cbor2.loads(sub.collect(1)[0])["type"] == "fault"
    push.close(0)
    assert agent.stop() == 0
