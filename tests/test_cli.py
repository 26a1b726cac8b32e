"""The command line's edges (issue 12, item 7): Ctrl-C during a start, a reader
that goes away (`| head`), and the warning for an HTTP endpoint off loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import cli
from agent.config import http_bind_warning
from agent.settings import HttpSettings

from harness import AgentProcess, render_toml, wait_for
from samples import FakeLoop, base_url, running, serving


def edge_agent(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=timeout
    )


# -- Ctrl-C -------------------------------------------------------------------


def _blocked_in_open(pid: int) -> bool:
    """The process sits in openat(2) (syscall 257 on x86-64, 56 on arm64)."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            return f.read().split(" ", 1)[0] in ("257", "56")
    except OSError:
        return False


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_ctrl_c_while_starting_exits_130_without_a_traceback(tmp_path: Path, command: str) -> None:
    # A config that is a FIFO blocks the start in open() until a writer comes:
    # a deterministic "during start-up" for the interrupt to land in.
    fifo = tmp_path / "agent.toml"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", command, "--config", str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _blocked_in_open(proc.pid), what="the start blocked reading the config")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == cli.EXIT_INTERRUPTED == 130
    assert err.strip() == "edge-agent: interrupted"
    assert out == ""


def test_keyboard_interrupt_anywhere_in_a_command_is_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(path: str) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_load", interrupted)
    assert cli.main(["check-config", "--config", "x.toml"]) == 130
    assert capsys.readouterr().err == "edge-agent: interrupted\n"


def test_ctrl_c_once_running_is_a_clean_stop(make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent().start()
    assert agent.stop(signal.SIGINT) == 0
    assert "Traceback" not in agent.log


# -- a reader that goes away ---------------------------------------------------


@pytest.mark.parametrize("as_json", [True, False])
def test_status_piped_into_head_prints_no_traceback(as_json: bool) -> None:
    loop = FakeLoop(running("gw-01", started=1.7e9, uptime_s=60))
    with serving(loop.snapshot, clock=loop.clock) as srv:
        flags = "--json" if as_json else ""
        # `head -n 0` exits at once: status always writes into a closed pipe.
        cmd = (
            f"{sys.executable} -m agent status --url {base_url(srv)} {flags} | head -n 0; "
            "echo status=${PIPESTATUS[0]}"
        )
        r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30)
    assert r.stdout == "status=0\n", r
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


# -- http.bind off loopback ----------------------------------------------------


@pytest.mark.parametrize(
    ("host", "warned"),
    [
        ("127.0.0.1", False),
        ("127.0.0.9", False),
        ("::1", False),
        ("localhost", False),
        ("0.0.0.0", True),
        ("::", True),
        ("192.168.7.1", True),
        ("gw-01.maint", True),
    ],
)
def test_only_loopback_is_quiet(host: str, warned: bool) -> None:
    warning = http_bind_warning(HttpSettings(host, 8080))
    assert (warning is not None) == warned
    if warning:
        assert warning.startswith("http.bind = ") and "no authentication" in warning


def test_check_config_warns_on_stderr_and_still_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(render_toml({"http": {"bind": "0.0.0.0:8080"}}))
    r = edge_agent("check-config", "--config", str(path))
    assert r.returncode == 0
    assert r.stdout == f"{path}: ok\n"
    assert r.stderr.startswith('edge-agent: warning: http.bind = "0.0.0.0:8080" listens on every')
    path.write_text(render_toml({"http": {"bind": "127.0.0.1:8080"}}))
    r = edge_agent("check-config", "--config", str(path))
    assert r.returncode == 0 and r.stderr == ""


