"""The alert lane and the ingest sockets' limits, end to end (issue 9 parts 1-2,
issue 13 item 6): the real agent over ipc://, real collectors and subscribers.

A backlog "in the sockets" is made without racing the agent: the agent is
stopped (SIGSTOP) while the collectors send, so everything waits in libzmq and
kernel buffers, then continued (SIGCONT) with both sockets full.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import cbor2
import pytest
import zmq

from agent import fastpath
from agent.ingest import configure_pull, ingest_socket_options
from agent.settings import IngestSettings

from curvekeys import AGENT, KeyPairs
from harness import AgentProcess, Subscriber, event, wait_for

pytestmark = pytest.mark.e2e


def lane_agent(make_agent: Callable[..., AgentProcess], **ingest: object) -> AgentProcess:
    agent = make_agent(ingest={})
    agent.lane = f"ipc://{agent.dir}/lane"  # type: ignore[attr-defined]
    agent.doc["ingest"].update({"priority_bind": [agent.lane], **ingest})  # type: ignore[attr-defined]
    agent.write_config()
    return agent


def push(ctx: zmq.Context, endpoint: str, sndhwm: int = 1000) -> zmq.Socket:
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, sndhwm)
    s.setsockopt(zmq.LINGER, 2000)
    s.connect(endpoint)
    return s


@pytest.fixture
def stopped() -> Iterator[Callable[[AgentProcess], None]]:
    """stop(agent): SIGSTOP it; it is continued at the end in any case."""
    paused: list[AgentProcess] = []

    def stop(agent: AgentProcess) -> None:
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGSTOP)
        paused.append(agent)

    yield stop
    for agent in paused:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.send_signal(signal.SIGCONT)


def meters(sub: Subscriber, cls: str | None = None) -> list[object]:
    return [cbor2.loads(e)["meter"] for e in sub.events(cls)]


def test_an_alert_on_the_lane_overtakes_a_bulk_backlog_in_the_sockets(
    make_agent: Callable[..., AgentProcess],
    zctx: zmq.Context,
    stopped: Callable[[AgentProcess], None],
) -> None:
    agent = lane_agent(make_agent).start()
    sub = Subscriber(zctx, agent.upstream)
    agent.wait_state(lambda d: d["upstream"]["subscribers"] >= 1, what="the subscriber")
    bulk = push(zctx, agent.ingest, sndhwm=100_000)
    lane = push(zctx, agent.lane)  # type: ignore[attr-defined]
    # Both connected before the agent stops (the monitor saw them).
    agent.wait_state(lambda d: d["ingest"]["peers"]["connected"] == 2, what="both collectors")
    stopped(agent)
    backlog = 5000
    for i in range(backlog):
        bulk.send(event(i, "reading"), copy=True)
    lane.send(event("alert", "last_gasp"))
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGCONT)

    def alert_in() -> bool:
        sub.recv_one(50)
        return "alert" in meters(sub, "critical")

    wait_for(alert_in, 20, interval=0, what="the alert")
    # The bulk events delivered ahead of it: at most what the agent read in
    # the turns before the lane's data was in (a few bursts), far from all.
    ahead = len(sub.events("normal"))
    assert ahead < 1000, f"{ahead} of {backlog} bulk events overtook the alert"
    sub.collect(backlog + 1, timeout=20)
    assert sorted(m for m in meters(sub, "normal")) == list(range(backlog))  # nothing lost

    doc = agent.wait_state(lambda d: d["ingest"]["events"] == backlog + 1, what="all counted")
    assert doc["ingest"]["lane"] == {
        "configured": True,
        "frames": 1,
        "events": 1,
        "noncritical": 0,
    }
    assert doc["ingest"]["frames"] == backlog + 1
    assert agent.stop() == 0


def test_lane_counters_show_non_critical_traffic_and_rejects_count_as_usual(
    make_agent: Callable[..., AgentProcess], zctx: zmq.Context
) -> None:
    agent = lane_agent(make_agent).start()
    assert agent.get()["ingest"]["lane"] == {
        "configured": True,
        "frames": 0,
        "events": 0,
        "noncritical": 0,
    }
    lane = push(zctx, agent.lane)  # type: ignore[attr-defined]
    lane.send(event(1, "fault") + event(2, "reading"))  # one frame, two events
    lane.send(event(3, "heartbeat"))
    lane.send(b"\xff")  # not CBOR: rejected like on the bulk socket
    lane.send_multipart([event(4, "fault"), b"x"])  # multipart: rejected whole
    doc = agent.wait_state(
        lambda d: d["rejected"]["total"] == 2 and d["ingest"]["lane"]["events"] == 3,
        what="the lane's frames counted",
    )
    assert doc["ingest"]["lane"] == {
        "configured": True,
        "frames": 3,  # the multipart message is rejected before it is a frame
        "events": 3,
        "noncritical": 2,
    }
    assert doc["rejected"]["by_reason"] == {"malformed": 1, "multipart": 1}
    assert doc["priorities"]["critical"]["received"] == 1
    # The agent runs in this environment (EDGE_AGENT_PURE_PYTHON included).
    assert doc["agent"]["ingest_path"] == fastpath.ACTIVE
    assert f"ingest path {fastpath.ACTIVE} (" in agent.log
    assert agent.stop() == 0


def test_no_lane_without_the_keys(make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent().start()
    doc = agent.get()
    assert doc["ingest"]["lane"]["configured"] is False
    assert "; lane off;" in agent.log
    assert agent.stop() == 0


def test_a_flooding_lane_does_not_starve_bulk(
    make_agent: Callable[..., AgentProcess],
    zctx: zmq.Context,
    stopped: Callable[[AgentProcess], None],
) -> None:
    # Both sockets full of the same class (so the subscriber sees read order):
    # 20,000 frames on the lane, 200 on bulk. Unbounded, the lane would be
    # read to the end first; bounded, bulk gets a burst every turn.
    agent = lane_agent(make_agent).start()
    sub = Subscriber(zctx, agent.upstream)
    agent.wait_state(lambda d: d["upstream"]["subscribers"] >= 1, what="the subscriber")
    flood, bulk_n = 20_000, 200
    lane = push(zctx, agent.lane, sndhwm=flood)  # type: ignore[attr-defined]
    bulk = push(zctx, agent.ingest)
    agent.wait_state(lambda d: d["ingest"]["peers"]["connected"] == 2, what="both collectors")
    stopped(agent)
    for i in range(flood):
        lane.send(event(i, "reading"))
    for i in range(bulk_n):
        bulk.send(event(f"bulk-{i}", "reading"))
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGCONT)
    got = sub.collect(flood + bulk_n, timeout=30)
    assert len(got) == flood + bulk_n
    order = meters(sub, "normal")
    last_bulk = max(i for i, m in enumerate(order) if isinstance(m, str))
    assert last_bulk < flood // 4, f"the last bulk event came at {last_bulk} of {len(order)}"
    doc = agent.wait_state(lambda d: d["ingest"]["events"] == flood + bulk_n, what="counted")
    assert doc["ingest"]["lane"]["noncritical"] == flood
    assert agent.stop() == 0


def test_the_lane_under_curve_admits_allowed_keys_only(
    make_agent: Callable[..., AgentProcess], workdir: str, zctx: zmq.Context
) -> None:
    keys = KeyPairs(workdir)
    agent = lane_agent(make_agent)
    agent.doc["ingest.curve"] = {
        "secret_key_file": keys.secret_file(AGENT),
        "allowed_keys_dir": keys.allowed("collectors", "collector"),
    }
    agent.write_config()
    agent.start()
    sub = Subscriber(zctx, agent.upstream)
    agent.wait_state(lambda d: d["upstream"]["subscribers"] >= 1, what="the subscriber")

    contexts = []

    def client(name: str | None) -> zmq.Context:
        ctx = zmq.Context()
        contexts.append(ctx)
        if name is not None:
            keys.make_client(ctx, name)
        return ctx

    try:
        mallory = push(client("mallory"), agent.lane)  # type: ignore[attr-defined]
        plain = push(client(None), agent.lane)  # type: ignore[attr-defined]
        mallory.send(event(666, "fault"))
        plain.send(event(777, "fault"))
        agent.wait_state(lambda d: d["ingest"]["unauthorized"] >= 2, what="lane refusals")
        good = push(client("collector"), agent.lane)  # type: ignore[attr-defined]
        good.send(event(1, "fault"))
        sub.collect(1)
        assert meters(sub) == [1]
        assert sub.recv_one(300) is None  # nothing of the intruders
        doc = agent.get()
        assert doc["ingest"]["lane"]["events"] == 1
        assert any("refused CURVE client key" in line for line in agent.lines)
    finally:
        for ctx in contexts:
            ctx.destroy(linger=0)
    assert agent.stop() == 0


def test_max_peers_refuses_the_next_collector_until_a_place_is_free(
    make_agent: Callable[..., AgentProcess],
) -> None:
    # The cap bounds memory, it is not a gate: a connection beyond it is
    # closed within a turn of its accept (what it sent before that is read),
    # and its collector retries until a place is free.
    agent = make_agent(ingest={"max_peers": 2}).start()
    ctxs = [zmq.Context() for _ in range(4)]
    try:
        sub = Subscriber(ctxs[3], agent.upstream)
        agent.wait_state(lambda d: d["upstream"]["subscribers"] >= 1, what="the subscriber")
        first, second = push(ctxs[0], agent.ingest), push(ctxs[1], agent.ingest)
        agent.wait_state(lambda d: d["ingest"]["peers"]["connected"] == 2, what="two peers")
        third = push(ctxs[2], agent.ingest)
        doc = agent.wait_state(lambda d: d["ingest"]["peers"]["refused"] >= 2, what="retries")
        assert doc["ingest"]["peers"]["connected"] == 2
        assert doc["ingest"]["peers"]["max"] == 2
        assert doc["ingest"]["disconnects"] == 0  # our refusals are not collectors leaving
        wait_for(lambda: any("ingest.max_peers" in line for line in agent.lines), what="the log")
        first.send(event(1, "fault"))
        second.send(event(2, "fault"))
        sub.collect(2)
        first.close(0)  # a place is free: the third one's retry gets in
        agent.wait_state(
            lambda d: d["ingest"]["disconnects"] >= 1 and d["ingest"]["peers"]["connected"] == 2,
            what="the third collector in",
        )
        third.send(event(3, "fault"))
        sub.collect(3)
        assert sorted(meters(sub)) == [1, 2, 3]  # type: ignore[type-var]
        for s in (second, third):
            s.close(0)
    finally:
        for ctx in ctxs:
            ctx.destroy(linger=0)
    assert agent.stop() == 0


def test_an_oversize_frame_disconnect_is_counted(
    make_agent: Callable[..., AgentProcess], zctx: zmq.Context
) -> None:
    agent = make_agent(ingest={"max_frame_bytes": 1024}).start()
    s = push(zctx, agent.ingest)
    s.send(b"\xa0" * 2048)
    doc = agent.wait_state(lambda d: d["ingest"]["disconnects"] >= 1, what="the disconnect")
    assert doc["ingest"]["frames"] == 0
    s.close(0)
    assert agent.stop() == 0


def test_ingest_socket_options_are_set_as_configured(zctx: zmq.Context) -> None:
    settings = IngestSettings(rcvhwm=17, rcvbuf_bytes=8192, max_frame_bytes=4096)
    sock = zctx.socket(zmq.PULL)
    configure_pull(sock, settings)
    got = {opt: sock.getsockopt(opt) for opt, _ in ingest_socket_options(settings)}
    assert got == dict(ingest_socket_options(settings))
    assert got[zmq.RCVHWM] == 17 and got[zmq.RCVBUF] == 8192 and got[zmq.MAXMSGSIZE] == 4096
    assert got[zmq.HANDSHAKE_IVL] > 0 and got[zmq.TCP_KEEPALIVE] == 1
    assert 0 < got[zmq.HEARTBEAT_IVL] < got[zmq.HEARTBEAT_TIMEOUT] <= got[zmq.HEARTBEAT_TTL]
    sock.close(0)


def test_the_startup_log_names_every_endpoint_the_config_and_the_spill_dir(
    make_agent: Callable[..., AgentProcess],
) -> None:
    agent = lane_agent(make_agent).start()
    log = agent.log
    for needle in (
        f"config {agent.config}",
        f"spill dir {agent.spill_dir}",
        f"ingest bind {agent.ingest}",
        f"lane bind {agent.lane}",  # type: ignore[attr-defined]
        f"upstream bind {agent.upstream}",
        f"http {agent.url}/api/v1/gateway/backpressure",
        "ingest path ",
        "libzmq may hold up to",
    ):
        assert needle in log, needle
    assert agent.stop() == 0


@pytest.mark.parametrize("family", ["tcp", "ipc"])
def test_shutdown_connection_touches_only_a_connection_of_that_listener(
    family: str, workdir: str
) -> None:
    # The peer cap's refusal: shut down the connection behind a descriptor
    # number (from the monitor), after checking it belongs to that listener.
    import socket as so

    from agent.ingest import _shutdown_connection

    if family == "tcp":
        listener = so.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        endpoint, other = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}"
        client = so.create_connection(("127.0.0.1", port))
    else:
        path = f"{workdir}/l.sock"
        listener = so.socket(so.AF_UNIX, so.SOCK_STREAM)
        listener.bind(path)
        listener.listen()
        endpoint, other = f"ipc://{path}", f"ipc://{path}x"
        client = so.socket(so.AF_UNIX, so.SOCK_STREAM)
        client.connect(path)
    accepted, _ = listener.accept()
    with listener, client, accepted:
        assert _shutdown_connection(accepted.fileno(), other) is False
        assert _shutdown_connection(accepted.fileno(), endpoint) is True
        client.settimeout(5)
        assert client.recv(1) == b""  # the peer sees the connection end
        assert accepted.fileno() >= 0  # our descriptor stays open: libzmq closes its own
        r, w = os.pipe()  # not a socket at all
        try:
            assert _shutdown_connection(r, endpoint) is False
        finally:
            os.close(r)
            os.close(w)
    assert _shutdown_connection(10_000, endpoint) is False  # no such descriptor


class _FakePull:
    """A PULL socket with `bursts` bursts waiting, for the turn's reading order."""

    def __init__(self, name: str, bursts: int) -> None:
        self.name = name
        self.sock = object()
        self.bursts = bursts


