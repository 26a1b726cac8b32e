# Issue 3's benchmark: the brownout spike, end to end against the real agent.
#
#   python bench/brownout.py                   # ~1 min: 2 s + 10 s spike + 32 s tail
#   python bench/brownout.py --target relay    # the same plumbing against the bare relay
#
# Scenario (defaults = issue 3): the agent with a 512 MiB buffer budget; a load
# generator with several PUSH connections sends 120-byte events (1% critical,
# every event with a unique id per class): 2 s at 10,000/s, 10 s at 500,000/s,
# then 10,000/s for 32 s; the upstream subscriber (RCVHWM 4, SO_RCVBUF 4 KiB)
# reads at most 100,000 events/s during the spike and at full speed otherwise.
# The endpoint and the agent's RSS/CPU are sampled every 0.1 s.
#
# How to read the output:
#   offered        what the generator really sent per phase (if it could not
#                  offer 500,000/s here, that row says so; the agent's own
#                  ingest rate during the spike is printed next to it)
#   per class      sent / delivered (unique ids received) / lost / duplicated,
#                  spilled and dropped as the agent counted them
#   critical ms    receive time - send time, over the whole run and during the
#                  spike + drain (p50/p99/max)
#   peak RSS       VmHWM of the agent against budget + 64 MiB
#   drain          seconds from the end of the spike until: the spill rings are
#                  empty (spill.pending_events == 0); nothing is held (pending
#                  0 and every class's queued 0, and the same with queued <=
#                  --idle-queued, 50 ms of the tail load by default: an exact
#                  0 is only seen when a poll falls between two arrivals while
#                  10,000/s still flow); every event sent during the spike has
#                  reached the subscriber (from the ids it received)
#   RSS +30 s      the agent's RSS 30 s after the spike against its RSS just
#                  before the spike (target: within 64 MiB)
# The full result, with every sample, is written to bench/out/brownout-*.json.

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import common
from common import (
    AgentProcess,
    BenchError,
    Helper,
    MiB,
    Sample,
    Sampler,
    fmt_int,
    fmt_mib,
    fmt_ms,
    free_tcp_port,
    mono_ns,
    percentiles,
    proc_status,
    python_argv,
)
from events import CLASS_NAMES, ID_BASE
from loadgen import Phase, generator_argv, merge_reports, scale_schedule

SETUP_S = 3.0  # from launching subscriber + generators to the first send


def endpoint_series(samples: list[Sample]) -> list[dict[str, Any]]:
    """The endpoint fields the analysis needs, one dict per sample that has them."""
    out = []
    for s in samples:
        st = s.state
        if not st:
            continue
        try:
            prio = st["priorities"]
            out.append(
                {
                    "t_ns": s.t_ns,
                    "rss": s.rss,
                    "pending": st["spill"]["pending_events"],
                    "spilled": st["spill"]["spilled_events"],
                    "queued": sum(prio[c]["queued"] for c in CLASS_NAMES),
                    "received": sum(prio[c]["received"] for c in CLASS_NAMES),
                    "used_bytes": st["buffer"]["used_bytes"],
                    "capacity_bytes": st["buffer"]["capacity_bytes"],
                    "state": st["buffer"].get("state"),
                }
            )
        except (KeyError, TypeError):
            continue
    return out


def first_time(series: list[dict[str, Any]], after_ns: int, pred: Any) -> float | None:
    """Seconds from after_ns to the first sample at or after it where pred holds."""
    for e in series:
        if e["t_ns"] >= after_ns and pred(e):
            return (e["t_ns"] - after_ns) / 1e9
    return None


def rate_between(series: list[dict[str, Any]], t0: int, t1: int) -> float | None:
    inside = [e for e in series if t0 <= e["t_ns"] <= t1]
    if len(inside) < 2:
        return None
    a, b = inside[0], inside[-1]
    return (b["received"] - a["received"]) / ((b["t_ns"] - a["t_ns"]) / 1e9)


