"""Which ingest core runs: the compiled one (agent/_speedups.pyx) or the Python reference.

This module owns the choice and the two drop-ins the loop calls:

- `make_decoder(rules)`: an object with FrameDecoder's `decode_frames(frames)
  -> DecodeResult`, `decode_frame` and `set_rules`. Compiled, it is a
  `CompiledDecoder`: the scanner judges each frame in C and hands what it is
  unsure of (the rest of a frame from the item it cannot judge: map keys
  that are not ints, byte or text strings, maps of more than 32 keys) to a
  FrameDecoder, which stays the reference for every reason code. Its result
  equals FrameDecoder's for every input (tests/test_fastpath.py, `make fuzz`).
- `make_burst_reader(socket)`: `read() -> (frames, multipart)`, one burst of
  at most INGEST_MAX_FRAMES messages / INGEST_MAX_BYTES bytes received without
  waiting, multipart messages skipped whole and counted. Compiled, libzmq is
  called from C on the socket pyzmq created; in Python it is the loop's own
  `recv(NOBLOCK)` + `getsockopt(RCVMORE)` burst.

`ACTIVE` says which core runs: "compiled", or "python" when
EDGE_AGENT_PURE_PYTHON=1 forces it or the extension is not built (one log
line says why). It is decided once, at import. A compiled scanner with a
Python burst reader can happen (libzmq's functions not found in this
process: logged once); each reader says what it is in `reader.kind`.

Bounds: a burst stops after INGEST_MAX_FRAMES = 128 messages or once
INGEST_MAX_BYTES = 64 KiB are read (the frame crossing it is kept): the
values agent/loop.py uses (README "ingest burst size as built").
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from typing import Any, Protocol

import zmq

from agent.classes import ClassRules
from agent.codec import DecodeResult, FrameDecoder

log = logging.getLogger(__name__)

PURE_PYTHON_ENV = "EDGE_AGENT_PURE_PYTHON"
INGEST_MAX_FRAMES = 128  # messages per burst (agent/loop.py)
INGEST_MAX_BYTES = 64 * 1024  # bytes per burst, the crossing frame kept (agent/loop.py)


def _load_speedups() -> tuple[Any, str]:
    """The extension module (or None) and why it is (not) used."""
    if os.environ.get(PURE_PYTHON_ENV) == "1":
        return None, f"{PURE_PYTHON_ENV}=1: pure-Python ingest path forced"
    try:
        from agent import _speedups  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, f"compiled ingest core not available ({exc}): pure-Python ingest path"
    return _speedups, "compiled ingest core (agent/_speedups)"


_speedups, REASON = _load_speedups()
ACTIVE = "compiled" if _speedups is not None else "python"
if _speedups is None and not REASON.startswith(PURE_PYTHON_ENV):
    log.warning("%s", REASON)


# --- The decoder -------------------------------------------------------------


class Decoder(Protocol):
    def decode_frames(self, frames: list[bytes]) -> DecodeResult: ...
    def decode_frame(self, frame: bytes) -> DecodeResult: ...
    def set_rules(self, rules: ClassRules) -> None: ...


class CompiledDecoder:
    """FrameDecoder's interface and results; the scanner first, FrameDecoder when unsure."""

    __slots__ = ("_reference", "_scanner")

    def __init__(self, rules: ClassRules, *, max_depth: int = 32) -> None:
        if _speedups is None:
            raise RuntimeError("the compiled ingest core is not available")
        self._reference = FrameDecoder(rules, max_depth=max_depth)
        self._scanner = _speedups.Scanner(rules.lookup, max_depth)

    @property
    def unsure_frames(self) -> int:
        """Frames (or rests of frames) the scanner handed to the reference so far."""
        return int(self._scanner.unsure_frames)

    def set_rules(self, rules: ClassRules) -> None:
        """Classify with new rules from the next call on (SIGHUP reload)."""
        self._reference.set_rules(rules)
        self._scanner.set_rules(rules.lookup)

    def decode_frame(self, frame: bytes) -> DecodeResult:
        return self.decode_frames([frame])

    def decode_frames(self, frames: list[bytes]) -> DecodeResult:
        """Every frame's valid events by class, in arrival order, and its rejection if any."""
        result = DecodeResult(([], [], [], []), {}, len(frames), 0)
        self._scanner.decode_into(frames, result, self._unsure)
        return result

    def _unsure(self, rest: bytes) -> DecodeResult:
        # A suffix of a frame decodes alone as it would in place: each item is
        # decoded on its own (cbor2 keeps no state across items), and `rest` is
        # never empty (it starts at an item).
        return self._reference.decode_frames([bytes(rest)])


def make_decoder(rules: ClassRules, *, max_depth: int = 32) -> Decoder:
    """The decoder of the active core."""
    if _speedups is not None and max_depth <= _speedups.MAX_DEPTH_LIMIT:
        return CompiledDecoder(rules, max_depth=max_depth)
    return FrameDecoder(rules, max_depth=max_depth)


# --- The burst reader ----------------------------------------------------------


class BurstReader(Protocol):
    kind: str

    def read(self) -> tuple[list[bytes], int]: ...


