"""CURVE end to end: the real agent (`edge-agent run`) with [ingest.curve] and
[upstream.curve], real collectors and subscribers over ipc://. Only peers whose
keys are allowed get through; unknown keys and plaintext peers get nothing, are
counted, and the agent keeps serving everyone else meanwhile.

Each peer identity is its own zmq Context with the CURVE client options as
context defaults, so harness.Subscriber and plain PUSH sockets built from it are
CURVE clients without any change to the harness.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator

import cbor2
import pytest
import zmq
import zmq.auth

from curvekeys import AGENT, KeyPairs
from harness import AgentProcess, Subscriber, event, wait_for

pytestmark = pytest.mark.e2e

QUIET_MS = 1000  # "nothing arrives within 1 s": the assertion, not a settling wait


@pytest.fixture(autouse=True)
def _umask_022() -> Iterator[None]:
    """Key files and allowed dirs made here must not be group-writable, or the
    agent refuses them (agent/keys.py); a user umask of 002 (Ubuntu's default
    for user private groups) would make them so."""
    old = os.umask(0o022)
    yield
    os.umask(old)


class Identities(KeyPairs):
    """Key pairs in <workdir>/keys (tests/curvekeys.py), and one client Context
    per identity."""

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        self.contexts: list[zmq.Context] = []
        self.agent_public = self.public_file(AGENT)

    def z85(self, name: str) -> str:
        return self.public(name).decode("ascii")

    def curve(self, dirname: str, *names: str) -> dict[str, object]:
        """A [*.curve] table: the agent's secret key, these peers allowed."""
        return {
            "secret_key_file": self.secret_file(AGENT),
            "allowed_keys_dir": self.allowed(dirname, *names),
        }

    def context(self, name: str | None) -> zmq.Context:
        """Sockets made from it are CURVE clients with `name`'s keys (None: plaintext)."""
        ctx = zmq.Context()
        self.contexts.append(ctx)
        if name is not None:
            self.make_client(ctx, name)
        return ctx

    def close(self) -> None:
        for ctx in self.contexts:
            ctx.destroy(linger=0)


@pytest.fixture
def ids(workdir: str) -> Iterator[Identities]:
    i = Identities(workdir)
    yield i
    i.close()


def push(ctx: zmq.Context, agent: AgentProcess) -> zmq.Socket:
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(agent.ingest)
    return s


def received_total(doc: dict) -> int:
    return sum(p["received"] for p in doc["priorities"].values())


def logged(agent: AgentProcess, *fragments: str) -> Callable[[], bool]:
    return lambda: any(all(f in line for f in fragments) for line in list(agent.lines))


def test_only_allowed_peers_get_through_on_both_sockets(
    make_agent: Callable[..., AgentProcess], ids: Identities
) -> None:
    agent = make_agent(
        **{
            "ingest.curve": ids.curve("ingest-allowed", "collector"),
            "upstream.curve": ids.curve("upstream-allowed", "headend"),
        }
    ).start()
    doc = agent.get()
    assert doc["ingest"]["unauthorized"] == 0 and doc["upstream"]["unauthorized"] == 0

    # The allowed pair works.
    headend = Subscriber(ids.context("headend"), agent.upstream)
    agent.wait_state(lambda d: d["upstream"]["subscribers"] >= 1, what="the head-end's SUB")
    collector = push(ids.context("collector"), agent)
    first = [event(i, "reading", seqno=i) for i in range(100)]
    for e in first:
        collector.send(e)
    assert headend.collect(len(first)) == first

    # Intruders on the upstream: an unknown key and a plaintext subscriber.
    mallory_sub = Subscriber(ids.context("mallory"), agent.upstream)
    plain_sub = Subscriber(ids.context(None), agent.upstream)
    agent.wait_state(lambda d: d["upstream"]["unauthorized"] >= 2, what="upstream refusals")
    wait_for(
        logged(agent, "upstream", "refused CURVE client key", ids.z85("mallory")),
        what="the upstream refusal of mallory's key in the log",
    )

    # Intruders on the ingest: an unknown key, a plaintext collector, and the
    # head-end's key (allowed upstream, not here). Critical events: if any got
    # in, they would be published at once.
    intruders = {"mallory": 666, None: 777, "headend": 888}
    knocking = []  # kept referenced: a collected socket closes mid-handshake
    for name, meter in intruders.items():
        knocking.append(push(ids.context(name), agent))
        knocking[-1].send(event(meter, "fault"))
    agent.wait_state(lambda d: d["ingest"]["unauthorized"] >= 3, what="ingest refusals")
    for name in ("mallory", "headend"):
        wait_for(
            logged(agent, "ingest", "refused CURVE client key", ids.z85(name)),
            what=f"the ingest refusal of {name}'s key in the log",
        )

    # Meanwhile the allowed pair keeps working.
    second = [event(1000 + i, "over_voltage", seqno=i) for i in range(50)]
    for e in second:
        collector.send(e)
    assert headend.collect(len(first) + len(second)) == first + second
    assert mallory_sub.recv_one(QUIET_MS) is None
    assert plain_sub.recv_one(0) is None
    assert headend.recv_one(0) is None  # nothing of the intruders reached the head-end

    doc = agent.wait_state(
        lambda d: d["priorities"]["critical"]["delivered"] == len(second), what="all delivered"
    )
    assert received_total(doc) == len(first) + len(second)
    assert doc["ingest"]["frames"] == len(first) + len(second)
    assert doc["rejected"]["total"] == 0
    meters = {cbor2.loads(e)["meter"] for e in headend.events()}
    assert not meters & set(intruders.values())
    assert agent.stop() == 0


