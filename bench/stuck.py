# Issue 13's benchmark: one subscriber that never reads beside one that reads
# at full speed.
#
#   python bench/stuck.py              # ~25 s
#   python bench/stuck.py --hostile    # the stuck one comes back: a new stuck
#                                      # SUB every 1.5 s
#
# Scenario: the agent (defaults, upstream on tcp); a stuck SUB (RCVHWM 1,
# SO_RCVBUF 4 KiB, subscribed to everything, never reads) connects first, then
# the healthy one (bench/subscriber.py, RCVHWM 4, SO_RCVBUF 4 KiB, no rate
# limit, checks every id); a load generator sends 20,000 events/s (1%
# critical, 1-event frames) for 10 s. Targets (INTERFACE.md "Events out",
# issue 13): the healthy one receives every event (0 lost, 0 duplicated), and
# every alert within 100 ms once the agent has seen the stall (within 1 s);
# the stuck one's loss is counted on the endpoint.
#
# Output: the stall (when the agent cut the stuck one off, from the endpoint,
# sampled every 0.1 s), the healthy subscriber's per-class tally, and critical
# latency (send -> healthy receive) p50/p99/max over the whole run, before the
# cut (the alerts the stuck one held back) and after it.

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import common
import zmq
from common import (
    AgentProcess,
    BenchError,
    Helper,
    Sampler,
    fmt_int,
    fmt_ms,
    free_tcp_port,
    machine_info,
    machine_line,
    mono_ns,
    percentiles,
    python_argv,
    save_result,
    table,
)
from events import CLASS_NAMES
from loadgen import Phase, generator_argv, merge_reports

SETUP_S = 3.0


def stuck_sub(ctx: zmq.Context, upstream: str) -> zmq.Socket:
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 1)
    s.setsockopt(zmq.RCVBUF, 4096)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(upstream)
    s.subscribe(b"")
    return s


class Hostile(threading.Thread):
    """A stuck subscriber that keeps coming back: a new SUB that never reads
    every `every_s` (the old one closed). A stuck SUB does not even notice
    that the agent cut it off (its engine stopped reading at RCVHWM, so it
    never sees the EOF): a peer that returns has to do it on purpose."""

    def __init__(self, ctx: zmq.Context, upstream: str, every_s: float) -> None:
        super().__init__(daemon=True)
        self.ctx = ctx
        self.upstream = upstream
        self.every_s = every_s
        self.rounds = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        s = stuck_sub(self.ctx, self.upstream)
        while not self.stop_event.wait(self.every_s):
            s.close(0)
            s = stuck_sub(self.ctx, self.upstream)
            self.rounds += 1
        s.close(0)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    ingest = f"ipc://{workdir}/in"
    upstream = f"tcp://127.0.0.1:{free_tcp_port()}"
    overrides = common.parse_overrides(args.agent_set)
    cfg = common.base_agent_config(workdir, [ingest], [upstream], overrides)
    agent = AgentProcess(workdir, cfg, "agent")
    ctx = zmq.Context()
    stuck: zmq.Socket | None = None
    hostile: Hostile | None = None
    sub: Helper | None = None
    gen: Helper | None = None
    sampler: Sampler | None = None
    out: dict[str, Any] = {}
    try:
        agent.start()
        if args.hostile:
            hostile = Hostile(ctx, upstream, args.hostile_every)
            hostile.start()
        else:
            stuck = stuck_sub(ctx, upstream)
        agent.wait_subscribed()
        start_at = mono_ns() + int(SETUP_S * 1e9)
        sub = Helper(
            "healthy",
            python_argv(
                "subscriber.py",
                "--connect",
                upstream,
                "--track",
                "all",
                "--raw",
                "--idle-s",
                "10",
                "--deadline-s",
                str(SETUP_S + args.seconds + 60),
            ),
            workdir,
        )
        sub.expect("ready", 15)
        common.wait_for(
            lambda: agent.get_json()["upstream"].get("peers", 2) >= 2,
            15,
            "two upstream peers",
            interval=0.1,
        )
        sampler = Sampler(agent.pid, 0.1, agent=agent)
        sampler.start()
        gargv = generator_argv(
            [ingest],
            [Phase(args.seconds, args.rate)],
            index=0,
            connections=2,
            frame_events=1,
            mix=args.mix,
            track="all",
            start_at_ns=start_at,
        )
        gen = Helper("loadgen", python_argv("loadgen.py", *gargv), workdir)
        report = gen.expect("loadgen", SETUP_S + args.seconds + 60)
        loadgen = merge_reports([report])
        out["loadgen"] = loadgen
        sub.send({"expect": {"events": loadgen["events"], "ids": loadgen["ids"]}})
        out["subscriber"] = sub.expect("subscriber", 90)
        out["agent_final"] = agent.get_json()
    finally:
        if sampler is not None:
            sampler.stop()
        for h in (gen, sub):
            if h is not None:
                h.stop()
        if hostile is not None:
            hostile.stop_event.set()
            hostile.join(5)
            out["hostile_rounds"] = hostile.rounds
        if stuck is not None:
            stuck.close(0)
        ctx.term()
        out["agent_exit"] = agent.stop(timeout=60)
        agent.keep_log("stuck-agent.log")
    assert sampler is not None
    out["stall"] = [
        {"t_ns": s.t_ns, "upstream": s.state["upstream"]}
        for s in sampler.samples
        if s.state is not None
    ]
    out["analysis"] = analyse(out)
    return out


