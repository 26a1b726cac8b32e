"""The real agent, end to end: `edge-agent run` as a subprocess, ipc:// ZeroMQ,
HTTP on loopback. What collectors, the head-end and a technician rely on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import cbor2
import pytest
import zmq

from harness import AgentProcess, Subscriber, event, wait_for

pytestmark = pytest.mark.e2e

TYPES = ["reading", "over_voltage", "heartbeat", "power_restore", "diagnostic", "fault", "tamper"]
CLASS_OF = {
    "reading": "normal",
    "over_voltage": "critical",
    "fault": "critical",
    "heartbeat": "low",
    "diagnostic": "low",
    "power_restore": "high",
    "tamper": "high",
}


# Generous on purpose (see test_critical_alerts_overtake_a_saturated_backlog):
# an alert behind a 20,000-event backlog read at ~200 messages/s would wait
# for seconds.
CRITICAL_BOUND_MS = 1000.0


def mixed_events(n: int, start: int = 0) -> list[bytes]:
    return [
        event(i, TYPES[i % len(TYPES)], seqno=i, v=230.0 + i % 10) for i in range(start, start + n)
    ]


def by_class(events: list[bytes]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {"critical": [], "high": [], "normal": [], "low": []}
    for e in events:
        out[CLASS_OF[cbor2.loads(e)["type"]]].append(e)
    return out


def push_socket(ctx: zmq.Context, agent: AgentProcess) -> zmq.Socket:
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 5000)
    s.connect(agent.ingest)
    return s


def subscribed(agent: AgentProcess, n: int = 1) -> None:
    agent.wait_state(lambda d: d["upstream"]["subscribers"] >= n, what="the subscription")


def test_events_in_equal_events_out_byte_for_byte(make_agent, zctx) -> None:
    agent = make_agent().start()
    sub = Subscriber(zctx, agent.upstream)
    subscribed(agent)
    push = push_socket(zctx, agent)
    sent = mixed_events(3000)
    # Single-event frames and 32-event frames (a collector may batch).
    for e in sent[:1000]:
        push.send(e)
    for i in range(1000, 3000, 32):
        push.send(b"".join(sent[i : i + 32]))
    got = sub.collect(len(sent))
    assert len(got) == len(sent)
    want = by_class(sent)
    for cls in want:
        assert sub.events(cls) == want[cls], f"{cls}: order or bytes differ"
    # Headers: one agent, one epoch, per-class seq from 1 without gaps.
    epochs = {h["epoch"] for _, h, _ in sub.messages}
    assert len(epochs) == 1 and {h["agent"] for _, h, _ in sub.messages} == {"gw-test"}
    for cls in want:
        seqs = [h["seq"] for c, h, _ in sub.messages if c == cls]
        assert seqs == list(range(1, len(seqs) + 1))
    doc = agent.wait_state(lambda d: d["priorities"]["normal"]["delivered"] == len(want["normal"]))
    for cls, evs in want.items():
        p = doc["priorities"][cls]
        assert (p["received"], p["delivered"], p["queued"], p["dropped"]) == (
            len(evs),
            len(evs),
            0,
            0,
        )
    assert doc["rejected"]["total"] == 0
    assert agent.stop() == 0


def test_nothing_lost_when_the_subscriber_connects_late(make_agent, zctx) -> None:
    agent = make_agent().start()
    push = push_socket(zctx, agent)
    sent = mixed_events(2000)
    for e in sent:
        push.send(e)
    # With nobody subscribed a PUB would drop everything: the agent must hold it.
    doc = agent.wait_state(lambda d: sum(p["received"] for p in d["priorities"].values()) == 2000)
    assert sum(p["queued"] for p in doc["priorities"].values()) == 2000
    assert doc["upstream"]["subscribers"] == 0
    sub = Subscriber(zctx, agent.upstream)
    got = sub.collect(len(sent))
    assert sorted(got) == sorted(sent)
    for cls, evs in by_class(sent).items():
        assert sub.events(cls) == evs
    assert agent.stop() == 0


def test_a_class_nobody_subscribes_to_is_held_not_dropped(make_agent, zctx) -> None:
    agent = make_agent().start()
    crit = Subscriber(zctx, agent.upstream, b"critical")
    subscribed(agent)
    push = push_socket(zctx, agent)
    sent = mixed_events(700)
    for e in sent:
        push.send(e)
    want = by_class(sent)
    crit.collect(len(want["critical"]))
    assert crit.events() == want["critical"]
    doc = agent.wait_state(lambda d: d["priorities"]["normal"]["received"] == len(want["normal"]))
    assert doc["priorities"]["normal"]["queued"] == len(want["normal"])
    everything = Subscriber(zctx, agent.upstream)
    everything.collect(len(sent) - len(want["critical"]))
    assert everything.events("normal") == want["normal"]
    assert everything.events("critical") == []
    assert agent.stop() == 0


def test_bad_frames_are_counted_and_good_ones_arrive(make_agent, zctx) -> None:
    agent = make_agent().start()
    sub = Subscriber(zctx, agent.upstream)
    subscribed(agent)
    push = push_socket(zctx, agent)
    good = mixed_events(200)
    bad = [
        b"",  # empty_frame
        b"\xff\xfe\xfd",  # malformed
        cbor2.dumps([1, 2, 3]),  # not_a_map
        cbor2.dumps({"meter": 1, "ts": 2}),  # missing_field
        cbor2.dumps({"meter": -1, "ts": 2, "type": "x"}),  # bad_field_type
        b"\xbf\x64type\x61x\xff",  # indefinite_length
        good[0][:-3],  # truncated
    ]
    expected_good = list(good)
    for i, e in enumerate(good):
        push.send(e)
        if i < len(bad):
            push.send(bad[i])
    # Valid events before the first bad item of a frame are kept.
    keep = event(9001, "reading", seqno=9001)
    push.send(keep + b"\x00" + event(9002, "reading"))
    expected_good.append(keep)
    push.send_multipart([event(9003, "reading"), event(9004, "reading")])
    sub.collect(len(expected_good))
    doc = agent.wait_state(lambda d: d["rejected"]["total"] == len(bad) + 2, what="all rejects")
    assert sorted(sub.events()) == sorted(expected_good)
    reasons = doc["rejected"]["by_reason"]
    for reason in (
        "empty_frame",
        "malformed",
        "not_a_map",
        "missing_field",
        "bad_field_type",
        "indefinite_length",
        "truncated",
        "multipart",
    ):
        assert reasons.get(reason, 0) >= 1, (reason, reasons)
    assert agent.proc.poll() is None
    assert agent.stop() == 0


def test_critical_alerts_overtake_a_saturated_backlog(make_agent, zctx) -> None:
    """The mission's acceptance test: a flood of normal/low events, a subscriber
    that reads slowly, and critical alerts injected meanwhile reach it ahead of
    the backlog, none lost. The 100 ms promise itself is measured by
    bench/throughput.py on a quiet machine; here, under `-n auto` on a shared
    box, the bound only catches an alert stuck behind the backlog (that took
    seconds), not the neighbours' load."""
    agent = make_agent().start()
    sub = zctx.socket(zmq.SUB)
    # A subscriber that keeps its own buffers shallow (INTERFACE.md).
    sub.setsockopt(zmq.RCVHWM, 2)
    sub.setsockopt(zmq.RCVBUF, 8192)
    sub.connect(agent.upstream)
    sub.subscribe(b"")
    subscribed(agent)

    stop = threading.Event()
    flood_sent = [0]

    def flood() -> None:
        s = push_socket(zctx, agent)
        frame = b"".join(
            event(i, "reading" if i % 2 else "heartbeat", pad="x" * 40) for i in range(32)
        )
        while not stop.is_set():
            s.send(frame)
            flood_sent[0] += 32
        s.close()

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    # Let a real backlog build in the agent before the first alert.
    agent.wait_state(
        lambda d: d["priorities"]["normal"]["queued"] > 20000,
        timeout=30,
        what="a backlog of normal events",
    )
    crit = push_socket(zctx, agent)
    sent_at: dict[int, int] = {}
    latencies: dict[int, float] = {}
    normal_after: dict[int, int] = {}
    n_alerts = 20
    next_alert = time.monotonic()
    deadline = time.monotonic() + 30
    normal_seen = 0
    while len(latencies) < n_alerts and time.monotonic() < deadline:
        now = time.monotonic()
        if len(sent_at) < n_alerts and now >= next_alert:
            k = len(sent_at)
            sent_at[k] = time.monotonic_ns()
            crit.send(event(k, "over_voltage", alert=k, sent_ns=sent_at[k]))
            next_alert = now + 0.1
        if sub.poll(1):
            cls, _, body = sub.recv_multipart()
            arrived = time.monotonic_ns()
            if cls == b"critical":
                for e in cbor2.loads(b"\x9f" + body + b"\xff"):
                    latencies[e["alert"]] = (arrived - e["sent_ns"]) / 1e6
                    normal_after[e["alert"]] = normal_seen
            else:
                normal_seen += 1
            # The slow reader: about 200 messages a second.
            time.sleep(0.005)
    stop.set()
    t.join(10)
    doc = agent.get()
    assert sorted(latencies) == list(range(n_alerts)), "a critical alert was lost"
    worst = max(latencies.values())
    assert worst < CRITICAL_BOUND_MS, f"critical latencies (ms): {sorted(latencies.values())}"
    # Ahead of the backlog: when the alerts went out, a large backlog of normal
    # and low events was still queued in the agent.
    assert doc["priorities"]["normal"]["queued"] + doc["priorities"]["low"]["queued"] > 10000 or (
        doc["spill"]["pending_events"] > 10000
    )
    assert agent.stop() == 0


