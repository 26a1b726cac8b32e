"""agent.fastpath: the core that runs, its decoder and burst reader, and both fallbacks.

Run twice by `make test`: normally (the compiled core must be the one
running: a missing extension fails here) and with EDGE_AGENT_PURE_PYTHON=1
(the Python core must be the one running, and behave like the loop's code).
Whichever core is active, make_decoder() must agree with FrameDecoder on the
codec's own property strategies, and make_burst_reader() with the Python burst.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codec import NONCANONICAL, REJECTIONS, enc, frame_lists, h, long_frame_lists

from agent import fastpath
from agent.classes import ClassRules, EventClass
from agent.codec import FrameDecoder

PURE = os.environ.get(fastpath.PURE_PYTHON_ENV) == "1"
NORMAL = int(EventClass.NORMAL)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def same(frames: list[bytes], rules: ClassRules | None = None) -> None:
    rules = rules or ClassRules()
    got = fastpath.make_decoder(rules).decode_frames(frames)
    want = FrameDecoder(rules).decode_frames(frames)
    assert got == want


# --- Which core ---------------------------------------------------------------


def test_the_expected_core_is_active() -> None:
    if PURE:
        assert fastpath.ACTIVE == "python"
        assert isinstance(fastpath.make_decoder(ClassRules()), FrameDecoder)
    else:
        # `make test` builds the extension: without it this run must fail.
        assert fastpath.ACTIVE == "compiled", fastpath.REASON
        assert isinstance(fastpath.make_decoder(ClassRules()), fastpath.CompiledDecoder)
    assert fastpath.describe() == fastpath.REASON


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != fastpath.PURE_PYTHON_ENV}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_environment_forces_python() -> None:
    out = run_python(
        "from agent import fastpath; print(fastpath.ACTIVE); print(fastpath.REASON)",
        EDGE_AGENT_PURE_PYTHON="1",
    )
    assert out.stdout.splitlines() == [
        "python",
        "EDGE_AGENT_PURE_PYTHON=1: pure-Python ingest path forced",
    ]
    assert out.stderr == ""  # forcing is not a warning


def test_missing_extension_falls_back_with_one_log_line() -> None:
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO);"
        "sys.modules['agent._speedups'] = None;"  # import of it raises ImportError
        "from agent import fastpath; print(fastpath.ACTIVE)"
    )
    out = run_python(code)
    assert out.stdout.strip() == "python"
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "compiled ingest core not available" in lines[0], lines


def test_compiled_decoder_needs_the_extension() -> None:
    if fastpath.ACTIVE == "compiled":
        pytest.skip("the extension is loaded")
    with pytest.raises(RuntimeError):
        fastpath.CompiledDecoder(ClassRules())


# --- The active decoder agrees with the reference -------------------------------


@pytest.mark.parametrize("frame", [r[1] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
def test_hostile_corpus(frame: bytes) -> None:
    same([frame])
    same([enc(), frame, enc() + frame, frame + enc()])


@pytest.mark.parametrize("frame", [n[1] for n in NONCANONICAL], ids=[n[0] for n in NONCANONICAL])
def test_valid_frames_keep_their_bytes(frame: bytes) -> None:
    same([frame, frame * 3])
    decoder = fastpath.make_decoder(ClassRules())
    assert decoder.decode_frame(frame).events[NORMAL][0] is frame  # one-item frames: no copy


def test_unsure_rest_of_a_frame_keeps_order_and_counts() -> None:
    other_keys = NONCANONICAL[15][1]  # "array, map, tag, float, null keys": to cbor2
    frames = [enc(ts=1) + other_keys + enc(ts=2) + h("ff"), enc(ts=3), other_keys, b"", enc()[:-1]]
    same(frames)
    decoder = fastpath.make_decoder(ClassRules())
    result = decoder.decode_frames(frames)
    assert result.events[NORMAL] == [enc(ts=1), other_keys, enc(ts=2), enc(ts=3), other_keys]
    assert result.rejected == {"malformed": 1, "empty_frame": 1, "truncated": 1}
    if isinstance(decoder, fastpath.CompiledDecoder):
        assert decoder.unsure_frames == 2


def test_set_rules() -> None:
    decoder = fastpath.make_decoder(ClassRules())
    frames = [enc(type="reading"), enc(type="fault")]
    decoder.set_rules(ClassRules({EventClass.LOW: ("fault",), EventClass.CRITICAL: ("reading",)}))
    assert decoder.decode_frames(frames).events == ([frames[0]], [], [], [frames[1]])
    # And the unsure path classifies with the new rules too.
    unsure = NONCANONICAL[15][1]
    decoder.set_rules(ClassRules({EventClass.HIGH: ("reading",)}))
    assert decoder.decode_frames([unsure]).events[1] == [unsure]


def test_max_depth_beyond_the_scanner_uses_the_reference() -> None:
    assert isinstance(fastpath.make_decoder(ClassRules(), max_depth=100), FrameDecoder)
    shallow = fastpath.make_decoder(ClassRules(), max_depth=3)
    assert shallow.decode_frames([enc(v=[[1]])] * 2).accepted == 2
    assert shallow.decode_frames([enc(v=[[[1]]])] * 2).rejected == {"too_deep": 2}


@given(frame_lists())
@settings(max_examples=200)
def test_structured_and_mutated_frames(frames: list[bytes]) -> None:
    same(frames)


@given(long_frame_lists())
@settings(max_examples=30)
def test_long_frame_lists(frames: list[bytes]) -> None:
    same(frames)


@given(st.lists(st.binary(max_size=40), max_size=10))
@settings(max_examples=300)
def test_arbitrary_bytes(frames: list[bytes]) -> None:
    same(frames)


def test_decode_frames_of_nothing() -> None:
    assert fastpath.make_decoder(ClassRules()).decode_frames([]) == FrameDecoder(
        ClassRules()
    ).decode_frames([])


# --- Burst readers ----------------------------------------------------------------


@pytest.fixture
def pulls(zctx: zmq.Context[Any], tmp_path: Any) -> Iterator[tuple[zmq.Socket[Any], Any]]:
    """A PUSH connected to two PULLs' worth of endpoints: send(msg) sends to both."""
    sockets = []
    pushes = []
    for name in ("a", "b"):
        endpoint = f"ipc://{tmp_path}/{name}"
        pull = zctx.socket(zmq.PULL)
        pull.bind(endpoint)
        push = zctx.socket(zmq.PUSH)
        push.connect(endpoint)
        sockets.append(pull)
        pushes.append(push)

    class Both:
        @staticmethod
        def send(msg: list[bytes]) -> None:
            for push in pushes:
                push.send_multipart(msg)

    yield sockets, Both
    for s in sockets + pushes:
        s.close(linger=0)


