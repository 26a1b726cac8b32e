"""systemd's service notification protocol (sd_notify(3)), without libsystemd.

This module owns every datagram the agent sends to its service manager: READY=1
once the sockets are bound and the spill rings recovered, WATCHDOG=1 from the
event loop, STOPPING=1 and EXTEND_TIMEOUT_USEC during the stop sequence,
RELOADING=1 around a SIGHUP reload, and STATUS= lines for `systemctl status`.

The protocol (sd_notify(3), systemd's src/libsystemd/sd-daemon/sd-daemon.c):
NOTIFY_SOCKET names an AF_UNIX datagram socket, a filesystem path ("/run/...")
or a Linux abstract name written with a leading "@"; one datagram carries
newline-separated VAR=value assignments. The watchdog is on when WATCHDOG_USEC
is a positive integer and WATCHDOG_PID is unset or names this process
(sd_watchdog_enabled(3)): a child that inherited the variables must not ping.

Promises:
- Without NOTIFY_SOCKET (a laptop, a test, the arm smoke run) every method is a
  no-op, so callers never test for systemd themselves.
- Nothing here blocks or raises into the caller: sends are MSG_DONTWAIT, and a
  failed send (service manager gone, its queue full) is logged once at warning
  level, then only counted: a notifier that cannot reach systemd must not stop
  the loop that moves events. (If systemd really stops hearing WATCHDOG=1 it
  restarts us, which is the right outcome.)
- Values never contain a newline (it would start a new assignment).

Only the loop thread calls it (one socket, no locking).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("agent.notify")

# What one STATUS= line may hold. systemd accepts a datagram up to its receive
# buffer, but `systemctl status` shows one line: keep it short and bounded.
_STATUS_MAX_CHARS = 200


def _address(value: str | None) -> str | bytes | None:
    """The sendto() address for a NOTIFY_SOCKET value, or None when unusable."""
    if not value:
        return None
    if value.startswith("@"):
        # Abstract namespace: "@" stands for the leading NUL byte (sd-daemon.c).
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # "vsock:CID:PORT" (systemd >= 253) and anything else: not for a gateway.
    log.warning("NOTIFY_SOCKET=%r is not a unix socket path: notifications disabled", value)
    return None


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """WATCHDOG_USEC when it applies to process `pid`, else None (sd_watchdog_enabled(3))."""
    raw = environ.get("WATCHDOG_USEC")
    if raw is None:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer: watchdog disabled", raw)
        return None
    # 0 and infinity (2^64-1) are "not set" in systemd's timestamp_is_set().
    if usec <= 0 or usec >= 2**64 - 1:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner is not None:
        try:
            if int(owner) != pid:
                return None  # meant for another process (we are its child)
        except ValueError:
            log.warning("WATCHDOG_PID=%r is not a pid: watchdog disabled", owner)
            return None
    return usec


class Notifier:
    """Sends state changes to the service manager; a no-op without one."""

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._failed = 0  # sends that did not go through

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, pid: int | None = None
    ) -> Notifier:
        """From NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID (default: os.environ, os.getpid())."""
        env = os.environ if environ is None else environ
        address = _address(env.get("NOTIFY_SOCKET"))
        usec = _watchdog_usec(env, os.getpid() if pid is None else pid)
        return cls(address, usec if address is not None else None)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def failed_sends(self) -> int:
        return self._failed

    # -- the messages ----------------------------------------------------------

    def ready(self, status: str | None = None) -> None:
        """Start-up complete: sockets bound, spill rings recovered (Type=notify)."""
        self._send("READY=1", *self._status_line(status))

    def reloading(self, status: str | None = None) -> None:
        """A SIGHUP reload begins; call `ready()` when it is done (sd_notify(3))."""
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match this
        # reload to the request; older managers ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={usec}", *self._status_line(status))

    def stopping(self, status: str | None = None) -> None:
        """The stop sequence has begun (SIGTERM received)."""
        self._send("STOPPING=1", *self._status_line(status))

    def status(self, text: str) -> None:
        """A one-line free-form status for `systemctl status`."""
        self._send(*self._status_line(text))

    def watchdog(self) -> None:
        """The loop is alive (WatchdogSec=). Call at least every `watchdog_interval_s()`/2."""
        if self._watchdog_usec is not None:
            self._send("WATCHDOG=1")

    def watchdog_interval_s(self) -> float | None:
        """The watchdog timeout in seconds, or None when systemd expects no pings."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 1e6

    def extend_timeout(self, usec: int) -> None:
        """Ask for `usec` more microseconds before the current start/stop timeout
        fires (EXTEND_TIMEOUT_USEC); repeat before it runs out while work goes on,
        e.g. while a long spill flush at stop is still writing."""
        if usec > 0:
            self._send(f"EXTEND_TIMEOUT_USEC={int(usec)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- the wire --------------------------------------------------------------

    @staticmethod
    def _status_line(text: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        one_line = " ".join(text.split())[:_STATUS_MAX_CHARS]
        return (f"STATUS={one_line}",)

    def _send(self, *assignments: str) -> None:
        if self._address is None or not assignments:
            return
        data = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # MSG_DONTWAIT: a datagram socket whose peer queue is full would
            # otherwise block the loop thread until systemd reads.
            self._sock.sendto(data, socket.MSG_DONTWAIT, self._address)
        except OSError as exc:
            self._failed += 1
            if self._failed == 1:
                log.warning(
                    "cannot notify the service manager (%s): %s; further failures are not logged",
                    os.strerror(exc.errno) if exc.errno else exc,
                    data.split(b"\n", 1)[0].decode(),
                )
