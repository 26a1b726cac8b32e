# Shared plumbing for the benchmarks in bench/: machine description,
# percentiles, the agent's config and process (start, port discovery, endpoint,
# RSS/CPU sampling, stop), helper processes that talk JSON lines, result files.
#
# Nothing here measures anything by itself. Every process started here is
# stopped by its owner in a finally block; every wait has a deadline.

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
MiB = 1024 * 1024
ENDPOINT = "/api/v1/gateway/backpressure"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The benchmark cannot go on (a process failed to start, a deadline passed)."""


# ---------------------------------------------------------------- machine / output


def machine_info() -> dict[str, Any]:
    import cbor2  # noqa: F401  (present: the benchmarks need it anyway)
    import zmq

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "-"

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_bytes": mem_total,
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "cbor2": version("cbor2"),
        "edge_agent": version("edge-agent"),
    }


def load_average() -> str:
    """The 1/5/15-minute load averages: other work on a shared box shows here."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['platform']} | {m['cpu_count']} cpu ({m['cpu_model'] or m['machine']}) | "
        f"{m['mem_total_bytes'] / 2**30:.1f} GiB | Python {m['python']} | "
        f"pyzmq {m['pyzmq']} / libzmq {m['libzmq']} | cbor2 {m['cbor2']}"
    )


def command_line() -> str:
    return shlex.join(["python", *sys.argv])


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p99/max by nearest rank (no interpolation: every figure was observed)."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    s = sorted(values)

    def rank(p: float) -> float:
        return s[min(len(s) - 1, max(0, int(p * len(s) + 0.999999) - 1))]

    return {"n": len(s), "p50": rank(0.50), "p99": rank(0.99), "max": s[-1]}


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def fmt_int(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def fmt_mib(v: float | None) -> str:
    return "-" if v is None else f"{v / MiB:,.0f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, columns padded so it also reads well in a terminal."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def save_result(name: str, result: dict[str, Any]) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return path


def free_tcp_port() -> int:
    # Tiny race (another process could take the port before we bind it) that
    # is acceptable on a benchmark box; it lets the config name a fixed port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mono_ns() -> int:
    return time.monotonic_ns()


# ---------------------------------------------------------------- /proc


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in bytes (empty when the process is gone)."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, val = line.split(":", 1)
            out[key] = int(val.split()[0]) * 1024
    return out


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # fields[11], fields[12] are utime, stime (stat fields 14 and 15).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# ---------------------------------------------------------------- helper processes


def python_argv(script: str, *args: object) -> list[str]:
    return [sys.executable, "-u", str(BENCH_DIR / script), *(str(a) for a in args)]


def spawn(argv: Sequence[str], *, stderr: TextIO | int | None = None) -> subprocess.Popen[str]:
    """A helper process speaking JSON lines on stdin/stdout."""
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        cwd=str(REPO_ROOT),
    )


def read_json_line(proc: subprocess.Popen[str], timeout: float, what: str) -> dict[str, Any]:
    """The next JSON line on proc's stdout within `timeout` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"{what}: no answer within {timeout:.0f} s")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
        if not ready:
            if proc.poll() is not None:
                raise BenchError(f"{what}: exited with status {proc.returncode}")
            continue
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=5)
            raise BenchError(f"{what}: exited with status {proc.returncode} before answering")
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)


def send_json_line(proc: subprocess.Popen[str], obj: dict[str, Any]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(obj) + "\n")
    proc.stdin.flush()


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> int | None:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit status."""
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
    return proc.returncode


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------- the agent


def agent_command() -> list[str]:
    """How the agent is started: `python -m agent` from this checkout, or the
    command in $EDGE_BENCH_AGENT (e.g. "edge-agent" for an installed build);
    `run --config PATH` is appended."""
    custom = os.environ.get("EDGE_BENCH_AGENT")
    return shlex.split(custom) if custom else [sys.executable, "-m", "agent"]


