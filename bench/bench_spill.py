"""Spill ring benchmark: what the brownout scenario asks of the disk path.

    python bench/bench_spill.py [--dir DIR] [--ring-mib 512] [--rounds 3]

Measures, on a real file in DIR (default: a fresh directory under the system
temp dir, removed afterwards):
1. SpillStore push_back / read_next / release_read with 120-byte events in
   256 KiB chunks (the loop's batch shape): per-call p50/p99/max, MB/s and
   events/s for a spill phase (push only), a drain phase (read + release), and
   the steady mix; next to the bare cost of copying and hashing one chunk,
   measured in the same run.
2. flush (msync) of 16 MiB of dirty records.
3. open/recovery of a full ring of --ring-mib: page cache warm, cold (pages
   dropped with posix_fadvise DONTNEED after an fsync), and with both header
   slots destroyed (a full scan).
4. open/recovery of a whole spill store of --store-mib (default 2 GiB, the
   packaged max_bytes) with every ring full of runs of 4 KiB pieces: warm,
   cold, and damaged as issue 11 damaged it (per file: 64 bit flips, one
   zeroed 4 KiB block, 512 random bytes inside data pages), cold.
   `--only store` runs just this part.
Prints the machine first. A script, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmh3  # noqa: E402

from agent.spill import SpillRing, SpillStore  # noqa: E402
from agent.spill.format import DATA_OFFSET, SLOT_BYTES  # noqa: E402

MiB = 1024 * 1024
EVENT_BYTES = 120
CHUNK_BYTES = 256 * 1024
EVENTS_PER_CHUNK = CHUNK_BYTES // EVENT_BYTES  # 2184 events, 262,080 bytes


def machine(dir: str) -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    fstype = "?"
    try:
        best = ""
        with open("/proc/mounts") as f:
            for line in f:
                _dev, mnt, typ = line.split()[:3]
                if os.path.realpath(dir).startswith(mnt) and len(mnt) > len(best):
                    best, fstype = mnt, typ
    except OSError:
        pass
    st = os.statvfs(dir)
    return (
        f"machine: {platform.machine()} {cpu}, {os.cpu_count()} cpus, "
        f"{platform.system()} {platform.release()}\n"
        f"python {platform.python_version()}, mmh3 {importlib.metadata.version('mmh3')}\n"
        f"dir: {dir} ({fstype}, {st.f_bavail * st.f_frsize / 2**30:.1f} GiB free)"
    )


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def line(name: str, samples_s: list[float], nbytes: int, nevents: int) -> str:
    """Per-call latency in microseconds and the throughput those calls add up to."""
    total = sum(samples_s)
    us = [x * 1e6 for x in samples_s]
    return (
        f"  {name:<26} p50 {pct(us, 50):8.1f} us  p99 {pct(us, 99):8.1f} us  "
        f"max {max(us):8.1f} us  {nbytes / total / MiB:8.0f} MB/s  "
        f"{nevents / total / 1e6:6.2f} M events/s"
    )


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def make_chunk() -> tuple[bytearray, array[int]]:
    blob = bytearray(os.urandom(EVENTS_PER_CHUNK * EVENT_BYTES))
    ends = array("I", range(EVENT_BYTES, EVENTS_PER_CHUNK * EVENT_BYTES + 1, EVENT_BYTES))
    return blob, ends


def bench_baseline(blob: bytearray) -> None:
    frozen = bytes(blob)
    n = 2000
    copy = [timed(lambda: bytes(blob)) for _ in range(n)]
    hashed = [timed(lambda: mmh3.hash(frozen, 1)) for _ in range(n)]
    print("baseline (same run), one 256 KiB chunk:")
    print(line("bytes() copy", copy, n * len(blob), n * EVENTS_PER_CHUNK))
    print(line("mmh3 hash", hashed, n * len(blob), n * EVENTS_PER_CHUNK))


def bench_throughput(dir: str, rounds: int) -> None:
    blob, ends = make_chunk()
    store = SpillStore.open(os.path.join(dir, "tp"), 1024 * MiB)  # normal ring: 384 MiB
    cls = 2
    fill = 256  # chunks per phase: 64 MiB
    push: list[float] = []
    read: list[float] = []
    release: list[float] = []
    for _ in range(rounds):
        for _ in range(fill):
            t = time.perf_counter()
            ok = store.push_back(cls, blob, ends)
            push.append(time.perf_counter() - t)
            assert ok
        for _ in range(fill):
            t = time.perf_counter()
            batch = store.read_next(cls)
            read.append(time.perf_counter() - t)
            assert batch is not None
            t = time.perf_counter()
            store.release_read(cls)
            release.append(time.perf_counter() - t)
    # Steady mix: the ring holds a backlog while chunks go in and come out.
    for _ in range(fill):
        store.push_back(cls, blob, ends)
    mix: list[float] = []
    for _ in range(rounds * fill):
        t = time.perf_counter()
        store.push_back(cls, blob, ends)
        store.read_next(cls)
        store.release_read(cls)
        mix.append(time.perf_counter() - t)
    store.close()
    n = len(push)
    nbytes, nev = n * len(blob), n * EVENTS_PER_CHUNK
    print(f"store throughput, {EVENT_BYTES}-byte events, {len(blob)}-byte chunks, {n} chunks:")
    print(line("push_back (spill)", push, nbytes, nev))
    print(line("read_next (drain)", read, nbytes, nev))
    print(line("release_read", release, nbytes, nev))
    both = [a + b for a, b in zip(read, release, strict=True)]
    print(line("read_next+release_read", both, nbytes, nev))
    print(line("push+read+release (mix)", mix, len(mix) * len(blob), len(mix) * EVENTS_PER_CHUNK))


def bench_paced(dir: str, mb_per_s: float, seconds: float) -> None:
    """push_back at the brownout's whole offered rate (500,000 x 120 B/s = 60 MB/s,
    as if every event spilled), into fresh preallocated rings: the latency a
    push_back adds to the loop turn when the kernel is also writing back."""
    blob, ends = make_chunk()
    t = time.perf_counter()
    store = SpillStore.open(os.path.join(dir, "paced"), 2048 * MiB)
    created = time.perf_counter() - t
    interval = len(blob) / (mb_per_s * 1e6)
    samples = []
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < seconds:
        due = start + n * interval
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        t = time.perf_counter()
        ok = store.push_back(2 + n % 2, blob, ends)
        samples.append(time.perf_counter() - t)
        assert ok
        n += 1
    flush = timed(store.flush)
    store.close()
    print(f"paced spill at {mb_per_s:.0f} MB/s for {seconds:.0f} s ({n} chunks, fresh rings):")
    print(f"  SpillStore.open creating 2 GiB of rings: {created * 1e3:.0f} ms")
    print(line("push_back", samples, n * len(blob), n * EVENTS_PER_CHUNK))
    print(f"  final flush {flush * 1e3:.1f} ms")


def bench_flush(dir: str, rounds: int) -> None:
    blob, ends = make_chunk()
    store = SpillStore.open(os.path.join(dir, "fl"), 1024 * MiB)
    per_flush = 16 * MiB // len(blob) + 1
    samples = []
    for _ in range(max(rounds, 5)):
        for _ in range(per_flush):
            store.push_back(2, blob, ends)
        samples.append(timed(store.flush))
        for _ in range(per_flush):
            store.read_next(2)
            store.release_read(2)
    idle = [timed(store.flush) for _ in range(100)]
    # The same 16 MiB synced in bounded steps (flush(max_bytes)), one per loop turn.
    steps: list[float] = []
    for _ in range(max(rounds, 5)):
        for _ in range(per_flush):
            store.push_back(2, blob, ends)
        done = False
        while not done:
            t = time.perf_counter()
            done = store.flush(max_bytes=4 * MiB)
            steps.append(time.perf_counter() - t)
        for _ in range(per_flush):
            store.read_next(2)
            store.release_read(2)
    store.close()
    ms = [x * 1e3 for x in samples]
    st = [x * 1e3 for x in steps]
    print(f"flush (msync) of {per_flush * len(blob) / MiB:.1f} MiB dirty, {len(ms)} runs:")
    print(f"  one call:               p50 {pct(ms, 50):6.1f} ms  max {max(ms):6.1f} ms")
    print(f"  flush(max_bytes=4 MiB): p50 {pct(st, 50):6.1f} ms  max {max(st):6.1f} ms per call")
    print(f"  with nothing dirty: p50 {pct(idle, 50) * 1e6:.1f} us")


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def bench_recovery(dir: str, ring_mib: int) -> None:
    path = os.path.join(dir, "2-normal.ring")
    size = ring_mib * MiB
    blob, ends = make_chunk()
    payload = bytes(ends.tobytes() + blob)
    t = time.perf_counter()
    ring = SpillRing.open(path, size, 2)
    create = time.perf_counter() - t
    t = time.perf_counter()
    records = 0
    while ring.push_back(payload, EVENTS_PER_CHUNK):
        records += 1
    fill = time.perf_counter() - t
    ring.close()
    print(f"recovery of a full {ring_mib} MiB ring ({records} records of {len(payload)} bytes):")
    print(f"  create (fallocate, zero-fill)     {create * 1e3:8.1f} ms")
    print(f"  fill                              {fill * 1e3:8.1f} ms")

    def reopen(label: str) -> None:
        t = time.perf_counter()
        r = SpillRing.open(path, size, 2)
        took = time.perf_counter() - t
        s = r.statistics()
        r.close()
        print(
            f"  open, {label:<28}{took * 1e3:8.1f} ms  ({s.recovered_records} records, "
            f"{s.corrupt_records} corrupt, header_lost={s.header_lost})"
        )

    reopen("page cache warm")
    drop_cache(path)
    reopen("page cache dropped")
    with open(path, "r+b") as f:
        f.write(bytes(2 * SLOT_BYTES))
    reopen("both header slots lost")
    with open(path, "r+b") as f:  # tear the oldest record: the walk resyncs past it
        f.seek(DATA_OFFSET + 64)
        f.write(b"\0" * 8)
    reopen("first record torn")


def damage_file(path: str, rng: random.Random) -> None:
    """Issue 11's damage: 64 bit flips, one zeroed 4 KiB block, 512 random bytes,
    all inside pages of the data region (the rings are full: every page holds data)."""
    size = os.path.getsize(path)
    pages = (size - DATA_OFFSET) // 4096
    with open(path, "r+b") as f:
        for _ in range(64):
            at = DATA_OFFSET + rng.randrange(pages) * 4096 + rng.randrange(4096)
            f.seek(at)
            b = f.read(1)[0]
            f.seek(at)
            f.write(bytes([b ^ (1 << rng.randrange(8))]))
        f.seek(DATA_OFFSET + rng.randrange(pages) * 4096)
        f.write(bytes(4096))
        f.seek(DATA_OFFSET + rng.randrange(pages) * 4096 + rng.randrange(4096 - 512))
        f.write(rng.randbytes(512))


def bench_store_recovery(dir: str, store_mib: int) -> None:
    path = os.path.join(dir, "store")
    blob, ends = make_chunk()
    t = time.perf_counter()
    store = SpillStore.open(path, store_mib * MiB)
    create = time.perf_counter() - t
    t = time.perf_counter()
    chunks = 0
    for cls in range(4):
        while store.push_back(cls, blob, ends):
            chunks += 1
    fill = time.perf_counter() - t
    events = store.statistics().pending_events
    store.close()
    print(
        f"recovery of a full {store_mib} MiB spill store ({chunks} chunks, {events} events "
        f"of {EVENT_BYTES} bytes, runs of 4 KiB pieces):"
    )
    print(f"  create (fallocate, zero-fill)     {create * 1e3:8.1f} ms")
    print(
        f"  fill                              {fill * 1e3:8.1f} ms  "
        f"({fill / chunks * 1e3:.2f} ms/chunk)"
    )
    rings = sorted(str(p) for p in Path(path).glob("*.ring"))

    def reopen(label: str) -> None:
        t = time.perf_counter()
        st = SpillStore.open(path, store_mib * MiB)
        took = time.perf_counter() - t
        s = st.statistics()
        st.close()
        print(
            f"  open, {label:<28}{took * 1e3:8.1f} ms  ({s.pending_events} events, "
            f"{s.corrupt_records} pieces / {s.corrupt_events} events / {s.corrupt_bytes} bytes "
            f"skipped, {s.pending_events / events:.2%} kept)"
        )

    reopen("page cache warm")
    for r in rings:
        drop_cache(r)
    reopen("page cache dropped")
    rng = random.Random(11)
    for r in rings:
        damage_file(r, rng)
        drop_cache(r)
    reopen("damaged, cache dropped")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="where to put the ring files (default: a temp dir)")
    ap.add_argument("--ring-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--store-mib", type=int, default=2048)
    ap.add_argument("--only", choices=("store",), help="run only this part")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="bench-spill-", dir=args.dir)
    try:
        print(machine(base))
        print()
        if args.only == "store":
            bench_store_recovery(base, args.store_mib)
            return
        bench_baseline(make_chunk()[0])
        print()
        bench_throughput(base, args.rounds)
        print()
        bench_paced(base, 60.0, 5.0)
        print()
        bench_flush(base, args.rounds)
        print()
        bench_recovery(base, args.ring_mib)
        print()
        bench_store_recovery(base, args.store_mib)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
