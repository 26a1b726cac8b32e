"""Who listens upstream, and when one of them is stuck: the fan-out policy (pure).

This module owns two decisions of the upstream side (agent/upstream.py applies
them to the XPUB socket) and imports no zmq, reads no clock (`now` is an
argument):

- `PeerTracker`: how many subscribers are connected, from the XPUB's monitor
  events. A plain XPUB's topic set does not say how many peers hold a topic,
  and the "one stuck subscriber" rule must never act while only one is there.
- `StallWatch`: when a refused send is a stall. XPUB_NODROP checks every
  matching pipe (libzmq dist.cpp `check_hwm`), so one subscriber that never
  reads refuses every send, critical included (issue 13: the real head-end got
  9 of 40 alerts). A refusal that lasts `stall_s` while events wait, with two
  or more peers connected, is a stall; upstream.py then cuts off the peers
  whose kernel send queue is full (they take nothing) if another one has an
  empty queue (it would take data), and the others flow again.

The policy and its trade-off (README, "A stuck subscriber"): a single
subscriber, however slow, is never cut off: it loses nothing and holds the
events back as before. With two or more, a peer that has taken nothing of its
queue for `stall_s` (1 s) while the agent had events for it is cut off: it
loses what its queues held (counted), reconnects (ZeroMQ does that on its own)
and sees the loss as `seq` gaps. For a minute after a cut-off, 50 ms without
progress is enough, so a stuck peer that comes back cannot hold the others for
a second on every round. A slow but healthy second peer that stops reading for
a second (50 ms in that minute) while the other reads is treated the same
way: that is the price of not letting any one peer hold the others hostage.
"""

from __future__ import annotations

import dataclasses

# How long a refusal may last, with events waiting and two or more peers,
# before it is a stall: INTERFACE.md "Events out" promises the others get
# their events once the agent has seen the stall "within 1 s".
STALL_S = 1.0
# `stalled` stays true this long after the last cut-off, so a 4 Hz snapshot,
# the page and `status` see it even when the cut itself lasted a millisecond.
STALL_VISIBLE_S = 10.0
# After a cut-off, for REPEAT_WINDOW_S, a stall is declared after REPEAT_STALL_S
# already: a stuck peer that comes back (a new connection that subscribes and
# never reads) would otherwise hold every alert back for a whole STALL_S on
# each round. Measured (bench/stuck.py --hostile, a new stuck SUB every
# 1.5 s): 100 ms gave alerts after the first cut p99 87 / max 102 ms, above
# the contract's 100 ms; 50 ms gave p99 36 / max 51 ms.
REPEAT_WINDOW_S = 60.0
REPEAT_STALL_S = 0.05


class PeerTracker:
    """Connected upstream peers, from the socket monitor's events.

    libzmq 4.3.5 (stream_engine_base.cpp) reports, per connection, ACCEPTED or
    CONNECTED with its fd, then HANDSHAKE_SUCCEEDED (value 0: no fd) or a
    HANDSHAKE_FAILED_*, then DISCONNECTED with the fd. A pipe, and so a
    subscriber that can hold sends back, exists only after a successful
    handshake. With the context's one I/O thread a failed handshake's
    HANDSHAKE_FAILED_* comes right before its DISCONNECTED (both in one
    `error()` call), so a DISCONNECTED without it ends a peer.

    Invariant: 0 <= peers <= len(open_fds). The one case the events do not
    settle (a frame over the size limit during a handshake fails it without a
    HANDSHAKE_FAILED_* event) is counted as a peer leaving: `peers` may then
    be one low until connections close, which errs towards today's no-drop
    behaviour, never towards cutting off a lone subscriber.
    """

    __slots__ = ("open_fds", "peers", "_failed_just_before")

    def __init__(self) -> None:
        self.open_fds: set[int] = set()
        self.peers = 0
        self._failed_just_before = False

    def opened(self, fd: int) -> None:
        """ACCEPTED or CONNECTED: a connection exists, no handshake yet."""
        self.open_fds.add(fd)
        self._failed_just_before = False

    def handshake_succeeded(self) -> None:
        self.peers += 1
        self._settle()
        self._failed_just_before = False

    def handshake_failed(self) -> None:
        self._failed_just_before = True

    def closed(self, fd: int) -> None:
        """DISCONNECTED: the connection with this fd is gone."""
        self.open_fds.discard(fd)
        if not self._failed_just_before:
            self.peers -= 1
        self._failed_just_before = False
        self._settle()

    def _settle(self) -> None:
        self.peers = max(0, min(self.peers, len(self.open_fds)))


@dataclasses.dataclass
class StallWatch:
    """When refused sends become a stall. Fed by every send attempt."""

    stall_s: float = STALL_S
    refused_since: float | None = None
    last_refusal: float = 0.0
    last_cut: float | None = None

    def sent(self, now: float) -> None:
        self.refused_since = None

    def window_s(self, now: float) -> float:
        """How long a refusal must last to be a stall: `stall_s`, or
        REPEAT_STALL_S within REPEAT_WINDOW_S of a cut-off."""
        if self.last_cut is not None and now - self.last_cut < REPEAT_WINDOW_S:
            return min(self.stall_s, REPEAT_STALL_S)
        return self.stall_s

    def refused(self, now: float) -> bool:
        """A send was refused at `now`; True if refusals have lasted the
        window. A gap of `stall_s` without attempts (nothing to send, nobody
        subscribed) starts a new window: only a continuous refusal counts."""
        if self.refused_since is None or now - self.last_refusal >= self.stall_s:
            self.refused_since = now
        self.last_refusal = now
        return now - self.refused_since >= self.window_s(now)

    def acted(self, now: float, cut: bool) -> None:
        """The caller handled a stall (cut peers off, or found none to cut):
        the next decision waits for another full window."""
        self.refused_since = now
        if cut:
            self.last_cut = now

    def stalled(self, now: float) -> bool:
        """For the endpoint: refusing for `stall_s` now, or a cut-off recently."""
        if self.refused_since is not None and now - self.refused_since >= self.stall_s:
            return now - self.last_refusal < self.stall_s
        return self.last_cut is not None and now - self.last_cut < STALL_VISIBLE_S


def stuck_fds(queued: dict[int, int]) -> list[int]:
    """Which connections to cut off, given each one's bytes in its kernel send
    queue after a stall: those with bytes queued (they took nothing while the
    agent waited), but only if another one has an empty queue (it drained and
    would take more). All full: every peer is slow (or the network is down),
    and cutting them off would hand the events to nobody; none full: the
    blocker is not visible in the kernel (an inproc peer), nothing to do."""
    full = [fd for fd, n in queued.items() if n > 0]
    if not full or len(full) == len(queued):
        return []
    return sorted(full)
