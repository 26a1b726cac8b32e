"""The agent's PULL sockets, the bulk one and the alert lane: everything
between a collector's connection and a burst of frames in hand.

This module owns opening, configuring and closing the PULL sockets and their
monitors (`ingest_socket_options`: the same options on both, INTERFACE.md),
the per-peer limits (handshake, heartbeats, TCP keepalive), the peer cap
(agent/peers.py decides, `Ingest` closes the refused connection), and the
order in which a turn reads bursts: the alert lane first, at most
LANE_MAX_BURSTS bursts, then one bulk burst, each only while the caller says
there is room for it (`read_turn`).

Promises: a burst is a bounded run of `recv(NOBLOCK)` (INGEST_MAX_FRAMES,
INGEST_MAX_BYTES; FACTS.md: poll once, then drain without polling); bulk is
never starved by the lane, neither by a flood on it nor by memory pressure
(`bulk_owed`); monitor reading is bounded per turn (MONITOR_MAX_PER_TURN). It
decodes nothing and queues nothing: the loop (agent/loop.py) is handed each
`Pull` to read, and decodes and queues what it read. Runs on the loop's
thread only; no clock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence

import zmq
from zmq.utils.monitor import recv_monitor_message

from agent import fastpath
from agent.curve import CurveGuard
from agent.peers import PeerTable, worst_case_bytes
from agent.settings import IngestSettings
from agent.upstream import EndpointError

# The loop's logger: the refusal warnings read as they did before the split.
log = logging.getLogger("agent.loop")

# One ingest burst: at most this many frames / bytes (plus the frame that
# crosses the limit) before the loop publishes again. The burst bounds how long
# a critical event that arrived meanwhile waits for its turn, and how often the
# (shallow, SNDHWM 2) upstream pipe is refilled: with 512 frames (~1.5 ms) the
# agent delivered 290k events/s of 327k ingested and fell behind; with 128 it
# delivered all 304k, critical p99 25 ms (bench/throughput.py, one run each).
# The byte bound keeps batched frames to short turns too (32-event frames:
# 256 KiB bursts delivered 340k events/s, 64 KiB 369k) and is the memory the
# governor keeps free for a burst.
INGEST_MAX_FRAMES = 128
INGEST_MAX_BYTES = 64 * 1024
# The alert lane (INTERFACE.md): at every turn the loop reads what waits on the
# lane before the bulk burst, up to this many bursts (512 frames), each only
# while the governor has room for one more burst. An honest lane carries
# alerts, ~1% of the traffic, and never fills one burst; the bound only acts
# on an alert storm (read 4x faster than bulk) or on a collector that floods
# the lane with everything: bulk then still gets at least 1 burst in 5 of the
# reading. When the lane took the last room of a turn, the next turn reads
# bulk first (`bulk_owed`), so memory pressure cannot starve bulk either.
LANE_MAX_BURSTS = 4
# Per-peer limits on both PULL sockets (issue 13 item 6), in milliseconds.
# A connection must finish its ZMTP/CURVE handshake within HANDSHAKE_IVL
# (libzmq's default is 30 s; a CURVE handshake takes a few ms, a slow link a
# second): a port probe or a silent raw TCP peer holds a descriptor 10 s, not
# forever. ZMTP heartbeats: a PING every HEARTBEAT_IVL; a peer that sends
# nothing, not even the PONG, within HEARTBEAT_TIMEOUT is dropped (a dead
# collector or a half-open TCP connection). A live libzmq peer answers PINGs
# from its I/O thread, so an idle but healthy collector is never dropped.
# HEARTBEAT_TTL tells the collector to drop us after that much silence.
HANDSHAKE_IVL_MS = 10_000
HEARTBEAT_IVL_MS = 10_000
HEARTBEAT_TIMEOUT_MS = 30_000
HEARTBEAT_TTL_MS = 60_000
# TCP keepalive as well (belt and braces under the heartbeats, and what the
# kernel does for a connection still in its handshake): probes after 60 s of
# silence, every 10 s, 6 unanswered ones close it (~2 min).
TCP_KEEPALIVE_IDLE_S = 60
TCP_KEEPALIVE_INTVL_S = 10
TCP_KEEPALIVE_CNT = 6
# What the loop wants from each PULL's monitor: connections as they come and
# go (agent/peers.py) and the failed handshakes that end some of them. The
# CURVE guard's events are a subset (agent/curve.py REFUSAL_EVENTS).
HANDSHAKE_FAILED_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
PULL_MONITOR_EVENTS = (
    zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILED_EVENTS
)
# Monitor events read per socket per turn: a connection flood cannot hold the
# loop (each event is a few us; the Poller reports the rest next turn).
MONITOR_MAX_PER_TURN = 256


class Pull:
    """One PULL socket of the agent (bulk or lane): the socket, its monitor,
    who is connected, and how a burst is read from it."""

    __slots__ = ("name", "sock", "monitor", "peers", "reader", "read", "lane")

    def __init__(self, name: str, sock: zmq.Socket, max_peers: int, *, lane: bool) -> None:
        self.name = name  # for logs: "ingest" | "lane"
        self.sock = sock
        self.monitor: zmq.Socket | None = None
        self.peers = PeerTable(max_peers)
        # One burst, without waiting: (single-frame messages, multipart
        # skipped). From C on pyzmq's own libzmq when the compiled core is
        # built, else recv(NOBLOCK) + RCVMORE in Python (agent/fastpath.py).
        self.reader = fastpath.make_burst_reader(
            sock, max_frames=INGEST_MAX_FRAMES, max_bytes=INGEST_MAX_BYTES
        )
        self.read = self.reader.read
        self.lane = lane


class Ingest:
    """The PULL sockets of one agent run: `lane` (None when ingest.lane is
    off) and `bulk`, both in `pulls` (the lane first), with their monitors.

    Invariant: every socket in `pulls` is closed by `close` (registered by the
    caller before `open`, so a failed open closes what it had opened)."""

    def __init__(self, ctx: zmq.Context, settings: IngestSettings, guard: CurveGuard) -> None:
        self.ctx = ctx
        self.settings = settings
        self.guard = guard
        self.pulls: list[Pull] = []
        self.lane: Pull | None = None
        # The lane took the last room of a turn while bulk waited: the next
        # turn reads bulk first (LANE_MAX_BURSTS).
        self.bulk_owed = False

    # -- open and close --------------------------------------------------------

    def open(self) -> None:
        """Open, bind and connect both sockets. Raises EndpointError naming the
        key and endpoint that failed, or zmq.ZMQError."""
        s = self.settings
        # The lane first: its endpoints are bound before the bulk socket's,
        # so a collector that connects to both never finds bulk open and
        # the lane not yet.
        if s.lane:
            self.lane = self._open_pull(
                "lane",
                ("ingest.priority_bind", s.priority_bind),
                ("ingest.priority_connect", s.priority_connect),
            )
        self.bulk = self._open_pull(
            "ingest", ("ingest.bind", s.bind), ("ingest.connect", s.connect)
        )

    def _open_pull(self, name: str, *endpoints: tuple[str, Sequence[str]]) -> Pull:
        """A PULL socket with the ingest settings (the bulk one and the lane
        share them all: INTERFACE.md), its monitor, bound and connected to
        `endpoints` ((config key, endpoints) pairs; bind keys end in "bind").
        Registered for closing at once, so a failure closes it."""
        s = self.settings
        sock = self.ctx.socket(zmq.PULL)
        pull = Pull(name, sock, s.max_peers, lane=name == "lane")
        self.pulls.append(pull)
        configure_pull(sock, s)
        # Both sockets admit the same collectors: the lane is secured under the
        # ingest name (same keys, same ZAP domain, refusals counted together).
        # We own each PULL's monitor (a socket has one): the guard's
        # handshake events come through it, see read_monitor.
        self.guard.secure(sock, "ingest", monitor=False)
        pull.monitor = sock.get_monitor_socket(
            PULL_MONITOR_EVENTS | self.guard.monitor_events("ingest")
        )
        for key, eps in endpoints:
            attach = sock.bind if key.endswith("bind") else sock.connect
            for ep in eps:
                try:
                    attach(ep)
                except zmq.ZMQError as e:
                    reason = zmq.strerror(e.errno) if e.errno is not None else str(e)
                    raise EndpointError(key, ep, reason) from e
        return pull

    def close(self) -> None:
        """Close the PULL sockets (if the stop has not yet) and their monitors."""
        for pull in self.pulls:
            if pull.monitor is not None:
                pull.monitor.close(0)
            if not pull.sock.closed:
                with contextlib.suppress(zmq.ZMQError):
                    pull.sock.disable_monitor()
                pull.sock.close(0)

    def stop(self, poller: zmq.Poller) -> None:
        """The stop sequence's end of ingest: stop polling the PULL sockets and
        close them (nothing more is accepted; what libzmq still held is gone
        with them, as before the lane)."""
        for pull in self.pulls:
            poller.unregister(pull.sock)
            pull.sock.close(0)

    def reader_kinds(self) -> list[str]:
        """Which burst readers run ("compiled", "python"), for the start-up log."""
        return sorted({pull.reader.kind for pull in self.pulls})

    def log_buffers(self) -> None:
        """Log the most libzmq may hold for the ingest peers, outside the
        budget (README, worst case: every peer sending max-size frames)."""
        i = self.settings
        # Bound peers are capped per socket; the agent's own connects add one each.
        connections = len(self.pulls) * i.max_peers + len(i.connect) + len(i.priority_connect)
        worst = worst_case_bytes(i.rcvhwm, i.max_frame_bytes, i.rcvbuf_bytes, connections)
        log.info(
            "ingest buffers: rcvhwm %d frames, SO_RCVBUF %d bytes per connection, at most "
            "%d connections (ingest.max_peers %d per PULL socket): libzmq may hold up to "
            "%d MiB outside the budget if every peer sends %d-byte frames",
            i.rcvhwm,
            i.rcvbuf_bytes,
            connections,
            i.max_peers,
            worst // (1024 * 1024),
            i.max_frame_bytes,
        )

    # -- bursts ----------------------------------------------------------------

    def read_turn(
        self,
        ready: dict,
        room_for_burst: Callable[[], bool],
        burst: Callable[[Pull], bool],
    ) -> bool:
        """This turn's reading: what waits on the alert lane first (at most
        LANE_MAX_BURSTS bursts), then one bulk burst. Every burst is read only
        with room for it in the budget: the previous turn's make_room left room
        for one, and `room_for_burst` is asked before each further one.
        `burst(pull)` reads, decodes and queues one burst, True if anything was
        read (False: `pull` is empty). Returns True if any frame was read.
        `ready`: this turn's poll."""
        bulk_ready = self.bulk.sock in ready
        lane = self.lane
        got = lane_read = False
        if lane is not None and lane.sock in ready and not (self.bulk_owed and bulk_ready):
            for i in range(LANE_MAX_BURSTS):
                if i and not room_for_burst():
                    break
                if not burst(lane):
                    break  # the lane is empty
                got = lane_read = True
        if bulk_ready:
            if lane_read and not room_for_burst():
                self.bulk_owed = True
            else:
                self.bulk_owed = False
                got = burst(self.bulk) or got
        return got

    # -- connections -----------------------------------------------------------

    def read_monitors(self, ready: dict) -> None:
        """Read the monitor of every PULL socket this turn's poll (`ready`) found
        readable."""
        for pull in self.pulls:
            if pull.monitor in ready:
                self.read_monitor(pull)

    def read_monitor(self, pull: Pull) -> None:
        """Connections coming and going on `pull` (agent/peers.py keeps the
        count and decides refusals; the guard counts CURVE refusals)."""
        assert pull.monitor is not None
        peers = pull.peers
        for _ in range(MONITOR_MAX_PER_TURN):
            try:
                msg = recv_monitor_message(pull.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            event, value = msg["event"], msg["value"]
            if event & HANDSHAKE_FAILED_EVENTS:
                self.guard.on_monitor_event("ingest", msg)  # counts it when CURVE is on
                peers.handshake_failed()
            elif event == zmq.EVENT_ACCEPTED:
                if peers.accepted(value):
                    _refuse(pull, value, msg["endpoint"])
            elif event == zmq.EVENT_CONNECTED:
                peers.connected_out(value)
            elif event == zmq.EVENT_DISCONNECTED:
                peers.disconnected(value)


def _refuse(pull: Pull, fd: int, endpoint: bytes) -> None:
    """Close connection `fd`, just accepted beyond ingest.max_peers. A
    libzmq peer retries after its reconnect interval (100 ms by default)."""
    closed = _shutdown_connection(fd, endpoint.decode("utf-8", "replace"))
    n = pull.peers.refused
    if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th ...: no clock, no per-peer state
        log.warning(
            "%s: %d peers connected (ingest.max_peers): %s a new connection on %s "
            "(%d refused so far)",
            pull.name,
            pull.peers.connected,
            "closed" if closed else "could not close (it was gone)",
            endpoint.decode("utf-8", "replace"),
            n,
        )


def ingest_socket_options(s: IngestSettings) -> list[tuple[int, int]]:
    """(option, value) for each PULL socket the agent opens: the bulk one and
    the lane alike (INTERFACE.md: same size limit, same buffers)."""
    return [
        (zmq.MAXMSGSIZE, s.max_frame_bytes),
        (zmq.RCVHWM, s.rcvhwm),
        (zmq.RCVBUF, s.rcvbuf_bytes),
        (zmq.LINGER, 0),
        (zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS),
        (zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS),
        (zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS),
        (zmq.HEARTBEAT_TTL, HEARTBEAT_TTL_MS),
        (zmq.TCP_KEEPALIVE, 1),
        (zmq.TCP_KEEPALIVE_IDLE, TCP_KEEPALIVE_IDLE_S),
        (zmq.TCP_KEEPALIVE_INTVL, TCP_KEEPALIVE_INTVL_S),
        (zmq.TCP_KEEPALIVE_CNT, TCP_KEEPALIVE_CNT),
    ]


def configure_pull(sock: zmq.Socket, s: IngestSettings) -> None:
    """Set `ingest_socket_options(s)` on `sock`, before it binds or connects."""
    for option, value in ingest_socket_options(s):
        sock.setsockopt(option, value)


def _shutdown_connection(fd: int, endpoint: str) -> bool:
    """Shut down the connection libzmq reported as accepted on descriptor `fd`
    by the listener at `endpoint`; libzmq then sees the connection end, closes
    `fd` itself and reports DISCONNECTED. Works on a duplicate: this thread
    never closes libzmq's descriptor. The number may have been reused since the
    event (libzmq closed it meanwhile), so only a connection whose local
    address is that listener's is touched. False: nothing was shut down."""
    try:
        dup = os.dup(fd)
    except OSError:
        return False
    try:
        conn = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return False
    with conn:
        try:
            if not _local_address_is(conn, endpoint):
                return False
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            return False
    return True


def _local_address_is(conn: socket.socket, endpoint: str) -> bool:
    """Is `conn` a connection accepted by the listener at `endpoint`
    (`tcp://addr:port`, `ipc:///path`, `ipc://@name`)?"""
    if conn.type != socket.SOCK_STREAM:
        return False
    local = conn.getsockname()
    if endpoint.startswith("tcp://") and conn.family in (socket.AF_INET, socket.AF_INET6):
        return str(local[1]) == endpoint.rpartition(":")[2]
    if endpoint.startswith("ipc://") and conn.family == socket.AF_UNIX:
        path = endpoint[len("ipc://") :]
        if path.startswith("@"):
            path = "\0" + path[1:]
        if isinstance(local, bytes):
            local = local.decode("utf-8", "surrogateescape")
        return bool(local == path)
    return False
