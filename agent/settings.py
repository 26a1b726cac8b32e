"""The validated settings the agent runs on: what config.py produces.

Frozen dataclasses, one per TOML table. Every field has the default the
contract (INTERFACE.md) or the README documents; config.py owns parsing and
validation, this module owns only the shape and the defaults. Pure.
"""

from __future__ import annotations

import dataclasses
import socket

from agent.classes import DEFAULT_RULES, ClassRules, EventClass

MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class AgentSettings:
    id: str = dataclasses.field(default_factory=socket.gethostname)
    log_level: str = "info"  # debug | info | warning | error


@dataclasses.dataclass(frozen=True)
class CurveSettings:
    """CURVE on one socket (issue 5). Off when secret_key_file is None."""

    secret_key_file: str | None = None
    # Directory of the public-key certificates allowed to connect (zmq.auth format).
    allowed_keys_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class IngestSettings:
    bind: tuple[str, ...] = ("tcp://0.0.0.0:5557",)
    connect: tuple[str, ...] = ()
    # ZMQ_MAXMSGSIZE: a larger frame disconnects the peer (contract default 1 MiB).
    max_frame_bytes: int = 1 * MiB
    # ZMQ_RCVHWM in frames. Frames waiting here are ahead of any critical alert
    # from the same collectors, so it stays modest: 1000 frames drain in ~2 ms
    # at the agent's ingest rate.
    rcvhwm: int = 1000
    curve: CurveSettings = dataclasses.field(default_factory=CurveSettings)


@dataclasses.dataclass(frozen=True)
class UpstreamSettings:
    bind: tuple[str, ...] = ("tcp://0.0.0.0:5558",)
    connect: tuple[str, ...] = ()
    # One upstream message carries at most this many events / body bytes.
    batch_max_events: int = 256
    batch_max_bytes: int = 64 * 1024
    # How long a partial batch of a non-critical class may wait for company.
    # Critical events never wait.
    linger_ms: int = 5
    # ZMQ_SNDHWM in messages and SO_SNDBUF in bytes: everything queued in libzmq
    # or the kernel is FIFO and sits ahead of the next critical alert, so both
    # stay small and the backlog stays in our class queues. Two messages still
    # drained 1.39M events/s to a fast subscriber (loop.py, BLOCKED_RETRY_S).
    sndhwm: int = 2
    sndbuf_bytes: int = 64 * 1024
    curve: CurveSettings = dataclasses.field(default_factory=CurveSettings)


@dataclasses.dataclass(frozen=True)
class BufferSettings:
    # Hard ceiling for in-memory event buffers (contract default 512 MiB).
    budget_bytes: int = 512 * MiB
    # Slice of the budget only critical events may use.
    critical_reserve_bytes: int = 16 * MiB
    # Quiet time after which the governor gives memory back to the OS.
    shrink_after_s: float = 10.0


@dataclasses.dataclass(frozen=True)
class SpillSettings:
    dir: str = "/var/lib/edge-agent/spill"
    # All ring files together, preallocated with posix_fallocate.
    max_bytes: int = 2048 * MiB
    # msync interval: what a power loss can cost at most (README, durability).
    flush_interval_ms: int = 1000
    # Classes whose events, when not handed to ZeroMQ at once, are also written to
    # their ring within a few ms while they stay queued (INTERFACE.md, "Crash
    # durability"): a kill -9 loses none of them accepted > 50 ms before.
    write_through: tuple[str, ...] = ("critical", "high")


@dataclasses.dataclass(frozen=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080  # 0 = any free port; the agent logs the one it got


@dataclasses.dataclass(frozen=True)
class Settings:
    agent: AgentSettings = dataclasses.field(default_factory=AgentSettings)
    ingest: IngestSettings = dataclasses.field(default_factory=IngestSettings)
    upstream: UpstreamSettings = dataclasses.field(default_factory=UpstreamSettings)
    buffer: BufferSettings = dataclasses.field(default_factory=BufferSettings)
    spill: SpillSettings = dataclasses.field(default_factory=SpillSettings)
    http: HttpSettings = dataclasses.field(default_factory=HttpSettings)
    classes: ClassRules = dataclasses.field(default_factory=lambda: ClassRules(DEFAULT_RULES))


__all__ = [
    "AgentSettings",
    "BufferSettings",
    "ClassRules",
    "CurveSettings",
    "EventClass",
    "HttpSettings",
    "IngestSettings",
    "Settings",
    "SpillSettings",
    "UpstreamSettings",
]