def test_sighup_reloads_the_allowed_keys(
    make_agent: Callable[..., AgentProcess], ids: Identities
) -> None:
    agent = make_agent(**{"ingest.curve": ids.curve("ingest-allowed")}).start()  # nobody allowed
    assert any("no peer will be admitted" in line for line in agent.lines)
    sub = Subscriber(ids.context(None), agent.upstream)  # upstream stays plaintext
    agent.wait_state(lambda d: d["upstream"]["subscribers"] >= 1, what="the subscription")
    ctx = ids.context("newcomer")
    early = push(ctx, agent)
    early.send(event(1, "reading"))
    agent.wait_state(lambda d: d["ingest"]["unauthorized"] >= 1, what="the refusal")

    ids.allowed("ingest-allowed", "newcomer")
    agent.proc.send_signal(signal.SIGHUP)
    wait_for(logged(agent, "ingest", "allowed peer keys reloaded"), what="the reload")
    # A client refused with ZAP 400 does not retry: the collector reconnects.
    welcome = push(ctx, agent)
    welcome.send(event(2, "reading"))
    sub.collect(1)
    assert [cbor2.loads(e)["meter"] for e in sub.events()] == [2]
    assert agent.stop() == 0


def test_an_unusable_key_file_stops_the_start_naming_the_key(
    make_agent: Callable[..., AgentProcess], ids: Identities
) -> None:
    agent = make_agent(
        **{
            "upstream.curve": {
                # The public file where the secret one belongs: the likeliest slip.
                "secret_key_file": ids.agent_public,
                "allowed_keys_dir": ids.allowed("upstream-allowed", "headend"),
            }
        }
    )
    r = agent.run_to_exit()
    assert r.returncode == 1, r.stderr
    assert "upstream.curve.secret_key_file" in r.stderr and ids.agent_public in r.stderr
    assert "no secret-key" in r.stderr


def test_keygen_writes_a_key_pair_and_never_overwrites(workdir: str) -> None:
    d = os.path.join(workdir, "etc", "curve")
    cmd = [sys.executable, "-m", "agent", "keygen", "--dir", d, "--name", "gw-01"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    public, secret = os.path.join(d, "gw-01.key"), os.path.join(d, "gw-01.key_secret")
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    key = zmq.auth.load_certificate(public)[0].decode("ascii")
    assert key in r.stdout and public in r.stdout and secret in r.stdout
    with open(secret) as f:
        before = f.read()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert again.returncode == 1
    assert "already exists" in again.stderr
    with open(secret) as f:
        assert f.read() == before


def test_a_fifo_in_the_allowed_dir_never_stalls_a_reload(
    make_agent: Callable[..., AgentProcess], ids: Identities
) -> None:
    """Issue 13 item 7: a FIFO named evil.key in the allowed directory stalled
    the loop on SIGHUP (/healthz said stalled). Now it is never opened: the
    reload skips it with a log line and applies the rest."""
    agent = make_agent(**{"ingest.curve": ids.curve("ingest-allowed", "collector")}).start()
    allowed = ids.allowed("ingest-allowed")
    os.mkfifo(os.path.join(allowed, "evil.key"))
    ids.allowed("ingest-allowed", "newcomer")
    agent.proc.send_signal(signal.SIGHUP)
    wait_for(
        logged(agent, "skipped", "evil.key", "not a regular file (a FIFO)"),
        what="the FIFO skipped with a log line",
    )
    wait_for(logged(agent, "ingest", "allowed peer keys reloaded: 2 (1 added"), what="the reload")
    with urllib.request.urlopen(agent.url + "/healthz", timeout=5) as r:
        health = json.load(r)
    assert health["status"] == "ok" and health["loop_age_s"] < 1, health
    # The keys beside the FIFO were loaded: the newcomer gets through.
    sub = Subscriber(ids.context(None), agent.upstream)
    agent.wait_state(lambda d: d["upstream"]["subscribers"] >= 1, what="the subscription")
    push(ids.context("newcomer"), agent).send(event(7, "reading"))
    sub.collect(1)
    assert agent.stop() == 0


def test_an_exposed_secret_key_stops_the_start(
    make_agent: Callable[..., AgentProcess], ids: Identities
) -> None:
    os.chmod(ids.secret_file(AGENT), 0o644)
    agent = make_agent(**{"ingest.curve": ids.curve("ingest-allowed", "collector")})
    r = agent.run_to_exit()
    assert r.returncode == 1, r.stderr
    assert "ingest.curve.secret_key_file" in r.stderr
    assert "the secret key is readable by every user of this box (mode 0644)" in r.stderr
