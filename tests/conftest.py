from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import zmq
from hypothesis import HealthCheck, settings

from harness import AgentProcess, short_tempdir

# Property tests check behaviour, not speed: on a shared 2-core box (CI runs
# the suite there, two workers) hypothesis' per-example deadline and its
# too_slow health check measured the neighbours' load, not our code.
settings.register_profile("edge-agent", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("edge-agent")


@pytest.fixture
def workdir() -> Iterator[str]:
    yield from short_tempdir()


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def make_agent(workdir: str) -> Iterator[Callable[..., AgentProcess]]:
    """Builds (not starts) agents in this test's private directory; every
    process still running at the end is killed and its log shown on failure."""
    agents: list[AgentProcess] = []

    def make(**overrides: dict[str, object]) -> AgentProcess:
        a = AgentProcess(workdir, **overrides)
        agents.append(a)
        return a

    yield make
    for a in agents:
        if a.proc is not None and a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()
