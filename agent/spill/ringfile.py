"""A ring file on disk: opening, preallocating, zero-filling and mapping it.

This module owns the file mechanics under a spill ring, and nothing about what
its bytes mean: every open of a ring file (`_open`: one place decides the flags),
posix_fallocate, the zero-fill of a new file, fsync of the file and of its
directory, and the shared read/write mapping. `SpillRing` (ring.py) decides
sizes and what goes where; `recover.py` and `format.py` read and write the bytes.

Promises:
- Nothing is ever written through a mapping where posix_fallocate did not
  allocate first (FACTS: writing through a mapping of a sparse file on a full
  disk kills the process with SIGBUS, which Python cannot catch; posix_fallocate
  fails with ENOSPC up front). A fixed ring is allocated whole before it is
  mapped; a sparse ring (the one budget, store.py) is mapped whole but written
  only inside its window, which `allocate` prepares first (reading a hole is
  safe: it reads zeros).
- Every failure is a SpillError naming the path (and the sizes when space is
  the problem); no file descriptor is left open, whatever fails.
- No open follows a symlink (O_NOFOLLOW) or blocks on a FIFO (O_NONBLOCK), and
  only regular files are used: whoever could plant a link in the spill dir
  cannot make the agent truncate or overwrite another file (issue 13).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import stat
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
    fd = open_private(path, flags, f"spill ring {path}: cannot {what}")
    try:
        yield fd
    finally:
        os.close(fd)


# Every open of a file in the spill dir: never through a symlink, never blocking
# on a FIFO (O_NONBLOCK means nothing for a regular file).
SAFE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_private(path: str, flags: int, context: str, mode: int = 0o600) -> int:
    """A descriptor of the regular file `path`, opened without following a
    symlink; SpillError starting with `context` otherwise (a symlink, a FIFO, a
    directory, or any OS error). Created with `mode` when O_CREAT is given."""
    try:
        fd = os.open(path, flags | SAFE_FLAGS, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpillError(f"{context}: it is a symlink (refused)") from exc
        raise SpillError(f"{context}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise SpillError(f"{context}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise SpillError(f"{context}: not a regular file (refused)")
    return fd


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
        fd = os.open(
            os.path.dirname(os.path.abspath(path)),
            os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
        )
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


# --------------------------------------------------------------- sparse rings
#
# A ring in a shared budget (store.py) is a sparse file: its circle is the whole
# budget, but only the window between its head and its tail is allocated. Every
# range is allocated with fallocate and zero-filled with pwrite *before* the
# mapping writes into it (FACTS: a write fault into a hole on a full disk is a
# SIGBUS; an unwritten extent costs up to 100 ms on its first write fault), and
# punched once released, so the blocks go back to the budget.

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
_fallocate.restype = ctypes.c_int


def allocate(fd: int, offset: int, length: int) -> bool:
    """Allocate and zero-fill [offset, offset + length) of a ring file. False: no
    space on the disk (ENOSPC), nothing to undo; SpillError for other errors."""
    if length <= 0:
        return True
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return False
        raise SpillError(f"spill ring fd {fd}: fallocate failed: {exc.strerror}") from exc
    zeros = bytes(min(ZERO_FILL_STEP, length))
    at, end = offset, offset + length
    try:
        while at < end:
            n = min(ZERO_FILL_STEP, end - at)
            os.pwrite(fd, zeros if n == len(zeros) else zeros[:n], at)
            at += n
    except OSError as exc:
        raise SpillError(f"spill ring fd {fd}: zero-fill failed: {exc.strerror}") from exc
    return True


def punch(fd: int, offset: int, length: int) -> None:
    """Give the blocks of [offset, offset + length) back to the file system (the
    range reads as zeros from now on; the file keeps its size)."""
    if length <= 0:
        return
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise SpillError(f"spill ring fd {fd}: punching a hole failed: {os.strerror(err)}")


def open_sparse(path: str, size: int) -> int:
    """A descriptor of the ring file at `path` (created 0600 when missing),
    extended (sparse) to `size` bytes, its header pages allocated."""
    fd = open_private(path, os.O_RDWR | os.O_CREAT, f"spill ring {path}: cannot open")
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
        preallocate(fd, path, DATA_OFFSET)
    except OSError as exc:
        os.close(fd)
        raise SpillError(f"spill ring {path}: cannot size: {exc.strerror}") from exc
    except SpillError:
        os.close(fd)
        raise
    return fd


def map_fd(fd: int, path: str, size: int) -> mmap.mmap:
    try:
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as exc:
        raise SpillError(f"spill ring {path}: cannot map: {exc.strerror}") from exc
