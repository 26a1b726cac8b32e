"""Build of the optional compiled core (agent/_speedups.pyx); metadata is in setup.cfg.

The extension is optional by construction: without Cython or without a working
C compiler the package installs as pure Python (agent/fastpath.py then runs
the reference path and logs it once at start-up). A failed compile never
fails the install. `EDGE_AGENT_PURE_PYTHON=1` at build time skips it too.

`make fuzz-asan` builds its own AddressSanitizer copy in build/asan, never
through this file.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SPEEDUPS = "agent._speedups"


class OptionalBuildExt(build_ext):
    """build_ext that reports a failed extension build and carries on without it."""

    _failed = False

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure: install pure Python
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - same: the extension is an optimisation
            self._skip(exc)

    def _skip(self, exc: BaseException) -> None:
        if not OptionalBuildExt._failed:  # once: an in-place build fails twice (build, copy)
            print(
                f"edge-agent: building {SPEEDUPS} failed ({exc}); installing the pure-Python path",
                file=sys.stderr,
            )
        OptionalBuildExt._failed = True


def extensions() -> list[Extension]:
    if os.environ.get("EDGE_AGENT_PURE_PYTHON") == "1":
        print("edge-agent: EDGE_AGENT_PURE_PYTHON=1, not building " + SPEEDUPS, file=sys.stderr)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print(f"edge-agent: Cython not installed, not building {SPEEDUPS}", file=sys.stderr)
        return []
    ext = Extension(SPEEDUPS, ["agent/_speedups.pyx"], extra_compile_args=["-O2", "-g0"])
    try:
        return list(cythonize([ext], language_level=3, quiet=True))
    except Exception as exc:  # noqa: BLE001 - a Cython error must not fail the install either
        print(f"edge-agent: cythonize failed ({exc}); pure-Python path only", file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
