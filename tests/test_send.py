"""`edge-agent send`: the test events it builds and how it hands them over."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import cbor2
import pytest
import zmq

from agent import send
from agent.send import MARKER, SendError, build_event


def test_a_test_event_is_a_valid_event_with_markers() -> None:
    ev = cbor2.loads(build_event("fault", "42", 3, 1_790_000_000_000))
    assert ev == {"meter": 42, "ts": 1_790_000_000_000, "type": "fault", "sent_by": MARKER, "n": 3}
    assert cbor2.loads(build_event("fault", "m-42", 1, 0))["meter"] == "m-42"
    # Non-ASCII digits are text, not an integer.
    assert cbor2.loads(build_event("fault", "\u0664\u0662", 1, 0))["meter"] == "\u0664\u0662"


@pytest.mark.parametrize(
    ("type_", "meter", "problem"),
    [("", "1", "--type"), ("fault", "", "--meter"), ("fault", str(2**64), "64 bits")],
)
def test_input_that_cannot_work_is_refused(type_: str, meter: str, problem: str) -> None:
    with pytest.raises(SendError, match=problem):
        build_event(type_, meter, 1, 0)


def test_events_reach_a_pull_socket(zctx: zmq.Context, tmp_path: object) -> None:
    pull = zctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    out, err = io.StringIO(), io.StringIO()
    status = send.main(f"tcp://127.0.0.1:{port}", "tamper", "7", 5, out=out, err=err)
    assert status == 0, err.getvalue()
    assert "sent 5" in out.getvalue()
    assert pull.poll(2000)
    got = split(pull.recv())  # one frame: a collector's batch
    assert [e["n"] for e in got] == [1, 2, 3, 4, 5]
    assert {e["type"] for e in got} == {"tamper"} and {e["meter"] for e in got} == {7}
    pull.close(0)


def split(frame: bytes) -> list[dict[str, object]]:
    fp = io.BytesIO(frame)
    dec = cbor2.CBORDecoder(fp)
    out = []
    while fp.tell() < len(frame):
        out.append(dec.decode())
    return out


def test_many_events_go_in_few_frames(zctx: zmq.Context) -> None:
    pull = zctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    assert send.main(f"tcp://127.0.0.1:{port}", "reading", "1", 600, out=io.StringIO()) == 0
    sizes = []
    while len(sizes) < 3 and pull.poll(2000):
        sizes.append(len(split(pull.recv())))
    assert sizes == [send.EVENTS_PER_FRAME, send.EVENTS_PER_FRAME, 600 - 2 * send.EVENTS_PER_FRAME]
    pull.close(0)


def test_no_peer_gives_up_at_the_deadline_with_1() -> None:
    err = io.StringIO()
    t0 = time.monotonic()
    status = send.main("tcp://127.0.0.1:9", "fault", "1", 2, timeout_s=0.3, err=err)
    took = time.monotonic() - t0
    assert status == 1
    assert "0 of 2 events" in err.getvalue() and "tcp://127.0.0.1:9" in err.getvalue()
    assert took < 3.0


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--ingest", "tcp://no-port", "--type", "fault", "--meter", "1"], "bad endpoint"),
        (["--ingest", "tcp://127.0.0.1:9", "--type", "", "--meter", "1"], "--type"),
        (
            ["--ingest", "tcp://127.0.0.1:9", "--type", "f", "--meter", "1", "--count", "0"],
            "--count",
        ),
        (["--ingest", "tcp://127.0.0.1:9", "--type", "f"], "--meter"),
        (
            ["--ingest", "tcp://127.0.0.1:9", "--type", "f", "--meter", "1", "--count", "x"],
            "--count",
        ),
    ],
)
def test_bad_input_exits_2_with_a_message(args: list[str], problem: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "agent", "send", *args], capture_output=True, text=True, timeout=20
    )
    assert r.returncode == 2, r
    assert problem in r.stderr and "Traceback" not in r.stderr


def test_the_command_with_nobody_listening_exits_1_within_the_contracts_5_s() -> None:
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "agent", "send", "--ingest", "tcp://127.0.0.1:9"]
        + ["--type", "fault", "--meter", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    took = time.monotonic() - t0
    assert r.returncode == 1, r
    assert "is an agent listening" in r.stderr
    assert 4.5 < took < 15, took  # 5 s deadline plus interpreter start on a busy box
