"""The one thread that owns all event state: sockets, class queues, spill, timers.

Everything an accepted event goes through happens on this thread, in this
order each turn:

1. poll (ingest, upstream subscriptions, the PULL monitor, the signal pipe);
2. ingest: a bounded burst of `recv(NOBLOCK)` (FACTS.md: poll once, then
   drain without polling; a poll before every recv cut throughput ~10x),
   decoded as one batch;
3. make room: non-critical classes beyond `budget - critical_reserve` move to
   their spill rings (lowest class first), or when disk is full too, the
   oldest events of the lowest class are evicted and counted;
4. publish: strict class order, critical first and at once, others in batches;
5. drain: spilled events come back into memory, highest class first, while
   there is room and the class has little in memory;
6. timers: snapshot for the HTTP thread, governor (grow/shrink), spill flush.

Promises: an event is counted exactly once as delivered, spilled-then-
recovered, dropped (with a reason) or rejected (with a reason); critical
events are never behind another class in our queues; nothing blocks this
thread except the poll (and an msync, bounded by the flush interval's dirty
data). The HTTP thread only ever sees the immutable `Snapshot` swapped in here.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator

import zmq
from zmq.utils.monitor import recv_monitor_message

import agent
from agent import memory
from agent.batching import BatchPolicy
from agent.classes import CLASSES, EventClass
from agent.codec import MULTIPART, FrameDecoder
from agent.curve import CurveError, CurveGuard
from agent.governor import BufferGovernor
from agent.history import History
from agent.http import HttpServer
from agent.notify import Notifier
from agent.queues import CHUNK_BYTES, Chunk, ClassQueues
from agent.settings import Settings
from agent.spill import SpillError, SpillStore
from agent.stats import (
    BufferStats,
    ClassStats,
    IngestStats,
    LatencyRecorder,
    Snapshot,
    SpillStats,
)

log = logging.getLogger("agent.loop")

CRITICAL = int(EventClass.CRITICAL)
NONCRITICAL_LOWEST_FIRST = tuple(reversed(CLASSES[1:]))

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
# Upstream sends per turn, so a deep backlog cannot starve ingest (64 x 256
# events ~ 16k events, a few ms).
PUBLISH_MAX_SENDS = 64
# After XPUB_NODROP refused a send, retry this soon: libzmq reports an XPUB as
# always writable, so there is no POLLOUT to wait for. zmq's poll counts whole
# milliseconds, and a 1 ms wait capped a full-speed drain at one pipe's depth
# per ms (SNDHWM 2: 477k events/s, SNDHWM 4: 958k); below 1 ms the loop polls
# without waiting and sleeps the rest (_turn).
BLOCKED_RETRY_S = 0.00025
IDLE_POLL_S = 0.1
FLUSH_STEP_BYTES = 4 * 1024 * 1024
SNAPSHOT_EVERY_S = 0.25
# Drain a class's ring while it has fewer than this many bytes in memory:
# enough to keep the upstream busy, little enough to leave room for a spike.
DRAIN_LOW_WATER = 4 * CHUNK_BYTES
# SIGTERM: keep accepting until the ingest socket has been quiet this long,
# but no longer than STOP_ACCEPT_MAX_S (INTERFACE.md, "SIGTERM").
STOP_IDLE_S = 0.2
STOP_ACCEPT_MAX_S = 3.0


class StartupError(Exception):
    """The agent cannot start: a socket cannot bind, the spill dir is unusable."""


def next_epoch(spill_dir: str, now_ms: int) -> int:
    """A new epoch, larger than every earlier one on this box.

    Wall-clock milliseconds, but never below the last epoch + 1 recorded in the
    spill dir: a gateway without an RTC can boot with its clock in 1970 and the
    head-end must still see a new epoch.
    """
    path = os.path.join(spill_dir, "epoch")
    last = 0
    with contextlib.suppress(FileNotFoundError, ValueError), open(path, encoding="ascii") as f:
        last = int(f.read().strip() or 0)
    epoch = max(now_ms, last + 1)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{epoch}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return epoch


class _ClassCounters:
    __slots__ = ("received", "delivered", "spilled", "recovered", "dropped")

    def __init__(self) -> None:
        self.received = 0
        self.delivered = 0
        self.spilled = 0
        self.recovered = 0
        self.dropped = 0


class Agent:
    def __init__(self, settings: Settings, config_path: str | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.notifier = Notifier.from_environ()
        self._stop_requested = False
        self._reload_requested = False
        self._state = "starting"
        self._snapshot: Snapshot | None = None
        self._started_wall = time.time()
        self.history = History()  # the last 10 minutes, for the page (agent/history.py)
        self.http_address: tuple[str, int] | None = None

    # -- public ----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The latest snapshot; the HTTP thread's only view of the agent."""
        snap = self._snapshot
        assert snap is not None
        return snap

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit status (0)."""
        with self._opened():
            self._serve()
            self._stop()
        return 0

    # -- start and stop --------------------------------------------------------

    @contextlib.contextmanager
    def _opened(self) -> Iterator[None]:
        s = self.settings
        self.store = SpillStore.open(s.spill.dir, s.spill.max_bytes)
        try:
            self.epoch = next_epoch(s.spill.dir, int(time.time() * 1000))
            self.ctx = zmq.Context()
            try:
                self._open_sockets()
                self._open_state()
                self._wake_r, self._wake_w = socket.socketpair()
                self._wake_r.setblocking(False)
                self._wake_w.setblocking(False)
                old_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
                old_term = signal.signal(signal.SIGTERM, self._on_signal)
                old_int = signal.signal(signal.SIGINT, self._on_signal)
                old_hup = signal.signal(signal.SIGHUP, self._on_sighup)
                try:
                    self._publish_snapshot(time.monotonic())
                    self.http = HttpServer(
                        s.http.host, s.http.port, self.snapshot, history=self.history
                    )
                    try:
                        self.http.start()
                    except OSError as e:
                        raise StartupError(str(e)) from e
                    self.http_address = self.http.address
                    try:
                        self._state = "running"
                        self._publish_snapshot(time.monotonic())
                        # READY=1 only now: sockets bound, rings recovered, HTTP up.
                        self.notifier.ready(f"epoch {self.epoch}, serving")
                        log.info(
                            "ready: agent %s epoch %d, http://%s:%d%s",
                            s.agent.id,
                            self.epoch,
                            self.http_address[0],
                            self.http_address[1],
                            "/api/v1/gateway/backpressure",
                        )
                        yield
                    finally:
                        self.http.stop()
                finally:
                    self.notifier.close()
                    signal.signal(signal.SIGTERM, old_term)
                    signal.signal(signal.SIGINT, old_int)
                    signal.signal(signal.SIGHUP, old_hup)
                    signal.set_wakeup_fd(old_fd)
                    self._wake_r.close()
                    self._wake_w.close()
            finally:
                self._close_sockets()
        finally:
            self.store.close()

    def _open_sockets(self) -> None:
        from agent.upstream import Upstream

        s = self.settings
        # The ZAP handler before any socket exists: a CURVE server bound
        # without one admits every client that knows its key (FACTS.md).
        try:
            self.guard = CurveGuard(self.ctx, s.ingest.curve, s.upstream.curve)
        except CurveError as e:
            raise StartupError(str(e)) from e
        pull = self.ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.MAXMSGSIZE, s.ingest.max_frame_bytes)
        pull.setsockopt(zmq.RCVHWM, s.ingest.rcvhwm)
        pull.setsockopt(zmq.LINGER, 0)
        # The loop owns the PULL's monitor (a socket has one): the guard's
        # handshake events come through it, see _read_monitor.
        self.guard.secure(pull, "ingest", monitor=False)
        self.pull = pull
        self.monitor = pull.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | self.guard.monitor_events("ingest")
        )
        try:
            for ep in s.ingest.bind:
                pull.bind(ep)
            for ep in s.ingest.connect:
                pull.connect(ep)
            self.upstream = Upstream(
                self.ctx,
                s.upstream,
                agent_id=s.agent.id,
                epoch=self.epoch,
                secure=lambda sock: self.guard.secure(sock, "upstream"),
            )
        except zmq.ZMQError as e:
            raise StartupError(f"cannot open sockets: {e}") from e

    def _close_sockets(self) -> None:
        for name in ("monitor", "pull"):
            sock = getattr(self, name, None)
            if sock is not None and not sock.closed:
                if name == "pull":
                    with contextlib.suppress(zmq.ZMQError):
                        sock.disable_monitor()
                sock.close(0)
        up = getattr(self, "upstream", None)
        if up is not None:
            up.close()
        # After the secured sockets (until they close, the handler answers),
        # before term (which waits for every socket).
        guard = getattr(self, "guard", None)
        if guard is not None:
            guard.close()
        self.ctx.term()

    def _open_state(self) -> None:
        s = self.settings
        memory.fix_mmap_threshold()
        self.decoder = FrameDecoder(s.classes)
        self.queues = ClassQueues()
        self.governor = BufferGovernor(
            s.buffer.budget_bytes,
            s.buffer.critical_reserve_bytes,
            s.buffer.shrink_after_s,
            floor_bytes=8 * CHUNK_BYTES,
            # One ingest burst: INGEST_MAX_BYTES plus the frame that crosses it,
            # plus a fresh chunk per class for the burst's partial tails.
            burst_bytes=INGEST_MAX_BYTES + s.ingest.max_frame_bytes + len(CLASSES) * CHUNK_BYTES,
        )
        self.policy = BatchPolicy(
            s.upstream.batch_max_events, s.upstream.batch_max_bytes, s.upstream.linger_ms / 1000
        )
        self.counters = [_ClassCounters() for _ in CLASSES]
        self.rejected: dict[str, int] = {}
        self.frames = 0
        self.events_in = 0
        self.disconnects = 0
        self.paused = False
        self._blocked_until = 0.0
        self._pending_since: list[float | None] = [None] * len(CLASSES)
        self._next_snapshot = 0.0
        self._next_flush = 0.0
        self._next_drop_log = 0.0
        self._dropped_unlogged = [0] * len(CLASSES)
        interval = self.notifier.watchdog_interval_s()
        # Ping at half the interval (sd_watchdog_enabled(3)).
        self._watchdog_every = interval / 2 if interval else None
        self._next_watchdog = 0.0
        self._drain_rate = 0.0  # events/s recovered, smoothed, for the ETA
        self._rate_at: float | None = None
        self._rate_recovered = 0
        self._spilling = False
        self.latency = LatencyRecorder()
        # (events, arrival time) per ingest burst of critical events still in
        # memory, in queue order: what the latency histogram measures against.
        # Only kept while critical holds nothing on disk; a critical spill (its
        # memory full) makes them ambiguous, so they are dropped until the
        # queue is empty again.
        self._critical_arrivals: collections.deque[list[float]] = collections.deque()
        self._arrivals_valid = True
        for cls in CLASSES:
            if self.store.pending(cls):
                # Recovered from a previous run: new events queue behind them.
                self.queues[cls].hold_back = True
        stats = self.store.statistics()
        if stats.pending_events or stats.corrupt_records:
            log.info(
                "spill recovery: %d events pending on disk, %d corrupt records skipped",
                stats.pending_events,
                stats.corrupt_records,
            )

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop_requested = True

    def _on_sighup(self, signum: int, frame: object) -> None:
        self._reload_requested = True

    # -- SIGHUP ------------------------------------------------------------------

    def _reload(self) -> None:
        """Re-read the config file and apply what can change safely at run time
        (class rules, batching, log level). Queued events keep their class and
        their order; new rules apply to events decoded from now on. Anything
        else that changed is logged as needing a restart and is not applied."""
        from agent.config import RELOADABLE, ConfigError, changed_keys, load_config

        self._reload_requested = False
        try:
            self.guard.reload_allowed()
        except CurveError as e:
            log.error("SIGHUP: allowed CURVE keys not reloaded, keeping the running ones: %s", e)
        if self.config_path is None:
            log.warning("SIGHUP: no config file to reload")
            return
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            log.error("SIGHUP: config not reloaded, keeping the running one: %s", e)
            self.notifier.ready("reload failed, running config kept")
            return
        changed = changed_keys(self.settings, new)
        applied = [k for k in changed if k in RELOADABLE]
        restart = [k for k in changed if k not in RELOADABLE]
        old = self.settings
        self.decoder.set_rules(new.classes)
        u = new.upstream
        self.policy = BatchPolicy(u.batch_max_events, u.batch_max_bytes, u.linger_ms / 1000)
        logging.getLogger().setLevel(new.agent.log_level.upper())
        # Keep what was not applied as it runs, so the next reload compares
        # against the truth and repeats the restart warning.
        self.settings = dataclasses.replace(
            old,
            agent=dataclasses.replace(old.agent, log_level=new.agent.log_level),
            upstream=dataclasses.replace(
                old.upstream,
                batch_max_events=u.batch_max_events,
                batch_max_bytes=u.batch_max_bytes,
                linger_ms=u.linger_ms,
            ),
            classes=new.classes,
        )
        log.info(
            "SIGHUP: reloaded %s: applied %s", self.config_path, ", ".join(applied) or "nothing"
        )
        if restart:
            log.warning(
                "SIGHUP: these changed keys need a restart to apply: %s", ", ".join(restart)
            )
        self.notifier.ready("config reloaded")

    # -- the loop ----------------------------------------------------------------

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        poller.register(self.upstream.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        self._guard_sockets = self.guard.sockets
        for sock in self._guard_sockets:
            poller.register(sock, zmq.POLLIN)
        self._poller = poller
        while not self._stop_requested:
            self._turn(self._poll_timeout(time.monotonic()))

    def _turn(self, timeout_s: float) -> bool:
        """One turn of the loop. Returns True if any frame was read."""
        if 0.0 < timeout_s < 0.001:
            # A sub-millisecond wait (the upstream is blocked): look, then sleep.
            ready = dict(self._poller.poll(0))
            if not ready:
                time.sleep(timeout_s)
                ready = dict(self._poller.poll(0))
        else:
            ready = dict(self._poller.poll(int(timeout_s * 1000)))
        got = False
        if self.pull in ready and not self.paused:
            got = self._ingest()
        if self.upstream.sock in ready:
            self.upstream.handle_subscriptions()
        if self.monitor in ready:
            self._read_monitor()
        if any(sock in ready for sock in self._guard_sockets):
            self.guard.handle()
        if self._wake_r.fileno() in ready:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(512)
        now = time.monotonic()
        # Publish before making room: what can leave should not be spilled.
        self._publish(now)
        self._make_room()
        self._drain(now)
        self._timers(now)
        return got

    def _poll_timeout(self, now: float) -> float:
        timeout = min(IDLE_POLL_S, max(0.0, self._next_snapshot - now))
        if self.paused:
            # Ingest is not polled while paused; look again soon.
            timeout = min(timeout, 0.01)
        if self._blocked_until > now:
            return min(timeout, self._blocked_until - now)
        deliverable = self.upstream.deliverable
        for cls in CLASSES:
            q = self.queues[cls]
            if q.front_events and deliverable[cls]:
                since = self._pending_since[cls]
                waited = now - since if since is not None else 0.0
                wait = self.policy.wait_s(cls, q.front_events, q.front_bytes, waited)
                if wait is not None:
                    timeout = min(timeout, wait)
            if q.hold_back and self._can_drain(cls):
                timeout = 0.0
        return timeout

    # -- ingest ----------------------------------------------------------------

    def _ingest(self) -> bool:
        arrived = time.monotonic()  # the frames of this burst were here by now
        recv = self.pull.recv
        more = self.pull.getsockopt
        frames: list[bytes] = []
        nbytes = 0
        multipart = 0
        for _ in range(INGEST_MAX_FRAMES):
            try:
                frame = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if more(zmq.RCVMORE):
                # A multipart message is rejected whole (INTERFACE.md). Its parts
                # arrive together, so reading the rest cannot block.
                while more(zmq.RCVMORE):
                    recv()
                multipart += 1
                continue
            frames.append(frame)
            nbytes += len(frame)
            if nbytes >= INGEST_MAX_BYTES:
                break
        if multipart:
            self.rejected[MULTIPART] = self.rejected.get(MULTIPART, 0) + multipart
        if not frames:
            return multipart > 0
        result = self.decoder.decode_frames(frames)
        self.frames += len(frames)
        self.events_in += result.accepted
        for reason, n in result.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + n
        now = time.monotonic()
        for cls, events in enumerate(result.events):
            if events:
                q = self.queues[cls]
                q.push_many(events)
                self.counters[cls].received += len(events)
                if cls == CRITICAL and self._arrivals_valid and not q.hold_back:
                    self._critical_arrivals.append([len(events), arrived])
                if self._pending_since[cls] is None and q.front_events:
                    self._pending_since[cls] = now
        return True

    def _read_monitor(self) -> None:
        while True:
            try:
                msg = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if self.guard.on_monitor_event("ingest", msg):
                continue  # a refused handshake, counted by the guard
            # Only EVENT_DISCONNECTED is subscribed: a collector went away, or
            # ZeroMQ dropped it for a frame over max_frame_bytes.
            self.disconnects += 1

    # -- memory: make room, spill, evict -------------------------------------------

    def _noncritical_alloc(self) -> int:
        return sum(self.queues[c].alloc_bytes for c in CLASSES if c != CRITICAL)

    def _make_room(self) -> None:
        """Keep the non-critical classes within their limit (spilling lowest
        first, evicting only when disk is full too), keep room for one more
        ingest burst (spilling critical if it alone fills memory), and pause
        ingest when even that is impossible."""
        gov = self.governor
        self._spilling = False
        excess = self._noncritical_alloc() - gov.noncritical_limit
        while excess > 0:
            freed = self._spill_one(NONCRITICAL_LOWEST_FIRST) or self._evict_one()
            if not freed:
                break
            excess -= freed
        pool = self.queues.pool
        while not gov.can_admit(pool.in_use_bytes) and self._spill_one((CRITICAL,)):
            pass
        paused = not gov.can_admit(pool.in_use_bytes)
        if paused != self.paused:
            self.paused = paused
            self._poller.modify(self.pull, 0 if paused else zmq.POLLIN)
            if paused:
                log.warning(
                    "buffers full (%d bytes in use, budget %d) and critical events fill "
                    "the spill ring: not reading ingest until there is room",
                    pool.in_use_bytes,
                    gov.budget_bytes,
                )
            else:
                log.info("ingest resumed")

    def _spill_one(self, classes: tuple[int, ...]) -> int:
        """Move one chunk of the first class in `classes` that can spill. Returns bytes freed."""
        for cls in classes:
            q = self.queues[cls]
            chunk = q.spill_candidate()
            if chunk is None:
                continue
            if chunk.held_bytes + 4 * chunk.events > self.store.max_batch_bytes(cls):
                continue  # larger than a ring record can be (config prevents it)
            # A copy, not a view: a view would pin the chunk's mmap open.
            blob, ends = chunk.remaining()
            push = self.store.push_front if q.spills_ahead_of_ring(chunk) else self.store.push_back
            if push(cls, blob, ends):
                if cls == CRITICAL:
                    self._critical_arrivals.clear()
                    self._arrivals_valid = False
                self.counters[cls].spilled += len(ends)
                freed = chunk.capacity
                q.commit_spill(chunk)
                self._spilling = True
                return freed
        return 0

    def _evict_one(self) -> int:
        """Memory and disk are full: drop the oldest events of the lowest class
        that holds any. Critical is never evicted (ingest pauses instead), so
        it never is while a lower class holds data. Returns memory bytes freed."""
        for cls in NONCRITICAL_LOWEST_FIRST:
            q = self.queues[cls]
            if not q.events:
                continue
            if not q.front and self.store.pending(cls):
                # The class's oldest events are on disk (behind nothing in
                # memory): drop them there, and move memory into the freed room.
                n = self.store.drop_front(cls)
                self._count_dropped(cls, n)
                return self._spill_one((cls,))
            chunk = q.evict_oldest()
            assert chunk is not None
            if chunk.token is not None:
                self.store.release_read(cls)
            self._count_dropped(cls, chunk.events)
            freed = chunk.capacity
            q.recycle(chunk)
            return freed
        return 0

    def _count_dropped(self, cls: int, n: int) -> None:
        self.counters[cls].dropped += n
        # Logged once a second by _timers, not per chunk: at 500k events/s
        # per-chunk warnings would be hundreds of lines a second.
        self._dropped_unlogged[cls] += n

    # -- publish -----------------------------------------------------------------

    def _publish(self, now: float) -> None:
        if self._blocked_until > now:
            return
        up = self.upstream
        deliverable = up.deliverable
        policy = self.policy
        max_events = policy.max_events
        max_bytes = policy.max_bytes
        sends = 0
        for cls in CLASSES:
            q = self.queues[cls]
            if not q.front_events or not deliverable[cls]:
                continue
            since = self._pending_since[cls]
            if since is None:
                since = self._pending_since[cls] = now
            if not policy.due(cls, q.front_events, q.front_bytes, now - since):
                continue
            counters = self.counters[cls]
            while q.front_events:
                body, count = q.peek_batch(max_events, max_bytes)
                if not up.send_batch(cls, body, count):
                    # NODROP: every subscriber pipe is checked, so no class can
                    # go now; critical keeps its place at the head.
                    self._blocked_until = now + BLOCKED_RETRY_S
                    return
                emptied = q.consume(count)
                if emptied is not None:
                    # Every event of a chunk read back from disk is delivered:
                    # only now may its ring record go.
                    self.store.release_read(cls)
                    q.recycle(emptied)
                counters.delivered += count
                if cls == CRITICAL:
                    self._observe_critical(count, now)
                sends += 1
                if sends >= PUBLISH_MAX_SENDS:
                    self._pending_since[cls] = now if q.front_events else None
                    return
                if cls != CRITICAL and not policy.due(cls, q.front_events, q.front_bytes, 0.0):
                    break  # a partial batch left: it lingers from now
            self._pending_since[cls] = now if q.front_events else None

    def _observe_critical(self, count: int, now: float) -> None:
        now = time.monotonic()  # the hand-off itself, not the turn's start
        arrivals = self._critical_arrivals
        while count and arrivals:
            mark = arrivals[0]
            n = min(count, int(mark[0]))
            self.latency.observe(now - mark[1], n)
            count -= n
            mark[0] -= n
            if not mark[0]:
                arrivals.popleft()
        if not self.queues[CRITICAL].events:
            self._critical_arrivals.clear()
            self._arrivals_valid = True

    # -- drain -----------------------------------------------------------------

    def _can_drain(self, cls: int) -> bool:
        """Read back from disk only what memory can take without spilling it
        again next turn (two chunks below the spill threshold), and only for a
        class some subscriber wants: with nobody to deliver to, data read back
        would only compete for memory with what keeps arriving."""
        q = self.queues[cls]
        if q.front_bytes >= DRAIN_LOW_WATER or not self.store.pending(cls):
            return False
        if not self.upstream.deliverable[cls]:
            return False
        gov = self.governor
        if cls == CRITICAL:
            return gov.can_admit(self.queues.pool.in_use_bytes + 2 * CHUNK_BYTES)
        used = self._noncritical_alloc()
        if used + 2 * CHUNK_BYTES <= gov.noncritical_limit:
            return True
        # Memory is near the threshold with data queued behind the ring: until
        # the ring drains, none of this class can be published. Take one record
        # anyway (never out of the critical reserve); _make_room then moves
        # other data out, or, with disk full too, evicts the oldest.
        return (
            q.front_events == 0
            and used + CHUNK_BYTES <= gov.budget_bytes - gov.critical_reserve_bytes
        )

    def _drain(self, now: float) -> None:
        for cls in CLASSES:
            q = self.queues[cls]
            if not q.hold_back:
                continue
            moved = 0
            while self._can_drain(cls):
                batch = self.store.read_next(cls)
                if batch is None:
                    break
                q.push_recovered(batch.blob, batch.ends, token=True)
                self.counters[cls].recovered += batch.count
                moved += batch.count
                if self._pending_since[cls] is None:
                    self._pending_since[cls] = now
            if not self.store.pending(cls):
                q.merge_back()
                if self._pending_since[cls] is None and q.front_events:
                    self._pending_since[cls] = now

    # -- timers ----------------------------------------------------------------

    def _timers(self, now: float) -> None:
        if self._reload_requested:
            self._reload()
        if self._watchdog_every is not None and now >= self._next_watchdog:
            # From the loop itself: if this thread stalls, systemd restarts us.
            self.notifier.watchdog()
            self._next_watchdog = now + self._watchdog_every
        # msync in bounded steps: 16 MiB dirty took 7-12 ms in one call here,
        # 4 MiB steps 2-7 ms each, so a flush never holds the loop (and the
        # next critical alert) for long. The interval restarts once everything
        # due is on disk.
        if now >= self._next_flush and self.store.flush(FLUSH_STEP_BYTES):
            self._next_flush = now + self.settings.spill.flush_interval_ms / 1000
        if now >= self._next_drop_log:
            self._next_drop_log = now + 1.0
            for cls, n in enumerate(self._dropped_unlogged):
                if n:
                    log.warning(
                        "memory and spill both full: evicted %d oldest %s events",
                        n,
                        EventClass(cls).wire_name,
                    )
                    self._dropped_unlogged[cls] = 0
        if now >= self._next_snapshot:
            self._update_drain_rate(now)
            pool = self.queues.pool
            draining = any(q.hold_back for q in self.queues.by_class)
            keep = self.governor.observe(
                now,
                pool.in_use_bytes,
                pool.allocated_bytes,
                spilling=self._spilling,
                draining=draining,
            )
            if keep is not None:
                freed = pool.trim(keep)
                memory.trim()
                if freed:
                    log.info("buffers shrunk: %d bytes returned to the OS", freed)
            self._publish_snapshot(now)
            self.history.record(self.snapshot(), now)  # one sample a second
            self._next_snapshot = now + SNAPSHOT_EVERY_S

    def _update_drain_rate(self, now: float) -> None:
        """Events read back from disk per second, smoothed over ~2 s, for the
        technician's drain ETA. Zero while nothing drains (no subscriber)."""
        recovered = sum(c.recovered for c in self.counters)
        if self._rate_at is not None and now > self._rate_at:
            rate = (recovered - self._rate_recovered) / (now - self._rate_at)
            # The first measurement is taken as is; then smoothed over ~2 s.
            alpha = 1.0 if not self._drain_rate else min(1.0, (now - self._rate_at) / 2.0)
            self._drain_rate += alpha * (rate - self._drain_rate)
        self._rate_at = now
        self._rate_recovered = recovered

    def _publish_snapshot(self, now: float) -> None:
        self._snapshot = self._build_snapshot(now)

    def _build_snapshot(self, now: float) -> Snapshot:
        """Everything a person may ask, from each component's statistics().
        Only called once sockets, queues and the store exist (_opened)."""
        s = self.settings
        queues = self.queues
        store_stats = self.store.statistics()
        classes = tuple(
            ClassStats(
                received=c.received,
                queued=q.events,
                queued_bytes=q.bytes,
                spilled=c.spilled,
                pending=per.pending_events,
                pending_bytes=per.pending_bytes,
                delivered=c.delivered,
                dropped=c.dropped,
            )
            for c, q, per in zip(self.counters, queues.by_class, store_stats.classes, strict=True)
        )
        gov = self.governor.statistics()
        pending = store_stats.pending_events
        curve = self.guard.statistics()
        eta = None
        if pending and self._drain_rate >= 1.0:
            eta = round(pending / self._drain_rate, 1)
        return Snapshot(
            agent_id=s.agent.id,
            version=agent.__version__,
            epoch=self.epoch,
            state=self._state,
            started_at=self._started_wall,
            taken_at=time.time(),
            loop_monotonic=now,
            classes=classes,
            buffer=BufferStats(
                used_bytes=queues.used_bytes,
                allocated_bytes=queues.pool.allocated_bytes,
                capacity_bytes=gov.capacity_bytes,
                budget_bytes=s.buffer.budget_bytes,
                critical_reserve_bytes=s.buffer.critical_reserve_bytes,
                state=gov.state.value,
            ),
            spill=SpillStats(
                enabled=True,
                dir=s.spill.dir,
                spilled_events=sum(c.spilled for c in self.counters),
                pending_events=pending,
                pending_bytes=store_stats.pending_bytes,
                recovered_events=sum(c.recovered for c in self.counters),
                file_bytes=store_stats.file_bytes,
                corrupt_records=store_stats.corrupt_records,
                flushes=store_stats.flushes,
                drain_eta_s=eta,
            ),
            ingest=IngestStats(
                frames=self.frames,
                events=self.events_in,
                rejected_total=sum(self.rejected.values()),
                rejected_by_reason=tuple(sorted(self.rejected.items())),
                disconnects=self.disconnects,
                paused=self.paused,
                unauthorized=curve.ingest.unauthorized,
            ),
            upstream=dataclasses.replace(
                self.upstream.statistics(), unauthorized=curve.upstream.unauthorized
            ),
            critical_latency=self.latency.snapshot(),
        )

    # -- stop --------------------------------------------------------------------

    def _stop(self) -> None:
        """SIGTERM: accept until ingest is quiet (bounded), then park everything
        held in memory on disk, flush, and return."""
        self._state = "stopping"
        self.notifier.stopping("stopping: parking events on disk")
        # Accepting (<= 3 s) then parking up to the whole budget and an msync:
        # ask systemd for time beyond TimeoutStopSec if it is short.
        self.notifier.extend_timeout(60_000_000)
        log.info("stopping: accepting until ingest is quiet")
        start = last_frame = time.monotonic()
        while True:
            now = time.monotonic()
            if now - last_frame >= STOP_IDLE_S or now - start >= STOP_ACCEPT_MAX_S:
                break
            if self._turn(min(STOP_IDLE_S, self._poll_timeout(now))):
                last_frame = time.monotonic()
        self._poller.unregister(self.pull)
        self.pull.close(0)
        parked, lost = self._park_in_memory_events()
        self._next_drop_log = 0.0
        self._timers(time.monotonic())  # log what was evicted, once per class
        self.store.flush()
        self._publish_snapshot(time.monotonic())
        delivered = sum(c.delivered for c in self.counters)
        if lost:
            log.error(
                "stopped: %d delivered, %d events parked on disk, %d LOST (spill full)",
                delivered,
                parked,
                lost,
            )
        else:
            log.info(
                "stopped: %d delivered, %d events parked on disk, nothing lost", delivered, parked
            )

    def _park_in_memory_events(self) -> tuple[int, int]:
        """Move every event held in memory into the rings, keeping class order:
        what sat ahead of the ring goes in front of it (newest first), what
        queued behind it after it. Chunks read back from disk still own their
        ring records: those are released (oldest first, as they were read) and
        their undelivered rest is put back in front like any other."""
        parked = lost = 0
        for cls in CLASSES:
            q = self.queues[cls]
            front, back = q.drain_all()
            for chunk in front:
                if chunk.token is not None:
                    self.store.release_read(cls)
            for chunk in reversed(front):
                n, ok = self._park(cls, chunk, front_side=True)
                parked += n if ok else 0
                lost += 0 if ok else n
            for chunk in back:
                n, ok = self._park(cls, chunk, front_side=False)
                parked += n if ok else 0
                lost += 0 if ok else n
        return parked, lost

    def _park(self, cls: int, chunk: Chunk, *, front_side: bool) -> tuple[int, bool]:
        blob, ends = chunk.remaining()
        self.queues[cls].recycle(chunk)
        n = len(ends)
        if not n:
            return 0, True
        push = self.store.push_front if front_side else self.store.push_back
        while not push(cls, blob, ends):
            # The class's share of the disk is full: memory and disk are both
            # exhausted, so the oldest events go first (never these newer ones).
            # Critical is never evicted; it is lost only if its ring is full.
            evicted = 0 if (front_side or cls == CRITICAL) else self.store.drop_front(cls)
            if not evicted:
                self.counters[cls].dropped += n
                self._dropped_unlogged[cls] += n
                return n, False
            self._count_dropped(cls, evicted)
        self.counters[cls].spilled += n
        return n, True


def run_agent(settings: Settings, config_path: str | None = None) -> int:
    """Run the agent in the foreground; the CLI's `run`."""
    try:
        return Agent(settings, config_path).run()
    except SpillError as e:
        raise StartupError(str(e)) from e
