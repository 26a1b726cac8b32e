"""The Debian package (packaging/build-deb.sh) and its systemd unit, without the network.

Each test builds a real .deb with the same script a release uses, from a local
wheelhouse in tmp_path: a stand-in for the agent's own wheel (its name and file
list are what the build checks: pure py3-none-any, or cp311-cp311-linux_MACHINE
with the compiled ingest core for that CPU, as packaging/build-wheel.sh makes it)
and stand-in binary dependencies with manylinux tags, uncompressed for speed.
It then reads the package back with dpkg-deb: control fields, conffiles, files
and owners, the maintainer scripts (syntax, and that nothing they remove is
spill data), and the unit (`systemd-analyze verify` where available). The
wheelhouse fetch, the compiled build and a real install are what
packaging/arm-smoke.sh does; this stays fast and offline.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

import agent

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
BUILD = PACKAGING / "build-deb.sh"
CONFFILE = "/etc/edge-agent/agent.toml"
UNIT = "lib/systemd/system/edge-agent.service"
SCRIPTS = ("postinst", "prerm", "postrm")
MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}

pytestmark = pytest.mark.skipif(
    shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed (Debian's dpkg)"
)


def fake_wheel(path: Path, *members: str) -> Path:
    """A zip with a wheel's name, a METADATA file and empty `members`: build-deb.sh
    checks names, tags and the agent wheel's file list, it never installs them."""
    name, version = path.name.split("-")[:2]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n")
        if name == "edge_agent":
            z.writestr("agent/__init__.py", "")
        for member in members:
            z.writestr(member, b"")
    return path


def speedups(machine: str, cpyver: str = "311") -> str:
    """The compiled ingest core's path in a wheel built for `machine`."""
    return f"agent/_speedups.cpython-{cpyver}-{machine}-linux-gnu.so"


def compiled_agent_wheel(machine: str, cpyver: str = "311") -> str:
    """The name build-wheel.sh's wheel has (pip wheel in the target's root)."""
    return f"edge_agent-{agent.__version__}-cp{cpyver}-cp{cpyver}-linux_{machine}.whl"


PURE_AGENT_WHEEL = f"edge_agent-{agent.__version__}-py3-none-any.whl"


def wheelhouse(tmp: Path, arch: str, *extra: str, agent_wheel: str | None = None) -> Path:
    """A wheelhouse for `arch`; the agent's wheel is pure unless `agent_wheel`
    names another (a compiled one gets the extension its name promises)."""
    wh = tmp / f"wheelhouse-{arch}"
    wh.mkdir()
    name = agent_wheel or PURE_AGENT_WHEEL
    tags = name.removesuffix(".whl").split("-")
    compiled = tags[-1].startswith("linux_")
    fake_wheel(wh / name, *([speedups(tags[-1].removeprefix("linux_"))] if compiled else []))
    # Like pyzmq's: two tags, the older one decides the glibc floor (2.26).
    m = MACHINE[arch]
    fake_wheel(wh / f"fakezmq-27.0-cp311-cp311-manylinux_2_26_{m}.manylinux_2_28_{m}.whl")
    fake_wheel(wh / f"fakehash-5.0-cp311-cp311-manylinux2014_{m}.manylinux_2_17_{m}.whl")
    fake_wheel(wh / "fakebottle-0.13-py2.py3-none-any.whl")
    for name in extra:
        fake_wheel(wh / name)
    return wh