def delivered_all_by(sub: dict[str, Any], gen_reports: list[dict[str, Any]], t_ns: int) -> Any:
    """Seconds after t_ns when every event the generators sent up to the end of the
    spike had been delivered: per (class, generator) the id sent last in the spike,
    then the subscriber's time when all ids up to it had arrived (10 ms steps)."""
    progress = {(c, g): p for c, g, p in sub.get("progress") or []}
    worst = 0.0
    for rep in gen_reports:
        counts = {n: 0 for n in CLASS_NAMES}
        for ph in rep["phases"][:2]:
            for n in CLASS_NAMES:
                counts[n] += ph["classes"][n]
        for n, k in counts.items():
            if k == 0 or n not in rep["ids"]:
                continue
            last_id = ID_BASE + k - 1
            prog = progress.get((n, rep["generator"]), [])
            t = next((pt for pt, hi in prog if hi >= last_id), None)
            if t is None:
                return None
            worst = max(worst, (t - t_ns) / 1e9)
    return worst


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    ingest = f"ipc://{workdir}/in"
    lane = [f"ipc://{workdir}/lane"] if args.lane else []
    upstream = f"tcp://127.0.0.1:{free_tcp_port()}"
    phases = [
        Phase(args.pre_seconds, args.pre_rate),
        Phase(args.spike_seconds, args.spike_rate),
        Phase(args.post_seconds, args.post_rate),
    ]
    agent: AgentProcess | None = None
    relay: Helper | None = None
    sub: Helper | None = None
    gens: list[Helper] = []
    sampler: Sampler | None = None
    out: dict[str, Any] = {}
    try:
        if args.target == "agent":
            overrides = common.parse_overrides(args.agent_set)
            overrides.setdefault("buffer", {})["budget_bytes"] = args.budget
            if lane:
                overrides.setdefault("ingest", {})["priority_bind"] = lane
            cfg = common.base_agent_config(workdir, [ingest], [upstream], overrides)
            agent = AgentProcess(workdir, cfg, "agent")
            agent.start()
            pid = agent.pid
        else:
            relay = Helper(
                "relay",
                python_argv("relay.py", "--ingest", ingest, "--upstream", upstream),
                workdir,
            )
            relay.expect("ready", 15)
            pid = relay.pid
        start_at = mono_ns() + int(SETUP_S * 1e9)
        spike_from = start_at + int(args.pre_seconds * 1e9)
        spike_until = spike_from + int(args.spike_seconds * 1e9)
        sub_argv = [
            "--connect",
            upstream,
            "--track",
            "all",
            "--raw",
            "--limit",
            str(args.sub_limit),
            "--limit-from-ns",
            str(spike_from),
            "--limit-until-ns",
            str(spike_until),
            "--idle-s",
            "10",
            "--deadline-s",
            str(SETUP_S + sum(p.seconds for p in phases) + args.settle_timeout),
        ]
        sub = Helper("subscriber", python_argv("subscriber.py", *sub_argv), workdir)
        sub.expect("ready", 15)
        if agent is not None:
            agent.wait_subscribed()
        else:
            assert relay is not None
            relay.expect("subscribed", 15)
        if mono_ns() > start_at:
            raise BenchError("set-up took longer than SETUP_S; the schedule would be off")
        sampler = Sampler(pid, args.poll, agent=agent)
        sampler.start()
        share = 1.0 / args.generators
        for g in range(args.generators):
            gargv = generator_argv(
                [ingest],
                scale_schedule(phases, share),
                index=g,
                connections=args.connections,
                frame_events=args.frame_events,
                mix=args.mix,
                track="all",
                start_at_ns=start_at,
                stall_s=10.0,
                lane=lane,
            )
            gens.append(Helper(f"loadgen{g}", python_argv("loadgen.py", *gargv), workdir))
        total_s = SETUP_S + sum(p.seconds for p in phases)
        reports = [h.expect("loadgen", total_s + 60) for h in gens]
        gen = merge_reports(reports)
        out["loadgen"] = gen
        out["loadgen_reports"] = reports
        sub.send({"expect": {"events": gen["events"], "ids": gen["ids"]}})
        out["subscriber"] = sub.expect("subscriber", args.settle_timeout + 30)
        # Let the sampler see the agent settle (drained, shrunk) for a moment more.
        out["peak_rss"] = proc_status(pid).get("VmHWM", 0)
        if agent is not None:
            out["agent_final"] = agent.get_json()
    finally:
        if sampler is not None:
            sampler.stop()
        for h in gens:
            h.stop()
        if sub is not None:
            sub.stop()
        if relay is not None:
            relay.stop()
        if agent is not None:
            t = mono_ns()
            out["agent_exit"] = agent.stop(timeout=60)
            out["agent_stop_s"] = round((mono_ns() - t) / 1e9, 2)
            agent.keep_log("brownout-agent.log")
    assert sampler is not None
    out["samples"] = [
        {"t_ns": s.t_ns, "rss": s.rss, "hwm": s.hwm, "cpu_s": s.cpu_s, "state": s.state}
        for s in sampler.samples
    ]
    out["analysis"] = analyse(args, out, sampler)
    return out


