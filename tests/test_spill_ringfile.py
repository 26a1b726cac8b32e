"""agent/spill/ringfile.py: opening, preallocating, zero-filling and mapping a ring file."""

from __future__ import annotations

import os
import stat

import pytest

from agent.spill.format import DATA_OFFSET, SLOT_BYTES, SLOT_ENCODED_BYTES
from agent.spill.ringfile import (
    SpillError,
    available_bytes,
    fsync_dir,
    map_file,
    preallocate,
    read_head,
    zero_fill,
)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_read_head_creates_a_private_file(tmp_path) -> None:
    path = str(tmp_path / "r.ring")
    assert read_head(path) == (0, b"", b"")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, "r+b") as f:
        f.write(b"x" * DATA_OFFSET)  # too short to be a ring, long enough to hold slots
        f.seek(0)
        f.write(b"A" * SLOT_ENCODED_BYTES)
        f.seek(SLOT_BYTES)
        f.write(b"B" * SLOT_ENCODED_BYTES)
    on_disk, slot_a, slot_b = read_head(path)
    assert on_disk == DATA_OFFSET
    assert (slot_a, slot_b) == (b"A" * SLOT_ENCODED_BYTES, b"B" * SLOT_ENCODED_BYTES)


def test_map_file_preallocates_and_extends_a_truncated_file(tmp_path) -> None:
    path = str(tmp_path / "r.ring")
    read_head(path)
    mm = map_file(path, 65536, sync=True)
    try:
        assert len(mm) == 65536
        mm[60000:60004] = b"data"
    finally:
        mm.close()
    st = os.stat(path)
    assert st.st_size == 65536 and st.st_blocks * 512 >= 65536  # allocated, not sparse
    os.truncate(path, 4096)  # cut short behind our back
    mm = map_file(path, 65536, sync=False)
    try:
        assert mm[60000:60004] == b"\0\0\0\0"  # whole again, zeros where it was cut
    finally:
        mm.close()
    assert os.path.getsize(path) == 65536


def test_map_file_shrinks_only_when_asked(tmp_path) -> None:
    path = str(tmp_path / "r.ring")
    read_head(path)
    map_file(path, 65536, sync=False).close()
    map_file(path, 16384, sync=False).close()
    assert os.path.getsize(path) == 65536  # a smaller mapping leaves the file alone
    mm = map_file(path, 16384, sync=True, shrink=True)
    mm.close()
    assert os.path.getsize(path) == 16384


def test_failures_name_the_path_and_leak_no_descriptor(tmp_path) -> None:
    missing = str(tmp_path / "gone" / "r.ring")
    before = open_fds()
    with pytest.raises(SpillError, match=rf"spill ring {missing}: cannot reopen"):
        map_file(missing, 65536, sync=False)
    with pytest.raises(SpillError, match=rf"spill ring {missing}: cannot open"):
        read_head(missing)
    with pytest.raises(SpillError, match=rf"spill ring {missing}: cannot reopen"):
        zero_fill(missing, 0, 4096)
    path = str(tmp_path / "huge.ring")
    read_head(path)
    with pytest.raises(SpillError) as err:
        map_file(path, 1 << 60, sync=False)  # EFBIG or ENOSPC: either way, up front
    msg = str(err.value)
    assert path in msg and str(1 << 60) in msg and "available" in msg
    assert open_fds() == before


def test_preallocate_failure_names_path_sizes_and_free_space(tmp_path) -> None:
    path = str(tmp_path / "r.ring")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        preallocate(fd, path, 8192)
        assert os.fstat(fd).st_size == 8192
        with pytest.raises(SpillError) as err:
            preallocate(fd, path, 1 << 60)
    finally:
        os.close(fd)
    msg = str(err.value)
    assert msg.startswith(f"spill ring {path}: cannot preallocate {1 << 60} bytes (E")
    assert msg.endswith("bytes available on its filesystem")


def test_zero_fill_writes_zeros_over_the_range_only(tmp_path) -> None:
    path = tmp_path / "r.ring"
    path.write_bytes(b"\xaa" * 20000)
    zero_fill(str(path), 3000, 17000)
    data = path.read_bytes()
    assert data[:3000] == b"\xaa" * 3000
    assert data[3000:17000] == bytes(14000)
    assert data[17000:] == b"\xaa" * 3000
    zero_fill(str(path), 5000, 5000)  # nothing to do
    assert path.read_bytes() == data


def test_available_bytes_and_fsync_dir(tmp_path) -> None:
    path = str(tmp_path / "r.ring")
    avail = available_bytes(path)
    assert avail is not None and avail > 0
    assert available_bytes(str(tmp_path / "no" / "such" / "r.ring")) is None
    read_head(path)
    fsync_dir(path)
    missing = str(tmp_path / "gone" / "r.ring")
    with pytest.raises(SpillError, match=rf"spill ring {missing}: cannot open its directory"):
        fsync_dir(missing)
