"""A start that cannot open an endpoint ends at once: exit 1, a message naming
the endpoint, nothing left open (issue 8).

Before the fix a busy upstream port, or an endpoint naming an interface that
does not exist, hung the agent forever, silently, holding the spill-dir lock:
the XPUB socket whose bind raised was never closed, so `ctx.term()` waited for
it. Each case runs the real agent as a subprocess; the ports it collides with
are taken by this test on port 0 (parallel-safe).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import zmq

from harness import AgentProcess, wait_for

pytestmark = pytest.mark.e2e

# Measured 0.15-0.2 s here from spawn to exit (interpreter start included); a
# hang is forever. The bound leaves room for a loaded 2-core box under -n auto.
FAILS_WITHIN_S = 2.0
# The smallest spill the config accepts (~16 MiB + a bit): less to zero-fill
# at start than the harness's default 64 MiB.
SMALL_SPILL = {"max_bytes": 17 * 1024 * 1024}
# RFC 5737 TEST-NET-1: never an address of this machine.
NOT_LOCAL = "192.0.2.1"


@pytest.fixture
def busy_zmq_port(zctx: zmq.Context) -> Iterator[str]:
    """A tcp endpoint some other socket holds."""
    holder = zctx.socket(zmq.PULL)
    holder.setsockopt(zmq.LINGER, 0)
    holder.bind("tcp://127.0.0.1:*")
    yield holder.getsockopt_string(zmq.LAST_ENDPOINT)
    holder.close(0)


@pytest.fixture
def busy_http_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def fails_fast(agent: AgentProcess, *fragments: str) -> str:
    r = agent.run_to_exit()
    assert r.returncode == 1, r.stderr
    for fragment in fragments:
        assert fragment in r.stderr, (fragment, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.seconds < FAILS_WITHIN_S, f"{r.seconds:.2f} s to fail:\n{r.stderr}"
    return r.stderr


def test_a_busy_ingest_port_ends_the_start(workdir: str, busy_zmq_port: str) -> None:
    agent = AgentProcess(workdir, ingest={"bind": [busy_zmq_port]}, spill=SMALL_SPILL)
    fails_fast(agent, f"ingest.bind {busy_zmq_port}", "Address already in use")


def test_a_busy_upstream_port_ends_the_start_and_frees_the_spill_dir(
    workdir: str, busy_zmq_port: str
) -> None:
    agent = AgentProcess(workdir, upstream={"bind": [busy_zmq_port]}, spill=SMALL_SPILL)
    fails_fast(agent, f"upstream.bind {busy_zmq_port}", "Address already in use")
    # The spill-dir lock went with the process: the same dir starts cleanly.
    fine = AgentProcess(workdir, "fine", spill=SMALL_SPILL).start()
    assert fine.stop() == 0


def test_a_busy_http_port_ends_the_start(workdir: str, busy_http_port: int) -> None:
    agent = AgentProcess(workdir, http={"bind": f"127.0.0.1:{busy_http_port}"}, spill=SMALL_SPILL)
    fails_fast(agent, f"127.0.0.1:{busy_http_port}")


@pytest.mark.parametrize(
    ("table", "key", "endpoint"),
    [
        ("ingest", "bind", "tcp://nosuchif0:5557"),
        ("upstream", "bind", "tcp://nosuchif0:5558"),
        ("ingest", "bind", f"tcp://{NOT_LOCAL}:5557"),
        ("upstream", "bind", f"tcp://{NOT_LOCAL}:5558"),
    ],
)
def test_an_endpoint_on_an_interface_that_does_not_exist_ends_the_start(
    workdir: str, table: str, key: str, endpoint: str
) -> None:
    section = {key: [endpoint], "insecure_plaintext": True}  # past protected mode
    agent = AgentProcess(workdir, **{table: section}, spill=SMALL_SPILL)
    fails_fast(agent, f"{table}.{key} {endpoint}")


def test_http_on_an_address_that_is_not_ours_ends_the_start(workdir: str) -> None:
    agent = AgentProcess(workdir, http={"bind": f"{NOT_LOCAL}:8080"}, spill=SMALL_SPILL)
    fails_fast(agent, f"{NOT_LOCAL}:8080")


def test_ctrl_c_during_the_start_stops_cleanly_without_a_traceback(workdir: str) -> None:
    """The SIGINT/SIGTERM handlers are the first thing the start installs
    (before the spill dir exists), so a Ctrl-C while the rings are created
    (128 MiB of zeros here, a few hundred ms) ends in a clean stop, exit 0."""
    agent = AgentProcess(workdir, spill={"max_bytes": 128 * 1024 * 1024})
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", agent.config],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: os.path.isdir(agent.spill_dir), what="the start to reach the spill dir")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped" in err, err