def build(tmp: Path, arch: str, wh: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(BUILD),
            "--arch",
            arch,
            "--wheelhouse",
            str(wh),
            "--out",
            str(tmp / "out"),
            "--compress",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def deb_version() -> str:
    # What build-deb.sh does to PEP 440 pre-releases (0.2.0rc1 -> 0.2.0~rc1).
    return re.sub(r"(a|b|rc|\.dev)(\d)", r"~\1\2", agent.__version__) + "-1"


class Package:
    def __init__(self, deb: Path, tmp: Path) -> None:
        self.deb = deb
        self.control_dir = tmp / "control"
        self.files = tmp / "files"
        subprocess.run(["dpkg-deb", "--control", str(deb), str(self.control_dir)], check=True)
        subprocess.run(["dpkg-deb", "--extract", str(deb), str(self.files)], check=True)
        info = subprocess.run(
            ["dpkg-deb", "--field", str(deb)], check=True, capture_output=True, text=True
        ).stdout
        self.fields = dict(
            (k.strip(), v.strip())
            for k, v in (
                line.split(":", 1) for line in info.splitlines() if line and not line[0].isspace()
            )
        )
        self.contents = subprocess.run(
            ["dpkg-deb", "--contents", str(deb)], check=True, capture_output=True, text=True
        ).stdout.splitlines()

    def paths(self) -> set[str]:
        return {line.split()[5].removeprefix(".") for line in self.contents}


@pytest.fixture(scope="module")
def amd64(tmp_path_factory: pytest.TempPathFactory) -> Package:
    tmp = tmp_path_factory.mktemp("deb-amd64")
    done = build(tmp, "amd64", wheelhouse(tmp, "amd64"))
    assert done.returncode == 0, done.stderr
    deb = Path(done.stdout.strip().splitlines()[-1])
    assert deb.name == f"edge-agent_{deb_version()}_amd64.deb"
    return Package(deb, tmp)


# -- metadata --------------------------------------------------------------------


def test_control_fields(amd64: Package) -> None:
    f = amd64.fields
    assert f["Package"] == "edge-agent"
    assert f["Version"] == deb_version()
    assert f["Version"].startswith(agent.__version__.split("rc")[0])
    assert f["Architecture"] == "amd64"
    depends = [d.strip() for d in f["Depends"].split(",")]
    # The wheels are cp311 builds: the interpreter's minor version is pinned,
    # not just "python3 (>= 3.10)".
    assert "python3.11" in depends
    assert "python3.11-venv" in depends
    assert "libc6 (>= 2.26)" in depends  # the newest floor among the wheels' tags
    assert "procps" in depends  # /bin/kill for ExecReload
    assert int(f["Installed-Size"]) > 0
    assert f["Maintainer"] and f["Description"]


def test_arm64_package(tmp_path: Path) -> None:
    done = build(tmp_path, "arm64", wheelhouse(tmp_path, "arm64"))
    assert done.returncode == 0, done.stderr
    deb = Path(done.stdout.strip().splitlines()[-1])
    assert deb.name.endswith("_arm64.deb")
    arch = subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Architecture"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert arch == "arm64"


@pytest.mark.parametrize(
    ("arch", "wheel", "complaint"),
    [
        # An x86 wheel in the arm64 package would fail only on the gateway.
        ("arm64", "bad-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", "is not arm64"),
        ("amd64", "bad-1.0-cp312-cp312-manylinux_2_17_x86_64.whl", "does not run on CPython 3.11"),
        ("amd64", "bad-1.0-cp311-cp311-win_amd64.whl", "is not amd64"),
    ],
)
def test_a_wheel_for_another_target_fails_the_build(
    tmp_path: Path, arch: str, wheel: str, complaint: str
) -> None:
    done = build(tmp_path, arch, wheelhouse(tmp_path, arch, wheel))
    assert done.returncode == 2
    assert complaint in done.stderr
    assert not list((tmp_path / "out").glob("*.deb"))


def test_the_agents_own_wheel_is_required(tmp_path: Path) -> None:
    wh = wheelhouse(tmp_path, "amd64")
    (wh / PURE_AGENT_WHEEL).unlink()
    done = build(tmp_path, "amd64", wh)
    assert done.returncode == 2
    assert "edge_agent" in done.stderr


# -- the agent's compiled ingest core (issue 10) -------------------------------------


@pytest.mark.parametrize("arch", ["arm64", "amd64"])
def test_a_compiled_agent_wheel_for_the_target_is_packaged(tmp_path: Path, arch: str) -> None:
    """What build-wheel.sh makes in the target's root: cp311-cp311-linux_MACHINE."""
    name = compiled_agent_wheel(MACHINE[arch])
    done = build(tmp_path, arch, wheelhouse(tmp_path, arch, agent_wheel=name))
    assert done.returncode == 0, done.stderr
    assert f"{name}: compiled ingest core ({speedups(MACHINE[arch])})" in done.stderr
    pkg = Package(Path(done.stdout.strip().splitlines()[-1]), tmp_path)
    assert pkg.fields["Architecture"] == arch
    assert f"/opt/edge-agent/wheels/{name}" in pkg.paths()
    pins = (pkg.files / "opt/edge-agent/wheels/requirements.txt").read_text()
    assert f"edge_agent=={agent.__version__} --hash=sha256:" in pins
    # Our linux_ wheel does not lower or raise the floor the manylinux ones set.
    assert "libc6 (>= 2.26)" in pkg.fields["Depends"]


def test_a_pure_agent_wheel_says_the_package_runs_python(tmp_path: Path) -> None:
    done = build(tmp_path, "arm64", wheelhouse(tmp_path, "arm64"))
    assert done.returncode == 0, done.stderr
    assert "pure-Python ingest path" in done.stderr


@pytest.mark.parametrize(
    ("arch", "agent_wheel", "members", "complaint"),
    [
        # This build machine's extension in the arm64 package: the gateway
        # would silently run the Python path (or not start).
        ("arm64", compiled_agent_wheel("x86_64"), (), "on x86_64, not for cp311 on arm64"),
        ("amd64", compiled_agent_wheel("aarch64"), (), "on aarch64, not for cp311 on amd64"),
        # Right tag, wrong contents: the extension inside is another CPU's.
        (
            "arm64",
            compiled_agent_wheel("aarch64"),
            (speedups("x86_64"),),
            "has no " + speedups("aarch64"),
        ),
        ("amd64", compiled_agent_wheel("x86_64", "312"), (), "built for cp312-cp312 on x86_64"),
        (
            "amd64",
            f"edge_agent-{agent.__version__}-cp311-abi3-manylinux_2_17_x86_64.whl",
            (),
            "must be",
        ),
        # A "pure" wheel with a compiled file in it (a host build's leftover).
        ("arm64", PURE_AGENT_WHEEL, (speedups("x86_64"),), "a pure wheel with a compiled file"),
    ],
)
def test_a_wrong_agent_wheel_fails_the_build(
    tmp_path: Path, arch: str, agent_wheel: str, members: tuple[str, ...], complaint: str
) -> None:
    wh = wheelhouse(tmp_path, arch)
    (wh / PURE_AGENT_WHEEL).unlink()
    fake_wheel(wh / agent_wheel, *members)
    done = build(tmp_path, arch, wh)
    assert done.returncode == 2, done.stderr
    assert complaint in done.stderr
    assert not list((tmp_path / "out").glob("*.deb"))


def test_two_agent_wheels_fail_the_build(tmp_path: Path) -> None:
    """A compiled wheel beside a leftover pure one: which would pip install?"""
    name = compiled_agent_wheel("aarch64")
    done = build(tmp_path, "arm64", wheelhouse(tmp_path, "arm64", agent_wheel=name))
    assert done.returncode == 0, done.stderr
    wh = tmp_path / "wheelhouse-arm64"
    fake_wheel(wh / PURE_AGENT_WHEEL)
    done = build(tmp_path, "arm64", wh)
    assert done.returncode == 2
    assert "more than one edge_agent wheel" in done.stderr


def test_only_the_agents_wheel_may_be_a_local_linux_build(tmp_path: Path) -> None:
    """PyPI refuses linux_ wheels: a dependency tagged so was built somewhere unknown."""
    done = build(
        tmp_path, "arm64", wheelhouse(tmp_path, "arm64", "odd-1.0-cp311-cp311-linux_aarch64.whl")
    )
    assert done.returncode == 2
    assert "not a manylinux tag" in done.stderr


# -- files -------------------------------------------------------------------------


def test_conffile_is_the_documented_config(amd64: Package) -> None:
    conffiles = (amd64.control_dir / "conffiles").read_text().split()
    assert conffiles == [CONFFILE]
    shipped = amd64.files / CONFFILE.lstrip("/")
    assert shipped.read_bytes() == (PACKAGING / "agent.toml").read_bytes()


def test_contents(amd64: Package) -> None:
    paths = amd64.paths()
    for path in (
        CONFFILE,
        "/" + UNIT,
        "/usr/bin/edge-agent",
        "/opt/edge-agent/wheels/requirements.txt",
        "/usr/share/doc/edge-agent/README.Debian",
        "/usr/share/doc/edge-agent/copyright",
    ):
        assert path in paths
    # Everything root-owned, nothing writable by others, the root dir 0755.
    for line in amd64.contents:
        mode, owner = line.split()[:2]
        assert owner == "root/root", line
        assert mode[8] != "w" or mode[0] == "l", line
    assert amd64.contents[0].startswith("drwxr-xr-x")
    # The state dir belongs to systemd (StateDirectory=), never to dpkg: a
    # packaged path there would be deleted by dpkg on purge, spill data and all.
    assert not [p for p in paths if p.startswith("/var/")]
    link = amd64.files / "usr/bin/edge-agent"
    assert os.readlink(link) == "/opt/edge-agent/venv/bin/edge-agent"


def test_requirements_pin_every_shipped_wheel_by_hash(amd64: Package) -> None:
    wheels = amd64.files / "opt/edge-agent/wheels"
    pins = (wheels / "requirements.txt").read_text().splitlines()
    files = sorted(wheels.glob("*.whl"))
    assert len(pins) == len(files) == 4
    for whl in files:
        name, version = whl.name.split("-")[:2]
        digest = hashlib.sha256(whl.read_bytes()).hexdigest()
        assert f"{name}=={version} --hash=sha256:{digest}" in pins


# -- maintainer scripts ---------------------------------------------------------------


def test_maintainer_scripts_are_valid_sh(amd64: Package) -> None:
    for name in SCRIPTS:
        script = amd64.control_dir / name
        assert os.access(script, os.X_OK), name
        text = script.read_text()
        assert text.startswith("#!/bin/sh\n"), name
        assert "set -eu" in text, name
        assert not re.search(r"@[A-Z_]+@", text), f"{name}: placeholder left"
        subprocess.run(["sh", "-n", str(script)], check=True)
        if shutil.which("dash"):
            subprocess.run(["dash", "-n", str(script)], check=True)
    postinst = (amd64.control_dir / "postinst").read_text()
    assert 'PYVER="3.11"' in postinst
    assert f'DEB_VERSION="{deb_version()}"' in postinst


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_maintainer_scripts_are_shellcheck_clean(amd64: Package) -> None:
    scripts = [str(amd64.control_dir / n) for n in SCRIPTS]
    done = subprocess.run(["shellcheck", "-s", "sh", *scripts], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_no_maintainer_script_deletes_spill_data(amd64: Package) -> None:
    """Upgrade, remove and purge never delete /var/lib/edge-agent or anything in it."""
    for name in SCRIPTS:
        text = (amd64.control_dir / name).read_text()
        state_vars = set(re.findall(r"^(\w+)=\"?/var/lib/edge-agent", text, re.M))
        for line in text.splitlines():
            code = line.split("#", 1)[0]
            if not re.search(r"\brm(dir)?\b|\bunlink\b|\bfind\b.*-delete", code):
                continue
            assert "/var/lib" not in code, f"{name}: {line.strip()}"
            assert "spill" not in code, f"{name}: {line.strip()}"
            for var in state_vars:
                assert f"${var}" not in code and f"${{{var}}}" not in code, (
                    f"{name}: {line.strip()}"
                )
    # The purge says where the data was left, instead of silently keeping it.
    assert "kept $STATE_DIR" in (amd64.control_dir / "postrm").read_text()


def test_postinst_builds_the_venv_offline(amd64: Package) -> None:
    text = (amd64.control_dir / "postinst").read_text()
    pip = next(line for line in text.splitlines() if re.search(r"-m pip .*install", line))
    block = text[text.index(pip) : text.index("-r ", text.index(pip))]
    for flag in ("--isolated", "--no-index", "--find-links", "--require-hashes"):
        assert flag in block
    assert 'python$PYVER" -m venv' in text
    # apt may run with root's umask 077: the venv must still be readable by
    # the service's user (issue 13), so the script sets its own before it.
    assert text.index("umask 022") < text.index("-m venv")


def test_postinst_makes_a_key_dir_the_service_can_read_and_checks_the_config(
    amd64: Package,
) -> None:
    """Issue 12 item 2: keys made by root as the README says must be readable
    by the service's user; issue 13: a kept config that protected mode refuses
    is reported at upgrade, not discovered at the next outage."""
    text = (amd64.control_dir / "postinst").read_text()
    body = text[text.index("create_key_dirs() {") :]
    body = body[: body.index("\n}\n")]
    assert 'if [ ! -d "$KEY_DIR" ]; then' in body  # an existing layout is left alone
    assert 'install -d -o root -g "$NAME" -m 0750 "$KEY_DIR"' in body
    assert "KEY_DIR=/etc/edge-agent/curve" in text
    configure = text[text.index("    configure)") :]
    assert configure.index("create_user") < configure.index("create_key_dirs")
    check = text.index('/usr/bin/edge-agent check-config --config "$CONFFILE"')
    assert text.index("build_venv\n") < check < text.index("deb-systemd-invoke")


# -- the systemd unit ---------------------------------------------------------------------


def unit_directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def test_unit_directives(amd64: Package) -> None:
    d = unit_directives((amd64.files / UNIT).read_text())
    one = {k: v[-1] for k, v in d.items()}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    assert one["ExecStart"] == f"/usr/bin/edge-agent run --config {CONFFILE}"
    # A reload checks the file first, so `systemctl reload` fails on a file
    # the agent would refuse (issue 12) instead of reporting success.
    assert d["ExecReload"] == [
        f"/usr/bin/edge-agent check-config --config {CONFFILE}",
        "/bin/kill -HUP $MAINPID",
    ]
    assert one["WatchdogSec"] == "10s"
    assert one["Restart"] == "on-failure"
    assert one["RestartPreventExitStatus"] == "2"  # a bad config is not fixed by restarting
    assert one["User"] == one["Group"] == "edge-agent"
    assert "edge-agent" in one["StateDirectory"].split()
    assert one["StateDirectoryMode"] == "0700"
    assert one["ProtectSystem"] == "strict"
    assert one["NoNewPrivileges"] == "yes"
    assert one["CapabilityBoundingSet"] == ""
    assert int(one["TimeoutStopSec"].removesuffix("s")) >= 60
    # MemoryMax above MemoryHigh above the 512 MiB buffer budget.
    size = {"M": 1 << 20, "G": 1 << 30}
    high, cap = (int(one[k][:-1]) * size[one[k][-1]] for k in ("MemoryHigh", "MemoryMax"))
    assert 512 * (1 << 20) < high < cap


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies(amd64: Package, tmp_path: Path) -> None:
    """`systemd-analyze verify` parses the unit offline (no systemd as PID 1 needed).
    It also checks that ExecStart's program exists, so the copy points it at a
    stand-in in tmp_path; every other line is as shipped."""
    fake = tmp_path / "edge-agent"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit = tmp_path / "edge-agent.service"
    unit.write_text((amd64.files / UNIT).read_text().replace("/usr/bin/edge-agent", str(fake)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    ours = [line for line in done.stderr.splitlines() if "edge-agent.service" in line]
    assert not ours, ours


@pytest.mark.parametrize(
    ("script", "args", "complaint"),
    [
        ("fetch-wheels.sh", ["--agent-wheel", "fast"], "--agent-wheel must be compiled or pure"),
        ("build-wheel.sh", [], "--dest is required"),
        ("build-wheel.sh", ["--dest", "{tmp}", "--pyver", "three"], "--pyver must look like"),
    ],
)
def test_wheel_scripts_refuse_bad_arguments_before_any_work(
    tmp_path: Path, script: str, args: list[str], complaint: str
) -> None:
    """Checked before the network, the build root or root privileges are needed."""
    done = subprocess.run(
        [str(PACKAGING / script), "--arch", "arm64", *(a.format(tmp=tmp_path) for a in args)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert complaint in done.stderr
    assert not list(tmp_path.iterdir())