def analyse(args: argparse.Namespace, out: dict[str, Any], sampler: Sampler) -> dict[str, Any]:
    gen = out["loadgen"]
    sub = out["subscriber"]
    started = gen["started_ns"]
    el = [p["elapsed_s"] for p in gen["phases"]]
    spike_start = started + int(el[0] * 1e9)
    spike_end = spike_start + int((el[1] if len(el) > 1 else 0) * 1e9)
    series = endpoint_series(sampler.samples)
    a: dict[str, Any] = {"spike_start_ns": spike_start, "spike_end_ns": spike_end}

    classes = {}
    for n in CLASS_NAMES:
        c = sub["classes"][n]
        sent = gen["classes"][n]
        lost = c["lost"] if c["lost"] is not None else None
        final = (out.get("agent_final") or {}).get("priorities", {}).get(n, {})
        classes[n] = {
            "sent": sent,
            "delivered": None if lost is None else sent - lost,
            "received_events": c["events"],
            "lost": lost,
            "duplicated": c["duplicates"],
            "unexpected": c["unexpected"],
            "seq_gaps": c["seq_gaps"],
            "spilled": final.get("spilled"),
            "dropped": final.get("dropped"),
        }
    a["classes"] = classes

    lat_all = [v / 1e6 for _, v in sub.get("latencies") or []]
    drain_horizon = spike_end + int(10e9)
    lat_spike = [
        v / 1e6 for t, v in sub.get("latencies") or [] if spike_start <= t <= drain_horizon
    ]
    a["target_p99_ms"] = args.target_p99_ms
    a["target_max_ms"] = args.target_max_ms
    a["latency_ms"] = percentiles(lat_all)
    a["latency_spike_ms"] = percentiles(lat_spike)
    a["latency_inside_ms"] = histogram_percentiles(
        (out.get("agent_final") or {}).get("latency", {}).get("critical")
    )

    a["peak_rss"] = max(out.get("peak_rss", 0), sampler.peak_rss())
    a["budget"] = args.budget
    a["rss_pre_spike"] = sampler.rss_at(spike_start)
    a["rss_after"] = sampler.rss_at(spike_end + int(args.rss_after * 1e9))
    a["rss_after_s"] = args.rss_after
    a["agent_cpu_spike_pct"] = sampler.cpu_pct(spike_start, spike_end)
    a["offered"] = [
        {
            "seconds": p["seconds"],
            "rate": p["rate"],
            "offered": p["offered_rate"],
            "events": p["events"],
        }
        for p in gen["phases"]
    ]
    a["delivered_spike_by_s"] = delivered_all_by(sub, out["loadgen_reports"], spike_end)
    if series:
        a["ingest_rate_spike"] = rate_between(series, spike_start, spike_end)
        a["spilled_events"] = max(e["spilled"] for e in series)
        a["pending_peak"] = max(e["pending"] for e in series)
        a["used_peak_bytes"] = max(e["used_bytes"] for e in series)
        a["capacity_peak_bytes"] = max(e["capacity_bytes"] for e in series)
        a["spill_drained_s"] = first_time(series, spike_end, lambda e: e["pending"] == 0)
        a["idle_queued"] = args.idle_queued
        a["nothing_pending_s"] = first_time(
            series, spike_end, lambda e: e["pending"] == 0 and e["queued"] <= args.idle_queued
        )
        a["exact_zero_s"] = first_time(
            series, spike_end, lambda e: e["pending"] == 0 and e["queued"] == 0
        )
        a["states"] = sorted({e["state"] for e in series if e["state"]})
    return a