def test_sigterm_parks_everything_and_a_restart_delivers_it(make_agent, zctx) -> None:
    agent = make_agent().start()
    push = push_socket(zctx, agent)
    sent = mixed_events(5000)
    for i in range(0, 5000, 50):
        push.send(b"".join(sent[i : i + 50]))
    agent.wait_state(lambda d: sum(p["received"] for p in d["priorities"].values()) == 5000)
    assert agent.stop() == 0
    assert "nothing lost" in agent.log
    push.close(0)

    agent.start()
    doc = agent.get()
    assert (
        doc["spill"]["pending_events"] + sum(p["queued"] for p in doc["priorities"].values())
        == 5000
    )
    sub = Subscriber(zctx, agent.upstream)
    got = sub.collect(5000)
    assert len(got) == 5000 and sorted(got) == sorted(sent), "lost or duplicated across restart"
    for cls, evs in by_class(sent).items():
        assert sub.events(cls) == evs, f"{cls} out of order after restart"
    assert agent.stop() == 0


def test_status_cli_and_health(make_agent) -> None:
    agent = make_agent().start()
    cmd = [sys.executable, "-m", "agent", "status", "--url", agent.url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "critical" in out.stdout and "NOT CONNECTED" in out.stdout
    raw = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=30)
    assert raw.returncode == 0 and "priorities" in json.loads(raw.stdout)
    with urllib.request.urlopen(agent.url + "/healthz", timeout=5) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(agent.url + "/nope", timeout=5)
    assert e.value.code == 404 and json.load(e.value)["error"]
    assert agent.stop() == 0
    gone = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and gone.stderr


