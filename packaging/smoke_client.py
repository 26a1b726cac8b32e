"""packaging/smoke_client.py - the collector and head-end stand-in of arm-smoke.sh.

Runs on the target (inside the arm64 root, with the installed agent's own venv
python, so pyzmq/cbor2 are the arm64 wheels under test) and checks the
contract end to end over the agent's ipc:// endpoints and its HTTP endpoint:

  roundtrip  a SUB connects, N events of all four classes (in frames of 1-50
             events, plus 3 bad frames) are pushed; every event must come out
             exactly once, byte for byte, in order within its class, with
             well-formed headers (seq 1, 2, ... per class), and the endpoint
             must count N received = N delivered and 3 rejected. With --lane,
             one alert is also sent on the alert lane, as a lane-aware
             collector would: it must come out once, as critical, and the
             endpoint must count it under ingest.lane.
  send       push N events with no subscriber and wait until the endpoint has
             accepted them all (they stay queued: no silent loss); the smoke
             script then stops the agent, which parks them in the spill files.
  receive    after a restart: subscribe, expect exactly those N events back
             (recovered from disk), and the endpoint to say so.

Prints one JSON line of results; exits 1 on any mismatch. Not part of the test
suite (tests/test_e2e.py covers the same on the build machine).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import urllib.request
from collections import defaultdict
from typing import Any

import cbor2
import zmq

# One type per class (INTERFACE.md default rules), cycled through.
TYPES = ("over_voltage", "tamper", "reading", "heartbeat")
CLASS_OF = {"over_voltage": "critical", "tamper": "high", "reading": "normal", "heartbeat": "low"}
BAD_FRAMES = (b"\xff\x00garbage", cbor2.dumps([1, 2, 3]), b"")  # not CBOR, not a map, empty


def make_event(tag: str, n: int) -> bytes:
    return cbor2.dumps(
        {"meter": n % 97, "ts": 1_790_000_000_000 + n, "type": TYPES[n % 4], "n": n, "tag": tag}
    )


def split_sequence(body: bytes) -> list[bytes]:
    fp = io.BytesIO(body)
    dec = cbor2.CBORDecoder(fp)
    out, pos = [], 0
    while pos < len(body):
        dec.decode()
        out.append(body[pos : fp.tell()])
        pos = fp.tell()
    return out


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/api/v1/gateway/backpressure", timeout=10) as r:
        return json.load(r)


def wait_for(what: str, timeout: float, check: Any) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"smoke_client: timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def push(ctx: zmq.Context, endpoint: str, tag: str, count: int, bad: bool) -> None:
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 30_000)  # deliver everything before close returns
    sock.connect(endpoint)
    n = 0
    size = 1
    while n < count:
        k = min(size, count - n)
        sock.send(b"".join(make_event(tag, i) for i in range(n, n + k)))
        n += k
        size = size % 50 + 7  # frames of varying size: 1, 8, 15, ... 50, ...
    if bad:
        for frame in BAD_FRAMES:
            sock.send(frame)
    sock.close()


def lane_alert(tag: str) -> bytes:
    return cbor2.dumps(
        {"meter": "lane", "ts": 1_790_000_000_000, "type": "last_gasp", "tag": tag + "-lane"}
    )


def push_alert(ctx: zmq.Context, endpoint: str, tag: str) -> None:
    """One alert on the alert lane, sent the way the README tells collectors
    to: its own PUSH socket, a small SNDHWM, linger long enough to deliver."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 100)
    sock.setsockopt(zmq.LINGER, 30_000)
    sock.connect(endpoint)
    sock.send(lane_alert(tag))
    sock.close()


def collect(sock: zmq.Socket, count: int, timeout: float) -> list[tuple[str, dict, list[bytes]]]:
    messages = []
    got = 0
    deadline = time.monotonic() + timeout
    while got < count:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(int(left * 1000)):
            break
        cls, header, body = sock.recv_multipart()
        events = split_sequence(body)
        messages.append((cls.decode("ascii"), cbor2.loads(header), events))
        got += len(events)
    # Anything beyond `count` would be a duplicate: give it a moment to show.
    while sock.poll(500):
        cls, header, body = sock.recv_multipart()
        messages.append((cls.decode("ascii"), cbor2.loads(header), split_sequence(body)))
    return messages


