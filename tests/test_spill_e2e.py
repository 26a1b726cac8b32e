"""The brownout half, end to end: spill to disk under memory pressure, drain
back, durability across SIGTERM and SIGKILL, a disk too small, RSS that shrinks.
The real agent process with a small budget so that spilling starts quickly."""

from __future__ import annotations

import os
import random
import time

import cbor2
import pytest
import zmq

from harness import AgentProcess, Subscriber, event, wait_for

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
SMALL = {
    "buffer": {"budget_bytes": 8 * MiB, "critical_reserve_bytes": 2 * MiB, "shrink_after_s": 1.0},
    "spill": {"max_bytes": 256 * MiB, "flush_interval_ms": 100},
}


def flood_frames(n_events: int, per_frame: int = 50, crit_every: int = 100) -> list[bytes]:
    """~120-byte events, 1% critical, each with a unique `id`."""
    frames = []
    for start in range(0, n_events, per_frame):
        evs = []
        for i in range(start, min(n_events, start + per_frame)):
            t = "over_voltage" if i % crit_every == 0 else ("reading" if i % 3 else "heartbeat")
            evs.append(event(i, t, id=i, v=231.5, i_a=4.2, p=972.1, pf=0.98, q="good"))
        frames.append(b"".join(evs))
    return frames


def ids(events: list[bytes]) -> list[int]:
    return [cbor2.loads(e)["id"] for e in events]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def send_all(ctx: zmq.Context, agent: AgentProcess, frames: list[bytes]) -> None:
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 10000)
    push.connect(agent.ingest)
    for f in frames:
        push.send(f)
    push.close()


def total_received(d: dict) -> int:
    return sum(p["received"] for p in d["priorities"].values())


def test_subscriber_away_forces_spill_then_everything_arrives_critical_first(
    make_agent, zctx
) -> None:
    agent = make_agent(**SMALL).start()
    n = 200_000  # ~25 MB of events against an 8 MiB budget
    send_all(zctx, agent, flood_frames(n))
    doc = agent.wait_state(lambda d: total_received(d) == n, timeout=60, what="all received")
    assert doc["spill"]["spilled_events"] > 0 and doc["spill"]["pending_events"] > 0
    assert doc["buffer"]["used_bytes"] <= doc["buffer"]["budget_bytes"]
    assert all(p["dropped"] == 0 for p in doc["priorities"].values())

    sub = Subscriber(zctx, agent.upstream)
    got = sub.collect(n, timeout=60)
    assert len(got) == n
    got_ids = ids(got)
    assert sorted(got_ids) == list(range(n)), "lost or duplicated"
    # Critical first: every critical event arrived before the bulk of the others.
    first_crit_done = max(i for i, e in enumerate(got_ids) if e % 100 == 0)
    assert first_crit_done < n // 2
    # FIFO inside each class, across memory and disk.
    for cls in ("critical", "normal", "low"):
        cls_ids = ids(sub.events(cls))
        assert cls_ids == sorted(cls_ids), f"{cls} out of order"
    done = agent.wait_state(
        lambda d: (
            d["spill"]["pending_events"] == 0
            and sum(p["queued"] for p in d["priorities"].values()) == 0
        ),
        what="drained",
    )
    assert done["spill"]["recovered_events"] >= doc["spill"]["pending_events"]
    assert agent.stop() == 0