def agent_runnable() -> str | None:
    """None when the agent can start here, else why not."""
    if os.environ.get("EDGE_BENCH_AGENT"):
        return None  # someone else's command: its own failure message will tell
    probe = subprocess.run(
        [sys.executable, "-c", "import agent.cli, agent.loop"],
        check=False,
        cwd=str(REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"the agent is not importable yet ({last})"
    return None


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def agent_config_text(tables: dict[str, dict[str, object]]) -> str:
    parts = []
    for name, keys in tables.items():
        parts.append(f"[{name}]")
        parts.extend(f"{k} = {_toml_value(v)}" for k, v in keys.items())
        parts.append("")
    return "\n".join(parts)


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, object]]:
    """`--agent-set buffer.budget_bytes=1000` -> {"buffer": {"budget_bytes": 1000}}."""
    out: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        table_name, dot, k = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--agent-set wants TABLE.KEY=VALUE, got {item!r}")
        value: object
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(table_name, {})[k] = value
    return out


def base_agent_config(
    workdir: Path,
    ingest: Sequence[str],
    upstream: Sequence[str],
    overrides: dict[str, dict[str, object]] | None = None,
) -> dict[str, dict[str, object]]:
    """The contract's keys only (INTERFACE.md), pointed at bench endpoints."""
    cfg: dict[str, dict[str, object]] = {
        "agent": {"id": "bench-agent"},
        "ingest": {"bind": list(ingest)},
        "upstream": {"bind": list(upstream)},
        "buffer": {"budget_bytes": 512 * MiB},
        "spill": {"dir": str(workdir / "spill")},
        "http": {"bind": "127.0.0.1:0"},
    }
    for table_name, keys in (overrides or {}).items():
        cfg.setdefault(table_name, {}).update(keys)
    return cfg


@dataclasses.dataclass
class Sample:
    t_ns: int
    rss: int
    hwm: int
    cpu_s: float  # user + system CPU seconds of the process so far
    state: dict[str, Any] | None  # the endpoint's JSON, when polled


class AgentProcess:
    """`python -m agent run --config PATH` with its stderr in a log file."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, dict[str, object]],
        name: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.name = name
        self.extra_env = dict(env or {})
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(agent_config_text(config))
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url: str | None = None
        self.exit_status: int | None = None

    def start(self, timeout: float = 30.0) -> None:
        argv = [*agent_command(), "run", "--config", str(self.config_path)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.update(self.extra_env)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=str(REPO_ROOT), env=env
            )
        try:
            wait_for(self._find_url, timeout, f"{self.name}: its HTTP endpoint", interval=0.1)
        except BenchError as e:
            raise BenchError(f"{e}\n--- {self.log_path} (tail)\n{self.log_tail()}") from None

    def _find_url(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.name}: `{' '.join(map(str, self.proc.args))}` exited with status "
                f"{self.proc.returncode}\n--- {self.log_path} (tail)\n{self.log_tail()}"
            )
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return False
        # The agent logs the HTTP port it got for port 0; take every
        # host:port that is not a ZeroMQ endpoint and keep the one that answers.
        for m in re.finditer(r"(?<!tcp://)(127\.0\.0\.1|localhost|0\.0\.0\.0):(\d+)", text):
            url = f"http://127.0.0.1:{m.group(2)}"
            with contextlib.suppress(BenchError):
                self.get_json(ENDPOINT, base=url, timeout=1.0)
                self.url = url
                return True
        return False

    def get_json(self, path: str = ENDPOINT, base: str | None = None, timeout: float = 2.0) -> Any:
        base = base or self.url
        if base is None:
            raise BenchError(f"{self.name}: endpoint URL not known")
        try:
            with urllib.request.urlopen(base + path, timeout=timeout) as r:
                return json.loads(r.read())
        except (OSError, urllib.error.URLError, ValueError) as e:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with status {self.proc.returncode}\n"
                    f"--- {self.log_path} (tail)\n{self.log_tail()}"
                ) from e
            raise BenchError(f"{self.name}: GET {path}: {e}") from e

    def wait_subscribed(self, timeout: float = 15.0) -> None:
        """Until the agent sees a subscriber (events sent before would be held, not lost,
        but the throughput clock must not include the wait)."""

        def subscribed() -> bool:
            st = self.get_json()
            up = st.get("upstream")
            if not isinstance(up, dict) or "subscribers" not in up:
                time.sleep(1.0)  # no way to tell: give the SUB a second to connect
                return True
            return int(up["subscribers"]) > 0

        wait_for(subscribed, timeout, f"{self.name}: a subscriber", interval=0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (the agent spills what it holds and exits 0), SIGKILL after `timeout`."""
        if self.proc is not None:
            self.exit_status = stop_process(self.proc, timeout)
        return self.exit_status

    def keep_log(self, dest_name: str) -> Path | None:
        with contextlib.suppress(OSError):
            (OUT_DIR / "logs").mkdir(parents=True, exist_ok=True)
            dest = OUT_DIR / "logs" / dest_name
            shutil.copyfile(self.log_path, dest)
            return dest
        return None


