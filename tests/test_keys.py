"""agent/keys.py: reading and writing CURVE key files, no sockets.

Keys are made in tmp_path; every bad file names the config key (when one is
given) and the path, and every message says what is wrong.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
import zmq
import zmq.auth
from zmq.utils import z85

from agent.keys import CurveError, generate_keypair, load_allowed_keys, load_secret_key

from curvekeys import KeyPairs

SECRET_KEY = "ingest.curve.secret_key_file"
ALLOWED_KEY = "ingest.curve.allowed_keys_dir"


@pytest.fixture
def keys(tmp_path: Path) -> KeyPairs:
    return KeyPairs(tmp_path)


# -- generate_keypair ----------------------------------------------------------------


def test_generate_keypair_writes_zpl_files_with_safe_modes(tmp_path: Path) -> None:
    d = tmp_path / "new" / "keys"  # created, mode 0700
    public_path, secret_path = generate_keypair(str(d), "gw-01")
    assert (public_path, secret_path) == (str(d / "gw-01.key"), str(d / "gw-01.key_secret"))
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(secret_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public_path).st_mode) == 0o644
    public, secret = zmq.auth.load_certificate(secret_path)
    assert secret is not None and zmq.curve_public(secret) == public
    assert zmq.auth.load_certificate(public_path) == (public, None)
    assert sorted(os.listdir(d)) == ["gw-01.key", "gw-01.key_secret"]  # no temp left over
    # Each call makes a new pair.
    other, _ = generate_keypair(str(d), "gw-02")
    assert zmq.auth.load_certificate(other)[0] != public


def test_generate_keypair_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        _, secret_path = generate_keypair(str(tmp_path / "k"), "gw")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(secret_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o700


@pytest.mark.parametrize("existing", ["gw.key", "gw.key_secret"])
def test_generate_keypair_never_overwrites(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious")
    with pytest.raises(CurveError, match="already exists"):
        generate_keypair(str(tmp_path), "gw")
    assert (tmp_path / existing).read_text() == "precious"
    assert os.listdir(tmp_path) == [existing]


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "."])
def test_generate_keypair_wants_a_plain_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(CurveError, match="plain file name"):
        generate_keypair(str(tmp_path), name)


def test_generate_keypair_names_a_directory_it_cannot_create(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(CurveError, match=f"{blocker / 'keys'}: cannot create the key directory"):
        generate_keypair(str(blocker / "keys"), "gw")


# -- load_secret_key -------------------------------------------------------------------


def test_load_secret_key_returns_the_pair_keygen_wrote(keys: KeyPairs) -> None:
    public, secret = load_secret_key(keys.secret_file("agent"), SECRET_KEY)
    assert public == keys.public("agent")
    assert zmq.curve_public(secret) == public


def _write_secret(tmp_path: Path, name: str, public: str, secret: str) -> str:
    d = tmp_path / name
    d.mkdir()
    p = d / "agent.key_secret"
    p.write_text(f'curve\n    public-key = "{public}"\n    secret-key = "{secret}"\n')
    return str(p)


def _bad_secret_files(keys: KeyPairs, tmp_path: Path) -> dict[str, tuple[str, str]]:
    """case -> (path, expected message fragment)."""
    pub = keys.public("agent").decode()
    other_sec = zmq.auth.load_certificate(keys.secret_file("other"))[1]
    assert other_sec is not None
    (tmp_path / "junk").write_text("hello\n")
    return {
        "missing": (str(tmp_path / "nope.key_secret"), "cannot read"),
        "public file": (keys.public_file("agent"), "no secret-key"),
        "not a certificate": (str(tmp_path / "junk"), "not a ZeroMQ certificate"),
        "short key": (
            _write_secret(tmp_path, "short", pub, "abc"),
            "secret-key is not a 40-character Z85 key",
        ),
        "not z85": (
            _write_secret(tmp_path, "not-z85", pub, "~" * 40),
            "secret-key is not a 40-character Z85 key",
        ),
        # Z85 characters, but every 5-character group is over 2**32.
        "overflow": (
            _write_secret(tmp_path, "overflow", pub, "#" * 40),
            "secret-key is not a 40-character Z85 key",
        ),
        "mismatch": (
            _write_secret(tmp_path, "mismatch", pub, other_sec.decode()),
            "does not belong",
        ),
        "a directory": (str(tmp_path), "cannot read"),
    }


def test_bad_secret_key_files_name_the_key_and_the_path(keys: KeyPairs, tmp_path: Path) -> None:
    for case, (path, fragment) in _bad_secret_files(keys, tmp_path).items():
        with pytest.raises(CurveError) as e:
            load_secret_key(path, SECRET_KEY)
        msg = str(e.value)
        assert msg.startswith(f"{SECRET_KEY}: {path}: "), (case, msg)
        assert fragment in msg, (case, msg)
    # Without a config key the message starts with the path.
    with pytest.raises(CurveError, match=f"^{tmp_path / 'nope'}: cannot read"):
        load_secret_key(str(tmp_path / "nope"))


def test_a_group_readable_secret_key_is_loaded_with_a_warning(
    keys: KeyPairs, caplog: pytest.LogCaptureFixture
) -> None:
    path = keys.secret_file("agent")
    os.chmod(path, 0o640)
    with caplog.at_level(logging.WARNING, logger="agent.keys"):
        load_secret_key(path, SECRET_KEY)
    assert f"{SECRET_KEY}: {path}: secret key file is readable" in caplog.text
    assert "mode 0640" in caplog.text and "chmod 600" in caplog.text


# -- load_allowed_keys -----------------------------------------------------------------


def test_load_allowed_keys_reads_every_public_key_file(keys: KeyPairs) -> None:
    d = keys.allowed("allowed", "alice", "bob")
    Path(d, "README").write_text("not a key, not *.key: ignored\n")
    got = load_allowed_keys(d, ALLOWED_KEY)
    assert got == {z85.decode(keys.public("alice")), z85.decode(keys.public("bob"))}
    assert all(len(k) == 32 for k in got)  # binary, as a ZAP request carries them
    assert load_allowed_keys(keys.allowed("empty")) == frozenset()


def test_bad_allowed_keys_dirs_name_the_key_and_the_path(keys: KeyPairs, tmp_path: Path) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("")
    broken = Path(keys.allowed("broken", "alice"))
    (broken / "zz.key").write_text('curve\n    secret-key = "x"\n')
    short = Path(keys.allowed("short", "alice"))
    (short / "zz.key").write_text('curve\n    public-key = "tooshort"\n')
    cases = {
        str(tmp_path / "missing"): f"{tmp_path / 'missing'}: no such directory",
        str(afile): f"{afile}: not a directory",
        str(broken): f"{broken / 'zz.key'}: not a ZeroMQ certificate",
        str(short): f"{short / 'zz.key'}: public-key is not a 40-character Z85 key",
    }
    for path, fragment in cases.items():
        with pytest.raises(CurveError) as e:
            load_allowed_keys(path, ALLOWED_KEY)
        assert str(e.value).startswith(f"{ALLOWED_KEY}: {fragment}"), str(e.value)


def test_secret_keys_in_an_allowed_dir_are_warned_about(
    keys: KeyPairs, caplog: pytest.LogCaptureFixture
) -> None:
    d = keys.allowed("allowed", "bob")
    Path(keys.secret_file("alice")).rename(Path(d, "alice.key_secret"))
    # A public file that also holds the secret: still loaded, with a warning.
    Path(d, "carol.key").write_bytes(Path(keys.secret_file("carol")).read_bytes())
    with caplog.at_level(logging.WARNING, logger="agent.keys"):
        got = load_allowed_keys(d, ALLOWED_KEY)
    assert got == {z85.decode(keys.public("bob")), z85.decode(keys.public("carol"))}
    assert "alice.key_secret is a secret key" in caplog.text
    assert "carol.key holds a secret key" in caplog.text
