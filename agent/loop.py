"""The one thread that owns all event state: sockets, signals, the turn, timers.

Everything an accepted event goes through happens on this thread, in this
order each turn:

1. poll (ingest and the alert lane, upstream subscriptions, the PULL
   monitors, the signal pipe);
2. ingest (agent/ingest.py reads, this module decodes and queues): the
   alert lane first (at most LANE_MAX_BURSTS bursts), then one bulk burst;
   a burst is a bounded run of `recv(NOBLOCK)` (FACTS.md: poll once, then
   drain without polling; a poll before every recv cut throughput ~10x),
   decoded as one batch;
3. publish: strict class order, critical first and at once, others in batches;
4. make room (agent/pressure.py): spill or evict what memory cannot hold, and
   pause ingest while even one more burst would not fit;
5. drain (agent/pressure.py): spilled events come back into memory;
6. timers: snapshot for the HTTP thread (agent/telemetry.py), governor
   (grow/shrink), spill flush, watchdog, SIGHUP reload.

The decisions live in the pure modules (pressure, governor, batching,
telemetry); this module holds the sockets and the clock and applies them
(the PULL sockets through agent/ingest.py, which opens, reads and closes them).

Promises: an event is counted exactly once as delivered, spilled-then-
recovered, dropped (with a reason) or rejected (with a reason); critical
events are never behind another class in our queues; nothing blocks this
thread except the poll (and an msync, bounded by the flush interval's dirty
data). The HTTP thread only ever sees the immutable `Snapshot` swapped in here.
A start that cannot open everything (spill dir, an endpoint, the HTTP port)
raises StartupError naming what failed, with everything opened so far closed
(one ExitStack), so the process exits instead of hanging in `ctx.term()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import socket
import time

import zmq

import agent
from agent import fastpath, memory
from agent.announce import (
    eviction_lines,
    paused_line,
    plan_reload,
    recovery_line,
    startup_lines,
    stopped_line,
)
from agent.batching import (
    IN_FLIGHT_TARGET_S,
    BatchPolicy,
    DrainMeter,
    in_flight,
    message_events,
)
from agent.classes import CLASSES, EventClass, class_by_name
from agent.codec import MULTIPART, DecodeResult
from agent.curve import CurveError, CurveGuard
from agent.governor import BufferGovernor
from agent.history import History
from agent.http import HttpServer
from agent.ingest import INGEST_MAX_BYTES, Ingest, Pull
from agent.notify import Notifier
from agent.pressure import BufferPressure
from agent.queues import CHUNK_BYTES, ClassQueues
from agent.routes import BACKPRESSURE_PATH
from agent.settings import Settings
from agent.spill import SpillError, SpillStore, next_epoch
from agent.stats import Snapshot
from agent.telemetry import AgentIdentity, Telemetry
from agent.upstream import UNSENT_MAX_BYTES, EndpointError, Upstream

log = logging.getLogger("agent.loop")

CRITICAL = int(EventClass.CRITICAL)

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
SHRINK_POLL_S = 0.005  # the wait between steps while a shrink is under way (memory.Shrink)
SNAPSHOT_EVERY_S = 0.25
# While ingest is paused it is not polled; look again this soon.
PAUSED_POLL_S = 0.01
# SIGTERM: keep accepting until the ingest socket has been quiet this long,
# but no longer than STOP_ACCEPT_MAX_S (INTERFACE.md, "SIGTERM").
STOP_IDLE_S = 0.2
STOP_ACCEPT_MAX_S = 3.0
# Evictions are logged at most this often, summed per class.
DROP_LOG_EVERY_S = 1.0
# systemd asks for SIGTERM handling within TimeoutStopSec; accepting (<= 3 s)
# then parking up to the whole budget and an msync may need more: ask for this.
STOP_EXTEND_US = 60_000_000


# Which ingest core runs (issue 10): "compiled" (agent/_speedups, built at
# install) or "python" (agent/codec.py and fastpath's Python burst reader;
# EDGE_AGENT_PURE_PYTHON=1 forces it). Decided once, at import.
INGEST_PATH = fastpath.ACTIVE

# 128 + SIGINT, the shell's convention for a process ended by Ctrl-C.
EXIT_INTERRUPTED = 130


class StartupError(Exception):
    """The agent cannot start: a socket cannot bind, the spill dir is unusable."""


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
        with contextlib.ExitStack() as opened:
            self._open(opened)
            self._serve()
            self._stop()
        return 0

    # -- start and stop --------------------------------------------------------

    def _open(self, opened: contextlib.ExitStack) -> None:
        """Open everything, registering each close on `opened` as soon as the
        thing exists: a failure anywhere closes exactly what was opened, in
        reverse order (the HTTP server, the sockets, then the ZAP handler, then
        `ctx.term()`, which waits for every socket, then the store's lock)."""
        s = self.settings
        opened.callback(self.notifier.close)
        # Signals first: a SIGTERM or Ctrl-C during a long start (spill
        # recovery) then stops the agent cleanly once it is up, no traceback.
        self._install_signals(opened)
        self.store = SpillStore.open(s.spill.dir, s.spill.max_bytes)
        opened.callback(self.store.close)
        self.epoch = next_epoch(s.spill.dir, int(time.time() * 1000))
        self.ctx = zmq.Context()
        opened.callback(self.ctx.term)
        self._open_sockets(opened)
        self._open_state()
        self._publish_snapshot(time.monotonic())
        self.http = HttpServer(
            s.http.host,
            s.http.port,
            self.snapshot,
            history=self.history,
            allowed_hosts=s.http.allowed_hosts,
        )
        try:
            self.http.start()
        except OSError as e:
            raise StartupError(str(e)) from e
        opened.callback(self.http.stop)
        self.http_address = self.http.address
        self._state = "running"
        self._publish_snapshot(time.monotonic())
        self._log_startup()
        # READY=1 only now: sockets bound, rings recovered, HTTP up.
        self.notifier.ready(f"epoch {self.epoch}, serving")
        log.info(
            "ready: agent %s epoch %d, http://%s:%d%s",
            s.agent.id,
            self.epoch,
            self.http_address[0],
            self.http_address[1],
            BACKPRESSURE_PATH,
        )

    def _log_startup(self) -> None:
        assert self.http_address is not None
        for line in startup_lines(
            self.settings,
            self.config_path,
            ingest_path=self.telemetry.identity.ingest_path,
            core=fastpath.describe(),
            readers=self.ingest.reader_kinds(),
            http_address=self.http_address,
        ):
            log.info("%s", line)
        self.ingest.log_buffers()

    def _install_signals(self, opened: contextlib.ExitStack) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        opened.callback(self._wake_r.close)
        opened.callback(self._wake_w.close)
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        old_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        opened.callback(signal.set_wakeup_fd, old_fd)
        for signum, handler in (
            (signal.SIGTERM, self._on_signal),
            (signal.SIGINT, self._on_signal),
            (signal.SIGHUP, self._on_sighup),
        ):
            opened.callback(signal.signal, signum, signal.signal(signum, handler))

    def _open_sockets(self, opened: contextlib.ExitStack) -> None:
        s = self.settings
        # The ZAP handler before any socket exists: a CURVE server bound
        # without one admits every client that knows its key (FACTS.md).
        try:
            self.guard = CurveGuard(self.ctx, s.ingest.curve, s.upstream.curve)
        except CurveError as e:
            raise StartupError(str(e)) from e
        # Closed after the secured sockets (until they close, the handler
        # answers), before term.
        opened.callback(self.guard.close)
        self.ingest = Ingest(self.ctx, s.ingest, self.guard)
        opened.callback(self.ingest.close)
        try:
            # The PULL sockets and their monitors (agent/ingest.py), the lane first.
            self.ingest.open()
            self.upstream = Upstream(
                self.ctx,
                s.upstream,
                agent_id=s.agent.id,
                epoch=self.epoch,
                # The upstream owns its socket's monitor (peers, agent/fanout.py);
                # the guard's handshake events come through it.
                secure=lambda sock: self.guard.secure(sock, "upstream", monitor=False),
                monitor_events=self.guard.monitor_events("upstream"),
                on_monitor_event=lambda msg: self.guard.on_monitor_event("upstream", msg),
            )
        except EndpointError as e:
            raise StartupError(str(e)) from e
        except zmq.ZMQError as e:
            raise StartupError(f"cannot open sockets: {e}") from e
        opened.callback(self.upstream.close)

    def _open_state(self) -> None:
        s = self.settings
        memory.fix_mmap_threshold()
        # One decoder for both sockets: the compiled scanner with cbor2 as the
        # judge of what it is unsure of, or cbor2 alone (agent/fastpath.py).
        self.decoder = fastpath.make_decoder(s.classes)
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
        # The message size adapts to the subscriber's drain rate (batching.py).
        self.drain_meter = DrainMeter()
        self.in_flight = in_flight(s.upstream.sndhwm, UNSENT_MAX_BYTES)
        self._message_events = self.policy.max_events
        self.telemetry = Telemetry(
            AgentIdentity(
                agent_id=s.agent.id,
                version=agent.__version__,
                epoch=self.epoch,
                started_at=self._started_wall,
                budget_bytes=s.buffer.budget_bytes,
                critical_reserve_bytes=s.buffer.critical_reserve_bytes,
                spill_dir=s.spill.dir,
                lane_configured=self.ingest.lane is not None,
                ingest_path=INGEST_PATH,
                max_peers=s.ingest.max_peers,
            )
        )
        # Marks queues whose ring holds events from a previous run. Write-through
        # waits out one upstream linger (a batch that leaves on time is never
        # written) plus 5 ms.
        self.pressure = BufferPressure(
            self.queues,
            self.governor,
            self.store,
            self.telemetry,
            write_through=[int(class_by_name(n)) for n in s.spill.write_through],
            write_through_after_s=s.upstream.linger_ms / 1000 + 0.005,
        )
        self.paused = False
        self._blocked_until = 0.0
        self._pending_since: list[float | None] = [None] * len(CLASSES)
        self._next_snapshot = 0.0
        self._next_flush = 0.0
        self.shrink = memory.Shrink()
        self._next_drop_log = 0.0
        interval = self.notifier.watchdog_interval_s()
        # Ping at half the interval (sd_watchdog_enabled(3)).
        self._watchdog_every = interval / 2 if interval else None
        self._next_watchdog = 0.0
        stats = self.store.statistics()
        if stats.pending_events or stats.corrupt_records:
            log.info("%s", recovery_line(stats.pending_events, stats.corrupt_records))

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
        from agent.config import ConfigError, load_config

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
        plan = plan_reload(self.settings, new)
        self.decoder.set_rules(new.classes)
        u = new.upstream
        self.policy = BatchPolicy(u.batch_max_events, u.batch_max_bytes, u.linger_ms / 1000)
        logging.getLogger().setLevel(new.agent.log_level.upper())
        self.settings = plan.settings
        applied = ", ".join(plan.applied) or "nothing"
        log.info("SIGHUP: reloaded %s: applied %s", self.config_path, applied)
        if plan.restart:
            log.warning(
                "SIGHUP: these changed keys need a restart to apply: %s", ", ".join(plan.restart)
            )
        self.notifier.ready("config reloaded")

    # -- the loop ----------------------------------------------------------------

    def _serve(self) -> None:
        poller = zmq.Poller()
        for pull in self.ingest.pulls:
            poller.register(pull.sock, zmq.POLLIN)
            poller.register(pull.monitor, zmq.POLLIN)
        poller.register(self.upstream.sock, zmq.POLLIN)
        poller.register(self.upstream.monitor, zmq.POLLIN)
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
        if not self.paused:
            got = self._ingest(ready)
        if self.upstream.sock in ready:
            self.upstream.handle_subscriptions(time.monotonic())
        if self.upstream.monitor in ready:
            self.upstream.handle_monitor()
        self.ingest.read_monitors(ready)
        if any(sock in ready for sock in self._guard_sockets):
            self.guard.handle()
        if self._wake_r.fileno() in ready:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(512)
        now = time.monotonic()
        # Publish before making room: what can leave should not be spilled.
        self._publish(now)
        self._set_paused(not self.pressure.make_room(now))
        self._drain(now)
        self._timers(now)
        return got

    def _poll_timeout(self, now: float) -> float:
        timeout = min(IDLE_POLL_S, max(0.0, self._next_snapshot - now))
        if self.paused:
            # Ingest is not polled while paused; look again soon.
            timeout = min(timeout, PAUSED_POLL_S)
        if self.shrink.active:
            timeout = min(timeout, SHRINK_POLL_S)
        if self._blocked_until > now:
            return min(timeout, self._blocked_until - now)
        deliverable = self.upstream.deliverable
        for cls in CLASSES:
            q = self.queues[cls]
            if q.front_events and deliverable[cls]:
                since = self._pending_since[cls]
                waited = now - since if since is not None else 0.0
                wait = self.policy.wait_s(
                    cls, q.front_events, q.front_bytes, waited, self._message_events
                )
                if wait is not None:
                    timeout = min(timeout, wait)
            if q.hold_back and self.pressure.can_drain(cls, deliverable[cls]):
                timeout = 0.0
        due = self.pressure.write_through_due_s(now)
        if due is not None:
            timeout = min(timeout, due)
        return timeout

    # -- ingest ----------------------------------------------------------------

    def _ingest(self, ready: dict) -> bool:
        """This turn's reading, in the ingest's order (agent/ingest.py: the
        alert lane first, then one bulk burst, each with room for it). True if
        any frame was read. `ready`: this turn's poll."""
        return self.ingest.read_turn(ready, self._room_for_burst, self._ingest_burst)

    def _room_for_burst(self) -> bool:
        return self.governor.can_admit(self.queues.pool.in_use_bytes)

    def _ingest_burst(self, pull: Pull) -> bool:
        """One burst from `pull`, decoded and queued. True if anything was read."""
        arrived = time.monotonic()  # the frames of this burst were here by now
        frames, multipart = pull.read()
        if multipart:
            self.telemetry.reject(MULTIPART, multipart)
        if not frames:
            return multipart > 0
        self._accept(self.decoder.decode_frames(frames), len(frames), arrived, lane=pull.lane)
        return True

    def _accept(
        self, result: DecodeResult, frames: int, arrived: float, *, lane: bool = False
    ) -> None:
        """Count a decoded burst and queue its events by class."""
        telemetry = self.telemetry
        telemetry.ingested(frames, result.accepted, result.rejected)
        if lane:
            telemetry.lane_ingested(frames, result.accepted, len(result.events[CRITICAL]))
        now = time.monotonic()
        for cls, events in enumerate(result.events):
            if events:
                q = self.queues[cls]
                q.push_many(events)
                telemetry.classes[cls].received += len(events)
                if cls == CRITICAL and not q.hold_back:
                    telemetry.critical_arrived(len(events), arrived)
                if self._pending_since[cls] is None and q.front_events:
                    self._pending_since[cls] = now

    def _set_paused(self, paused: bool) -> None:
        """Stop (or resume) polling ingest: the buffer policy found no room for
        one more burst (critical alone fills memory and its ring)."""
        if paused == self.paused:
            return
        self.paused = paused
        for pull in self.ingest.pulls:
            self._poller.modify(pull.sock, 0 if paused else zmq.POLLIN)
        log.log(*paused_line(paused, self.queues.pool.in_use_bytes, self.governor.budget_bytes))

    # -- publish -----------------------------------------------------------------

    def _publish(self, now: float) -> None:
        up = self.upstream
        up.log_subscriptions(now)  # a difference held back by the rate limit
        if self._blocked_until > now:
            return
        deliverable = up.deliverable
        policy = self.policy
        meter = self.drain_meter
        max_events = self._message_events = message_events(
            meter.rate(now),
            meter.event_bytes,
            self.in_flight,
            IN_FLIGHT_TARGET_S,
            policy.max_events,
        )
        max_bytes = policy.max_bytes
        sends = 0
        for cls in CLASSES:
            q = self.queues[cls]
            if not q.front_events or not deliverable[cls]:
                continue
            since = self._pending_since[cls]
            if since is None:
                since = self._pending_since[cls] = now
            if not policy.due(cls, q.front_events, q.front_bytes, now - since, max_events):
                continue
            counters = self.telemetry.classes[cls]
            while q.front_events:
                body, count = q.peek_batch(max_events, max_bytes)
                if not up.send_batch(cls, body, count, now):
                    meter.refused(now)
                    # NODROP: every subscriber pipe is checked, so no class can
                    # go now; critical keeps its place at the head.
                    self._blocked_until = now + BLOCKED_RETRY_S
                    return
                meter.sent(now, count, len(body))
                emptied = q.consume(count)
                if emptied is not None:
                    # Every event of a chunk read back from disk is delivered:
                    # only now may its ring record go.
                    self.store.release_read(cls)
                    q.recycle(emptied)
                counters.delivered += count
                if cls == CRITICAL:
                    # The hand-off itself, not the turn's start.
                    self.telemetry.critical_delivered(count, time.monotonic(), not q.events)
                sends += 1
                if sends >= PUBLISH_MAX_SENDS:
                    self._pending_since[cls] = now if q.front_events else None
                    return
                if cls != CRITICAL and not policy.due(
                    cls, q.front_events, q.front_bytes, 0.0, max_events
                ):
                    break  # a partial batch left: it lingers from now
            self._pending_since[cls] = now if q.front_events else None

    # -- drain -----------------------------------------------------------------

    def _drain(self, now: float) -> None:
        if not self.pressure.drain(now, self.upstream.deliverable):
            return
        for cls in CLASSES:
            if self._pending_since[cls] is None and self.queues[cls].front_events:
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
            self._next_drop_log = now + DROP_LOG_EVERY_S
            for line in eviction_lines(self.telemetry.take_unlogged_drops()):
                log.warning("%s", line)
        if now >= self._next_snapshot:
            self.telemetry.update_drain_rate(now)
            pool = self.queues.pool
            keep = self.governor.observe(now, pool.in_use_bytes, pool.allocated_bytes)
            if keep is not None:
                self.shrink.start(keep)
        if self.shrink.active and (freed := self.shrink.step(self.queues.pool)):
            log.info("buffers shrunk: %d bytes returned to the OS", freed)
        if now >= self._next_snapshot:
            self._publish_snapshot(now)
            self.history.record(self.snapshot(), now)  # one sample a second
            self._next_snapshot = now + SNAPSHOT_EVERY_S

    def _publish_snapshot(self, now: float) -> None:
        """Swap in a fresh snapshot for the HTTP thread. Only called once
        sockets, queues and the store exist (_open)."""
        curve = self.guard.statistics()
        self._snapshot = self.telemetry.snapshot(
            now,
            time.time(),
            state=self._state,
            queues=self.queues,
            store=self.store.statistics(),
            governor=self.governor.statistics(),
            upstream=dataclasses.replace(
                self.upstream.statistics(now), unauthorized=curve.upstream.unauthorized
            ),
            ingest_unauthorized=curve.ingest.unauthorized,
            paused=self.paused,
            peers=[pull.peers.statistics() for pull in self.ingest.pulls],
            write_through=self.pressure.write_through_state(),
        )

    # -- stop --------------------------------------------------------------------

    def _stop(self) -> None:
        """SIGTERM: accept until ingest is quiet (bounded), then park everything
        held in memory on disk, flush, and return."""
        self._state = "stopping"
        self.notifier.stopping("stopping: parking events on disk")
        # Accepting (<= 3 s) then parking up to the whole budget and an msync:
        # ask systemd for time beyond TimeoutStopSec if it is short.
        self.notifier.extend_timeout(STOP_EXTEND_US)
        log.info("stopping: accepting until ingest is quiet")
        start = last_frame = time.monotonic()
        while True:
            now = time.monotonic()
            if now - last_frame >= STOP_IDLE_S or now - start >= STOP_ACCEPT_MAX_S:
                break
            if self._turn(min(STOP_IDLE_S, self._poll_timeout(now))):
                last_frame = time.monotonic()
        self.ingest.stop(self._poller)
        parked, lost = self.pressure.park_in_memory_events(time.monotonic())
        self._next_drop_log = 0.0
        self._timers(time.monotonic())  # log what was evicted, once per class
        self.store.flush()
        self._publish_snapshot(time.monotonic())
        delivered = sum(c.delivered for c in self.telemetry.classes)
        log.log(*stopped_line(delivered, parked, lost))


def run_agent(settings: Settings, config_path: str | None = None) -> int:
    """Run the agent in the foreground; the CLI's `run`."""
    try:
        return Agent(settings, config_path).run()
    except SpillError as e:
        raise StartupError(str(e)) from e
    except KeyboardInterrupt:
        # Ctrl-C in the instant before the agent's own SIGINT handler is in
        # place (from then on it is a clean stop): no traceback.
        log.warning("interrupted while starting")
        return EXIT_INTERRUPTED
