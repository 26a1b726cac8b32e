"""The upstream side: the XPUB socket towards the head-end.

This module owns the upstream wire format (INTERFACE.md, "Events out") and the
socket that carries it, and promises:

- never to hand a message to ZeroMQ that it would discard: a PUB with no
  matching subscriber drops silently (libzmq dist.cpp, FACTS.md), so a class
  is only sent while some live subscription matches its topic. A plain XPUB
  reports a topic once when its first subscriber arrives and once when its
  last one leaves, disconnects included, so a set of topics is exact.
  (XPUB_VERBOSER is not used: it passes every duplicate subscribe but a peer
  unsubscribes once, so counts drift and a departed peer looks subscribed;
  tests/test_upstream.py pins this.)
- never to lose a message to a slow subscriber: XPUB_NODROP makes a full pipe
  refuse the send (EAGAIN) instead of dropping it, and `send_batch` then says
  "not now" so the events stay in the class queue;
- that one subscriber that stops reading cannot hold the others back
  (issue 13, INTERFACE.md): with two or more peers connected, a refusal that
  lasts STALL_S (50 ms for a minute after a cut-off) cuts off the peers
  whose kernel send queue is full while another's is empty (agent/fanout.py
  decides, `_cut_stuck` acts); their loss is counted. A single subscriber is
  never cut off;
- to keep libzmq's and the kernel's queues shallow (small SNDHWM, bounded
  SO_SNDBUF): what sits there is FIFO and ahead of the next critical alert;
- that a subscriber costs bounded memory and log: a subscription message
  longer than SUBSCRIPTION_MAX_BYTES disconnects the peer before libzmq
  stores it, only subscriptions that select whole classes are honoured, at
  most SUBSCRIPTIONS_PER_TURN are read per turn, and changes are logged as
  differences, escaped, at most once per SUBSCRIPTION_LOG_EVERY_S;
- to open whole or not at all: an endpoint that cannot be opened (port in
  use, no such interface) raises EndpointError naming the key and the
  endpoint, with the socket already closed (an open one would make
  `ctx.term()` wait forever).

The header is `{"agent", "epoch", "seq", "count"}`; seq counts messages per
class from 1 in each epoch and only moves when a send succeeded, so a head-end
sees no gap unless a message was really lost in flight (or it was cut off as
stuck: then the gap is its loss).
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import math
import socket
import struct
import termios
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cbor2
import zmq
from zmq.utils.monitor import recv_monitor_message

from agent.classes import CLASS_TOPICS, CLASSES
from agent.fanout import PeerTracker, StallWatch, stuck_fds
from agent.settings import UpstreamSettings
from agent.stats import UpstreamStats

log = logging.getLogger("agent.upstream")

# (option, value) for the XPUB's connections, see Upstream.__init__.
UPSTREAM_PEER_OPTIONS: tuple[tuple[int, int], ...] = (
    (zmq.HANDSHAKE_IVL, 10_000),  # ms
    (zmq.TCP_KEEPALIVE, 1),
    (zmq.TCP_KEEPALIVE_IDLE, 60),  # s of silence before the first probe
    (zmq.TCP_KEEPALIVE_INTVL, 10),  # s between probes
    (zmq.TCP_KEEPALIVE_CNT, 6),  # unanswered probes that close it
)

# ZMQ_MAXMSGSIZE on the XPUB, in bytes: bounds every frame a subscriber sends,
# subscriptions included, before libzmq allocates it (v2_decoder.cpp checks the
# declared size). The longest honoured subscription is 9 bytes ("\x01critical";
# 18 as a ZMTP 3.1 SUBSCRIBE command), but the same limit applies to the
# handshake's commands: a CURVE INITIATE with its metadata is ~300 bytes, so
# 1 KiB leaves room for a peer's own metadata. Without it, one 4 MiB
# subscription took RSS from 149 to 235 MB (issue 13): libzmq's trie spends
# ~20 bytes per topic byte.
SUBSCRIPTION_MAX_BYTES = 1024
# Subscription messages read per turn: a peer that floods (un)subscribes costs
# the loop at most this many ~1 us recvs before it publishes again; the rest
# waits in libzmq for the next turn.
SUBSCRIPTIONS_PER_TURN = 256
# Subscription changes are logged at most this often, as the difference since
# the last line (issue 13: the whole list on every change let 200 topics of
# 500 bytes, 3 ms apart, write a 10 MB log).
SUBSCRIPTION_LOG_EVERY_S = 1.0
# A topic in a log line is cut to this many characters (after escaping).
TOPIC_LOG_CHARS = 40
# Bytes a connection's kernel send queue may hold that the subscriber has not
# taken: what sits there is FIFO ahead of the next alert. Over TCP this is
# TCP_NOTSENT_LOWAT (Linux >= 3.12), which bounds the unsent bytes only, so
# SO_SNDBUF (sndbuf_bytes) still lets a long link keep its bandwidth-delay
# product in flight; a small SO_SNDBUF would also cap throughput at
# 2 * sndbuf / RTT (8 KiB per 20 ms: ~3,300 events/s). Over ipc:// libzmq sets
# no SO_SNDBUF at all (ipc_listener.cpp), the kernel default (~208 KiB) held
# ~1 s of a slow reader's messages; there is no flight locally, so SO_SNDBUF
# itself is set to this. Measured (bench/brownout.py, subscriber 30,000
# events/s, what the agent may hold unsent): 64 KiB critical p50 48 / max
# 73 ms; 16 KiB 16 / 46; 4 KiB 6 / 19 (README, "Upstream sizing").
UNSENT_MAX_BYTES = 4096
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's value
# Monitor events read per turn: a flood of connects cannot hold the loop.
MONITOR_EVENTS_PER_TURN = 256
# The events PeerTracker needs (HANDSHAKE_SUCCEEDED and the failures are stable
# since libzmq 4.3).
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
PEER_EVENTS = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_CONNECTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | _HANDSHAKE_FAILED
)

# Subscriptions that select whole classes: "" (everything), a class name, or
# a prefix of one ("crit"), which libzmq matches exactly like the name itself.
# Anything else can match no message: it is ignored, and never kept here.
HONOURED_TOPICS: frozenset[bytes] = frozenset(
    t[:n] for t in CLASS_TOPICS for n in range(len(t) + 1)
)


def printable_topic(topic: bytes) -> str:
    """Peer-controlled bytes made safe for one log line, quoted: every byte
    outside printable ASCII (newlines, escape sequences, UTF-8), the quote and
    the backslash as \\xNN, cut to TOPIC_LOG_CHARS bytes with the original
    length. A topic holding "\\n... CRITICAL agent.loop: stopped" stays inside
    the line it is in."""
    text = "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in _ESCAPED else f"\\x{b:02x}"
        for b in topic[:TOPIC_LOG_CHARS]
    )
    if len(topic) > TOPIC_LOG_CHARS:
        return f"'{text}'... ({len(topic)} bytes)"
    return f"'{text}'" if topic else "'' (all)"


_ESCAPED = frozenset(b"'\\")


class EndpointError(Exception):
    """An endpoint cannot be opened (port in use, no such interface, bad
    address). The message names the config key and the endpoint."""

    def __init__(self, key: str, endpoint: str, reason: str) -> None:
        super().__init__(f"cannot open {key} {endpoint}: {reason}")
        self.key = key
        self.endpoint = endpoint


def open_endpoints(
    sock: zmq.Socket, table: str, bind: Sequence[str], connect: Sequence[str]
) -> None:
    """Bind then connect `sock` to the endpoints of config table `table`
    (`ingest`, `upstream`, ...). EndpointError names the first that fails; the
    caller closes the socket."""
    for key, endpoints, attach in (("bind", bind, sock.bind), ("connect", connect, sock.connect)):
        for ep in endpoints:
            try:
                attach(ep)
            except zmq.ZMQError as e:
                # zmq.strerror: pyzmq's e.strerror repeats the address.
                reason = zmq.strerror(e.errno) if e.errno is not None else str(e)
                raise EndpointError(f"{table}.{key}", ep, reason) from e


def encode_header(agent_id: str, epoch: int, seq: int, count: int) -> bytes:
    return cbor2.dumps({"agent": agent_id, "epoch": epoch, "seq": seq, "count": count})


def kernel_send_queue(fd: int) -> int | None:
    """Bytes in a socket's kernel send queue (SIOCOUTQ: not yet acknowledged
    over TCP, not yet read over a Unix socket); None if `fd` is no longer a
    socket (libzmq closed it and the number was reused)."""
    try:
        raw = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return None
    return int(struct.unpack("i", raw)[0])


def bound_unsent(fd: int) -> None:
    """Keep what a new connection's kernel queue holds unsent to
    UNSENT_MAX_BYTES (TCP_NOTSENT_LOWAT over TCP, SO_SNDBUF over a Unix
    socket). libzmq owns the fd: it is wrapped, set and detached, never closed."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return  # gone already
    try:
        if s.family == socket.AF_UNIX:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNSENT_MAX_BYTES)
        elif s.family in (socket.AF_INET, socket.AF_INET6):
            s.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, UNSENT_MAX_BYTES)
    except OSError as e:
        log.debug("upstream: cannot bound the unsent bytes of fd %d: %s", fd, e)
    finally:
        s.detach()


