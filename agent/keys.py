"""CURVE key files: reading the agent's secret key and the allowed peers' public
keys, and writing new key pairs (`edge-agent keygen`).

This module owns every rule about key files on disk; agent/curve.py owns what
the keys are used for (the CURVE options and the ZAP handler). No sockets here:
only files, in the format of pyzmq's `zmq.auth` (ZPL certificates with
`public-key` / `secret-key` in a `curve` section, INTERFACE.md), which any
ZeroMQ binding reads. It promises:

- A key that is loaded is a valid one: 40 Z85 characters that decode to 32
  bytes, and a secret key whose public key matches the one in its file. Anything
  else is a `CurveError` naming the config key (when there is one) and the path,
  raised at start or reload, never in a peer's handshake.
- Files are read as found, never as they claim to be (issue 13 item 7): a key
  file is read only if it is a regular file (no symlink is followed, no FIFO,
  socket or device is ever opened: a FIFO named `evil.key` stalled the loop on
  SIGHUP before this), of at most MAX_CERTIFICATE_BYTES. Reading never blocks:
  the type is checked with lstat before the open, the open is
  O_NOFOLLOW|O_NONBLOCK, and fstat confirms the same regular file was opened.
- Who could have written a key is checked, because whoever can write a key
  decides who gets in: an allowed directory and the key files in it must be
  owned by root or the agent's own user and not writable by group or others;
  so must the secret key file, which besides must not be readable by others,
  nor by a group other than one of the agent's own (`keygen --group`). Each
  violation is a CurveError naming the path and what is wrong (refuse, not
  warn: ssh refuses an unprotected private key for the same reason).
- A file in an allowed directory named `*.key` that is a regular file and does
  not hold a valid key is an error, not a skipped file: a key that silently
  fails to load locks a collector out. An entry that is not a regular file at
  all (symlink, FIFO, socket, device, directory) is skipped with a WARNING
  naming it and what it is.
- "Permission denied" says so, with the user the agent runs as and the fix
  (issue 12 item 2: the message used to be pyzmq's "Invalid certificate file").
- `generate_keypair` never overwrites a file and never leaves the secret key
  readable by anyone else, not even for a moment: it is created empty with its
  final owner, group and mode before the key is written into it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import logging
import os
import pwd
import shutil
import stat
import struct
import tempfile

import zmq
import zmq.auth
from zmq.utils import z85

log = logging.getLogger("agent.keys")

_Z85_KEY_LEN = 40  # a 32-byte Curve25519 key, Z85-encoded (RFC 32)

# Bytes. A certificate written by zmq.auth is ~350 bytes (a comment banner, a
# metadata section, one or two key lines); free-form metadata or comments could
# make it a few KiB. Anything past 64 KiB is the wrong file (a log, a core, a
# disk image named *.key) and is refused instead of being read whole into the
# event loop's thread.
MAX_CERTIFICATE_BYTES = 64 * 1024
# Entries looked at in one allowed directory. A reload reads them all in the
# loop's thread: ~25-70 us per certificate here (lstat, open, fstat, read,
# parse, Z85 check; 1,024 took 23-69 ms on this loaded 2-core box, 10,000 took
# 0.4-0.7 s), a stall that delays the next alert. A substation gateway has
# tens to a few hundred collectors (the unit's LimitNOFILE comment), so 1,024
# is ample, and a directory past it is a mistake, refused by name.
MAX_DIR_ENTRIES = 1024

# Mode bits that let someone other than the owner replace a file's contents (or
# a directory's entries).
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


class CurveError(Exception):
    """A key file or key directory is missing, unreadable or malformed, or a key
    pair cannot be written. The message names the config key (when there is
    one) and the path."""


class NotARegularFile(CurveError):
    """The path is a symlink, FIFO, socket, device or directory: never opened."""


def _where(key_name: str, path: str) -> str:
    return f"{key_name}: {path}" if key_name else path


# -- who is reading: the agent's own user --------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reader:
    """The identity whose access the checks are about (the running process)."""

    uid: int
    gids: frozenset[int]  # effective gid and supplementary groups

    @classmethod
    def current(cls) -> Reader:
        return cls(os.geteuid(), frozenset({os.getegid(), *os.getgroups()}))

    @property
    def user(self) -> str:
        """`edge-agent (uid 998)`: for messages."""
        try:
            name = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return f"uid {self.uid}"
        return f"{name} (uid {self.uid})"


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "special file"


def _owner_problem(st: os.stat_result, reader: Reader) -> str | None:
    if st.st_uid in (0, reader.uid):
        return None
    return (
        f"owned by uid {st.st_uid}, which is neither root nor the agent's user "
        f"{reader.user}: whoever owns it decides what the agent trusts"
    )


def dir_problem(st: os.stat_result, reader: Reader) -> str | None:
    """What is wrong with an allowed directory, from its stat, or None. Pure."""
    if not stat.S_ISDIR(st.st_mode):
        return f"not a directory (a {_kind(st.st_mode)})"
    owner = _owner_problem(st, reader)
    if owner is not None:
        return owner
    mode = stat.S_IMODE(st.st_mode)
    if mode & _WRITABLE_BY_OTHERS:
        return (
            f"writable by group or others (mode {mode:04o}): anyone who can add a .key "
            f"file here is admitted; chmod go-w it"
        )
    return None


def file_problem(st: os.stat_result, reader: Reader) -> str | None:
    """What is wrong with a key file that is to be read, from its fstat, or
    None. Pure."""
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file (a {_kind(st.st_mode)})"
    if st.st_size > MAX_CERTIFICATE_BYTES:
        return (
            f"{st.st_size} bytes: a certificate is under 1 KiB and at most "
            f"{MAX_CERTIFICATE_BYTES} bytes are read (the wrong file?)"
        )
    owner = _owner_problem(st, reader)
    if owner is not None:
        return owner
    mode = stat.S_IMODE(st.st_mode)
    if mode & _WRITABLE_BY_OTHERS:
        return f"writable by group or others (mode {mode:04o}): chmod go-w it"
    return None


def secret_problem(st: os.stat_result, reader: Reader) -> str | None:
    """What is wrong with who may read the agent's secret key file, or None.
    Readable by the owner, and by a group only when it is one of the agent's
    own (`keygen --group`: root-owned, 0640 to the service's group). Pure."""
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IROTH:
        return (
            f"the secret key is readable by every user of this box (mode {mode:04o}): "
            "chmod 600 it (or 640 with the agent's group), and make a new key pair if "
            "others may have copied it"
        )
    if mode & stat.S_IRGRP and st.st_gid not in reader.gids:
        return (
            f"the secret key is readable by group {_group_name(st.st_gid)}, which is not "
            f"a group of the agent's user {reader.user} (mode {mode:04o}): chmod 600 it, "
            "or chgrp it to the agent's group"
        )
    return None


def _group_name(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


def _os_problem(e: OSError, reader: Reader, what: str) -> str:
    """The message for an OSError from lstat/open on a key path."""
    if isinstance(e, PermissionError):
        return (
            f"permission denied: the agent runs as user {reader.user}, which cannot read "
            f"this {what} or search a directory on its path; make the key readable by that "
            'user\'s group (`edge-agent keygen --group GROUP` does, README "Security")'
        )
    if isinstance(e, FileNotFoundError):
        return f"no such {what}"
    return f"cannot read: {e.strerror or e}"


# -- reading ---------------------------------------------------------------------


def parse_certificate(data: bytes) -> tuple[bytes | None, bytes | None]:
    """(public, secret) as written in a ZPL certificate, unchecked (either may
    be None). The same reading as pyzmq's `zmq.auth.load_certificate`: the
    first `public-key` and `secret-key` lines, quotes and blanks stripped,
    `#` lines ignored. Pure."""
    public = secret = None
    for raw in data.splitlines():
        line = raw.strip()
        if line.startswith(b"#"):
            continue
        for name in (b"public-key", b"secret-key"):
            if line.startswith(name):
                _, eq, value = line.partition(b"=")
                text = value.strip(b" \t'\"") if eq else b""
                if name == b"public-key":
                    public = public if public is not None else text
                else:
                    secret = secret if secret is not None else text
        if public and secret:
            break
    return public, secret


def _z85_key(text: bytes | None, path: str, what: str, key_name: str) -> bytes:
    """Check that `text` is a Z85-encoded 32-byte key; return it unchanged."""
    where = _where(key_name, path)
    if text is None:
        raise CurveError(f"{where}: no {what} in the file")
    ok = len(text) == _Z85_KEY_LEN and all(c in z85.Z85CHARS for c in text)
    if ok:
        try:
            z85.decode(text)
        except (ValueError, struct.error):  # a 5-character group over 2**32
            ok = False
    if not ok:
        raise CurveError(f"{where}: {what} is not a 40-character Z85 key")
    return text


def _read_file(
    path: str, key_name: str, reader: Reader, *, dir_fd: int | None, shown: str
) -> tuple[bytes, os.stat_result]:
    """The bytes of the key file at `path` (relative to `dir_fd` when given;
    `shown` is the path for messages), read as found: see the module
    docstring. NotARegularFile when it is not a regular file (nothing was
    opened); CurveError for every other problem."""
    where = _where(key_name, shown)
    try:
        # lstat first: opening a FIFO or a device can block or have side
        # effects (a tape rewinds on open), so only a regular file is opened.
        before = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as e:
        raise CurveError(f"{where}: {_os_problem(e, reader, 'file')}") from e
    if not stat.S_ISREG(before.st_mode):
        raise NotARegularFile(f"{where}: not a regular file (a {_kind(before.st_mode)})")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as e:
        raise CurveError(f"{where}: {_os_problem(e, reader, 'file')}") from e
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise CurveError(f"{where}: replaced while being read; try again")
        problem = file_problem(st, reader)
        if problem is not None:
            raise CurveError(f"{where}: {problem}")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CERTIFICATE_BYTES:  # the file may grow after fstat
            chunk = os.read(fd, MAX_CERTIFICATE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_CERTIFICATE_BYTES:
            raise CurveError(f"{where}: grew past {MAX_CERTIFICATE_BYTES} bytes while read")
        return b"".join(chunks), st
    except OSError as e:
        raise CurveError(f"{where}: cannot read: {e.strerror or e}") from e
    finally:
        os.close(fd)


def _read_certificate(
    path: str,
    key_name: str,
    reader: Reader,
    *,
    dir_fd: int | None = None,
    shown: str | None = None,
) -> tuple[bytes | None, bytes | None, os.stat_result]:
    """(public, secret) as written in the certificate at `path`, unchecked,
    and the file's fstat."""
    shown = shown or path
    data, st = _read_file(path, key_name, reader, dir_fd=dir_fd, shown=shown)
    public, secret = parse_certificate(data)
    if public is None:
        where = _where(key_name, shown)
        raise CurveError(f"{where}: not a ZeroMQ certificate (no public-key line)")
    return public, secret, st


def load_secret_key(path: str, key_name: str = "") -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ZPL secret certificate (`*.key_secret`).

    Checks that the secret key is there (a public `.key` file given by mistake
    is the likeliest slip) and that the public key in the file belongs to it,
    so a corrupted file fails here, at start, and not in every peer's handshake.
    """
    where = _where(key_name, path)
    reader = Reader.current()
    public, secret, st = _read_certificate(path, key_name, reader)
    if secret is None:
        raise CurveError(
            f"{where}: no secret-key in the file (a public .key file? "
            "give the .key_secret file that `edge-agent keygen` wrote)"
        )
    public = _z85_key(public, path, "public-key", key_name)
    secret = _z85_key(secret, path, "secret-key", key_name)
    if zmq.curve_public(secret) != public:
        raise CurveError(f"{where}: public-key does not belong to secret-key (corrupted file?)")
    problem = secret_problem(st, reader)
    if problem is not None:
        raise CurveError(f"{where}: {problem}")
    return public, secret


def load_allowed_keys(directory: str, key_name: str = "") -> frozenset[bytes]:
    """The binary (32-byte) public keys of every `*.key` certificate in
    `directory`. This is the format `zmq.auth` reads and writes, and what a ZAP
    request carries. Never blocks on a file (see the module docstring)."""
    reader = Reader.current()
    where = _where(key_name, directory)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        dir_fd = os.open(directory, flags)
    except NotADirectoryError as e:
        raise CurveError(f"{where}: not a directory") from e
    except OSError as e:
        raise CurveError(f"{where}: {_os_problem(e, reader, 'directory')}") from e
    try:
        problem = dir_problem(os.fstat(dir_fd), reader)
        if problem is not None:
            raise CurveError(f"{where}: {problem}")
        names = _list_dir(dir_fd, where)
        keys = set()
        for name in names:
            path = os.path.join(directory, name)
            if name.endswith(".key_secret"):
                log.warning(
                    "%s is a secret key: only public .key files belong here",
                    _where(key_name, path),
                )
                continue
            if not name.endswith(".key"):
                continue
            try:
                public, secret, _ = _read_certificate(
                    name, key_name, reader, dir_fd=dir_fd, shown=path
                )
            except NotARegularFile as e:
                log.warning("skipped %s: key files are read only as regular files", e)
                continue
            keys.add(z85.decode(_z85_key(public, path, "public-key", key_name)))
            if secret is not None:
                log.warning(
                    "%s holds a secret key: only public keys belong here", _where(key_name, path)
                )
        return frozenset(keys)
    finally:
        os.close(dir_fd)


def _list_dir(dir_fd: int, where: str) -> list[str]:
    """The names in the directory, sorted, hidden ones left out; at most
    MAX_DIR_ENTRIES looked at."""
    names = []
    try:
        with os.scandir(dir_fd) as it:
            for n, entry in enumerate(it):
                if n >= MAX_DIR_ENTRIES:
                    raise CurveError(
                        f"{where}: more than {MAX_DIR_ENTRIES} entries: not a directory of "
                        "peer keys?"
                    )
                if not entry.name.startswith("."):
                    names.append(entry.name)
    except OSError as e:
        raise CurveError(f"{where}: cannot list: {e.strerror or e}") from e
    return sorted(names)


# -- writing ---------------------------------------------------------------------


def resolve_user(text: str) -> int:
    """A user name or numeric uid -> uid; CurveError naming it if unknown."""
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        if text.isdigit():
            return int(text)
        raise CurveError(f"--owner {text}: no such user") from None


def resolve_group(text: str) -> int:
    """A group name or numeric gid -> gid; CurveError naming it if unknown."""
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        if text.isdigit():
            return int(text)
        raise CurveError(f"--group {text}: no such group") from None


def secret_mode(group: int | None) -> int:
    """The secret key file's mode: 0640 when a group is to read it (the
    service's group, `keygen --group`), else 0600."""
    return 0o640 if group is not None else 0o600


def generate_keypair(
    directory: str, name: str, *, owner: int | None = None, group: int | None = None
) -> tuple[str, str]:
    """Write `name.key` (public, 0644) and `name.key_secret` (secret, see
    `secret_mode`) into `directory`; return their paths.

    `owner` / `group` (uid / gid, None = leave as the process creates them) are
    given to both files, and to `directory` when this call creates it (mode
    0750 with a group, else 0700); an existing directory is left as it is.

    An existing file is never overwritten: replacing a key would silently lock
    out every peer that trusts the old one. pyzmq's create_certificates writes
    with the process umask, so it writes into a private (0700) temporary
    directory, and the files are copied into place with O_EXCL and their final
    owner and mode.
    """
    if not name or name in (".", "..") or os.sep in name or name.startswith("."):
        raise CurveError(f"key name {name!r}: give a plain file name (no '/', no leading '.')")
    public_path = os.path.join(directory, f"{name}.key")
    secret_path = os.path.join(directory, f"{name}.key_secret")
    dir_mode = 0o750 if group is not None else 0o700
    try:
        os.makedirs(directory, mode=dir_mode)
    except FileExistsError:
        if not os.path.isdir(directory):
            raise CurveError(
                f"{directory}: cannot create the key directory: not a directory"
            ) from None
    except OSError as e:
        raise CurveError(f"{directory}: cannot create the key directory: {e.strerror}") from e
    else:  # created here: its owner and exact mode, whatever the umask
        try:
            if owner is not None or group is not None:
                os.chown(directory, _id(owner), _id(group))
            os.chmod(directory, dir_mode)
        except OSError as e:
            raise CurveError(
                f"{directory}: cannot give the new key directory its owner/mode: "
                f"{e.strerror} (changing the owner needs root)"
            ) from e
    for path in (public_path, secret_path):
        if os.path.lexists(path):
            raise CurveError(f"{path} already exists: not overwriting a key")
    written: list[str] = []
    try:
        tmp = tempfile.mkdtemp(prefix=".keygen-", dir=directory)
        try:
            tmp_public, tmp_secret = zmq.auth.create_certificates(tmp, name)
            for src, dst, mode in (
                (tmp_secret, secret_path, secret_mode(group)),
                (tmp_public, public_path, 0o644),
            ):
                with open(src, "rb") as f:
                    data = f.read()
                _write_new(dst, data, mode, owner, group, written)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except FileExistsError as e:  # created by someone else since the check above
        _unlink_all(written)
        raise CurveError(f"{e.filename} already exists: not overwriting a key") from e
    except OSError as e:
        _unlink_all(written)
        hint = " (changing the owner needs root)" if isinstance(e, PermissionError) else ""
        raise CurveError(f"{directory}: cannot write the key pair: {e.strerror or e}{hint}") from e
    return public_path, secret_path


def _id(value: int | None) -> int:
    return -1 if value is None else value  # -1: chown leaves it unchanged


def _write_new(
    path: str, data: bytes, mode: int, owner: int | None, group: int | None, written: list[str]
) -> None:
    """Create `path` (it must not exist) with exactly `mode`, `owner`, `group`
    and `data`, durably. The file is empty until its owner and mode are final."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    written.append(path)
    with os.fdopen(fd, "wb") as f:
        if owner is not None or group is not None:
            os.fchown(fd, _id(owner), _id(group))
        os.fchmod(fd, mode)  # exactly this mode, whatever the umask
        f.write(data)
        f.flush()
        os.fsync(fd)


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


__all__ = [
    "MAX_CERTIFICATE_BYTES",
    "MAX_DIR_ENTRIES",
    "CurveError",
    "NotARegularFile",
    "Reader",
    "dir_problem",
    "file_problem",
    "generate_keypair",
    "load_allowed_keys",
    "load_secret_key",
    "parse_certificate",
    "resolve_group",
    "resolve_user",
    "secret_mode",
    "secret_problem",
]
