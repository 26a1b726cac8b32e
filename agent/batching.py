"""When to publish, per class: the batching policy (pure, fake-clock tested).

Critical events never wait: any queued critical event is due at once. Other
classes wait for a full batch (`batch_max_events` or `batch_max_bytes`) but no
longer than `linger_ms` after the oldest of them became publishable, so a
trickle still flows with bounded delay while a flood travels in few, large
messages (one send per ~256 events is what lets the agent keep up with 500k
events/s; one send per event cost ~4x in an early measurement).
"""

from __future__ import annotations

import dataclasses

from agent.classes import EventClass


@dataclasses.dataclass(frozen=True)
class BatchPolicy:
    max_events: int = 256
    max_bytes: int = 64 * 1024
    linger_s: float = 0.005

    def wait_s(
        self, cls: int, events: int, nbytes: int, waited_s: float, max_events: int | None = None
    ) -> float | None:
        """Seconds until the class is due: 0.0 = publish now, None = nothing
        queued. `max_events`: the message size of the moment (message_events),
        default the configured one."""
        if events <= 0:
            return None
        full = self.max_events if max_events is None else max_events
        if cls == EventClass.CRITICAL or events >= full or nbytes >= self.max_bytes:
            return 0.0
        return max(0.0, self.linger_s - waited_s)

    def due(
        self, cls: int, events: int, nbytes: int, waited_s: float, max_events: int | None = None
    ) -> bool:
        return self.wait_s(cls, events, nbytes, waited_s, max_events) == 0.0


# -- how large a message may be: the adaptive message size (issue 9, part 3) --
#
# What sits between the agent and a subscriber, beyond our class queues, is
# FIFO and ahead of the next critical alert: SNDHWM messages in libzmq, the
# subscriber's RCVHWM messages, and the kernel buffers on both sides (bytes).
# An alert waits for the subscriber to consume all of it. With events per
# message S, a drain rate R (events/s) and e bytes per event, that is
#     E(S) = P * S + K / e   events,   T = E(S) / R   seconds,
# P the messages and K the bytes in flight. Large messages keep the agent's
# per-send cost low (one send per 256 events is what lets it keep up with a
# flood); small ones keep T small while the subscriber is the bottleneck. So:
# full size while the subscriber keeps up (no send refused lately) or drains
# fast, and while it is the bottleneck the largest S with T <= target.
#
# Why not simply "small while blocked": an earlier try raised the acceptance
# test's max to 421 ms. Measured again (the e2e scenario, a subscriber that
# sleeps 5 ms per message, ~180 messages/s whatever their size): 256-event
# messages p50 44 / max 89 ms; 8-event messages p50 657 / max 1009 ms;
# 32-event messages with a 4 KiB SO_SNDBUF p50 265 / max 376 ms. That
# subscriber's cost is per message, not per event: smaller messages cut its
# event rate by the same factor, while the byte-sized kernel buffers hold
# proportionally more messages, each costing it 5 ms. The rule below measures
# R in events while blocked, so such a subscriber's R shrinks with S and the
# rule would chase S down: hence a floor of K / P bytes per message, which
# keeps the kernel's share of what is in flight at most as many messages as
# the pipes hold (T at the floor is at most twice T at full size for a
# per-message reader).


@dataclasses.dataclass(frozen=True)
class InFlight:
    """What sits between the agent and one subscriber: messages (SNDHWM + a
    shallow subscriber's RCVHWM) and kernel bytes (SO_SNDBUF, which Linux
    doubles, + the subscriber's SO_RCVBUF)."""

    messages: int
    kernel_bytes: int


# The in-flight time aimed at while the subscriber is the bottleneck: half of
# issue 9's 10 ms p99 for a critical alert, the rest is the collector's socket
# and the agent's turn.
IN_FLIGHT_TARGET_S = 0.005
# A subscriber that keeps its own buffers shallow (INTERFACE.md "Events out";
# issue 9's benchmark subscriber): RCVHWM 4, SO_RCVBUF 4 KiB.
SUBSCRIBER_RCVHWM = 4
SUBSCRIBER_RCVBUF_BYTES = 4 * 1024


def in_flight(sndhwm: int, unsent_bytes: int) -> InFlight:
    """What sits between the agent and a shallow subscriber: the pipes'
    messages, and the kernel's bytes: what the agent's side may hold unsent
    (agent/upstream.py UNSENT_MAX_BYTES) and the subscriber's receive buffer
    (Linux doubles both for its bookkeeping)."""
    return InFlight(sndhwm + SUBSCRIBER_RCVHWM, 2 * (unsent_bytes + SUBSCRIBER_RCVBUF_BYTES))


def message_events(
    drain_rate: float | None,
    event_bytes: float,
    in_flight: InFlight,
    target_s: float,
    max_events: int,
) -> int:
    """Events per message. `drain_rate` (events/s) is None while the
    subscriber keeps up: full size. Otherwise the largest size whose in-flight
    time at that rate is within `target_s`, at least the floor, at most
    `max_events`."""
    if drain_rate is None:
        return max_events
    e = max(event_bytes, 1.0)
    kernel_events = in_flight.kernel_bytes / e
    fits = (drain_rate * target_s - kernel_events) / in_flight.messages
    floor = in_flight.kernel_bytes / in_flight.messages / e
    return max(1, min(max_events, int(max(fits, floor))))


@dataclasses.dataclass
class DrainMeter:
    """The subscriber's drain rate, from the loop's sends and refusals (pure:
    `now` is an argument). Over each `window_s` it counts events sent and
    whether any send was refused: a window with a refusal measured the
    subscriber (it was the bottleneck), one without says it keeps up.
    `rate()` is a smoothed events/s over refused windows, or None after
    `keep_up_windows` windows in a row without a refusal."""

    window_s: float = 0.05
    keep_up_windows: int = 2
    smoothing: float = 0.5
    _start: float = 0.0
    _events: int = 0
    _bytes: int = 0
    _refused: bool = False
    _clear_windows: int = 2
    _rate: float | None = None
    event_bytes: float = 100.0

    def sent(self, now: float, events: int, nbytes: int) -> None:
        self._roll(now)
        self._events += events
        self._bytes += nbytes

    def refused(self, now: float) -> None:
        self._roll(now)
        self._refused = True

    def rate(self, now: float) -> float | None:
        """Events/s the subscriber drains while it is the bottleneck; None
        while it keeps up. Refused before a first refused window has ended:
        0.0, the smallest size, at once (waiting for a measurement let the
        first 100 ms of a flood fill the pipes with full-size messages)."""
        self._roll(now)
        if self._refused and self._rate is None:
            return 0.0
        return None if self._clear_windows >= self.keep_up_windows else self._rate

    def _roll(self, now: float) -> None:
        elapsed = now - self._start
        if elapsed < self.window_s:
            return
        if self._events:
            self.event_bytes = self._bytes / self._events
        if self._refused:
            r = self._events / elapsed
            self._rate = r if self._rate is None else self._rate + self.smoothing * (r - self._rate)
            self._clear_windows = 0
        else:
            self._clear_windows += 1
            if self._clear_windows >= self.keep_up_windows:
                # Keeping up: the next bottleneck (another subscriber, a new
                # phase) is measured afresh, not smoothed from an old rate.
                self._rate = None
        self._start = now
        self._events = 0
        self._bytes = 0
        self._refused = False
