"""`edge-agent tail`: rendering upstream messages as JSON lines (pure), and the
command against a real agent, with `edge-agent send` as the collector."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import cbor2
import pytest
import zmq
from cbor2 import CBORSimpleValue, CBORTag, undefined
from hypothesis import given
from hypothesis import strategies as st

from agent.config import parse_config_text
from agent.settings import CurveSettings, Settings, UpstreamSettings
from agent.tail import DEFAULT_UPSTREAM, TailError, endpoint_from_settings, render_message, to_json

from harness import AgentProcess, event, wait_for

MiB = 1024 * 1024


def header(seq: int = 3, epoch: int = 1_790_000_000_123, agent: str = "gw-7") -> bytes:
    return cbor2.dumps({"agent": agent, "epoch": epoch, "seq": seq, "count": 1})


def lines_of(cls: bytes, body: bytes, **kw: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in render_message([cls, header(**kw), body])]


# -- rendering (pure) ----------------------------------------------------------


def test_one_line_per_event_with_class_seq_epoch_agent() -> None:
    body = cbor2.dumps({"meter": 1, "ts": 2, "type": "fault"}) + cbor2.dumps(
        {"meter": "m-2", "ts": 3, "type": "fault"}
    )
    out = lines_of(b"critical", body, seq=9)
    assert out == [
        {
            "class": "critical",
            "seq": 9,
            "epoch": 1_790_000_000_123,
            "agent": "gw-7",
            "event": {"meter": 1, "ts": 2, "type": "fault"},
        },
        {
            "class": "critical",
            "seq": 9,
            "epoch": 1_790_000_000_123,
            "agent": "gw-7",
            "event": {"meter": "m-2", "ts": 3, "type": "fault"},
        },
    ]


def test_bytes_tags_odd_keys_and_special_values_are_rendered_as_documented() -> None:
    event = {
        "meter": 1,
        "ts": 2,
        "type": "x",
        "raw": b"\x00\xff",
        "big": CBORTag(2, b"\x01\x00"),  # a bignum stays a tag
        "when": CBORTag(1, 1.5),
        "n": float("nan"),
        "inf": float("-inf"),
        "u": undefined,
        "s": CBORSimpleValue(99),
        "nested": {1: "one", b"k": [True, None]},
    }
    body = cbor2.dumps(CBORTag(55799, event))
    (line,) = lines_of(b"normal", body)
    ev = line["event"]
    assert ev["tag"] == 55799
    v = ev["value"]
    assert v["raw"] == "00ff"
    assert v["big"] == {"tag": 2, "value": "0100"}
    assert v["when"] == {"tag": 1, "value": 1.5}
    assert v["n"] == "NaN" and v["inf"] == "-Infinity"
    assert v["u"] == {"simple": 23} and v["s"] == {"simple": 99}
    assert v["nested"] == {"map": [[1, "one"], ["6b", [True, None]]]}
    # Arrays and maps used as keys (cbor2 hands tuples and frozendicts).
    raw = bytes.fromhex("a282010201a1010203")  # {[1, 2]: 1, {1: 2}: 3}
    assert to_json(cbor2.loads(raw)) == {"map": [[[1, 2], 1], [{"map": [[1, 2]]}, 3]]}


def test_a_body_that_does_not_decode_is_shown_not_raised() -> None:
    body = cbor2.dumps({"meter": 1, "ts": 2, "type": "x"}) + b"\xff"
    first, bad = lines_of(b"low", body)
    assert first["event"]["type"] == "x"
    assert bad["class"] == "low" and "event 2" in bad["error"] and bad["raw"] == body.hex()
    assert json.loads(render_message([b"x"])[0])["error"].startswith("message of 1 frames")


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text() | st.integers() | st.tuples(st.integers()) | st.frozensets(st.integers()),
            inner,
            max_size=4,
        )
        | st.builds(CBORTag, st.integers(6, 2**32), inner)
    ),
    max_leaves=12,
)


@given(cbor_values)
def test_any_event_value_renders_as_strict_json(value: Any) -> None:
    body = cbor2.dumps({"meter": 1, "ts": 2, "type": "x", "v": value})
    (line,) = render_message([b"normal", header(), body])
    doc = json.loads(line)  # strict JSON: allow_nan=False when written
    assert doc["event"]["meter"] == 1
    assert json.dumps(to_json(value), allow_nan=False)


def test_non_finite_floats_never_reach_json() -> None:
    assert to_json([math.inf, -math.inf, math.nan]) == ["Infinity", "-Infinity", "NaN"]


# -- the endpoint from a config ------------------------------------------------


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("tcp://0.0.0.0:6000", "tcp://127.0.0.1:6000"),
        ("tcp://*:6001", "tcp://127.0.0.1:6001"),
        ("tcp://[::]:6002", "tcp://[::1]:6002"),
        ("tcp://10.1.2.3:6003", "tcp://10.1.2.3:6003"),
        ("ipc:///run/edge-agent/up", "ipc:///run/edge-agent/up"),
    ],
)
def test_the_config_gives_a_local_endpoint(bind: str, expected: str) -> None:
    s = Settings(upstream=UpstreamSettings(bind=(bind,)))
    assert endpoint_from_settings(s) == expected


def test_the_default_config_gives_the_contract_default() -> None:
    assert endpoint_from_settings(parse_config_text("")) == DEFAULT_UPSTREAM


def test_an_upstream_that_only_connects_has_nothing_to_tail() -> None:
    s = parse_config_text('[upstream]\nconnect = ["tcp://127.0.0.1:7000"]\n')
    with pytest.raises(TailError, match="upstream.connect"):
        endpoint_from_settings(s)


# -- the commands against a real agent ----------------------------------------


class Command:
    """`python -m agent ARGS` with stdout read line by line in a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True).start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.out)]

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def edge_agent(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def commands() -> Iterator[Callable[..., Command]]:
    started: list[Command] = []

    def start(*args: str) -> Command:
        c = Command(*args)
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_send_an_alert_and_tail_sees_it_as_critical(
    make_agent: Callable[..., AgentProcess],
    commands: Callable[..., Command],
    workdir: str,
    sig: int,
) -> None:
    # (The alert lane, where the build has one, is just another ingest endpoint.)
    agent = make_agent().start()
    tail = commands("tail", "--config", agent.config, "--class", "critical", "high")
    wait_for(lambda: tail.err, what="tail's subscribed line")
    assert agent.upstream in tail.err[0]
    # Normal traffic is filtered out; the alert and the tamper come through.
    assert (
        edge_agent("send", "--ingest", agent.ingest, "--type", "reading", "--meter", "9").returncode
        == 0
    )
    r = edge_agent(
        "send", "--ingest", agent.ingest, "--type", "fault", "--meter", "42", "--count", "3"
    )
    assert r.returncode == 0, r.stderr
    assert "sent 3" in r.stdout
    r = edge_agent("send", "--ingest", agent.ingest, "--type", "tamper", "--meter", "m-1")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: len(tail.out) >= 4, what="four events on tail")
    lines = tail.json_lines()
    critical = [x for x in lines if x["class"] == "critical"]
    assert [x["event"]["n"] for x in critical] == [1, 2, 3]
    for x in critical:
        assert x["event"]["meter"] == 42 and x["event"]["type"] == "fault"
        assert x["event"]["sent_by"] == "edge-agent send"
        assert x["agent"] == "gw-test" and isinstance(x["epoch"], int) and x["seq"] >= 1
    (tamper,) = [x for x in lines if x["class"] == "high"]
    assert tamper["event"]["meter"] == "m-1"
    assert all(x["class"] in ("critical", "high") for x in lines)
    assert tail.stop(sig) == 0
    assert not any("Traceback" in line for line in tail.err)
    assert agent.stop() == 0