def histogram_percentiles(hist: dict[str, Any] | None) -> dict[str, Any]:
    """p50/p99/max of the agent's own critical latency histogram (read ->
    hand-off to ZeroMQ), as the upper bound of the bucket that holds each."""
    out: dict[str, Any] = {"n": 0, "p50": None, "p99": None, "max": None}
    if not hist or not hist.get("count"):
        return out
    count = hist["count"]
    buckets = [(le, n) for le, n in hist["buckets"]]  # cumulative, le in seconds

    def upper(q: float) -> float | None:
        want = q * count
        for le, n in buckets:
            if n >= want:
                return le * 1000
        return None  # beyond the last finite bound

    out.update(n=count, p50=upper(0.5), p99=upper(0.99), max=upper(1.0))
    return out


def mark(ok: bool | None, text: str) -> str:
    return f"{'PASS' if ok else 'MISS'}  {text}"


def report(result: dict[str, Any]) -> list[str]:
    a = result["run"]["analysis"]
    p = result["params"]
    lines = [
        f"machine: {common.machine_line(result['machine'])}",
        f"command: {result['command']}",
        (
            f"load average (1/5/15 min) at start {result['load_average_start']}, "
            f"at end {result['load_average_end']} (other work on the box shows here)"
        ),
        (
            f"target: {p['target']}, budget {p['budget'] / MiB:.0f} MiB, {p['generators']} "
            f"loadgen process(es) x {p['connections']} PUSH connection(s), "
            f"{p['frame_events']}-event frames of 120-byte events, mix {p['mix']}, "
            f"subscriber <= {p['sub_limit']:,.0f} ev/s during the spike"
        ),
        "",
    ]
    rows = []
    names = ["before", "spike", "after"]
    for i, ph in enumerate(a["offered"]):
        agent_rate = a.get("ingest_rate_spike") if i == 1 else None
        short = ph["rate"] and ph["offered"] < 0.98 * ph["rate"]
        rows.append(
            [
                names[i] if i < 3 else str(i),
                f"{ph['seconds']:g}",
                "max" if ph["rate"] is None else fmt_int(ph["rate"]),
                fmt_int(ph["offered"]) + (" (short)" if short else ""),
                fmt_int(ph["events"]),
                fmt_int(agent_rate),
            ]
        )
    lines.append(
        common.table(
            ["phase", "s", "planned ev/s", "offered ev/s", "events", "agent ingest ev/s"], rows
        )
    )
    if result["run"]["loadgen"]["stalled"]:
        lines.append("loadgen STALLED: a send blocked > 10 s (the agent stopped reading)")
    lines.append("")
    rows = []
    for n, c in a["classes"].items():
        rows.append(
            [
                n,
                fmt_int(c["sent"]),
                fmt_int(c["delivered"]),
                fmt_int(c["lost"]),
                fmt_int(c["duplicated"]),
                fmt_int(c["spilled"]),
                fmt_int(c["dropped"]),
            ]
        )
    lines.append(
        common.table(["class", "sent", "delivered", "lost", "dup", "spilled", "dropped"], rows)
    )
    lines.append("")
    la, ls = a["latency_ms"], a["latency_spike_ms"]
    rows = [
        [
            "critical latency, whole run",
            la["n"],
            fmt_ms(la["p50"]),
            fmt_ms(la["p99"]),
            fmt_ms(la["max"]),
        ],
        ["  spike + 10 s", ls["n"], fmt_ms(ls["p50"]), fmt_ms(ls["p99"]), fmt_ms(ls["max"])],
    ]
    li = a.get("latency_inside_ms") or {}
    if li.get("n"):
        rows.append(
            [
                "  of it inside the agent (<= bucket)",
                li["n"],
                fmt_ms(li["p50"]),
                fmt_ms(li["p99"]),
                fmt_ms(li["max"]),
            ]
        )
    lines.append(common.table(["", "n", "p50 ms", "p99 ms", "max ms"], rows))
    if li.get("n"):
        lines.append(
            "(inside = the agent's histogram, burst read -> hand-off to ZeroMQ; the rest of "
            "each alert's time is collector -> agent read plus hand-off -> subscriber)"
        )
    lines.append("")

    def secs(v: float | None) -> str:
        return "never" if v is None else f"{v:.1f} s"

    rows = [
        ["peak RSS (VmHWM)", f"{fmt_mib(a['peak_rss'])} MiB (budget {fmt_mib(a['budget'])} MiB)"],
        ["RSS before the spike", f"{fmt_mib(a['rss_pre_spike'])} MiB"],
        [f"RSS {a['rss_after_s']:g} s after the spike", f"{fmt_mib(a['rss_after'])} MiB"],
        [
            f"{p['target']} CPU during the spike",
            "-" if a["agent_cpu_spike_pct"] is None else f"{a['agent_cpu_spike_pct']:.0f}%",
        ],
        ["events spilled", fmt_int(a.get("spilled_events"))],
        [
            "peak buffer used / capacity",
            f"{fmt_mib(a.get('used_peak_bytes'))} / {fmt_mib(a.get('capacity_peak_bytes'))} MiB",
        ],
        ["spike end -> spill empty", secs(a.get("spill_drained_s"))],
        [
            f"spike end -> nothing pending (queued <= {p['idle_queued']})",
            secs(a.get("nothing_pending_s")),
        ],
        ["spike end -> nothing pending (queued all 0)", secs(a.get("exact_zero_s"))],
        ["spike end -> every spike event delivered", secs(a.get("delivered_spike_by_s"))],
    ]
    lines.append(common.table(["", "value"], rows))
    lines.append("")
    lines.extend(targets(a))
    return lines


