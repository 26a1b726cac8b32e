"""The service's memory limits against the buffer budget, checked at start.

Owns: reading the memory limits of the cgroup this process runs in (systemd's
MemoryHigh= / MemoryMax= are the cgroup v2 files `memory.high` / `memory.max`;
cgroup v1's `memory.limit_in_bytes` is read as a max) and deciding whether a
budget fits under them.

Promises: a budget that cannot fit under MemoryMax (the kernel would kill the
agent under load, and an OOM kill loses what memory held) is refused before
anything is opened, with a message that names the key, the limit and the
drop-in that fixes it; one that passes MemoryHigh only warns (the kernel then
reclaims spill page cache first, which is what MemoryHigh is for). Outside a
limited cgroup (a shell, a container without limits) nothing is checked.

Why an overhead: besides `budget_bytes` of event buffers the process holds
the interpreter and libraries (~40-60 MB RSS measured, README "Memory"),
libzmq's queues and kernel socket buffers charged to the cgroup. 128 MiB
covers them with margin on every run measured; the shipped unit gives
MemoryHigh = budget + 256 MiB and MemoryMax = budget + 512 MiB.
"""

from __future__ import annotations

import dataclasses
import os

MiB = 1 << 20
# Everything but event buffers, see the module docstring.
OVERHEAD_BYTES = 128 * MiB


class MemoryLimitError(Exception):
    """The budget cannot fit under the service's MemoryMax."""


@dataclasses.dataclass(frozen=True)
class CgroupMemory:
    path: str  # the cgroup directory the limits were read from
    high: int | None  # bytes; None = no limit
    max: int | None  # bytes; None = no limit


def parse_limit(text: str) -> int | None:
    """A memory.high / memory.max / memory.limit_in_bytes value -> bytes or None."""
    value = text.strip()
    if not value or value == "max":
        return None
    n = int(value)
    # cgroup v1 reports "no limit" as a huge page-aligned number.
    return None if n >= 1 << 62 else n


def own_cgroup(proc_cgroup: str) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory path) from the text of /proc/self/cgroup."""
    v2 = v1 = None
    for line in proc_cgroup.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def read_limits(root: str = "/") -> CgroupMemory | None:
    """The limits of this process's cgroup, or None where there is no cgroup
    file system to read (not Linux, /sys not mounted)."""
    try:
        with open(os.path.join(root, "proc/self/cgroup")) as f:
            v2, v1 = own_cgroup(f.read())
    except OSError:
        return None
    fs = os.path.join(root, "sys/fs/cgroup")
    candidates: list[tuple[str, str | None, str]] = []
    if v2 is not None:
        # Pure v2 mounts the hierarchy at /sys/fs/cgroup; systemd's hybrid
        # layout at /sys/fs/cgroup/unified.
        for base in (fs, os.path.join(fs, "unified")):
            d = os.path.join(base, v2.lstrip("/"))
            candidates.append((d, "memory.high", "memory.max"))
    if v1 is not None:
        d = os.path.join(fs, "memory", v1.lstrip("/"))
        candidates.append((d, None, "memory.limit_in_bytes"))
    for d, high_name, max_name in candidates:
        try:
            with open(os.path.join(d, max_name)) as f:
                top = parse_limit(f.read())
            high = None
            if high_name is not None:
                with open(os.path.join(d, high_name)) as f:
                    high = parse_limit(f.read())
        except (OSError, ValueError):
            continue
        return CgroupMemory(d, high, top)
    return None


def check_budget(budget_bytes: int, limits: CgroupMemory | None) -> str | None:
    """Raise MemoryLimitError if `budget_bytes` plus the overhead passes
    MemoryMax; return a warning if it passes MemoryHigh; else None."""
    if limits is None:
        return None
    need = budget_bytes + OVERHEAD_BYTES
    drop_in = (
        "raise the limits with a drop-in (`systemctl edit edge-agent`: [Service] "
        f"MemoryHigh={_mib(budget_bytes + 256 * MiB)}M MemoryMax="
        f"{_mib(budget_bytes + 512 * MiB)}M) or lower buffer.budget_bytes"
    )
    if limits.max is not None and need > limits.max:
        raise MemoryLimitError(
            f"buffer.budget_bytes = {budget_bytes} ({_mib(budget_bytes)} MiB) plus "
            f"~{_mib(OVERHEAD_BYTES)} MiB for the process itself does not fit under this "
            f"service's memory limit (MemoryMax, {limits.path}/memory.max = "
            f"{_mib(limits.max)} MiB): under load the kernel would kill the agent and "
            f"lose what memory held; {drop_in}"
        )
    if limits.high is not None and need > limits.high:
        return (
            f"buffer.budget_bytes = {budget_bytes} ({_mib(budget_bytes)} MiB) plus "
            f"~{_mib(OVERHEAD_BYTES)} MiB passes this service's MemoryHigh "
            f"({_mib(limits.high)} MiB): the kernel will throttle the agent in a spike; "
            f"{drop_in}"
        )
    return None


def _mib(n: int) -> int:
    return -(-n // MiB)