def test_tail_piped_into_head_ends_quietly(
    make_agent: Callable[..., AgentProcess], zctx: zmq.Context
) -> None:
    agent = make_agent().start()
    cmd = (
        f"{sys.executable} -m agent tail --upstream {agent.upstream} | head -n 2; "
        "echo status=${PIPESTATUS[0]}"
    )
    pipeline = subprocess.Popen(
        ["bash", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    push = zctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(agent.ingest)
    try:
        # Keep events coming: tail only notices head has gone when it next writes.
        n = 0
        while pipeline.poll() is None and n < 400:
            push.send(event(n, "fault"))
            n += 1
            with contextlib.suppress(subprocess.TimeoutExpired):
                pipeline.wait(0.05)
        out, err = pipeline.communicate(timeout=20)
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
            pipeline.wait()
        push.close(0)
    lines = out.splitlines()
    assert len(lines) == 3 and lines[2] == "status=0", (out, err)
    assert json.loads(lines[0])["class"] == "critical"
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert agent.stop() == 0


def test_tail_bad_input_is_a_clear_error_and_exit_2(tmp_path: Any) -> None:
    r = edge_agent("tail", "--class", "urgent")
    assert r.returncode == 2
    assert "invalid choice: 'urgent'" in r.stderr and "critical" in r.stderr
    r = edge_agent("tail", "--upstream", "tcp://no-port-here")
    assert r.returncode == 2
    assert "cannot connect to 'tcp://no-port-here'" in r.stderr
    assert "Traceback" not in r.stderr
    r = edge_agent("tail", "--upstream", "carrier-pigeon://x")
    assert r.returncode == 2 and "carrier-pigeon://x" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[upstream]\nbnd = []\n")
    r = edge_agent("tail", "--config", str(bad))
    assert r.returncode == 2 and "upstream.bnd" in r.stderr
    only_connect = tmp_path / "c.toml"
    only_connect.write_text('[upstream]\nconnect = ["tcp://127.0.0.1:7000"]\n')
    r = edge_agent("tail", "--config", str(only_connect))
    assert r.returncode == 2 and "upstream.connect" in r.stderr


def test_an_8_mib_budget_alone_starts_and_delivers(
    make_agent: Callable[..., AgentProcess], commands: Callable[..., Command]
) -> None:
    """Issue 12, item 1: `[buffer] budget_bytes = 8 MiB` and nothing else about
    the buffer passes check-config and runs (reserve scaled to 256 KiB)."""
    agent = make_agent()
    agent.doc["buffer"] = {"budget_bytes": 8 * MiB}
    agent.write_config()
    r = edge_agent("check-config", "--config", agent.config)
    assert r.returncode == 0, r.stderr
    agent.start()
    doc = agent.get()
    assert doc["buffer"]["budget_bytes"] == 8 * MiB
    assert doc["buffer"]["critical_reserve_bytes"] == 256 * 1024
    tail = commands("tail", "--upstream", agent.upstream)
    wait_for(lambda: tail.err, what="tail's subscribed line")
    r = edge_agent(
        "send", "--ingest", agent.ingest, "--type", "reading", "--meter", "5", "--count", "2000"
    )
    assert r.returncode == 0, r.stderr
    wait_for(lambda: len(tail.out) >= 2000, timeout=20, what="2000 events on tail")
    events = tail.json_lines()
    assert {x["class"] for x in events} == {"normal"}
    assert [x["event"]["n"] for x in events] == list(range(1, 2001))
    assert tail.stop() == 0
    assert agent.stop() == 0
    assert os.path.isdir(agent.spill_dir)


def test_an_upstream_with_curve_is_refused_with_the_reason() -> None:
    s = Settings(
        upstream=UpstreamSettings(
            bind=("tcp://127.0.0.1:7001",),
            curve=CurveSettings(secret_key_file="/k/s", allowed_keys_dir="/k"),
        )
    )
    with pytest.raises(TailError, match="CURVE"):
        endpoint_from_settings(s)
