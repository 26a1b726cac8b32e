"""The upstream side: the XPUB socket towards the head-end.

This module owns the upstream wire format (INTERFACE.md, "Events out") and the
socket that carries it, and promises:

- never to hand a message to ZeroMQ that it would discard: a PUB with no
  matching subscriber drops silently (libzmq dist.cpp, FACTS.md), so a class
  is only sent while some live subscription matches its topic, learned from
  XPUB_VERBOSER subscribe/unsubscribe messages (disconnects included);
- never to lose a message to a slow subscriber: XPUB_NODROP makes a full pipe
  refuse the send (EAGAIN) instead of dropping it, and `send_batch` then says
  "not now" so the events stay in the class queue;
- to keep libzmq's and the kernel's queues shallow (small SNDHWM, bounded
  SO_SNDBUF): what sits there is FIFO and ahead of the next critical alert.

The header is `{"agent", "epoch", "seq", "count"}`; seq counts messages per
class from 1 in each epoch and only moves when a send succeeded, so a head-end
sees no gap unless a message was really lost in flight.
"""

from __future__ import annotations

import dataclasses
import logging

import cbor2
import zmq

from agent.classes import CLASS_TOPICS, CLASSES
from agent.settings import UpstreamSettings
from agent.stats import UpstreamStats

log = logging.getLogger("agent.upstream")


def encode_header(agent_id: str, epoch: int, seq: int, count: int) -> bytes:
    return cbor2.dumps({"agent": agent_id, "epoch": epoch, "seq": seq, "count": count})


@dataclasses.dataclass
class _Counters:
    messages: int = 0
    events: int = 0
    blocked: int = 0


class Upstream:
    def __init__(
        self, ctx: zmq.Context, settings: UpstreamSettings, *, agent_id: str, epoch: int
    ) -> None:
        self.agent_id = agent_id
        self.epoch = epoch
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_VERBOSER, 1)
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        sock.setsockopt(zmq.SNDHWM, settings.sndhwm)
        sock.setsockopt(zmq.SNDBUF, settings.sndbuf_bytes)
        # close() must not block the stop sequence forever on a dead peer.
        sock.setsockopt(zmq.LINGER, 2000)
        self.sock = sock
        for ep in settings.bind:
            sock.bind(ep)
        for ep in settings.connect:
            sock.connect(ep)
        self._seq = [0] * len(CLASSES)
        # topic prefix -> number of live subscriptions with it
        self._subscriptions: dict[bytes, int] = {}
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
            topic = msg[1:]
            n = self._subscriptions.get(topic, 0) + (1 if msg[0] == 1 else -1)
            if n > 0:
                self._subscriptions[topic] = n
            else:
                self._subscriptions.pop(topic, None)
            changed = True
        if changed:
            self.deliverable = [
                any(t.startswith(p) for p in self._subscriptions) for t in CLASS_TOPICS
            ]
            log.info(
                "upstream subscriptions: %s",
                ", ".join(
                    f"{p.decode('ascii', 'replace') or '(all)'} x{n}"
                    for p, n in sorted(self._subscriptions.items())
                )
                or "none - holding events",
            )
        return changed

    @property
    def subscribers(self) -> int:
        return sum(self._subscriptions.values())

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
        self.sock.close()

    def statistics(self) -> UpstreamStats:
        c = self._counters
        return UpstreamStats(
            subscribers=self.subscribers,
            messages=c.messages,
            events=c.events,
            blocked=c.blocked,
        )