def targets(a: dict[str, Any]) -> list[str]:
    out = []
    lost = {n: c["lost"] for n, c in a["classes"].items()}
    ok = all(v == 0 for v in lost.values())
    out.append(mark(ok, "0 lost in every class: " + ", ".join(f"{n} {v}" for n, v in lost.items())))
    la = a["latency_ms"]
    p99, top = a["target_p99_ms"], a["target_max_ms"]
    if la["n"]:
        out.append(mark(la["max"] <= top, f"critical max {la['max']:.1f} ms <= {top:g} ms"))
        out.append(mark(la["p99"] <= p99, f"critical p99 {la['p99']:.1f} ms <= {p99:g} ms"))
    limit = a["budget"] + 64 * MiB
    out.append(
        mark(
            a["peak_rss"] <= limit, f"peak RSS {fmt_mib(a['peak_rss'])} MiB <= {fmt_mib(limit)} MiB"
        )
    )
    if "spill_drained_s" not in a:
        out.append("(no endpoint: spill and drain targets not checked)")
    else:
        d = a["spill_drained_s"]
        text = "never" if d is None else f"{d:.1f} s"
        if not a.get("spilled_events"):
            text += " (nothing was spilled)"
        out.append(mark(d is not None and d <= 5, f"spill drained {text} <= 5 s after the spike"))
    pre, after = a["rss_pre_spike"], a["rss_after"]
    if pre is not None and after is not None:
        out.append(
            mark(
                after - pre <= 64 * MiB,
                f"RSS +{a['rss_after_s']:g} s {fmt_mib(after)} MiB within 64 MiB "
                f"of pre-spike {fmt_mib(pre)} MiB",
            )
        )
    return out


