"""A ring file on disk: opening, preallocating, zero-filling and mapping it.

This module owns the file mechanics under a spill ring, and nothing about what
its bytes mean: every open of a ring file (`_open`: one place decides the flags),
posix_fallocate, the zero-fill of a new file, fsync of the file and of its
directory, and the shared read/write mapping. `SpillRing` (ring.py) decides
sizes and what goes where; `recover.py` and `format.py` read and write the bytes.

Promises:
- Nothing is ever mapped beyond what posix_fallocate allocated (FACTS: writing
  through a mapping of a sparse file on a full disk kills the process with
  SIGBUS, which Python cannot catch; posix_fallocate fails with ENOSPC up front).
- Every failure is a SpillError naming the path (and the sizes when space is
  the problem); no file descriptor is left open, whatever fails.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager

from agent.spill.format import DATA_OFFSET, SLOT_BYTES, SLOT_ENCODED_BYTES

# pwrite size when zero-filling a new ring: big enough for disk speed, small
# enough not to matter for memory.
ZERO_FILL_STEP = 4 * 1024 * 1024


class SpillError(Exception):
    """The disk failed us (no space, I/O error, permissions). The message names the path."""


@contextmanager
def _open(path: str, flags: int, what: str) -> Iterator[int]:
    """A file descriptor of `path`, closed on the way out; `what` names the step in
    the error ("open", "reopen")."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SpillError(f"spill ring {path}: cannot {what}: {exc.strerror}") from exc
    try:
        yield fd
    finally:
        os.close(fd)


def available_bytes(path: str) -> int | None:
    """Bytes an unprivileged user may still allocate on the filesystem holding
    `path` (f_bavail), or None when that cannot be asked."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def preallocate(fd: int, path: str, size: int) -> None:
    """posix_fallocate [0, size) or SpillError: never leave a sparse file to be mapped."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        avail = available_bytes(path)
        avail_txt = f"{avail} bytes available" if avail is not None else "free space unknown"
        raise SpillError(
            f"spill ring {path}: cannot preallocate {size} bytes "
            f"({errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror}); "
            f"{avail_txt} on its filesystem"
        ) from exc


def read_head(path: str) -> tuple[int, bytes, bytes]:
    """(size on disk, header slot A, header slot B) of the ring file at `path`,
    created empty (mode 0600) when missing. The slots are b"" when the file is
    too short to hold them."""
    with _open(path, os.O_RDWR | os.O_CREAT, "open") as fd:
        try:
            on_disk = os.fstat(fd).st_size
            if on_disk < DATA_OFFSET:
                return on_disk, b"", b""
            return (
                on_disk,
                os.pread(fd, SLOT_ENCODED_BYTES, 0),
                os.pread(fd, SLOT_ENCODED_BYTES, SLOT_BYTES),
            )
        except OSError as exc:
            raise SpillError(f"spill ring {path}: cannot read: {exc.strerror}") from exc


def map_file(path: str, size: int, *, sync: bool, shrink: bool = False) -> mmap.mmap:
    """Map [0, size) of the existing file at `path` shared, read and write.

    The file is extended with posix_fallocate to `size` first (a truncated file
    included), so no page of the mapping lies beyond what is allocated. `shrink`:
    cut a longer file to `size` first. `sync`: fsync the file before mapping (a
    new allocation must be durable before an msync of the mapping means anything)."""
    with _open(path, os.O_RDWR, "reopen") as fd:
        if shrink:
            try:
                if size < os.fstat(fd).st_size:
                    os.ftruncate(fd, size)
            except OSError as exc:
                raise SpillError(f"spill ring {path}: cannot shrink: {exc.strerror}") from exc
        preallocate(fd, path, size)
        try:
            if sync:
                os.fsync(fd)
            return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise SpillError(f"spill ring {path}: cannot map: {exc.strerror}") from exc


def zero_fill(path: str, start: int, end: int) -> None:
    """Write real zeros over [start, end) of the file with pwrite, then fsync.

    posix_fallocate leaves *unwritten* extents: the first write fault on each
    page then has to convert its extent, which goes through the filesystem
    journal. Why a ring pays this once at creation, and what it costs, is in
    `SpillRing._zero_fill`."""
    with _open(path, os.O_WRONLY, "reopen") as fd:
        try:
            zeros = bytes(min(ZERO_FILL_STEP, max(0, end - start)))
            at = start
            while at < end:
                n = min(ZERO_FILL_STEP, end - at)
                os.pwrite(fd, zeros if n == len(zeros) else zeros[:n], at)
                at += n
            os.fsync(fd)
        except OSError as exc:
            raise SpillError(
                f"spill ring {path}: cannot write {end - start} bytes of zeros: {exc.strerror}"
            ) from exc


def fsync_dir(path: str) -> None:
    """Make a new file's directory entry durable (once, at creation)."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise SpillError(f"spill ring {path}: cannot open its directory: {exc.strerror}") from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        raise SpillError(
            f"spill ring {path}: fsync of its directory failed: {exc.strerror}"
        ) from exc
    finally:
        os.close(fd)
