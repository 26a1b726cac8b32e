"""Who is connected to one PULL socket, from its monitor events; the peer cap.

This module owns the bookkeeping behind `ingest.max_peers` and the split of
`ingest.disconnects` (issue 12 item 7, issue 13 item 6). The loop reads the
socket monitor and calls one method per event; this module decides, and the
loop applies (it closes what `accepted` says to refuse). Pure: no zmq, no
socket, no clock; a connection is the descriptor number libzmq reports.

What libzmq 4.3.5 tells (src/stream_engine_base.cpp, checked here):
- EVENT_ACCEPTED (value: the new connection's descriptor) for every connection
  a bind accepts, before its handshake; EVENT_CONNECTED (descriptor) for every
  connection a `connect` endpoint makes.
- EVENT_DISCONNECTED (descriptor) once for every connection that ends, emitted
  before libzmq closes that descriptor: the peer closed, a frame over
  MAXMSGSIZE (a decoder error, `error(protocol_error)`, which emits nothing
  else once the handshake is done), a heartbeat timeout, a failed handshake,
  or our own refusal. Only our refusals can be told apart (we know their
  descriptors): the rest is one counter, `disconnects`. Measured here: a PUSH
  that sent a frame over MAXMSGSIZE and one that closed give the same
  ACCEPTED, HANDSHAKE_SUCCEEDED, DISCONNECTED sequence with the same values.
- A failed handshake emits one EVENT_HANDSHAKE_FAILED_* (NO_DETAIL, PROTOCOL
  or AUTH) before its DISCONNECTED, with an errno or a protocol code as value,
  not the descriptor, and HANDSHAKE_SUCCEEDED carries none either. So failed
  handshakes are counted (`failed_handshakes`) but not matched to their
  DISCONNECTED: they are in `disconnects` too, and collectors that left after
  a completed handshake are about `disconnects - failed_handshakes`.

The cap: a bound connection beyond `max_peers` is refused (`accepted` returns
True and the loop shuts that connection down). A libzmq peer reconnects after
its RECONNECT_IVL (100 ms by default) and gets in once a place is free; every
refusal is counted. Connections the agent makes itself (`connect` endpoints)
count but are never refused: the config lists them, so they are bounded.

# Invariant: connected ∩ refusing = ∅; len(connected - outgoing) <= max_peers
#   (outgoing: connections from `connect`).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PeerStats:
    connected: int = 0  # connections open now
    refused: int = 0  # connections closed at once because max_peers were open
    failed_handshakes: int = 0  # handshakes that failed (refused connections' too)
    disconnects: int = 0  # connections that ended, our refusals excepted (module header)


class PeerTable:
    """The connections of one PULL socket, as its monitor reports them."""

    __slots__ = (
        "max_peers",
        "_connected",
        "_outgoing",
        "_refusing",
        "refused",
        "failed_handshakes",
        "disconnects",
    )

    def __init__(self, max_peers: int) -> None:
        if max_peers < 1:
            raise ValueError("max_peers must be >= 1")
        self.max_peers = max_peers
        self._connected: set[int] = set()
        self._outgoing: set[int] = set()
        self._refusing: set[int] = set()
        self.refused = 0
        self.failed_handshakes = 0
        self.disconnects = 0

    @property
    def connected(self) -> int:
        return len(self._connected)

    def accepted(self, fd: int) -> bool:
        """A bind accepted connection `fd`. True: refuse it (close it now)."""
        self._forget(fd)  # a descriptor number is reused once libzmq closed it
        if len(self._connected) - len(self._outgoing) >= self.max_peers:
            self._refusing.add(fd)
            self.refused += 1
            return True
        self._connected.add(fd)
        return False

    def connected_out(self, fd: int) -> None:
        """A `connect` endpoint of ours made connection `fd` (never refused)."""
        self._forget(fd)
        self._connected.add(fd)
        self._outgoing.add(fd)

    def handshake_failed(self) -> None:
        """A handshake failed (its DISCONNECTED follows, counted there too)."""
        self.failed_handshakes += 1

    def disconnected(self, fd: int) -> None:
        """Connection `fd` ended."""
        if fd in self._refusing:
            self._refusing.discard(fd)  # ours, counted as refused
            return
        self._connected.discard(fd)
        self._outgoing.discard(fd)
        self.disconnects += 1

    def _forget(self, fd: int) -> None:
        self._refusing.discard(fd)
        self._connected.discard(fd)
        self._outgoing.discard(fd)

    def statistics(self) -> PeerStats:
        return PeerStats(
            connected=len(self._connected),
            refused=self.refused,
            failed_handshakes=self.failed_handshakes,
            disconnects=self.disconnects,
        )


# libzmq's decoder reads a connection through a buffer of this size
# (ZMQ_IN_BATCH_SIZE, default 8192 bytes in libzmq 4.3).
LIBZMQ_IN_BATCH_BYTES = 8192


def worst_case_bytes(rcvhwm: int, max_frame_bytes: int, rcvbuf_bytes: int, connections: int) -> int:
    """The most libzmq and the kernel may hold for `connections` ingest
    connections, outside the agent's budget, while the loop does not read
    (paused, or busy): per connection, RCVHWM frames in its pipe, one more
    decoded frame the engine holds while the pipe is full, one frame being
    received (libzmq allocates the announced size up front, MAXMSGSIZE at
    most), the decoder's batch buffer, and the kernel's receive buffer (Linux
    doubles SO_RCVBUF for its bookkeeping)."""
    per_connection = (rcvhwm + 2) * max_frame_bytes + 2 * rcvbuf_bytes + LIBZMQ_IN_BATCH_BYTES
    return connections * per_connection


__all__ = ["LIBZMQ_IN_BATCH_BYTES", "PeerStats", "PeerTable", "worst_case_bytes"]