def test_bad_config_exits_2_naming_the_key(workdir) -> None:
    path = os.path.join(workdir, "bad.toml")
    with open(path, "w") as f:
        f.write('[ingest]\nmax_frame_bytes = "big"\n')
    for command in ("run", "check-config"):
        r = subprocess.run(
            [sys.executable, "-m", "agent", command, "--config", path],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 2, (command, r.stderr)
        assert "ingest.max_frame_bytes" in r.stderr
    with open(path, "w") as f:
        f.write("[ingets]\n")
    r = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "--config", path],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "ingets" in r.stderr


def test_check_config_accepts_the_shipped_configs() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("agent.toml", "dev.toml"):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent",
                "check-config",
                "--config",
                os.path.join(root, "packaging", name),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr


def test_a_second_agent_on_the_same_spill_dir_refuses_to_start(make_agent, workdir) -> None:
    first = make_agent().start()
    second = AgentProcess(
        workdir,
        "second",
        ingest={"bind": [f"ipc://{workdir}/in2"]},
        upstream={"bind": [f"ipc://{workdir}/out2"]},
    )
    r = second.run_to_exit()
    assert r.returncode == 1, r.stderr
    assert first.spill_dir in r.stderr and "in use" in r.stderr
    assert first.stop() == 0


def test_sigint_also_stops_cleanly(make_agent) -> None:
    agent = make_agent().start()
    assert agent.stop(signal.SIGINT) == 0
    wait_for(lambda: "stopped" in agent.log, what="the stop log line")


def test_metrics_and_status_page_from_the_running_agent(make_agent, zctx) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    agent = make_agent().start()
    sub = Subscriber(zctx, agent.upstream)
    subscribed(agent)
    push = push_socket(zctx, agent)
    sent = mixed_events(700)
    for e in sent:
        push.send(e)
    sub.collect(len(sent))
    want = by_class(sent)
    doc = agent.wait_state(
        lambda d: d["latency"]["critical"]["count"] == len(want["critical"]),
        what="every critical hand-off measured",
    )
    with urllib.request.urlopen(agent.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    for cls, evs in want.items():
        key = ("edge_agent_events_delivered_total", (("class", cls),))
        assert samples[key] >= len(evs) or doc["priorities"][cls]["delivered"] == len(evs)
    assert samples[("edge_agent_critical_latency_seconds_count", ())] == len(want["critical"])
    # Measured inside the agent: arrival to hand-off. Every alert in a bucket
    # (the 100 ms figure itself is the benchmark's; see CRITICAL_BOUND_MS).
    within = samples[("edge_agent_critical_latency_seconds_bucket", (("le", "1.0"),))]
    assert within == len(want["critical"])
    with urllib.request.urlopen(agent.url + "/", timeout=5) as r:
        page = r.read().decode()
    assert (
        r.headers["Content-Type"].startswith("text/html") and "/api/v1/gateway/backpressure" in page
    )
    assert agent.stop() == 0


def test_http_allowed_hosts_from_the_config_pass_the_host_check(make_agent) -> None:
    agent = make_agent(http={"allowed_hosts": ["gw-01.substation.example"]}).start()

    def status_for(host: str) -> int:
        req = urllib.request.Request(agent.url + "/healthz", headers={"Host": host})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert status_for("gw-01.substation.example") == 200
    assert status_for("rebound.attacker.example") == 421  # DNS rebinding refused
    assert agent.stop() == 0
