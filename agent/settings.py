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


# The default binds are on loopback: with nothing written, only this host can
# reach the agent (protected mode, agent/protected.py). Listening for other
# hosts takes an explicit `bind` plus CURVE or `insecure_plaintext = true`.


@dataclasses.dataclass(frozen=True)
class IngestSettings:
    bind: tuple[str, ...] = ("tcp://127.0.0.1:5557",)
    connect: tuple[str, ...] = ()
    # ZMQ_MAXMSGSIZE: a larger frame disconnects the peer (contract default 1 MiB).
    max_frame_bytes: int = 1 * MiB
    # ZMQ_RCVHWM in frames, per connected peer (libzmq keeps one pipe each).
    # Frames waiting here are ahead of any critical alert on the same socket
    # (not of the lane's) and are memory outside the budget (README, worst
    # case). Kept at 1000 by measurement (README, ingest sizing): 100 and 32
    # moved no more events/s, and over ipc:// lost the tail of a collector
    # that closed while its pipe was full (286 and 383 of ~1.9M frames in
    # bench/throughput.py; 200-400 of 20,000 in a bare PUSH->PULL test, none
    # at 1000, none over tcp:// at 16-1000): libzmq 4.3.5 takes a unix
    # socket's hang-up seen while input is stopped for an I/O error and drops
    # what is still in the kernel (stream_engine_base.cpp, in_event_internal).
    # 1000 frames per collector are ~2-3 ms of the agent's ingest.
    rcvhwm: int = 1000
    curve: CurveSettings = dataclasses.field(default_factory=CurveSettings)
    # Protected mode's opt-out: plaintext endpoints beyond loopback/ipc allowed.
    insecure_plaintext: bool = False
    # The alert lane (INTERFACE.md): a second PULL socket with the same framing,
    # rules, size limit, buffers and CURVE settings, read before every bulk
    # burst. No endpoints: no lane.
    priority_bind: tuple[str, ...] = ()
    priority_connect: tuple[str, ...] = ()
    # SO_RCVBUF in bytes on both PULL sockets, per connection (Linux doubles
    # it for its own bookkeeping). Setting it turns off TCP receive
    # autotuning, which otherwise grows a busy collector's buffer towards
    # net.ipv4.tcp_rmem's maximum (6 MiB by default: ~50,000 120-byte frames
    # ahead of the next alert on that socket). 64 KiB holds ~500 frames, a
    # fraction of a millisecond of ingest (README, ingest sizing).
    rcvbuf_bytes: int = 64 * 1024
    # Connections a PULL socket (bulk, and the lane separately) keeps at once;
    # the next one is closed as soon as it is accepted (agent/peers.py). A
    # substation gateway has tens to a few hundred collectors (the unit's
    # LimitNOFILE=8192 says the same); 2 x 256 connections stay far inside the
    # descriptor limit. With rcvhwm and max_frame_bytes it bounds what libzmq
    # may hold (README, worst case).
    max_peers: int = 256

    @property
    def lane(self) -> bool:
        """Is there an alert lane?"""
        return bool(self.priority_bind or self.priority_connect)


@dataclasses.dataclass(frozen=True)
class UpstreamSettings:
    bind: tuple[str, ...] = ("tcp://127.0.0.1:5558",)
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
    insecure_plaintext: bool = False  # as IngestSettings'


# `critical_reserve_bytes` when the operator does not write it: it follows the
# budget (INTERFACE.md: any budget from 8 MiB up starts with every other key at
# its default). See `default_critical_reserve`.
SCALED_DEFAULT = -1


def default_critical_reserve(budget_bytes: int) -> int:
    """The critical reserve a budget gets by default: 1/32 of it, at most 16 MiB.

    16 MiB is the reserve at the default 512 MiB budget (~130,000 alerts of
    ~120 bytes held in memory while no head-end reads); past it, more reserve
    buys nothing, because critical events are also written through to the spill
    files. At 8 MiB the reserve is 256 KiB, one queue chunk (~2,000 alerts)."""
    return min(16 * MiB, budget_bytes // 32)


@dataclasses.dataclass(frozen=True)
class BufferSettings:
    # Hard ceiling for in-memory event buffers (contract default 512 MiB).
    budget_bytes: int = 512 * MiB
    # Slice of the budget only critical events may use. Left at SCALED_DEFAULT
    # it becomes default_critical_reserve(budget_bytes) on construction.
    # Invariant: after construction it is never SCALED_DEFAULT.
    critical_reserve_bytes: int = SCALED_DEFAULT
    # Quiet time after which the governor gives memory back to the OS.
    shrink_after_s: float = 10.0

    def __post_init__(self) -> None:
        if self.critical_reserve_bytes == SCALED_DEFAULT:
            reserve = default_critical_reserve(self.budget_bytes)
            object.__setattr__(self, "critical_reserve_bytes", reserve)


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
    # Host names answered beyond addresses, localhost and this host's own name
    # (the DNS-rebinding guard, agent/http.py HostPolicy).
    allowed_hosts: tuple[str, ...] = ()


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
    "default_critical_reserve",
]
