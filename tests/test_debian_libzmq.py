"""The compiled burst reader on Debian's own pyzmq and libzmq (issue 10).

pyzmq's wheels bundle their libzmq; Debian's python3-zmq uses the system's
libzmq5. The reader finds whichever libzmq pyzmq loaded (agent/fastpath.py),
so this runs it under /usr/bin/python3 with Debian's zmq: frames in order, a
multipart message skipped whole. Skipped where python3-zmq is not installed
(.ci/run installs it).
"""

from __future__ import annotations

import pathlib
import subprocess

import pytest

from agent import fastpath

DEBIAN_PYTHON = "/usr/bin/python3"
REPO = pathlib.Path(__file__).resolve().parent.parent

SCRIPT = r"""
import sys, tempfile, time
sys.path.insert(0, sys.argv[1])
import zmq
assert zmq.__file__.startswith("/usr/lib/python3/dist-packages/"), zmq.__file__
from agent import fastpath
d = tempfile.mkdtemp()
ctx = zmq.Context()
pull = ctx.socket(zmq.PULL); pull.bind(f"ipc://{d}/in")
push = ctx.socket(zmq.PUSH); push.connect(f"ipc://{d}/in")
frames = [b"f%d" % i for i in range(300)]
for i, f in enumerate(frames):
    if i == 100:
        push.send_multipart([b"part1", b"part2"])
    push.send(f)
reader = fastpath.make_burst_reader(pull)
got, multi = [], 0
deadline = time.monotonic() + 10
while len(got) < 300 and time.monotonic() < deadline:
    pull.poll(100)
    fr, m = reader.read()
    got += [bytes(x) for x in fr]
    multi += m
print(reader.kind, zmq.zmq_version(), len(got), multi, got == frames)
"""


def debian_zmq() -> bool:
    try:
        done = subprocess.run(
            [DEBIAN_PYTHON, "-c", "import zmq; print(zmq.__file__)"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.startswith("/usr/lib/python3/dist-packages/")


@pytest.mark.skipif(fastpath.ACTIVE != "compiled", reason="the compiled core is not built")
@pytest.mark.skipif(not debian_zmq(), reason="Debian's python3-zmq is not installed")
def test_the_compiled_reader_drives_debians_libzmq() -> None:
    done = subprocess.run(
        [DEBIAN_PYTHON, "-c", SCRIPT, str(REPO)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    kind, version, n, multi, same = done.stdout.split()
    assert kind == "compiled"  # not the Python fallback
    assert (n, multi, same) == ("300", "1", "True"), done.stdout
    assert version.startswith("4.")