def test_run_logs_the_warning_at_start(make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent(http={"bind": "0.0.0.0:0"}).start()
    warnings = [line for line in agent.lines if "WARNING" in line and "http.bind" in line]
    assert len(warnings) == 1, agent.log
    assert agent.stop() == 0
    quiet = make_agent().start()
    assert not any("http.bind" in line for line in quiet.lines)
    assert quiet.stop() == 0


# -- keygen --owner / --group (issue 12 item 2) ----------------------------------------


def test_keygen_group_makes_the_secret_readable_by_that_group(tmp_path: Path) -> None:
    import grp
    import stat

    group = grp.getgrgid(os.getegid()).gr_name
    d = tmp_path / "curve"
    r = edge_agent("keygen", "--dir", str(d), "--name", "gw", "--group", group)
    assert r.returncode == 0, r.stderr
    secret = d / "gw.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o640
    assert secret.stat().st_gid == os.getegid()
    assert stat.S_IMODE(d.stat().st_mode) == 0o750
    assert f"mode 0640, group {group} may read it" in r.stdout
    assert r.stderr == ""


def test_keygen_names_an_unknown_user_or_group(tmp_path: Path) -> None:
    d = tmp_path / "curve"
    r = edge_agent("keygen", "--dir", str(d), "--name", "gw", "--owner", "no-such-user-x")
    assert r.returncode == 1 and "--owner no-such-user-x: no such user" in r.stderr
    r = edge_agent("keygen", "--dir", str(d), "--name", "gw", "--group", "no-such-group-x")
    assert r.returncode == 1 and "--group no-such-group-x: no such group" in r.stderr
    assert not d.exists()  # nothing made


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_keygen_warns_when_an_existing_dir_hides_the_key_from_its_group(tmp_path: Path) -> None:
    d = tmp_path / "curve"
    d.mkdir(mode=0o700)
    r = edge_agent("keygen", "--dir", str(d), "--name", "gw", "--group", "nogroup")
    assert r.returncode == 0
    assert "warning: " in r.stderr and "cannot be searched by that owner or group" in r.stderr


# -- the budget against the service's memory limits at `run` (issue 12 item 5) ---------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _small_config(tmp_path: Path) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(
        render_toml(
            {
                "ingest": {"bind": [f"ipc://{tmp_path}/in"]},
                "upstream": {"bind": [f"ipc://{tmp_path}/out"]},
                "spill": {"dir": str(tmp_path / "spill")},
                "http": {"bind": "127.0.0.1:0"},
            }
        )
    )
    return str(path)


def test_run_refuses_a_budget_over_memory_max_with_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    from agent import cgroup, loop

    started: list[object] = []
    monkeypatch.setattr(loop, "run_agent", lambda *a: started.append(a) or 0)
    # MemoryMax for a smaller budget; the config keeps the default 512 MiB.
    limits = cgroup.CgroupMemory("/sys/fs/cgroup/system.slice/edge-agent.service", None, 600 << 20)
    monkeypatch.setattr(cgroup, "read_limits", lambda: limits)
    assert cli.main(["run", "--config", _small_config(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ERROR agent: cannot start: buffer.budget_bytes = 536870912" in err
    assert "MemoryMax" in err and "systemctl edit edge-agent" in err
    assert started == [] and not (tmp_path / "spill").exists()  # nothing opened


def test_run_warns_over_memory_high_and_starts(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    from agent import cgroup, loop

    started: list[object] = []
    monkeypatch.setattr(loop, "run_agent", lambda *a: started.append(a) or 0)
    limits = cgroup.CgroupMemory("/x", 600 << 20, 2048 << 20)
    monkeypatch.setattr(cgroup, "read_limits", lambda: limits)
    assert cli.main(["run", "--config", _small_config(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "WARNING agent: buffer.budget_bytes = 536870912" in err and "MemoryHigh" in err
    assert len(started) == 1
    # Outside a limited cgroup nothing is said.
    monkeypatch.setattr(cgroup, "read_limits", lambda: None)
    assert cli.main(["run", "--config", _small_config(tmp_path)]) == 0
    assert "MemoryHigh" not in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="the note is for root")
def test_keygen_as_root_without_a_group_says_the_service_cannot_read_it(tmp_path: Path) -> None:
    r = edge_agent("keygen", "--dir", str(tmp_path / "curve"), "--name", "gw")
    assert r.returncode == 0
    assert "only root can read the secret" in r.stderr and "--group edge-agent" in r.stderr