def shut_down(fd: int) -> None:
    """End the connection on libzmq's fd without closing the fd (libzmq owns
    it): its engine then reads EOF, disconnects the peer and drops its pipe,
    exactly as if the peer had reset the connection."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return  # no longer a socket
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already shut down or reset by the peer: the effect we want
    finally:
        s.detach()


@dataclasses.dataclass
class _Counters:
    messages: int = 0
    events: int = 0
    blocked: int = 0
    stuck_cutoffs: int = 0
    stuck_dropped_messages: int = 0
    stuck_dropped_events: int = 0
    ignored_subscriptions: int = 0


class Upstream:
    def __init__(
        self,
        ctx: zmq.Context,
        settings: UpstreamSettings,
        *,
        agent_id: str,
        epoch: int,
        secure: Callable[[zmq.Socket], None] | None = None,
        monitor_events: int = 0,
        on_monitor_event: Callable[[Mapping[str, Any]], object] | None = None,
    ) -> None:
        """`secure` (CURVE, agent/curve.py) runs before the first bind; this
        socket's monitor is owned here (a socket has one), so a guard that
        needs events adds them as `monitor_events` and gets every event
        through `on_monitor_event`."""
        self.agent_id = agent_id
        self.epoch = epoch
        self.sndhwm = settings.sndhwm
        sock = ctx.socket(zmq.XPUB)
        monitor: zmq.Socket | None = None
        try:
            sock.setsockopt(zmq.XPUB_NODROP, 1)
            sock.setsockopt(zmq.SNDHWM, settings.sndhwm)
            sock.setsockopt(zmq.SNDBUF, settings.sndbuf_bytes)
            sock.setsockopt(zmq.MAXMSGSIZE, SUBSCRIPTION_MAX_BYTES)
            # close() must not block the stop sequence forever on a dead peer.
            sock.setsockopt(zmq.LINGER, 2000)
            # Descriptors (issue 13 item 6): a peer must finish its handshake
            # within 10 s (a port probe holds a descriptor that long, not
            # forever), and TCP keepalive closes connections to hosts that
            # vanished (~2 min). No ZMTP heartbeats here, unlike the ingest
            # sockets: a subscriber that reads nothing for a while also stops
            # reading PINGs, and a heartbeat timeout would disconnect a lone
            # slow subscriber and lose what sits in its pipe, which the
            # contract forbids ("a single slow subscriber loses nothing").
            # Several subscribers, one stuck: agent/fanout.py cuts it.
            for option, value in UPSTREAM_PEER_OPTIONS:
                sock.setsockopt(option, value)
            if secure is not None:
                secure(sock)  # CURVE (agent/curve.py): before the first bind/connect
            monitor = sock.get_monitor_socket(PEER_EVENTS | monitor_events)
            open_endpoints(sock, "upstream", settings.bind, settings.connect)
        except BaseException:
            # A socket left open makes ctx.term() wait for it forever: the
            # agent would hang holding the spill-dir lock (a busy port did).
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(0)
            sock.close(0)
            raise
        self.sock = sock
        self.monitor: zmq.Socket = monitor
        self._on_monitor_event = on_monitor_event
        self._seq = [0] * len(CLASSES)
        # Honoured topic prefixes at least one connected subscriber holds.
        self._subscriptions: set[bytes] = set()
        self.deliverable: list[bool] = [False] * len(CLASSES)
        self._counters = _Counters()
        self.peers = PeerTracker()
        self.stall = StallWatch()
        self._header_key = (-1, 0, 0)
        self._header = b""
        # Mean size of recent messages, for the count of what a cut-off lost.
        self._mean_events = 1.0
        # Subscription log: what changed since the last line, and when it may go.
        self._logged: set[bytes] = set()
        self._log_pending = False  # something to log since the last line
        self._ignored_since_log = 0
        self._ignored_example = b""
        self._next_log = 0.0

    # -- subscriptions -----------------------------------------------------------

    def handle_subscriptions(self, now: float = 0.0) -> bool:
        """Read up to SUBSCRIPTIONS_PER_TURN pending (un)subscribe messages;
        True if the set of honoured topics changed."""
        changed = False
        recv = self.sock.recv
        subs = self._subscriptions
        for _ in range(SUBSCRIPTIONS_PER_TURN):
            try:
                msg = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if not msg or msg[0] not in (0, 1):
                continue  # not a subscription message (a peer sent data): ignore
            topic = msg[1:]
            if topic not in HONOURED_TOPICS:
                self._counters.ignored_subscriptions += msg[0]
                if msg[0]:
                    self._ignored_since_log += 1
                    self._ignored_example = topic
                    self._log_pending = True
                continue
            if msg[0] == 1:
                if topic not in subs:
                    subs.add(topic)
                    changed = True
            elif topic in subs:
                subs.discard(topic)
                changed = True
        if changed:
            self.deliverable = [any(t.startswith(p) for p in subs) for t in CLASS_TOPICS]
            self._log_pending = True
        self.log_subscriptions(now)
        return changed

    def log_subscriptions(self, now: float) -> None:
        """One line with the difference since the last line, when due (the
        loop calls this every turn: nothing pending is one attribute test)."""
        if not self._log_pending or now < self._next_log:
            return
        self._log_pending = False
        subs = self._subscriptions
        added = sorted(subs - self._logged)
        removed = sorted(self._logged - subs)
        ignored = self._ignored_since_log
        if not added and not removed and not ignored:
            return
        self._next_log = now + SUBSCRIPTION_LOG_EVERY_S
        parts = []
        if added:
            parts.append("added " + ", ".join(printable_topic(t) for t in added))
        if removed:
            parts.append("removed " + ", ".join(printable_topic(t) for t in removed))
        if ignored:
            parts.append(
                f"ignored {ignored} that select no class"
                f" (e.g. {printable_topic(self._ignored_example)})"
            )
        if added or removed:
            parts.append(f"now {len(subs)}" + ("" if subs else ", holding events"))
        log.info("upstream subscriptions: %s", "; ".join(parts))
        self._logged = set(subs)
        self._ignored_since_log = 0

    @property
    def subscribers(self) -> int:
        """Distinct subscribed topic prefixes (a plain XPUB does not say how
        many peers hold each); 0 means nobody is listening."""
        return len(self._subscriptions)

    # -- peers -------------------------------------------------------------------

    def handle_monitor(self) -> None:
        """Read up to MONITOR_EVENTS_PER_TURN monitor events: the peer count,
        then the guard's view of each event (CURVE refusals)."""
        peers = self.peers
        for _ in range(MONITOR_EVENTS_PER_TURN):
            try:
                msg = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            event = msg["event"]
            if event & (zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED):
                peers.opened(msg["value"])
                bound_unsent(msg["value"])
            elif event & zmq.EVENT_HANDSHAKE_SUCCEEDED:
                peers.handshake_succeeded()
            elif event & _HANDSHAKE_FAILED:
                peers.handshake_failed()
            elif event & zmq.EVENT_DISCONNECTED:
                peers.closed(msg["value"])
            if self._on_monitor_event is not None:
                self._on_monitor_event(msg)

    # -- sending ---------------------------------------------------------------

    def send_batch(self, cls: int, body: bytes, count: int, now: float = 0.0) -> bool:
        """Publish one message; False (nothing sent, seq unchanged) if a
        subscriber pipe is full. The caller checked `deliverable[cls]`. A
        refusal that has lasted STALL_S with two or more peers cuts off the
        stuck ones (the send still says False: retry soon)."""
        seq = self._seq[cls] + 1
        key = (cls, seq, count)
        if key == self._header_key:
            header = self._header  # a retry after a refusal: same header
        else:
            header = encode_header(self.agent_id, self.epoch, seq, count)
            self._header_key, self._header = key, header
        try:
            self.sock.send_multipart((CLASS_TOPICS[cls], header, body), zmq.NOBLOCK)
        except zmq.Again:
            self._counters.blocked += 1
            if self.stall.refused(now) and self.peers.peers >= 2:
                self._cut_stuck(now)
            return False
        self.stall.sent(now)
        self._seq[cls] = seq
        c = self._counters
        c.messages += 1
        c.events += count
        self._mean_events += (count - self._mean_events) / 16
        return True

    def _cut_stuck(self, now: float) -> None:
        """A stall with two or more peers: cut off those that took nothing."""
        window = self.stall.window_s(now)
        self.handle_monitor()  # the freshest view of which fds are open
        queued = {}
        for fd in self.peers.open_fds:
            n = kernel_send_queue(fd)
            if n is not None:
                queued[fd] = n
        cut = stuck_fds(queued)
        self.stall.acted(now, bool(cut))
        if not cut:
            return
        # What each one loses: its full pipe (SNDHWM messages) and the message
        # its engine was writing; what sits in the kernel may still arrive.
        lost = len(cut) * (self.sndhwm + 1)
        c = self._counters
        c.stuck_cutoffs += len(cut)
        c.stuck_dropped_messages += lost
        c.stuck_dropped_events += math.ceil(lost * self._mean_events)
        for fd in cut:
            shut_down(fd)
        log.warning(
            "upstream: %d of %d subscribers took nothing for %.1f s while the others "
            "waited: cut off (about %d messages lost to them; %d cut-offs so far)",
            len(cut),
            self.peers.peers,
            window,
            lost,
            c.stuck_cutoffs,
        )

    def close(self) -> None:
        """Close the socket; pending messages get up to its LINGER (2 s)."""
        if not self.sock.closed:
            self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close()

    def statistics(self, now: float = 0.0) -> UpstreamStats:
        c = self._counters
        return UpstreamStats(
            subscribers=self.subscribers,
            messages=c.messages,
            events=c.events,
            blocked=c.blocked,
            peers=self.peers.peers,
            stalled=self.stall.stalled(now),
            stuck_dropped_messages=c.stuck_dropped_messages,
            stuck_dropped_events=c.stuck_dropped_events,
        )
