"""agent/spill/store.py: the four class rings under one locked directory."""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from array import array
from pathlib import Path

import pytest

from agent.spill import SpillError, SpillStore, ring_sizes
from agent.spill.format import DATA_OFFSET
from agent.spill.spilldir import LOCK_NAME
from agent.spill.store import MIN_RING_BYTES, ring_file_name

MiB = 1024 * 1024
REPO = str(Path(__file__).resolve().parents[1])


def chunk(n: int, first: int = 0, size: int = 120) -> tuple[bytearray, array]:
    """n events of `size` bytes, numbered from `first`, as the loop holds them."""
    blob = bytearray()
    ends = array("I")
    for i in range(first, first + n):
        blob += (i.to_bytes(4, "little") * (size // 4 + 1))[:size]
        ends.append(len(blob))
    return blob, ends


def events(blob: bytes, ends: array) -> list[bytes]:
    out, start = [], 0
    for end in ends:
        out.append(bytes(blob[start:end]))
        start = end
    return out


def drain_class(store: SpillStore, cls: int) -> list[bytes]:
    got: list[bytes] = []
    while (batch := store.read_next(cls)) is not None:
        assert batch.count == len(batch.ends)
        got += events(batch.blob, batch.ends)
        store.release_read(cls)
    return got


def test_round_trip_with_arrays_lists_and_spare_capacity(tmp_path) -> None:
    store = SpillStore.open(str(tmp_path / "spill"), 8 * MiB)
    blob, ends = chunk(100)
    spare = blob + bytearray(5000)  # a chunk buffer with room left at its end
    assert store.push_back(2, spare, ends)
    blob2, ends2 = chunk(3, first=100)
    assert store.push_back(2, memoryview(bytes(blob2)), list(ends2))
    assert store.pending(2) == 103
    batch = store.read_next(2)
    assert batch is not None
    assert batch.blob == bytes(blob) and batch.ends == ends and batch.ends.typecode == "I"
    assert store.pending(2) == 3
    s = store.statistics()
    assert s.classes[2].pending_events == 3 and s.classes[2].pending_bytes == 360
    assert s.classes[2].unreleased_events == 100 and s.classes[2].unreleased_bytes == 12000
    assert s.spilled_events == 103 and s.recovered_events == 100
    store.release_read(2)
    assert drain_class(store, 2) == events(blob2, ends2)
    assert store.read_next(0) is None and store.pending(0) == 0
    store.close()


def test_bad_batches_are_refused(tmp_path) -> None:
    store = SpillStore.open(str(tmp_path / "spill"), 8 * MiB)
    with pytest.raises(ValueError):
        store.push_back(1, b"abc", [])
    with pytest.raises(ValueError):
        store.push_back(1, b"abc", [4])  # ends beyond the blob
    with pytest.raises(ValueError):
        store.push_back(1, bytes(2 * store.max_batch_bytes(1)), [2 * store.max_batch_bytes(1)])
    store.close()


def test_classes_are_separate_and_survive_close(tmp_path) -> None:
    d = str(tmp_path / "spill")
    store = SpillStore.open(d, 8 * MiB)
    for cls in range(4):
        for k in range(3):
            assert store.push_back(cls, *chunk(10, first=cls * 1000 + k * 10))
    store.close()
    store = SpillStore.open(d, 8 * MiB)
    s = store.statistics()
    assert s.resumed_events == 120 and s.spilled_events == 0 and s.corrupt_records == 0
    assert [store.pending(c) for c in range(4)] == [30, 30, 30, 30]
    for cls in range(4):
        assert drain_class(store, cls) == events(*chunk(30, first=cls * 1000))
    store.close()


def test_sigterm_pattern_keeps_fifo_order(tmp_path) -> None:
    """[memory head] -> [ring] -> [memory tail] survives a stop/start, in the order
    the loop stops (agent/loop.py `_park_in_memory_events`, the SpillStore
    docstring): release every batch read back, put the undelivered rest of them
    and memory's head back in front (newest first), memory's tail behind."""
    d = str(tmp_path / "spill")
    store = SpillStore.open(d, 8 * MiB)
    store.push_back(3, *chunk(10, first=100))  # spilled earlier
    store.push_back(3, *chunk(10, first=110))
    store.push_back(3, *chunk(10, first=120))
    partly = store.read_next(3)  # drained into memory, 4 of its 10 delivered
    untouched = store.read_next(3)  # drained into memory, none delivered
    assert partly is not None and untouched is not None
    assert store.pending(3) == 10 and store.statistics().recovered_events == 20
    store.release_read(3)
    store.release_read(3)
    assert store.statistics().classes[3].unreleased_events == 0
    assert store.push_front(3, untouched.blob, untouched.ends)  # newest first
    rest = events(partly.blob, partly.ends)[4:]
    blob = b"".join(rest)
    ends = array("I", [len(e) * (i + 1) for i, e in enumerate(rest)])
    assert store.push_front(3, blob, ends)
    store.push_front(3, *chunk(10, first=90))  # memory head, newest first
    store.push_front(3, *chunk(10, first=80))
    store.push_back(3, *chunk(10, first=130))  # memory tail
    assert store.pending(3) == 56
    store.close()
    store = SpillStore.open(d, 8 * MiB)
    expected = events(*chunk(20, first=80)) + events(*chunk(36, first=104))
    assert drain_class(store, 3) == expected
    store.close()


def test_push_front_refuses_while_records_are_read(tmp_path) -> None:
    store = SpillStore.open(str(tmp_path / "spill"), 8 * MiB)
    store.push_back(0, *chunk(2))
    store.read_next(0)
    with pytest.raises(RuntimeError):
        store.push_front(0, *chunk(2))
    with pytest.raises(RuntimeError):
        store.drop_front(0)
    store.close()


def test_full_ring_and_drop_front(tmp_path) -> None:
    store = SpillStore.open(str(tmp_path / "spill"), 8 * MiB)  # critical ring: 1 MiB
    pushed = 0
    while store.push_back(0, *chunk(500, first=pushed)):
        pushed += 500
    assert pushed > 0 and store.pending(0) == pushed
    assert store.drop_front(0) == 500
    assert store.push_back(0, *chunk(500, first=pushed))
    s = store.statistics().classes[0]
    assert s.dropped_events == 500 and s.pending_events == pushed
    assert drain_class(store, 0)[0] == events(*chunk(1, first=500))[0]
    assert store.drop_front(0) == 0
    store.close()


def test_second_store_on_the_same_dir_is_refused(tmp_path) -> None:
    d = str(tmp_path / "spill")
    first = SpillStore.open(d, 8 * MiB)
    with pytest.raises(SpillError) as err:
        SpillStore.open(d, 8 * MiB)
    assert str(err.value) == f"spill dir {d} is in use by another edge-agent (pid {os.getpid()})"
    first.close()
    SpillStore.open(d, 8 * MiB).close()  # the lock goes with close()


def test_lock_held_by_another_process(tmp_path) -> None:
    d = str(tmp_path / "spill")
    code = textwrap.dedent(
        f"""
        import sys
        from agent.spill import SpillStore
        s = SpillStore.open({d!r}, 8 << 20)
        print("locked", flush=True)
        sys.stdin.read()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        with pytest.raises(SpillError, match=rf"in use by another edge-agent \(pid {child.pid}\)"):
            SpillStore.open(d, 8 * MiB)
    finally:
        child.communicate("", timeout=30)
    SpillStore.open(d, 8 * MiB).close()


def test_dir_is_created_private_with_parents(tmp_path) -> None:
    d = tmp_path / "a" / "b" / "spill"
    SpillStore.open(str(d), 8 * MiB).close()
    for p in (d, d.parent, d.parent.parent):
        assert stat.S_IMODE(p.stat().st_mode) == 0o700, p
    assert (d / LOCK_NAME).read_text().strip() == str(os.getpid())
    existing = tmp_path / "mine"
    existing.mkdir(mode=0o750)
    os.chmod(existing, 0o750)
    SpillStore.open(str(existing), 8 * MiB).close()
    assert stat.S_IMODE(existing.stat().st_mode) == 0o750  # the operator's choice stays


def test_dir_that_is_a_file(tmp_path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SpillError, match=str(f)):
        SpillStore.open(str(f), 8 * MiB)


def blocks(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_one_budget_any_class_may_use_free_space_and_it_stays_reserved(tmp_path) -> None:
    d = tmp_path / "spill"
    max_bytes = 64 * MiB
    store = SpillStore.open(str(d), max_bytes)
    files = [d / ring_file_name(c) for c in range(4)] + [d / "pool"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    total = sum(map(blocks, files))
    assert max_bytes <= total <= max_bytes + 4 * 16 * 1024, "the budget reserved on the disk"
    # Normal alone fills far more than a fixed share (3/8) would have let it.
    n = 0
    while store.push_back(2, *chunk(2000, first=n)):
        n += 2000
    budget = store.budget
    assert budget is not None
    reserved = 2 * budget.total // 16  # critical's and high's guaranteed minimum
    assert n * 124 >= (budget.total - reserved) * 0.97
    assert store.statistics().file_bytes <= max_bytes + 4 * 16 * 1024
    assert sum(map(blocks, files)) <= max_bytes + 4 * 16 * 1024, "never beyond the budget"
    # Critical and high still have their minimum.
    assert store.push_back(0, *chunk(2000)) and store.push_back(1, *chunk(2000))
    # Drained, the space goes back to the pool for any class.
    assert len(drain_class(store, 2)) == n
    assert blocks(d / ring_file_name(2)) <= 4 * 4096 + 16 * 1024
    assert store.push_back(3, *chunk(2000))
    store.close()
    with pytest.raises(ValueError, match="too small"):
        ring_sizes(8 * MIN_RING_BYTES - 1)


def test_one_budget_survives_a_reopen(tmp_path) -> None:
    d = tmp_path / "spill"
    store = SpillStore.open(str(d), 32 * MiB)
    for k in range(20):
        assert store.push_back(k % 4, *chunk(500, first=k * 500))
    store.drop_front(2)
    before = [s.pending_events for s in store.statistics().classes]
    store.close()
    store = SpillStore.open(str(d), 32 * MiB)
    assert [s.pending_events for s in store.statistics().classes] == before
    assert store.budget is not None and sum(store.budget.used) > 0
    files = [d / ring_file_name(c) for c in range(4)] + [d / "pool"]
    assert sum(map(blocks, files)) <= 32 * MiB + 4 * 16 * 1024
    store.close()


def test_max_bytes_beyond_free_space_fails_up_front(tmp_path) -> None:
    d = str(tmp_path / "spill")
    st = os.statvfs(str(tmp_path))
    avail = st.f_bavail * st.f_frsize
    too_much = 2 * avail + 8 * MiB
    with pytest.raises(SpillError) as err:
        SpillStore.open(d, too_much)
    msg = str(err.value)
    assert d in msg and str(too_much) in msg and "available" in msg
    assert not [n for n in os.listdir(d) if n.endswith(".ring")]  # nothing allocated
    SpillStore.open(d, 8 * MiB).close()  # and the lock was released


@pytest.fixture
def tiny_fs() -> str:
    """A 1 MiB tmpfs, when this process may mount one (root in a container that allows it)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tempfile.mkdtemp(prefix="tinyfs-")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        os.rmdir(mnt)
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=False)
        os.rmdir(mnt)


def test_filesystem_too_small_is_a_clear_error_and_no_sigbus(tiny_fs: str) -> None:
    """In a child process, so that a SIGBUS would show as its exit status -7."""
    code = textwrap.dedent(
        f"""
        from agent.spill import SpillError, SpillRing, SpillStore
        try:
            SpillStore.open({tiny_fs!r} + "/spill", 8 << 20)
        except SpillError as exc:
            print("store:", exc)
        try:  # the ring alone, past the store's free-space check: posix_fallocate says no
            SpillRing.open({tiny_fs!r} + "/alone.ring", 4 << 20, 0)
        except SpillError as exc:
            print("ring:", exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    store_line, ring_line = done.stdout.splitlines()
    assert f"spill dir {tiny_fs}/spill" in store_line and str(8 << 20) in store_line
    assert "available" in store_line
    assert f"{tiny_fs}/alone.ring" in ring_line and str(4 << 20) in ring_line
    assert "ENOSPC" in ring_line and "available" in ring_line


def test_kill_9_loses_nothing_that_reached_a_ring(tmp_path) -> None:
    """A real SIGKILL: what push_back returned True for comes back, the batch read
    but not released comes back, the released one does not; the lock dies with
    the process."""
    d = str(tmp_path / "spill")
    code = textwrap.dedent(
        f"""
        import os, signal
        from array import array
        from agent.spill import SpillStore
        s = SpillStore.open({d!r}, 8 << 20)
        for b in range(20):
            blob = bytearray()
            ends = array("I")
            for i in range(b * 50, b * 50 + 50):
                blob += i.to_bytes(4, "little") * 30
                ends.append(len(blob))
            assert s.push_back(b % 4, blob, ends)
        s.read_next(0); s.release_read(0)   # delivered
        s.read_next(1)                      # in memory, not delivered
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60, check=False)
    assert done.returncode == -9
    store = SpillStore.open(d, 8 * MiB)
    s = store.statistics()
    assert s.corrupt_records == 0 and s.resumed_events == 19 * 50
    for cls in range(4):
        got = [int.from_bytes(e[:4], "little") for e in drain_class(store, cls)]
        batches = [b for b in range(20) if b % 4 == cls and not (cls == 0 and b == 0)]
        assert got == [i for b in batches for i in range(b * 50, b * 50 + 50)]
    store.close()


def test_corrupt_ring_does_not_stop_the_store(tmp_path) -> None:
    d = tmp_path / "spill"
    store = SpillStore.open(str(d), 8 * MiB)
    for k in range(4):
        store.push_back(2, *chunk(10, first=k * 10))
    store.close()
    ring = d / ring_file_name(2)
    with open(ring, "r+b") as f:
        f.seek(DATA_OFFSET + 100)  # inside the first record's payload
        f.write(b"\xff\xff\xff\xff")
    store = SpillStore.open(str(d), 8 * MiB)
    s = store.statistics()
    assert s.corrupt_records == 1 and s.classes[2].corrupt_records == 1
    assert drain_class(store, 2) == events(*chunk(30, first=10))
    store.close()


def test_flush_and_close_are_idempotent(tmp_path) -> None:
    store = SpillStore.open(str(tmp_path / "spill"), 8 * MiB)
    store.flush()
    flushes = store.statistics().flushes
    store.push_back(3, *chunk(5))
    store.flush()
    assert store.statistics().flushes == flushes + 1
    store.flush()  # nothing new to sync
    assert store.statistics().flushes == flushes + 1
    for cls in range(4):
        for k in range(10):
            store.push_back(cls, *chunk(500, first=k))
    calls = 1
    while not store.flush(max_bytes=256 * 1024):
        calls += 1
        assert calls < 100
    assert calls >= 4  # ~2.4 MB dirty in 256 KiB steps (spans round to pages)
    assert store.flush()
    store.close()
    store.close()


# ------------------------------------------- the spill dir as possibly hostile


def test_a_dir_writable_by_group_or_others_is_refused(tmp_path) -> None:
    d = tmp_path / "spill"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(SpillError, match=r"spill dir .*spill is writable by group or others"):
        SpillStore.open(str(d), 8 * MiB)
    assert os.listdir(d) == [], "nothing created in a refused dir"
    os.chmod(d, 0o755)  # not writable by others: accepted as found
    SpillStore.open(str(d), 8 * MiB).close()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_dir_owned_by_another_user_is_refused(tmp_path) -> None:
    d = tmp_path / "spill"
    d.mkdir(mode=0o700)
    os.chown(d, 4242, 4242)
    with pytest.raises(SpillError, match=r"owned by uid 4242, not by the agent's user"):
        SpillStore.open(str(d), 8 * MiB)


def test_symlinks_in_the_spill_dir_are_refused_and_their_victims_untouched(tmp_path) -> None:
    from agent.spill import next_epoch

    d = tmp_path / "spill"
    d.mkdir(mode=0o700)
    victims = {}
    for name in (LOCK_NAME, "epoch.tmp", ring_file_name(2)):
        victim = tmp_path / f"victim-{name}"
        victim.write_bytes(b"precious " * 100)
        victims[victim] = victim.read_bytes()
        os.symlink(victim, d / name)
    with pytest.raises(SpillError, match=r"LOCK: it is a symlink \(refused\)"):
        SpillStore.open(str(d), 8 * MiB)
    os.unlink(d / LOCK_NAME)
    with pytest.raises(SpillError, match=r"2-normal.ring: cannot open: it is a symlink"):
        SpillStore.open(str(d), 8 * MiB)
    # epoch.tmp is created exclusively: a planted link is removed, never followed.
    next_epoch(str(d), 5)
    assert not os.path.islink(d / "epoch.tmp") and (d / "epoch").read_text() == "5\n"
    for victim, before in victims.items():
        assert victim.read_bytes() == before, f"{victim} was touched"


def test_a_fifo_in_place_of_a_ring_file_is_refused_without_blocking(tmp_path) -> None:
    d = tmp_path / "spill"
    d.mkdir(mode=0o700)
    os.mkfifo(d / ring_file_name(0))
    with pytest.raises(SpillError, match=r"0-critical.ring: cannot open: not a regular file"):
        SpillStore.open(str(d), 8 * MiB)


def test_the_seed_is_created_once_private_and_records_planted_from_elsewhere_fail(
    tmp_path,
) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    store = SpillStore.open(a, 8 * MiB)
    seed = os.path.join(a, "seed")
    assert stat.S_IMODE(os.stat(seed).st_mode) == 0o600 and os.path.getsize(seed) == 16
    secret = Path(seed).read_bytes()
    store.push_back(1, *chunk(50))
    store.close()
    SpillStore.open(a, 8 * MiB).close()
    assert Path(seed).read_bytes() == secret, "kept across starts"
    # Another installation's ring file planted here: its records fail the checksums.
    SpillStore.open(b, 8 * MiB).close()
    shutil.copy(os.path.join(a, ring_file_name(1)), os.path.join(b, ring_file_name(1)))
    store = SpillStore.open(b, 8 * MiB)
    assert store.pending(1) == 0 and drain_class(store, 1) == []
    store.close()


def test_a_damaged_seed_file_is_refused_naming_it(tmp_path) -> None:
    d = str(tmp_path / "spill")
    SpillStore.open(d, 8 * MiB).close()
    Path(d, "seed").write_bytes(b"short")
    with pytest.raises(SpillError, match=r"spill seed .*seed holds 5 bytes, not 16"):
        SpillStore.open(d, 8 * MiB)


# ---------------------------------------------------- format version 1 files


def write_v1_ring(path: str, size: int, cls: int, batches: list[tuple[bytes, array]]) -> None:
    """A ring file as version 1 wrote it: fixed seeds, one record per batch whose
    payload is the ends array then the blob, version 1 in both header slots."""
    from agent.spill.format import (
        FORMAT_V1,
        SLOT_BYTES,
        SLOT_ENCODED_BYTES,
        decode_slot,
        encode_slot,
    )
    from agent.spill.ring import SpillRing

    ring = SpillRing.open(path, size, cls)
    for blob, ends in batches:
        assert ring.push_back(bytes(ends) + bytes(blob), len(ends))
    ring.close()
    with open(path, "r+b") as f:
        for off in (0, SLOT_BYTES):
            f.seek(off)
            state = decode_slot(f.read(SLOT_ENCODED_BYTES), cls)
            assert state is not None
            f.seek(off)
            f.write(encode_slot(state, version=FORMAT_V1))


def test_a_version_1_ring_is_converted_at_the_open_never_discarded(tmp_path) -> None:
    d = tmp_path / "spill"
    d.mkdir(mode=0o700)
    sizes = ring_sizes(8 * MiB)
    batches = [chunk(40, first=40 * k) for k in range(5)]
    write_v1_ring(str(d / ring_file_name(3)), sizes[3], 3, batches)
    store = SpillStore.open(str(d), 8 * MiB)
    assert store.statistics().classes[3].converted_events == 200
    assert not (d / (ring_file_name(3) + ".v1")).exists()
    store.close()
    # Converted on disk: the next open reads version 2, no conversion again.
    store = SpillStore.open(str(d), 8 * MiB)
    assert store.statistics().classes[3].converted_events == 0
    want = [e for blob, ends in batches for e in events(blob, ends)]
    assert drain_class(store, 3) == want
    store.close()


def test_a_conversion_cut_short_starts_over_from_the_old_file(tmp_path) -> None:
    d = tmp_path / "spill"
    d.mkdir(mode=0o700)
    sizes = ring_sizes(8 * MiB)
    batches = [chunk(30, first=30 * k) for k in range(3)]
    old = str(d / (ring_file_name(2) + ".v1"))
    write_v1_ring(old, sizes[2], 2, batches)
    # The half-written new ring of a conversion killed midway.
    partial = SpillStore.open(str(tmp_path / "other"), 8 * MiB)
    partial.close()
    shutil.copy(tmp_path / "other" / ring_file_name(2), d / ring_file_name(2))
    store = SpillStore.open(str(d), 8 * MiB)
    want = [e for blob, ends in batches for e in events(blob, ends)]
    assert drain_class(store, 2) == want, "each event once, in order"
    assert not os.path.exists(old)
    store.close()


def test_one_budget_a_fill_of_the_usual_mix_evicts_nothing_up_to_80_percent(tmp_path) -> None:
    """Issue 11: the usual mix (1% critical, 2% high, 92% normal, 5% low), no
    head-end, through the real buffer policy into a real store: nothing is
    evicted while the spill has room (a fill to 80% of max_bytes); past it the
    lowest class's oldest go first, and every eviction is counted."""
    from agent.governor import BufferGovernor
    from agent.pressure import BufferPressure
    from agent.queues import CHUNK_BYTES, ClassQueues
    from agent.telemetry import AgentIdentity, Telemetry

    max_bytes = 32 * MiB
    store = SpillStore.open(str(tmp_path / "spill"), max_bytes)
    queues = ClassQueues()
    governor = BufferGovernor(4 * MiB, MiB, 60.0, 8 * CHUNK_BYTES, burst_bytes=2 * CHUNK_BYTES)
    telemetry = Telemetry(AgentIdentity("gw", "0", 1, 0.0, 4 * MiB, MiB, "/spill"))
    pressure = BufferPressure(queues, governor, store, telemetry, (0, 1), 0.01)
    mix = [0] * 1 + [1] * 2 + [2] * 92 + [3] * 5
    rng = random.Random(5)
    sent = [0] * 4
    now = 0.0
    first_dropped: list[int] = []

    def fill(until_bytes: int) -> None:
        nonlocal now
        offered = sum(sent) * 120
        while offered < until_bytes:
            burst: list[list[bytes]] = [[], [], [], []]
            for _ in range(500):
                cls = rng.choice(mix)
                burst[cls].append(sent[cls].to_bytes(4, "little") * 30)
                sent[cls] += 1
            for cls, evs in enumerate(burst):
                queues[cls].push_many(evs)
                telemetry.classes[cls].received += len(evs)
            now += 0.02
            assert pressure.make_room(now), "ingest paused"
            if not first_dropped:
                first_dropped.extend(c for c in range(4) if telemetry.classes[c].dropped)
            offered += 500 * 120

    fill(int(max_bytes * 0.8))
    assert [c.dropped for c in telemetry.classes] == [0, 0, 0, 0], "evicted with room left"
    assert store.statistics().pending_events > 0.7 * max_bytes / 130
    fill(int(max_bytes * 1.3))
    dropped = [c.dropped for c in telemetry.classes]
    assert dropped[0] == dropped[1] == 0 and dropped[3] > 0
    # The first eviction took low alone (the lowest class, its oldest); normal
    # goes only once low has nothing left to give at that moment (the order
    # within a turn: tests/test_pressure.py's models).
    assert first_dropped == [3]
    for cls in range(4):
        c = telemetry.classes[cls]
        held = queues[cls].events + store.pending(cls)
        assert c.received == held + c.dropped, cls
    store.close()