class PythonBurstReader:
    """agent/loop.py's burst: recv(NOBLOCK) + getsockopt(RCVMORE) per frame."""

    __slots__ = ("_socket", "max_bytes", "max_frames")
    kind = "python"

    def __init__(
        self,
        socket: zmq.Socket[Any],
        max_frames: int = INGEST_MAX_FRAMES,
        max_bytes: int = INGEST_MAX_BYTES,
    ) -> None:
        if max_frames < 1 or max_bytes < 1:
            raise ValueError("max_frames and max_bytes must be >= 1")
        self._socket = socket
        self.max_frames = max_frames
        self.max_bytes = max_bytes

    def read(self) -> tuple[list[bytes], int]:
        """(frames, multipart messages skipped) of what is there now, without waiting."""
        recv = self._socket.recv
        more = self._socket.getsockopt
        frames: list[bytes] = []
        nbytes = 0
        multipart = 0
        for _ in range(self.max_frames):
            try:
                frame = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if more(zmq.RCVMORE):
                # A multipart message is rejected whole (INTERFACE.md). Its parts
                # arrive together, so reading the rest cannot block.
                while more(zmq.RCVMORE):
                    recv()
                multipart += 1
                continue
            frames.append(frame)
            nbytes += len(frame)
            if nbytes >= self.max_bytes:
                break
        return frames, multipart


class CompiledBurstReader:
    """The same burst with libzmq called from C (agent/_speedups.pyx BurstReader)."""

    __slots__ = ("_reader",)
    kind = "compiled"

    def __init__(
        self,
        socket: zmq.Socket[Any],
        addresses: Sequence[int],
        max_frames: int = INGEST_MAX_FRAMES,
        max_bytes: int = INGEST_MAX_BYTES,
    ) -> None:
        if _speedups is None:
            raise RuntimeError("the compiled ingest core is not available")
        self._reader = _speedups.BurstReader(
            socket, tuple(addresses), max_frames, max_bytes, zmq.ZMQError
        )

    @property
    def max_frames(self) -> int:
        return int(self._reader.max_frames)

    @property
    def max_bytes(self) -> int:
        return int(self._reader.max_bytes)

    def read(self) -> tuple[list[bytes], int]:
        """(frames, multipart messages skipped) of what is there now, without waiting."""
        frames, multipart = self._reader.read()
        return frames, multipart


def loaded_libzmq_paths(maps: str = "/proc/self/maps") -> list[str]:
    """Paths of the libzmq shared objects mapped into this process, pyzmq's first."""
    paths: list[str] = []
    try:
        with open(maps, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6:
                    path = parts[5].strip()
                    name = os.path.basename(path)
                    if name.startswith("libzmq") and ".so" in name and path not in paths:
                        paths.append(path)
    except OSError:
        return []
    # A pyzmq built with libzmq inside its backend module exports the symbols there.
    backend: str | None = None
    try:
        from zmq.backend.cython import _zmq

        backend = _zmq.__file__
    except ImportError:
        pass
    if backend and backend.endswith(".so") and backend not in paths:
        paths.append(backend)
    return paths


def libzmq_addresses(
    names: Sequence[str], paths: Sequence[str] | None = None
) -> tuple[list[int], str] | None:
    """Addresses of the libzmq functions `names` in the loaded libzmq, and its path.

    dlopen of a path that is already loaded returns that same instance: no
    second libzmq is loaded (FACTS.md, "pyzmq from C").
    """
    for path in paths if paths is not None else loaded_libzmq_paths():
        try:
            lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL | getattr(os, "RTLD_NOLOAD", 0))
            addresses = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in names]
        except (OSError, AttributeError):
            continue
        if all(addresses):
            return [int(a) for a in addresses if a is not None], path
    return None


_ADDRESSES: tuple[list[int], str] | None | bool = False  # False: not looked up yet


def make_burst_reader(
    socket: zmq.Socket[Any],
    *,
    max_frames: int = INGEST_MAX_FRAMES,
    max_bytes: int = INGEST_MAX_BYTES,
) -> BurstReader:
    """The burst reader of the active core for a PULL socket (see the module header)."""
    global _ADDRESSES
    if _speedups is not None:
        if _ADDRESSES is False:
            _ADDRESSES = libzmq_addresses(_speedups.LIBZMQ_FUNCTIONS)
            if _ADDRESSES is None:
                log.warning("libzmq's functions not found in this process: Python burst reader")
        if isinstance(_ADDRESSES, tuple):
            return CompiledBurstReader(socket, _ADDRESSES[0], max_frames, max_bytes)
    return PythonBurstReader(socket, max_frames, max_bytes)


def describe() -> str:
    """One line for the start-up log: which core runs and why."""
    return REASON


__all__ = [
    "ACTIVE",
    "INGEST_MAX_BYTES",
    "INGEST_MAX_FRAMES",
    "PURE_PYTHON_ENV",
    "REASON",
    "BurstReader",
    "CompiledBurstReader",
    "CompiledDecoder",
    "Decoder",
    "PythonBurstReader",
    "describe",
    "loaded_libzmq_paths",
    "make_burst_reader",
    "make_decoder",
]
