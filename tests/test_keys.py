"""agent/keys.py: reading and writing CURVE key files, no sockets.

Keys are made in tmp_path; every bad file names the config key (when one is
given) and the path, and every message says what is wrong.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth
from hypothesis import given
from hypothesis import strategies as st
from zmq.utils import z85

from agent.keys import (
    MAX_CERTIFICATE_BYTES,
    MAX_DIR_ENTRIES,
    CurveError,
    Reader,
    dir_problem,
    file_problem,
    generate_keypair,
    load_allowed_keys,
    load_secret_key,
    parse_certificate,
    secret_problem,
)

from curvekeys import KeyPairs

NOBODY_UID = NOBODY_GID = 65534
SECRET_KEY = "ingest.curve.secret_key_file"
ALLOWED_KEY = "ingest.curve.allowed_keys_dir"


@pytest.fixture(autouse=True)
def _umask_022() -> Iterator[None]:
    """Key files and allowed dirs made here must not be group-writable, or the
    agent refuses them (agent/keys.py); a user umask of 002 (Ubuntu's default
    for user private groups) would make them so."""
    old = os.umask(0o022)
    yield
    os.umask(old)


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
        "missing": (str(tmp_path / "nope.key_secret"), "no such file"),
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
        "a directory": (str(tmp_path), "not a regular file (a directory)"),
    }


def test_bad_secret_key_files_name_the_key_and_the_path(keys: KeyPairs, tmp_path: Path) -> None:
    for case, (path, fragment) in _bad_secret_files(keys, tmp_path).items():
        with pytest.raises(CurveError) as e:
            load_secret_key(path, SECRET_KEY)
        msg = str(e.value)
        assert msg.startswith(f"{SECRET_KEY}: {path}: "), (case, msg)
        assert fragment in msg, (case, msg)
    # Without a config key the message starts with the path.
    with pytest.raises(CurveError, match=f"^{tmp_path / 'nope'}: no such file"):
        load_secret_key(str(tmp_path / "nope"))


def test_a_secret_key_readable_by_its_own_group_is_loaded(keys: KeyPairs) -> None:
    path = keys.secret_file("agent")
    os.chown(path, -1, os.getegid())
    os.chmod(path, 0o640)  # the `keygen --group` layout
    assert load_secret_key(path, SECRET_KEY)[0] == keys.public("agent")


def test_a_secret_key_readable_by_others_is_refused(keys: KeyPairs) -> None:
    path = keys.secret_file("agent")
    os.chmod(path, 0o644)
    with pytest.raises(CurveError) as e:
        load_secret_key(path, SECRET_KEY)
    assert str(e.value).startswith(f"{SECRET_KEY}: {path}: the secret key is readable by every")
    assert "mode 0644" in str(e.value) and "chmod 600" in str(e.value)


def test_a_symlinked_secret_key_is_refused_without_following_it(
    keys: KeyPairs, tmp_path: Path
) -> None:
    link = tmp_path / "link.key_secret"
    link.symlink_to(keys.secret_file("agent"))
    with pytest.raises(CurveError, match="not a regular file \\(a symbolic link\\)"):
        load_secret_key(str(link), SECRET_KEY)


def test_a_fifo_as_the_secret_key_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "agent.key_secret"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            load_secret_key(str(fifo), SECRET_KEY)
        except CurveError as e:
            errors.append(e)

    t = threading.Thread(target=load)
    t.start()
    t.join(timeout=10)
    if t.is_alive():
        with open(fifo, "wb"):  # let the reader go
            pass
        pytest.fail("load_secret_key waited on a FIFO")
    assert len(errors) == 1 and "not a regular file (a FIFO)" in str(errors[0])


def test_an_oversized_key_file_is_refused_unread(keys: KeyPairs) -> None:
    path = Path(keys.secret_file("agent"))
    with path.open("ab") as f:
        f.write(b"#" * MAX_CERTIFICATE_BYTES)
    with pytest.raises(CurveError, match="a certificate is under 1 KiB"):
        load_secret_key(str(path), SECRET_KEY)


def _as_nobody(fn: Callable[[], object]) -> object:
    """Call `fn` with the effective uid/gid of `nobody` (root only), back after."""
    os.setegid(NOBODY_GID)
    os.seteuid(NOBODY_UID)
    try:
        return fn()
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to user nobody")
def test_permission_denied_names_the_user_and_the_fix(tmp_path: Path) -> None:
    # As the README used to say: keygen as root, the service as another user.
    _, secret = generate_keypair(str(tmp_path / "curve"), "gw")
    with pytest.raises(CurveError) as e:
        _as_nobody(lambda: load_secret_key(secret, SECRET_KEY))
    msg = str(e.value)
    assert msg.startswith(f"{SECRET_KEY}: {secret}: permission denied: the agent runs as user")
    assert "nobody (uid 65534)" in msg and "keygen --group" in msg
    with pytest.raises(CurveError, match="permission denied: the agent runs as user nobody"):
        _as_nobody(lambda: load_allowed_keys(str(tmp_path / "curve"), ALLOWED_KEY))


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to user nobody")
def test_keygen_with_the_services_group_makes_a_key_the_service_reads() -> None:
    # Not under tmp_path: pytest's base directory is 0700 root, which nobody
    # cannot search. /tmp itself is 1777.
    top = tempfile.mkdtemp(prefix="edge-agent-keygen-")
    try:
        os.chmod(top, 0o755)
        public, secret = generate_keypair(os.path.join(top, "curve"), "gw", group=NOBODY_GID)
        loaded = _as_nobody(lambda: load_secret_key(secret, SECRET_KEY))
        assert loaded == zmq.auth.load_certificate(secret)
        assert _as_nobody(lambda: load_allowed_keys(os.path.dirname(public))) == frozenset(
            {z85.decode(zmq.auth.load_certificate(public)[0])}
        )
    finally:
        shutil.rmtree(top)


def _st(mode: int, uid: int = 0, gid: int = 0, size: int = 300) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, gid, size, 0, 0, 0))


AGENT_USER = Reader(998, frozenset({998}))


@pytest.mark.parametrize(
    ("st", "problem"),
    [
        (_st(stat.S_IFDIR | 0o755), None),
        (_st(stat.S_IFDIR | 0o750, uid=998), None),
        (_st(stat.S_IFDIR | 0o1777), "writable by group or others (mode 1777)"),
        (_st(stat.S_IFDIR | 0o775, gid=998), "writable by group or others (mode 0775)"),
        (_st(stat.S_IFDIR | 0o755, uid=1000), "owned by uid 1000, which is neither root"),
        (_st(stat.S_IFREG | 0o644), "not a directory (a regular file)"),
    ],
)
def test_dir_problem(st: os.stat_result, problem: str | None) -> None:
    got = dir_problem(st, AGENT_USER)
    assert got == problem if problem is None else (got or "").startswith(problem)


@pytest.mark.parametrize(
    ("st", "problem"),
    [
        (_st(stat.S_IFREG | 0o644), None),
        (_st(stat.S_IFREG | 0o600, uid=998), None),
        (_st(stat.S_IFREG | 0o644, size=MAX_CERTIFICATE_BYTES), None),
        (_st(stat.S_IFREG | 0o644, size=MAX_CERTIFICATE_BYTES + 1), "65537 bytes"),
        (_st(stat.S_IFREG | 0o664), "writable by group or others (mode 0664)"),
        (_st(stat.S_IFREG | 0o646), "writable by group or others (mode 0646)"),
        (_st(stat.S_IFREG | 0o644, uid=1000), "owned by uid 1000"),
        (_st(stat.S_IFIFO | 0o644), "not a regular file (a FIFO)"),
        (_st(stat.S_IFCHR | 0o644), "not a regular file (a character device)"),
    ],
)
def test_file_problem(st: os.stat_result, problem: str | None) -> None:
    got = file_problem(st, AGENT_USER)
    assert got == problem if problem is None else (got or "").startswith(problem)


@pytest.mark.parametrize(
    ("st", "problem"),
    [
        (_st(stat.S_IFREG | 0o600), None),
        (_st(stat.S_IFREG | 0o640, gid=998), None),  # root:edge-agent 0640 (keygen --group)
        (_st(stat.S_IFREG | 0o400), None),
        (_st(stat.S_IFREG | 0o640, gid=4), "the secret key is readable by group"),
        (_st(stat.S_IFREG | 0o604, gid=998), "the secret key is readable by every user"),
    ],
)
def test_secret_problem(st: os.stat_result, problem: str | None) -> None:
    got = secret_problem(st, AGENT_USER)
    assert got == problem if problem is None else (got or "").startswith(problem)


def test_parse_certificate_reads_what_pyzmq_reads(keys: KeyPairs) -> None:
    for path in (keys.public_file("a"), keys.secret_file("a")):
        data = Path(path).read_bytes()
        assert parse_certificate(data) == zmq.auth.load_certificate(path)
    assert parse_certificate(b"# public-key = x\ncurve\n  public-key = 'k'\n") == (b"k", None)
    assert parse_certificate(b"public-key\n") == (b"", None)  # no '=': an empty key, refused later
    assert parse_certificate(b"hello") == (None, None)


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


def test_entries_that_are_not_regular_files_are_skipped_never_opened(
    keys: KeyPairs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = Path(keys.allowed("allowed", "alice"))
    os.mkfifo(d / "evil.key")  # opening it for reading would wait for a writer
    (d / "link.key").symlink_to(keys.public_file("bob"))
    (d / "dir.key").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.key"))
    result: list[frozenset[bytes]] = []
    with caplog.at_level(logging.WARNING, logger="agent.keys"):
        t = threading.Thread(target=lambda: result.append(load_allowed_keys(str(d), ALLOWED_KEY)))
        t.start()
        t.join(timeout=10)
    sock.close()
    if t.is_alive():  # unblock the reader before failing
        with open(d / "evil.key", "wb"):
            pass
        pytest.fail("load_allowed_keys blocked on a FIFO")
    assert result == [frozenset({z85.decode(keys.public("alice"))})]  # bob's link not followed
    for name, kind in (
        ("evil.key", "FIFO"),
        ("link.key", "symbolic link"),
        ("dir.key", "directory"),
        ("sock.key", "socket"),
    ):
        assert f"skipped {ALLOWED_KEY}: {d / name}: not a regular file (a {kind})" in caplog.text


def test_an_allowed_dir_others_can_write_is_refused(keys: KeyPairs) -> None:
    d = keys.allowed("allowed", "alice")
    os.chmod(d, 0o777)
    with pytest.raises(CurveError) as e:
        load_allowed_keys(d, ALLOWED_KEY)
    assert str(e.value).startswith(f"{ALLOWED_KEY}: {d}: writable by group or others (mode 0777)")
    os.chmod(d, 0o755)
    key = Path(d, "alice.key")
    os.chmod(key, 0o666)
    with pytest.raises(CurveError, match=f"{key}: writable by group or others"):
        load_allowed_keys(d, ALLOWED_KEY)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_an_allowed_dir_owned_by_another_user_is_refused(keys: KeyPairs) -> None:
    d = keys.allowed("allowed", "alice")
    os.chown(d, NOBODY_UID, -1)
    with pytest.raises(CurveError, match=f"{d}: owned by uid 65534, which is neither root"):
        load_allowed_keys(d, ALLOWED_KEY)
    os.chown(d, 0, -1)
    os.chown(Path(d, "alice.key"), NOBODY_UID, -1)
    with pytest.raises(CurveError, match="alice.key: owned by uid 65534"):
        load_allowed_keys(d, ALLOWED_KEY)


def test_an_allowed_dir_with_too_many_entries_is_refused(
    keys: KeyPairs, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = Path(keys.allowed("allowed"))
    for i in range(6):
        (d / f"note-{i}").write_text("")
    monkeypatch.setattr("agent.keys.MAX_DIR_ENTRIES", 5)
    with pytest.raises(CurveError, match="more than 5 entries"):
        load_allowed_keys(str(d), ALLOWED_KEY)
    assert MAX_DIR_ENTRIES == 1024


# -- generate_keypair: owner and group -----------------------------------------------


def test_generate_keypair_with_a_group_makes_the_secret_group_readable(tmp_path: Path) -> None:
    gid = os.getegid()
    d = tmp_path / "curve"
    public, secret = generate_keypair(str(d), "gw", group=gid)
    assert (os.stat(d).st_gid, stat.S_IMODE(os.stat(d).st_mode)) == (gid, 0o750)
    assert (os.stat(secret).st_gid, stat.S_IMODE(os.stat(secret).st_mode)) == (gid, 0o640)
    assert (os.stat(public).st_gid, stat.S_IMODE(os.stat(public).st_mode)) == (gid, 0o644)
    # An existing directory keeps its owner and mode.
    os.chmod(d, 0o755)
    generate_keypair(str(d), "gw2", group=gid)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o755


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_generate_keypair_with_an_owner_gives_it_everything_it_creates(tmp_path: Path) -> None:
    d = tmp_path / "curve"
    public, secret = generate_keypair(str(d), "gw", owner=NOBODY_UID)
    for path, mode in ((d, 0o700), (secret, 0o600), (public, 0o644)):
        st = os.stat(path)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY_UID, mode), path


@pytest.mark.skipif(os.geteuid() == 0, reason="root may chown to anyone")
def test_generate_keypair_names_an_owner_it_cannot_give(tmp_path: Path) -> None:
    with pytest.raises(CurveError, match="changing the owner needs root"):
        generate_keypair(str(tmp_path / "curve"), "gw", owner=0)


_Z85_TEXT = st.text(alphabet=z85.Z85CHARS.decode(), min_size=0, max_size=45)
_OTHER_LINES = st.sampled_from(
    ["", "# a comment", "#   ****  Generated by pyzmq  ****", "metadata", "curve", "    x = y"]
)


@st.composite
def certificates(draw: st.DrawFn) -> bytes:
    """Certificate-like text with at most one public-key and one secret-key line
    (pyzmq keeps the last before both are seen, agent/keys.py the first: the
    same whenever each appears once)."""
    lines = draw(st.lists(_OTHER_LINES, max_size=6))
    for name in ("public-key", "secret-key"):
        if draw(st.booleans()):
            quote = draw(st.sampled_from(['"', "'", ""]))
            indent = draw(st.sampled_from(["", "    ", "\t"]))
            value = draw(_Z85_TEXT)
            lines.insert(
                draw(st.integers(0, len(lines))), f"{indent}{name} = {quote}{value}{quote}"
            )
    return "\n".join(lines).encode()


@given(certificates())
def test_parse_certificate_agrees_with_pyzmq(data: bytes) -> None:
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        try:
            expected: tuple[bytes | None, bytes | None] = zmq.auth.load_certificate(f.name)
        except ValueError:  # pyzmq: no public-key line
            expected = (None, parse_certificate(data)[1])
    assert parse_certificate(data) == expected
