"""Running the real agent in tests: a subprocess, real ZeroMQ, real HTTP.

Every agent gets its own short temporary directory for its ipc:// sockets and
its spill dir (ipc paths are limited to 107 bytes, so pytest's long tmp_path is
not used for sockets) and HTTP on port 0; the port it got is read from its
"ready" log line. Nothing is fixed, nothing is shared: safe under xdist.
Waiting is always for a condition with a deadline.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import cbor2
import zmq

READY = re.compile(r"ready: .* http://([^/]+):(\d+)/")


def wait_for(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def toml_string(text: str) -> str:
    """A TOML basic string for any text: quotes, backslashes and control
    characters escaped (TOML 1.0 allows a raw tab, nothing else below 0x20)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif (ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"no TOML form for {v!r} in a config")
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def render_toml(doc: dict[str, dict[str, Any]]) -> str:
    """{table: {key: value}} -> TOML text; the one renderer the tests share."""
    lines = []
    for table, keys in doc.items():
        lines.append(f"[{table}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in keys.items())
        lines.append("")
    return "\n".join(lines)


def event(meter: int | str, type_: str, ts: int = 1_790_000_000_000, **extra: object) -> bytes:
    return cbor2.dumps({"meter": meter, "ts": ts, "type": type_, **extra})


def split_sequence(body: bytes) -> list[bytes]:
    """A CBOR sequence -> each item's exact bytes."""
    fp = io.BytesIO(body)
    dec = cbor2.CBORDecoder(fp)
    out = []
    pos = 0
    while pos < len(body):
        dec.decode()
        end = fp.tell()
        out.append(body[pos:end])
        pos = end
    return out


class AgentProcess:
    def __init__(self, workdir: str, name: str = "agent", **overrides: dict[str, object]) -> None:
        self.overrides = overrides
        self.dir = workdir
        self.ingest = f"ipc://{workdir}/in"
        self.upstream = f"ipc://{workdir}/out"
        self.spill_dir = os.path.join(workdir, "spill")
        doc: dict[str, dict[str, object]] = {
            "agent": {"id": "gw-test"},
            "ingest": {"bind": [self.ingest]},
            "upstream": {"bind": [self.upstream]},
            "buffer": {"budget_bytes": 64 * 1024 * 1024, "critical_reserve_bytes": 4 * 1024 * 1024},
            "spill": {"dir": self.spill_dir, "max_bytes": 64 * 1024 * 1024},
            "http": {"bind": "127.0.0.1:0"},
        }
        for table, keys in overrides.items():
            doc.setdefault(table, {}).update(keys)
        self.config = os.path.join(workdir, f"{name}.toml")
        self.doc = doc
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.url = ""
        self.write_config()

    def write_config(self) -> None:
        with open(self.config, "w") as f:
            f.write(render_toml(self.doc))

    # -- process -------------------------------------------------------------

    def start(self, timeout: float = 20.0, env: dict[str, str] | None = None) -> AgentProcess:
        self.lines = []
        base = dict(os.environ)
        for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
            base.pop(var, None)
        env = {**base, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", self.config],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True).start()

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log}")
            for line in self.lines:
                m = READY.search(line)
                if m:
                    self.url = f"http://{m.group(1)}:{m.group(2)}"
                    return True
            return False

        wait_for(ready, timeout, what="the agent's ready line")
        return self

    def _read_stderr(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    def run_to_exit(self, timeout: float = 30.0) -> Exited:
        """`agent run` on this config in the foreground, for a start expected
        to fail: its status, stderr and how long it took (a hang fails the
        test at `timeout`)."""
        return run_agent_command(["run", "--config", self.config], timeout)

    # -- endpoint --------------------------------------------------------------

    def get(self, path: str = "/api/v1/gateway/backpressure") -> dict[str, Any]:
        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            return json.load(r)

    def wait_state(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0, what: str = ""
    ) -> dict[str, Any]:
        return wait_for(
            lambda: (lambda d: d if predicate(d) else None)(self.get()),
            timeout,
            interval=0.05,
            what=what,
        )


@dataclasses.dataclass(frozen=True)
class Exited:
    returncode: int
    stderr: str
    seconds: float  # wall time from spawn to exit, interpreter start included


def run_agent_command(args: list[str], timeout: float = 30.0) -> Exited:
    """`python -m agent *args` to its end, stdout discarded."""
    started = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "agent", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
    )
    return Exited(r.returncode, r.stderr, time.monotonic() - started)


class Subscriber:
    """A SUB on the agent's upstream that collects messages with their events."""

    def __init__(
        self, ctx: zmq.Context, endpoint: str, topic: bytes = b"", *, rcvhwm: int = 1000
    ) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.sock.subscribe(topic)
        self.messages: list[tuple[str, dict[str, Any], list[bytes]]] = []
        self.count = 0  # events received so far

    def recv_one(self, timeout_ms: int = 100) -> tuple[str, dict[str, Any], list[bytes]] | None:
        if not self.sock.poll(timeout_ms):
            return None
        frames = self.sock.recv_multipart()
        assert len(frames) == 3, frames
        cls, header, body = frames
        msg = (cls.decode("ascii"), cbor2.loads(header), split_sequence(body))
        assert msg[1]["count"] == len(msg[2])
        self.messages.append(msg)
        self.count += len(msg[2])
        return msg

    def events(self, cls: str | None = None) -> list[bytes]:
        return [e for c, _, evs in self.messages if cls in (None, c) for e in evs]

    def collect(self, n: int, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while self.count < n and time.monotonic() < deadline:
            self.recv_one()
        return self.events()

    def close(self) -> None:
        self.sock.close(0)


def short_tempdir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="ea-", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


__all__ = [
    "AgentProcess",
    "Exited",
    "Subscriber",
    "event",
    "render_toml",
    "run_agent_command",
    "short_tempdir",
    "signal",
    "split_sequence",
    "wait_for",
]