def drain(reader: Any, pull: zmq.Socket[Any], messages: int) -> tuple[list[bytes], int]:
    frames: list[bytes] = []
    multipart = 0
    while len(frames) + multipart < messages:
        assert pull.poll(5000), f"only {len(frames)} + {multipart} of {messages} arrived"
        got, skipped = reader.read()
        assert len(got) + skipped <= reader.max_frames
        frames += got
        multipart += skipped
    return frames, multipart


def test_active_reader_equals_the_python_burst(pulls: Any) -> None:
    (a, b), both = pulls
    messages: list[list[bytes]] = []
    for i in range(400):
        if i % 37 == 5:
            messages.append([b"m%d" % i, b"x" * (i % 3), b"y"])
        else:
            messages.append([enc(ts=i) * (1 + i % 4) if i % 50 else b""])
    for msg in messages:
        both.send(msg)
    active = fastpath.make_burst_reader(a)
    python = fastpath.PythonBurstReader(b)
    assert active.kind == fastpath.ACTIVE
    got = drain(active, a, len(messages))
    want = drain(python, b, len(messages))
    assert got == want
    assert got == ([m[0] for m in messages if len(m) == 1], sum(len(m) > 1 for m in messages))


def test_burst_bounds(pulls: Any) -> None:
    (a, b), both = pulls
    for _ in range(30):
        both.send([b"z" * 10_000])
    for reader, pull in (
        (fastpath.make_burst_reader(a, max_frames=4, max_bytes=25_000), a),
        (fastpath.PythonBurstReader(b, max_frames=4, max_bytes=25_000), b),
    ):
        bursts = []
        total = 0
        while total < 30:
            assert pull.poll(5000)
            frames, _ = reader.read()
            bursts.append(len(frames))
            total += len(frames)
        assert max(bursts) <= 3  # the third 10 KB frame crosses 25,000 bytes and ends a burst


def test_readers_on_an_empty_socket(pulls: Any) -> None:
    (a, b), _ = pulls
    assert fastpath.make_burst_reader(a).read() == ([], 0)
    assert fastpath.PythonBurstReader(b).read() == ([], 0)
    with pytest.raises(ValueError):
        fastpath.PythonBurstReader(b, max_frames=0)


def test_libzmq_is_found_in_this_process() -> None:
    if fastpath.ACTIVE != "compiled":
        pytest.skip("pure-Python run")
    paths = fastpath.loaded_libzmq_paths()
    assert paths, "no libzmq mapped into this process"
    from agent import _speedups

    found = fastpath.libzmq_addresses(_speedups.LIBZMQ_FUNCTIONS)
    assert found is not None and all(found[0])
    # A path that is not loaded is never loaded by the lookup (RTLD_NOLOAD).
    assert fastpath.libzmq_addresses(_speedups.LIBZMQ_FUNCTIONS, ["/nonexistent/libzmq.so"]) is None


# --- The build -----------------------------------------------------------------


def test_a_failed_compile_installs_pure_python(tmp_path: Any) -> None:
    """setup.py with no working C compiler (or no Cython) succeeds, without the extension."""
    import shutil

    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    shutil.copytree(
        os.path.join(ROOT, "agent"),
        tmp_path / "agent",
        ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"),
    )
    environ = {k: v for k, v in os.environ.items() if k != fastpath.PURE_PYTHON_ENV}
    out = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=tmp_path,
        env={**environ, "CC": "false"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert not list((tmp_path / "agent").glob("_speedups*.so"))
    notes = [line for line in out.stderr.splitlines() if line.startswith("edge-agent:")]
    assert len(notes) == 1 and ("pure-Python" in notes[0] or "not building" in notes[0]), notes