class Sampler(threading.Thread):
    """Samples a process's RSS every `interval` s, and the agent's endpoint if given.

    A thread in the orchestrating process: it only reads /proc and makes one
    small HTTP request per tick (~1 ms of the agent's time), so it does not
    compete with the processes being measured in any way that matters.
    """

    def __init__(self, pid: int, interval: float = 0.1, agent: AgentProcess | None = None) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.agent = agent
        self.samples: list[Sample] = []
        self.errors = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            st = proc_status(self.pid)
            if not st:
                return
            state = None
            if self.agent is not None:
                try:
                    state = self.agent.get_json(timeout=1.0)
                except BenchError:
                    self.errors += 1
            cpu = proc_cpu_seconds(self.pid) or 0.0
            self.samples.append(
                Sample(mono_ns(), st.get("VmRSS", 0), st.get("VmHWM", 0), cpu, state)
            )
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def peak_rss(self) -> int:
        return max((s.rss for s in self.samples), default=0)

    def cpu_pct(self, t0_ns: int, t1_ns: int) -> float | None:
        """CPU use of the process between two instants, in % of one core."""
        inside = [s for s in self.samples if t0_ns <= s.t_ns <= t1_ns]
        if len(inside) < 2 or inside[-1].t_ns == inside[0].t_ns:
            return None
        a, b = inside[0], inside[-1]
        return 100 * (b.cpu_s - a.cpu_s) / ((b.t_ns - a.t_ns) / 1e9)

    def rss_at(self, t_ns: int) -> int | None:
        """RSS of the last sample at or before t_ns."""
        best = None
        for s in self.samples:
            if s.t_ns <= t_ns:
                best = s.rss
        return best


class Helper:
    """A bench helper process (relay, loadgen, subscriber): JSON lines on stdout,
    stderr in a log file, read with deadlines."""

    def __init__(self, name: str, argv: Sequence[str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.stderr"
        with open(self.log_path, "w") as log:
            self.proc = spawn(argv, stderr=log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, key: str, timeout: float) -> Any:
        """The value of the next JSON line that has `key` (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = read_json_line(self.proc, max(0.1, deadline - time.monotonic()), self.name)
            except BenchError as e:
                raise BenchError(f"{e}\n--- {self.log_path} (tail)\n{self.log_tail()}") from None
            if key in msg:
                return msg[key]

    def send(self, obj: dict[str, Any]) -> None:
        send_json_line(self.proc, obj)

    def finish(self, key: str, timeout: float = 15.0) -> Any:
        """SIGTERM, then the JSON line with `key` it prints on its way out."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.expect(key, timeout)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> int | None:
        return stop_process(self.proc, timeout)