def test_a_slow_drain_shows_an_estimate_of_the_time_left(make_agent, zctx) -> None:
    agent = make_agent(**SMALL).start()
    n = 100_000
    send_all(zctx, agent, flood_frames(n))
    doc = agent.wait_state(lambda d: total_received(d) == n, timeout=60)
    assert doc["spill"]["pending_events"] > 0
    assert doc["spill"]["drain_eta_s"] is None  # nobody subscribed: nothing drains
    # A slow reader that keeps its own queue shallow, so the backlog stays in
    # the agent (a deep RCVHWM would simply take it all).
    sub = Subscriber(zctx, agent.upstream, rcvhwm=2)
    deadline = time.monotonic() + 30
    eta = None
    while eta is None and time.monotonic() < deadline:
        sub.recv_one()
        if len(sub.messages) % 20 == 0:
            eta = agent.get()["spill"]["drain_eta_s"]
        time.sleep(0.002)  # the slow reader: ~100k events/s at most
    assert isinstance(eta, float) and eta > 0, eta
    sub.collect(n, timeout=60)
    assert sub.count == n
    drained = agent.wait_state(lambda d: d["spill"]["pending_events"] == 0)
    assert drained["spill"]["drain_eta_s"] is None
    assert agent.stop() == 0


def test_sigterm_with_a_spilled_backlog_then_restart_loses_nothing(make_agent, zctx) -> None:
    agent = make_agent(**SMALL).start()
    n = 120_000
    send_all(zctx, agent, flood_frames(n))
    agent.wait_state(lambda d: total_received(d) == n, timeout=60)
    # Start delivering so that some events are read back from disk and partly
    # delivered when the stop comes.
    sub = Subscriber(zctx, agent.upstream)
    sub.collect(20_000, timeout=30)
    sub.close()
    assert agent.stop() == 0
    assert "nothing lost" in agent.log
    # What the agent handed to ZeroMQ before the stop; the part of it still in
    # flight to the closed subscriber is PUB/SUB's to lose, not the agent's.
    delivered = int(agent.log.split("stopped: ")[1].split(" delivered")[0])
    agent.start()
    sub2 = Subscriber(zctx, agent.upstream)
    got = sub2.collect(n - delivered, timeout=60)
    assert len(got) == n - delivered
    first, second = set(ids(sub.events())), ids(got)
    assert len(second) == len(set(second)), "duplicates after a clean restart"
    assert not first & set(second), "delivered twice across a clean restart"
    assert first | set(second) <= set(range(n))
    assert len(first) <= delivered
    for cls in ("critical", "normal", "low"):
        cls_ids = ids(sub2.events(cls))
        assert cls_ids == sorted(cls_ids), f"{cls} out of order after restart"
    assert agent.stop() == 0


