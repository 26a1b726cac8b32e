"""agent/cgroup.py: the service's memory limits against the budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cgroup import (
    OVERHEAD_BYTES,
    CgroupMemory,
    MemoryLimitError,
    check_budget,
    own_cgroup,
    parse_limit,
    read_limits,
)

MiB = 1 << 20


def fake_root(tmp_path: Path, proc: str, files: dict[str, str]) -> str:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(proc)
    for rel, text in files.items():
        p = tmp_path / "sys/fs/cgroup" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(tmp_path)


def test_parse_limit() -> None:
    assert parse_limit("max\n") is None
    assert parse_limit("1073741824\n") == 1 << 30
    assert parse_limit("9223372036854771712") is None  # cgroup v1 "unlimited"


def test_own_cgroup_v2_and_v1() -> None:
    assert own_cgroup("0::/system.slice/edge-agent.service\n") == (
        "/system.slice/edge-agent.service",
        None,
    )
    v1 = "12:cpu,cpuacct:/x\n4:memory:/system.slice/edge-agent.service\n"
    assert own_cgroup(v1) == (None, "/system.slice/edge-agent.service")


def test_read_limits_v2(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "0::/system.slice/edge-agent.service\n",
        {
            "system.slice/edge-agent.service/memory.high": "805306368\n",
            "system.slice/edge-agent.service/memory.max": "1073741824\n",
        },
    )
    lim = read_limits(root)
    assert lim is not None
    assert (lim.high, lim.max) == (768 * MiB, 1024 * MiB)
    assert lim.path.endswith("system.slice/edge-agent.service")


def test_read_limits_v1(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path, "4:memory:/gw\n", {"memory/gw/memory.limit_in_bytes": str(900 * MiB)}
    )
    lim = read_limits(root)
    assert lim is not None and lim.max == 900 * MiB and lim.high is None


def test_read_limits_without_cgroup_fs(tmp_path: Path) -> None:
    assert read_limits(str(tmp_path)) is None  # no /proc/self/cgroup at all
    root = fake_root(tmp_path, "0::/nowhere\n", {})
    assert read_limits(root) is None  # listed, but no limit files to read


def test_read_limits_of_this_process() -> None:
    # Whatever this machine runs the tests in, reading must not fail.
    lim = read_limits()
    assert lim is None or isinstance(lim, CgroupMemory)


def test_shipped_unit_shape_fits() -> None:
    budget = 512 * MiB
    lim = CgroupMemory("/x", high=budget + 256 * MiB, max=budget + 512 * MiB)
    assert check_budget(budget, lim) is None
    assert check_budget(budget, None) is None
    assert check_budget(budget, CgroupMemory("/x", None, None)) is None


def test_budget_raised_without_the_drop_in_is_refused() -> None:
    # The playbook raised the budget to 1 GiB; the unit still says 768M / 1G.
    lim = CgroupMemory("/sys/fs/cgroup/system.slice/edge-agent.service", 768 * MiB, 1024 * MiB)
    with pytest.raises(MemoryLimitError) as e:
        check_budget(1024 * MiB, lim)
    text = str(e.value)
    assert "buffer.budget_bytes = 1073741824" in text
    assert "MemoryMax" in text and "1024 MiB" in text
    assert "MemoryHigh=1280M MemoryMax=1536M" in text  # the drop-in that fits


def test_passing_memory_high_only_warns() -> None:
    budget = 700 * MiB
    lim = CgroupMemory("/x", high=768 * MiB, max=2048 * MiB)
    assert budget + OVERHEAD_BYTES > lim.high  # type: ignore[operator]
    warning = check_budget(budget, lim)
    assert warning is not None and "MemoryHigh" in warning and "throttle" in warning
