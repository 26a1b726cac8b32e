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
- A file in an allowed directory that does not hold a valid key is an error, not
  a skipped file: a key that silently fails to load locks a collector out.
- `generate_keypair` never overwrites a file and never leaves the secret key
  readable by anyone else, not even for a moment.

Every certificate is read through `_read_certificate` and every allowed
directory is checked by `_check_key_dir`: those are the places for checks on
the file or directory itself (file type, size, owner, mode), and `_write_new`
the place for the owner of a new file.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import stat
import struct
import tempfile

import zmq
import zmq.auth
from zmq.utils import z85

log = logging.getLogger("agent.keys")

_Z85_KEY_LEN = 40  # a 32-byte Curve25519 key, Z85-encoded (RFC 32)


class CurveError(Exception):
    """A key file or key directory is missing, unreadable or malformed, or a key
    pair cannot be written. The message names the config key (when there is
    one) and the path."""


def _where(key_name: str, path: str) -> str:
    return f"{key_name}: {path}" if key_name else path


# -- reading ---------------------------------------------------------------------


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


def _read_certificate(path: str, key_name: str) -> tuple[bytes | None, bytes | None]:
    """(public, secret) as written in the certificate at `path`, unchecked
    (either may be None); CurveError naming the path when it cannot be read or
    is not a certificate."""
    where = _where(key_name, path)
    try:
        return zmq.auth.load_certificate(path)
    except ValueError as e:  # no public-key line
        raise CurveError(f"{where}: not a ZeroMQ certificate ({e})") from e
    except OSError as e:
        raise CurveError(f"{where}: cannot read: {e.strerror or e}") from e


def _check_key_dir(directory: str, key_name: str) -> None:
    """CurveError naming `directory` unless it is a directory."""
    if not os.path.isdir(directory):
        problem = "not a directory" if os.path.exists(directory) else "no such directory"
        raise CurveError(f"{_where(key_name, directory)}: {problem}")


def load_secret_key(path: str, key_name: str = "") -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ZPL secret certificate (`*.key_secret`).

    Checks that the secret key is there (a public `.key` file given by mistake
    is the likeliest slip) and that the public key in the file belongs to it,
    so a corrupted file fails here, at start, and not in every peer's handshake.
    """
    where = _where(key_name, path)
    public, secret = _read_certificate(path, key_name)
    if secret is None:
        raise CurveError(
            f"{where}: no secret-key in the file (a public .key file? "
            "give the .key_secret file that `edge-agent keygen` wrote)"
        )
    public = _z85_key(public, path, "public-key", key_name)
    secret = _z85_key(secret, path, "secret-key", key_name)
    if zmq.curve_public(secret) != public:
        raise CurveError(f"{where}: public-key does not belong to secret-key (corrupted file?)")
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            log.warning(
                "%s: secret key file is readable by group or others (mode %04o): chmod 600 it",
                where,
                mode,
            )
    return public, secret


def load_allowed_keys(directory: str, key_name: str = "") -> frozenset[bytes]:
    """The binary (32-byte) public keys of every `*.key` certificate in
    `directory`. This is the format `zmq.auth` reads and writes, and what a ZAP
    request carries."""
    _check_key_dir(directory, key_name)
    keys = set()
    for path in sorted(glob.glob(os.path.join(glob.escape(directory), "*.key"))):
        public, secret = _read_certificate(path, key_name)
        keys.add(z85.decode(_z85_key(public, path, "public-key", key_name)))
        if secret is not None:
            log.warning(
                "%s holds a secret key: only public keys belong here", _where(key_name, path)
            )
    for path in glob.glob(os.path.join(glob.escape(directory), "*.key_secret")):
        log.warning(
            "%s is a secret key: only public .key files belong here", _where(key_name, path)
        )
    return frozenset(keys)


# -- writing ---------------------------------------------------------------------


def generate_keypair(directory: str, name: str) -> tuple[str, str]:
    """Write `name.key` (public) and `name.key_secret` (secret, mode 0600) into
    `directory` (created with mode 0700 when missing); return their paths.

    An existing file is never overwritten: replacing a key would silently lock
    out every peer that trusts the old one. pyzmq's create_certificates writes
    with the process umask, so it writes into a private (0700) temporary
    directory, and the files are copied into place with O_EXCL and their final
    mode.
    """
    if not name or name in (".", "..") or os.sep in name or name.startswith("."):
        raise CurveError(f"key name {name!r}: give a plain file name (no '/', no leading '.')")
    public_path = os.path.join(directory, f"{name}.key")
    secret_path = os.path.join(directory, f"{name}.key_secret")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as e:
        raise CurveError(f"{directory}: cannot create the key directory: {e.strerror}") from e
    for path in (public_path, secret_path):
        if os.path.lexists(path):
            raise CurveError(f"{path} already exists: not overwriting a key")
    written: list[str] = []
    try:
        tmp = tempfile.mkdtemp(prefix=".keygen-", dir=directory)
        try:
            tmp_public, tmp_secret = zmq.auth.create_certificates(tmp, name)
            for src, dst, mode in (
                (tmp_secret, secret_path, 0o600),
                (tmp_public, public_path, 0o644),
            ):
                with open(src, "rb") as f:
                    data = f.read()
                _write_new(dst, data, mode)
                written.append(dst)
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
        raise CurveError(f"{directory}: cannot write the key pair: {e.strerror or e}") from e
    return public_path, secret_path


def _write_new(path: str, data: bytes, mode: int) -> None:
    """Create `path` (it must not exist) with exactly `mode` and `data`, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, mode)  # exactly this mode, whatever the umask
        f.write(data)
        f.flush()
        os.fsync(fd)


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


__all__ = ["CurveError", "generate_keypair", "load_allowed_keys", "load_secret_key"]