def test_sigkill_while_spilling_loses_nothing_that_reached_a_ring(make_agent, zctx) -> None:
    rng = random.Random(int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0) + 7)
    agent = make_agent(**SMALL).start()
    frames = flood_frames(150_000)
    push = zctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(agent.ingest)
    for f in frames[: len(frames) // 2]:
        push.send(f)
    # Kill at a random moment while spilling is under way.
    spilled = agent.wait_state(lambda d: d["spill"]["spilled_events"] > 20_000, timeout=60)
    for f in frames[len(frames) // 2 : len(frames) // 2 + rng.randrange(1, 500)]:
        push.send(f)
    last = agent.get()["spill"]["spilled_events"]
    assert last >= spilled["spill"]["spilled_events"]
    assert agent.kill() == -9
    push.close()

    agent.start()
    doc = agent.get()
    # Recovered records may already be read back into memory (queued).
    held = doc["spill"]["pending_events"] + sum(p["queued"] for p in doc["priorities"].values())
    # Everything the agent had reported as spilled before the kill is there.
    assert held >= last, (held, last)
    sub = Subscriber(zctx, agent.upstream)
    got = sub.collect(held, timeout=60)
    got_ids = ids(got)
    # Nothing had been delivered before the kill, so nothing may come twice.
    assert len(got_ids) == len(set(got_ids)), "duplicates"
    assert len(got_ids) == held
    for cls in ("critical", "normal", "low"):
        cls_ids = ids(sub.events(cls))
        assert cls_ids == sorted(cls_ids)
    assert agent.stop() == 0


def test_buffers_shrink_in_real_rss_after_a_spike(make_agent, zctx) -> None:
    agent = make_agent(
        buffer={"budget_bytes": 96 * MiB, "critical_reserve_bytes": 4 * MiB, "shrink_after_s": 1.0}
    ).start()
    base = rss_kib(agent.proc.pid)
    n = 400_000  # ~50 MB held in memory while nobody subscribes
    send_all(zctx, agent, flood_frames(n))
    agent.wait_state(lambda d: total_received(d) == n, timeout=60)
    peak = rss_kib(agent.proc.pid)
    assert peak - base > 30 * 1024, (base, peak)
    sub = Subscriber(zctx, agent.upstream)
    sub.collect(n, timeout=60)
    doc = agent.wait_state(
        lambda d: d["buffer"]["allocated_bytes"] <= 4 * MiB, timeout=30, what="the shrink"
    )
    assert doc["buffer"]["capacity_bytes"] < 16 * MiB
    after = wait_for(
        lambda: (r := rss_kib(agent.proc.pid)) < peak - 30 * 1024 and r,
        timeout=10,
        what="RSS to fall",
    )
    assert after < peak - 30 * 1024, (base, peak, after)
    assert agent.stop() == 0


def test_a_spill_dir_on_a_disk_too_small_is_a_clear_error(workdir) -> None:
    agent = AgentProcess(workdir, spill={"max_bytes": 1 << 50})  # 1 PiB
    r = agent.run_to_exit()
    assert r.returncode == 1, r.stderr
    assert agent.spill_dir in r.stderr
    assert r.returncode != -7  # never SIGBUS


def test_memory_and_disk_full_evicts_lowest_class_first_and_counts_it(make_agent, zctx) -> None:
    agent = make_agent(
        buffer={"budget_bytes": 6 * MiB, "critical_reserve_bytes": 1 * MiB},
        spill={"max_bytes": 17 * MiB},
    ).start()
    n = 300_000  # ~36 MB: far more than 6 MiB of memory + 17 MiB of disk
    send_all(zctx, agent, flood_frames(n))
    doc = agent.wait_state(lambda d: total_received(d) == n, timeout=60)
    pr = doc["priorities"]
    assert pr["low"]["dropped"] > 0
    assert pr["critical"]["dropped"] == 0
    # Nothing vanishes uncounted: every received event is queued, on disk or dropped.
    for cls, p in pr.items():
        assert p["received"] == p["queued"] + p["pending"] + p["dropped"] + p["delivered"], cls
    # Lowest class first. Each class's spill share is its own (README,
    # "Durability"), so in memory normal only loses events once low holds none
    # there, and high none while normal or low hold any.
    if pr["normal"]["dropped"]:
        assert pr["low"]["queued"] == 0
    assert pr["high"]["dropped"] == 0
    # Evictions are logged once a second, summed per class.
    wait_for(lambda: "evicted" in agent.log, what="the eviction log line")

    sub = Subscriber(zctx, agent.upstream)

    def settled() -> dict | None:
        # Read as it arrives: a subscriber that does not read gets small
        # messages (agent/batching.py), so its queue does not hold it all.
        while sub.recv_one(0) is not None:
            pass
        d = agent.get()
        held = d["spill"]["pending_events"] + sum(p["queued"] for p in d["priorities"].values())
        return d if held == 0 else None

    final = wait_for(settled, 60, 0.05, "everything held to be delivered or evicted")
    delivered = sum(p["delivered"] for p in final["priorities"].values())
    got = sub.collect(delivered, timeout=30)
    assert len(got) == delivered
    assert len(got) == len(set(ids(got))), "duplicates"
    for cls, p in final["priorities"].items():
        assert p["received"] == p["delivered"] + p["dropped"], cls
    assert ids(sub.events("critical")) == list(range(0, n, 100)), "every alert, in order"
    assert agent.stop() == 0


def test_restart_after_a_clean_stop_resumes_the_epoch_counter(make_agent, zctx) -> None:
    agent = make_agent().start()
    first = agent.get()["agent"]["epoch"]
    assert agent.stop() == 0
    agent.start()
    assert agent.get()["agent"]["epoch"] > first
    assert agent.stop() == 0
