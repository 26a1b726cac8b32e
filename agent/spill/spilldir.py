"""The spill directory as a possibly hostile place (issue 13).

This module owns the spill directory: what must be true of it before anything
is read from it. Creating it (mode 0700), checking it (owned by the agent's
user, not writable by group or others), the exclusive lock on it, the
installation's checksum secret (file `seed`), the check that the disk can hold
the spill budget before anything is allocated, and the epoch file
(`next_epoch`). Every file in it is opened through `ringfile.open_private`:
without following symlinks, never blocking on a FIFO, regular files only.

Promises:
- The dir must be a directory owned by the agent's user and not writable by
  group or others, or the open fails naming it and what is wrong (created 0700
  when missing).
- One agent per directory: a second lock on a locked directory fails at once
  with SpillError naming the directory and the holder's pid. flock (not fcntl
  record locks) because it conflicts between two opens in the same process too
  and is not dropped when some other fd of the file is closed. The lock also
  keeps another agent from truncating our mapped files (FACTS: truncation of a
  mapped file is the second SIGBUS source).
- Checksums are seeded from a random secret created exclusively (0600) in the
  dir at the first start: records planted by someone who cannot read it fail
  their checksums. A seed file that is not exactly that is refused.
- `epoch.tmp` is created exclusively (a leftover or planted link is removed
  first), and `epoch` is replaced atomically after an fsync.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
from collections.abc import Sequence

from agent.spill.format import (
    FIXED_SEEDS,
    FORMAT_V1,
    SECRET_BYTES,
    Seeds,
    choose_slot,
    seeds_from_secret,
)
from agent.spill.ring import SpillError
from agent.spill.ringfile import fsync_dir, open_private, read_head

log = logging.getLogger("agent.spill")

LOCK_NAME = "LOCK"
SEED_NAME = "seed"
# What a version-1 ring file is renamed to while it is converted (convert.py).
V1_SUFFIX = ".v1"


def make_private_dir(dir: str) -> None:
    """Create dir and any missing parents with mode 0700 (spilled events are private)."""
    missing: list[str] = []
    path = os.path.abspath(dir)
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    try:
        for path in reversed(missing):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue  # created meanwhile by someone else: theirs, leave its mode
            os.chmod(path, 0o700)  # mkdir's mode goes through the umask; make it exact
        if not os.path.isdir(dir):
            raise SpillError(f"spill dir {dir} exists but is not a directory")
    except OSError as exc:
        raise SpillError(f"spill dir {dir}: cannot create: {exc.strerror}") from exc


def check_private_dir(dir: str) -> None:
    """SpillError naming `dir` and what is wrong unless it is a directory owned by
    this process's user and not writable by group or others (issue 13: whoever
    can write the dir could plant links or records, or truncate mapped files)."""
    try:
        st = os.stat(dir)
    except OSError as exc:
        raise SpillError(f"spill dir {dir}: cannot stat: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SpillError(f"spill dir {dir} exists but is not a directory")
    uid = os.geteuid()
    if st.st_uid != uid:
        raise SpillError(
            f"spill dir {dir} is owned by uid {st.st_uid}, not by the agent's user "
            f"(uid {uid}): refused (chown it to the agent's user)"
        )
    if st.st_mode & 0o022:
        raise SpillError(
            f"spill dir {dir} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): refused (chmod 0700 it)"
        )


def load_seeds(dir: str, ring_paths: Sequence[str]) -> Seeds:
    """The installation's checksum seeds, from the secret in `dir`/seed, created
    exclusively (0600) with 16 random bytes at the first start. A seed file that
    is not exactly that is refused (naming it): the rings cannot be verified
    without it, and a new secret would silently orphan every record."""
    path = os.path.join(dir, SEED_NAME)
    try:
        fd = open_private(path, os.O_RDONLY, f"spill seed {path}: cannot open")
    except SpillError:
        if os.path.lexists(path):
            raise
        fd = -1
    if fd >= 0:
        try:
            secret = os.pread(fd, SECRET_BYTES + 1, 0)
        except OSError as exc:
            raise SpillError(f"spill seed {path}: cannot read: {exc.strerror}") from exc
        finally:
            os.close(fd)
        if len(secret) != SECRET_BYTES:
            raise SpillError(
                f"spill seed {path} holds {len(secret)} bytes, not {SECRET_BYTES}: refused "
                "(restore it; without it the ring files cannot be verified)"
            )
        return seeds_from_secret(secret)
    for ring in ring_paths:
        with contextlib.suppress(OSError):
            if os.lstat(ring).st_size and not os.path.lexists(ring + V1_SUFFIX):
                on_disk, a, b = read_head(ring)
                if choose_slot(a, b, None, FIXED_SEEDS, FORMAT_V1)[0] is None:
                    log.warning(
                        "spill seed %s was missing: a new one is created, and what %s "
                        "holds cannot be verified with it (counted as corrupt)",
                        path,
                        ring,
                    )
    secret = os.urandom(SECRET_BYTES)
    fd = open_private(
        path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, f"spill seed {path}: cannot create"
    )
    try:
        os.write(fd, secret)
        os.fsync(fd)
    except OSError as exc:
        raise SpillError(f"spill seed {path}: cannot write: {exc.strerror}") from exc
    finally:
        os.close(fd)
    fsync_dir(path)
    return seeds_from_secret(secret)


def lock_dir(dir: str) -> int:
    path = os.path.join(dir, LOCK_NAME)
    fd = open_private(path, os.O_RDWR | os.O_CREAT, f"spill dir {dir}: cannot open {path}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = "?"
        with contextlib.suppress(OSError):  # the pid is only decoration on the message
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise SpillError(
                f"spill dir {dir} is in use by another edge-agent (pid {holder})"
            ) from exc
        raise SpillError(f"spill dir {dir}: cannot lock {path}: {exc.strerror}") from exc
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError as exc:
        os.close(fd)
        raise SpillError(f"spill dir {dir}: cannot write {path}: {exc.strerror}") from exc
    return fd


def check_space(dir: str, paths: list[str], max_bytes: int) -> None:
    """Fail before allocating anything when the filesystem cannot hold the spill
    budget (the rings' windows and the pool together).

    Counts only what is not allocated yet (existing files keep their blocks)
    and only the space an unprivileged user may take (f_bavail): the reserved
    blocks stay for the system's own emergencies."""
    allocated = 0
    for path in paths:
        try:
            allocated += os.lstat(path).st_blocks * 512
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SpillError(f"spill file {path}: cannot stat: {exc.strerror}") from exc
    need = max(0, max_bytes - allocated)
    try:
        st = os.statvfs(dir)
    except OSError as exc:
        raise SpillError(f"spill dir {dir}: cannot statvfs: {exc.strerror}") from exc
    available = st.f_bavail * st.f_frsize
    if need > available:
        raise SpillError(
            f"spill dir {dir}: [spill] max_bytes {max_bytes} needs {need} more bytes "
            f"preallocated but only {available} bytes are available on its filesystem"
        )


def next_epoch(spill_dir: str, now_ms: int) -> int:
    """A new epoch, larger than every earlier one on this box.

    Wall-clock milliseconds, but never below the last epoch + 1 recorded in the
    spill dir (file `epoch`, replaced atomically after an fsync): a gateway
    without an RTC can boot with its clock in 1970 and the head-end must still
    see a new epoch.
    """
    path = os.path.join(spill_dir, "epoch")
    last = 0
    if os.path.lexists(path):
        fd = open_private(path, os.O_RDONLY, f"spill dir {spill_dir}: cannot open {path}")
        try:
            with contextlib.suppress(ValueError):
                last = int(os.read(fd, 64).decode("ascii", "replace").strip() or 0)
        finally:
            os.close(fd)
    epoch = max(now_ms, last + 1)
    tmp = path + ".tmp"
    # Exclusively: a leftover (a crash between create and rename) or a planted
    # link is removed first (unlink removes a link, never its target).
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = open_private(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, f"spill dir {spill_dir}: cannot create {tmp}"
    )
    try:
        os.write(fd, f"{epoch}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return epoch