def rate_arg(text: str) -> float | None:
    return None if text == "max" else float(text)


def main(argv: list[str] | None = None, description: str = "the brownout spike") -> int:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--target", choices=("agent", "relay"), default="agent")
    ap.add_argument("--budget", type=int, default=512 * MiB, help="[buffer] budget_bytes")
    ap.add_argument("--pre-seconds", type=float, default=2.0)
    ap.add_argument("--pre-rate", type=float, default=10_000)
    ap.add_argument("--spike-seconds", type=float, default=10.0)
    ap.add_argument("--spike-rate", type=rate_arg, default=500_000, help="events/s or max")
    ap.add_argument("--post-seconds", type=float, default=32.0, help=">= --rss-after + 2")
    ap.add_argument("--post-rate", type=float, default=10_000)
    ap.add_argument("--sub-limit", type=float, default=100_000, help="events/s during the spike")
    # One process: it paces 500,000/s in about half a core, and two processes
    # (2 x 2 connections) got no more into the agent on 2 cores (190k vs 205k/s).
    ap.add_argument("--generators", type=int, default=1, help="loadgen processes")
    ap.add_argument("--connections", type=int, default=4, help="PUSH sockets per process")
    ap.add_argument("--frame-events", type=int, default=1, help="events per frame")
    ap.add_argument("--mix", default="critical=1,high=4,normal=70,low=25")
    ap.add_argument("--rss-after", type=float, default=30.0, help="seconds after the spike")
    ap.add_argument("--idle-queued", type=int, default=None, help="default: 50 ms of the tail load")
    ap.add_argument("--poll", type=float, default=0.1, help="endpoint/RSS sampling interval, s")
    ap.add_argument("--settle-timeout", type=float, default=120.0, help="max wait after the load")
    ap.add_argument("--agent-set", action="append", default=[], metavar="TABLE.KEY=VALUE")
    ap.add_argument(
        "--lane", action="store_true", help="critical events via the alert lane (issue 9)"
    )
    ap.add_argument("--target-p99-ms", type=float, default=20.0, help="critical p99 target")
    ap.add_argument("--target-max-ms", type=float, default=100.0, help="critical max target")
    ap.add_argument("--name", default="brownout", help="name of the run in the output")
    args = ap.parse_args(argv)
    if args.idle_queued is None:
        args.idle_queued = int(args.post_rate * 0.05)
    if args.post_seconds < args.rss_after + 2:
        ap.error("--post-seconds must cover --rss-after (+2 s)")
    if args.target == "agent":
        problem = common.agent_runnable()
        if problem is not None:
            print(
                f"brownout: cannot run against the agent: {problem}.\n"
                "`python -m agent run --config PATH` must work first; then:\n"
                "    python bench/brownout.py\n"
                "(the plumbing alone: python bench/brownout.py --target relay)",
                file=sys.stderr,
            )
            return 2
    result: dict[str, Any] = {
        "bench": args.name,
        "machine": common.machine_info(),
        "load_average_start": common.load_average(),
        "command": common.command_line(),
        "params": {
            k: getattr(args, k)
            for k in (
                "target",
                "budget",
                "pre_seconds",
                "pre_rate",
                "spike_seconds",
                "spike_rate",
                "post_seconds",
                "post_rate",
                "sub_limit",
                "generators",
                "connections",
                "frame_events",
                "mix",
                "rss_after",
                "idle_queued",
                "poll",
                "agent_set",
                "lane",
                "target_p99_ms",
                "target_max_ms",
            )
        },
    }
    workdir = Path(tempfile.mkdtemp(prefix="edge-brownout-"))
    try:
        print(f"{args.name}: running (about a minute) ...", file=sys.stderr, flush=True)
        result["run"] = run(args, workdir)
        result["load_average_end"] = common.load_average()
    except BenchError as e:
        print(f"{args.name}: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    lines = report(result)
    result["report"] = lines
    path = common.save_result(args.name, result)
    print("\n".join(lines))
    print(f"\nfull result: {path.relative_to(common.REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