def _turns(
    lane_bursts: int, bulk_bursts: int, room: Callable[[list[str]], bool], turns: int
) -> list[list[str]]:
    """The bursts each turn reads (`Ingest.read_turn` with sockets and memory faked)."""
    from agent.ingest import Ingest

    ingest = Ingest.__new__(Ingest)
    lane, bulk = _FakePull("lane", lane_bursts), _FakePull("bulk", bulk_bursts)
    ingest.lane = lane  # type: ignore[assignment]
    ingest.bulk = bulk  # type: ignore[assignment]
    ingest.bulk_owed = False
    read: list[str] = []

    def burst(pull: _FakePull) -> bool:
        if not pull.bursts:
            return False
        pull.bursts -= 1
        read.append(pull.name)
        return True

    out = []
    for _ in range(turns):
        read.clear()
        ready = {
            s: 1 for s in (lane.sock, bulk.sock) if (lane.bursts if s is lane.sock else bulk.bursts)
        }
        ingest.read_turn(ready, lambda: room(read), burst)  # type: ignore[arg-type]
        out.append(list(read))
    return out


def test_a_turn_reads_the_lane_first_then_one_bulk_burst() -> None:
    from agent.ingest import LANE_MAX_BURSTS

    turns = _turns(10, 10, lambda read: True, 3)
    assert turns[0] == ["lane"] * LANE_MAX_BURSTS + ["bulk"]
    assert turns[1] == ["lane"] * LANE_MAX_BURSTS + ["bulk"]
    assert turns[2] == ["lane", "lane", "bulk"]  # the lane is empty after 10
    assert _turns(0, 3, lambda read: True, 1) == [["bulk"]]
    assert _turns(1, 0, lambda read: True, 1) == [["lane"]]


def test_when_the_lane_takes_the_last_room_the_next_turn_reads_bulk_first() -> None:
    # Room for one burst per turn only (the previous turn's make_room).
    turns = _turns(10, 10, lambda read: not read, 4)
    assert turns == [["lane"], ["bulk"], ["lane"], ["bulk"]]