def analyse(out: dict[str, Any]) -> dict[str, Any]:
    gen = out["loadgen"]
    started = gen["started_ns"]
    cut_ns = next(
        (s["t_ns"] for s in out["stall"] if s["upstream"].get("stuck_dropped_messages", 0) > 0),
        None,
    )
    lat = out["subscriber"]["latencies"] or []
    all_ms = [v / 1e6 for _, v in lat]
    a: dict[str, Any] = {
        "cut_after_s": None if cut_ns is None else round((cut_ns - started) / 1e9, 2),
        "critical_all": percentiles(all_ms),
    }
    if cut_ns is not None:
        # By send time (receive - latency); the cut is known to 0.1 s (the
        # first endpoint sample that counts it), so "after" starts late, never early.
        a["critical_before_cut"] = percentiles([v / 1e6 for t, v in lat if t - v < cut_ns])
        a["critical_after_cut"] = percentiles([v / 1e6 for t, v in lat if t - v >= cut_ns])
    return a


def report(args: argparse.Namespace, out: dict[str, Any]) -> tuple[str, bool]:
    a = out["analysis"]
    sub = out["subscriber"]
    gen = out["loadgen"]
    final = out["agent_final"]["upstream"]
    lines = [
        f"machine: {machine_line(machine_info())}",
        f"command: {common.command_line()}",
        f"load average at end {common.load_average()} (other work on the box shows here)",
        f"scenario: {args.rate:,.0f} events/s for {args.seconds:g} s, mix {args.mix}; "
        "a stuck SUB (RCVHWM 1, never reads) beside a healthy one (full speed)",
        "",
    ]
    rows = []
    for n in CLASS_NAMES:
        c = sub["classes"][n]
        rows.append(
            [n, fmt_int(gen["classes"][n]), fmt_int(c["events"]), c["lost"], c["duplicates"]]
        )
    lines.append(table(["class", "sent", "healthy got", "lost", "dup"], rows))
    lines.append("")
    rows = []
    for label, key in (
        ("critical -> healthy, whole run", "critical_all"),
        ("  sent before the cut", "critical_before_cut"),
        ("  after the cut", "critical_after_cut"),
    ):
        p = a.get(key)
        if p:
            rows.append([label, p["n"], fmt_ms(p["p50"]), fmt_ms(p["p99"]), fmt_ms(p["max"])])
    lines.append(table(["", "n", "p50 ms", "p99 ms", "max ms"], rows))
    lines.append("")
    lines.append(
        (f"hostile: a new stuck SUB {out.get('hostile_rounds')} times; " if args.hostile else "")
        + f"stuck one cut off {a['cut_after_s']} s after the load began; endpoint at the end: "
        f"peers {final.get('peers')}, stalled {final.get('stalled')}, "
        f"stuck_dropped_messages {final.get('stuck_dropped_messages')}, "
        f"stuck_dropped_events {final.get('stuck_dropped_events')}"
    )
    lost = sum((sub["classes"][n]["lost"] or 0) for n in CLASS_NAMES)
    dup = sum(sub["classes"][n]["duplicates"] for n in CLASS_NAMES)
    after = a.get("critical_after_cut") or {}
    checks = [
        (lost == 0 and dup == 0, f"healthy: 0 lost, 0 duplicated (lost {lost}, dup {dup})"),
        (
            a["cut_after_s"] is not None,
            f"the stall was seen and the stuck one cut off ({a['cut_after_s']} s)",
        ),
        (
            after.get("max") is not None and after["max"] <= 100,
            f"critical after the cut max {fmt_ms(after.get('max'))} ms <= 100 ms",
        ),
        (
            (final.get("stuck_dropped_messages") or 0) > 0,
            "the stuck one's loss is counted on the endpoint",
        ),
    ]
    lines.append("")
    for ok, text in checks:
        lines.append(("PASS  " if ok else "MISS  ") + text)
    return "\n".join(lines), all(ok for ok, _ in checks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="issue 13: one stuck subscriber beside a healthy one")
    ap.add_argument("--rate", type=float, default=20_000, help="events/s")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--mix", default="critical=1,high=4,normal=70,low=25")
    ap.add_argument("--agent-set", action="append", default=[], metavar="TABLE.KEY=VALUE")
    ap.add_argument("--hostile", action="store_true", help="the stuck one keeps coming back")
    ap.add_argument("--hostile-every", type=float, default=1.5, help="seconds between returns")
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="ea-stuck-", dir="/tmp"))
    print("stuck: running (about 25 s) ...", flush=True)
    try:
        out = run(args, workdir)
    except BenchError as e:
        print(f"stuck: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text, ok = report(args, out)
    print(text)
    path = save_result("stuck", {k: v for k, v in out.items()})
    print(f"\nfull result: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