def verify(messages: list, tag: str, count: int, agent_id: str) -> dict[str, Any]:
    problems: list[str] = []
    expected = {make_event(tag, i): i for i in range(count)}
    seen: dict[int, int] = defaultdict(int)
    last_n: dict[str, int] = {}
    seqs: dict[str, list[int]] = defaultdict(list)
    epochs = set()
    for cls, header, events in messages:
        epochs.add(header.get("epoch"))
        seqs[cls].append(header.get("seq"))
        if header.get("agent") != agent_id:
            problems.append(f"header agent {header.get('agent')!r}")
        if header.get("count") != len(events):
            problems.append(f"header count {header.get('count')} != {len(events)} events")
        for ev in events:
            n = expected.get(ev)
            if n is None:
                problems.append(f"unexpected event bytes {ev[:40]!r}")
                continue
            seen[n] += 1
            if CLASS_OF[TYPES[n % 4]] != cls:
                problems.append(f"event {n} of type {TYPES[n % 4]} came as {cls}")
            if last_n.get(cls, -1) > n:
                problems.append(f"{cls}: event {n} after {last_n[cls]} (reordered)")
            last_n[cls] = n
    missing = [n for n in range(count) if seen[n] == 0]
    dupes = [n for n, k in seen.items() if k > 1]
    if missing:
        problems.append(f"{len(missing)} events missing (first {missing[:5]})")
    if dupes:
        problems.append(f"{len(dupes)} events duplicated (first {dupes[:5]})")
    for cls, s in seqs.items():
        if s != list(range(1, len(s) + 1)):
            problems.append(f"{cls}: seq {s[:10]}... not 1, 2, 3, ...")
    if len(epochs) != 1:
        problems.append(f"epochs {sorted(epochs)}")
    return {
        "events_out": sum(seen.values()),
        "messages": len(messages),
        "per_class": {c: sum(len(e) for k, _, e in messages if k == c) for c in sorted(seqs)},
        "problems": problems,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("roundtrip", "send", "receive"))
    p.add_argument("--ingest", required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--lane", help="the alert lane's endpoint (roundtrip sends an alert there)")
    p.add_argument("--url", required=True, help="the agent's HTTP base URL")
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--tag", default="smoke")
    p.add_argument("--agent-id", default="arm-smoke")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds (emulation is slow)")
    a = p.parse_args()
    ctx = zmq.Context()
    result: dict[str, Any] = {"mode": a.mode, "events_in": a.events}
    before = get(a.url)
    received_before = sum(c["received"] for c in before["priorities"].values())
    started = time.monotonic()

    if a.mode == "send":
        push(ctx, a.ingest, a.tag, a.events, bad=False)

        def accepted() -> dict[str, Any] | None:
            d = get(a.url)
            received = sum(c["received"] for c in d["priorities"].values())
            return d if received >= received_before + a.events else None

        doc = wait_for("the agent to accept every event", a.timeout, accepted)
        result["queued"] = sum(c["queued"] for c in doc["priorities"].values())
        result["problems"] = []
    else:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(a.upstream)
        sub.subscribe(b"")
        lane = a.mode == "roundtrip" and a.lane is not None
        if a.mode == "roundtrip":
            push(ctx, a.ingest, a.tag, a.events, bad=True)
            if lane:
                push_alert(ctx, a.lane, a.tag)
        messages = collect(sub, a.events + lane, a.timeout)
        alert = lane_alert(a.tag)
        # The lane's alert is checked on its own; the rest as without a lane.
        alerts = [c for c, _, events in messages for e in events if e == alert]
        messages = [
            (
                c,
                {**h, "count": h.get("count", 0) - events.count(alert)},
                [e for e in events if e != alert],
            )
            for c, h, events in messages
        ]
        result.update(verify(messages, a.tag, a.events, a.agent_id))
        result["events_out"] += len(alerts)
        if lane:
            result["lane_alert"] = alerts
            if alerts != ["critical"]:
                result["problems"].append(f"the lane's alert came out as {alerts}, not once")
        # The endpoint is a snapshot refreshed every 0.25 s: wait for it to agree.
        bad = len(BAD_FRAMES) if a.mode == "roundtrip" else 0

        def agrees() -> dict[str, Any] | None:
            d = get(a.url)
            delivered = sum(c["delivered"] for c in d["priorities"].values())
            lane_ok = not lane or d["ingest"].get("lane", {}).get("events", 0) >= 1
            if delivered == result["events_out"] and d["rejected"]["total"] >= bad and lane_ok:
                return d
            return None

        doc = wait_for("the endpoint to count every delivery", 30, agrees)
        result["endpoint_delivered"] = sum(c["delivered"] for c in doc["priorities"].values())
        result["endpoint_rejected"] = doc["rejected"]
        result["endpoint_recovered"] = doc["spill"]["recovered_events"]
        if lane:
            result["endpoint_lane"] = doc["ingest"]["lane"]
            if doc["ingest"]["lane"].get("noncritical"):
                result["problems"].append(f"lane counts {doc['ingest']['lane']}")
        if a.mode == "roundtrip" and doc["rejected"]["total"] != bad:
            result["problems"].append(f"rejected {doc['rejected']} != {bad} bad frames")
        if a.mode == "receive" and doc["spill"]["recovered_events"] < a.events:
            result["problems"].append(f"recovered {doc['spill']['recovered_events']} < {a.events}")
        sub.close()
    result["seconds"] = round(time.monotonic() - started, 2)
    ctx.term()
    print(json.dumps(result, sort_keys=True))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
