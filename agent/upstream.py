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
- to keep libzmq's and the kernel's queues shallow (small SNDHWM, bounded
  SO_SNDBUF): what sits there is FIFO and ahead of the next critical alert;
- to open whole or not at all: an endpoint that cannot be opened (port in
  use, no such interface) raises EndpointError naming the key and the
  endpoint, with the socket already closed (an open one would make
  `ctx.term()` wait forever).

The header is `{"agent", "epoch", "seq", "count"}`; seq counts messages per
class from 1 in each epoch and only moves when a send succeeded, so a head-end
sees no gap unless a message was really lost in flight.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import cbor2
import zmq

from agent.classes import CLASS_TOPICS, CLASSES
from agent.settings import UpstreamSettings
from agent.stats import UpstreamStats

log = logging.getLogger("agent.upstream")


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


@dataclasses.dataclass
class _Counters:
    messages: int = 0
    events: int = 0
    blocked: int = 0


class Upstream:
    def __init__(
        self,
        ctx: zmq.Context,
        settings: UpstreamSettings,
        *,
        agent_id: str,
        epoch: int,
        secure: Callable[[zmq.Socket], None] | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.epoch = epoch
        sock = ctx.socket(zmq.XPUB)
        try:
            sock.setsockopt(zmq.XPUB_NODROP, 1)
            sock.setsockopt(zmq.SNDHWM, settings.sndhwm)
            sock.setsockopt(zmq.SNDBUF, settings.sndbuf_bytes)
            # close() must not block the stop sequence forever on a dead peer.
            sock.setsockopt(zmq.LINGER, 2000)
            if secure is not None:
                secure(sock)  # CURVE (agent/curve.py): before the first bind/connect
            open_endpoints(sock, "upstream", settings.bind, settings.connect)
        except BaseException:
            # A socket left open makes ctx.term() wait for it forever: the
            # agent would hang holding the spill-dir lock (a busy port did).
            sock.close(0)
            raise
        self.sock = sock
        self._seq = [0] * len(CLASSES)
        # Topic prefixes at least one connected subscriber holds.
        self._subscriptions: set[bytes] = set()
        self.deliverable: list[bool] = [False] * len(CLASSES)
        self._counters = _Counters()

    # -- subscriptions -----------------------------------------------------------

    def handle_subscriptions(self) -> bool:
        """Read every pending (un)subscribe message; True if the set changed."""
        changed = False
        recv = self.sock.recv
        while True:
            try:
                msg = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if not msg or msg[0] not in (0, 1):
                continue  # not a subscription message (a peer sent data): ignore
            if msg[0] == 1:
                self._subscriptions.add(msg[1:])
            else:
                self._subscriptions.discard(msg[1:])
            changed = True
        if changed:
            self.deliverable = [
                any(t.startswith(p) for p in self._subscriptions) for t in CLASS_TOPICS
            ]
            log.info(
                "upstream subscriptions: %s",
                ", ".join(
                    p.decode("ascii", "replace") or "(all)" for p in sorted(self._subscriptions)
                )
                or "none - holding events",
            )
        return changed

    @property
    def subscribers(self) -> int:
        """Distinct subscribed topic prefixes (a plain XPUB does not say how
        many peers hold each); 0 means nobody is listening."""
        return len(self._subscriptions)

    # -- sending ---------------------------------------------------------------

    def send_batch(self, cls: int, body: bytes, count: int) -> bool:
        """Publish one message; False (nothing sent, seq unchanged) if the
        subscriber pipes are full. The caller checked `deliverable[cls]`."""
        seq = self._seq[cls] + 1
        header = encode_header(self.agent_id, self.epoch, seq, count)
        try:
            self.sock.send_multipart((CLASS_TOPICS[cls], header, body), zmq.NOBLOCK)
        except zmq.Again:
            self._counters.blocked += 1
            return False
        self._seq[cls] = seq
        self._counters.messages += 1
        self._counters.events += count
        return True

    def close(self) -> None:
        """Close the socket; pending messages get up to its LINGER (2 s)."""
        self.sock.close()

    def statistics(self) -> UpstreamStats:
        c = self._counters
        return UpstreamStats(
            subscribers=self.subscribers,
            messages=c.messages,
            events=c.events,
            blocked=c.blocked,
        )
