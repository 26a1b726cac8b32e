"""Ring files and images for the spill tests (test_spill_ring.py, test_spill_recover.py):
checkable payloads, a lapped ring full of stale records, where live records lie,
and a deadline that fails a test instead of hanging it when recovery loops."""

from __future__ import annotations

import random
import signal
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from agent.spill.format import (
    DATA_OFFSET,
    INITIAL_SEQ,
    KIND_BATCH,
    REC_HDR,
    decode_record_header,
    record_crc_ok,
)
from agent.spill.ring import SpillRing

# The data region of the lapped test rings: small enough that 400 records of up to
# 7000 bytes go round it many times.
DATA = 65536


def payload_for(n: int, size: int) -> bytes:
    """Distinct, checkable bytes for the n-th payload of the test."""
    stamp = n.to_bytes(4, "little")
    return (stamp * (size // 4 + 1))[:size]


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the suite) if recovery ever loops."""

    def _boom(signum: int, frame: object) -> None:
        raise TimeoutError(f"no result within {seconds} s: recovery hangs")

    old = signal.signal(signal.SIGALRM, _boom)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def read_one(ring: SpillRing) -> tuple[int, bytes, int] | None:
    """The next unread record as (seq, payload, count), through the ring's real
    read path (`read_next_split` with no prefix); it stays read, not released."""
    got = ring.read_next_split(0)
    if got is None:
        return None
    prefix, payload, count, seq = got
    assert prefix == b""
    return seq, payload, count


def drain(ring: SpillRing) -> list[tuple[int, bytes, int]]:
    """Every unread record, oldest first; all of them stay read but unreleased
    (close() or a reopen brings them back as unread)."""
    out = []
    while (rec := read_one(ring)) is not None:
        out.append(rec)
    return out


def read_image(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_image(path: str, image: bytes | bytearray) -> None:
    with open(path, "wb") as f:
        f.write(image)


def live_layout(image: bytes, seqs: set[int], class_index: int) -> dict[int, tuple[int, int]]:
    """{seq: (position in the data region, bytes covered by its checksum)} of the
    valid records with those seqs, found with the public format functions."""
    out: dict[int, tuple[int, int]] = {}
    for off in range(DATA_OFFSET, len(image) - REC_HDR + 1, 8):
        hdr = decode_record_header(image, off, class_index)
        if hdr and hdr.kind == KIND_BATCH and hdr.seq in seqs and record_crc_ok(image, off, hdr):
            out[hdr.seq] = (off - DATA_OFFSET, REC_HDR + hdr.length)
    return out


def damaged_by(layout: dict[int, tuple[int, int]], lo: int, hi: int) -> set[int]:
    """Live records whose checksummed bytes overlap the data-region range [lo, hi)."""
    return {seq for seq, (pos, n) in layout.items() if pos < hi and lo < pos + n}


def build_lapped_ring(path: str, rng: random.Random) -> dict[int, bytes]:
    """A ring that went round several times (stale records everywhere in its free
    space) and still holds some records; {seq: payload} of the live ones."""
    ring = SpillRing.open(path, DATA_OFFSET + DATA, 2)
    live: dict[int, bytes] = {}
    order: deque[int] = deque()
    for n in range(1, 401):
        payload = payload_for(n, rng.choice([40, 300, 1200, 3000, 7000]))
        while not ring.push_back(payload, n % 50 + 1):
            assert read_one(ring) is not None
            ring.release_read()
            del live[order.popleft()]
        seq = INITIAL_SEQ + n - 1
        live[seq] = payload
        order.append(seq)
    for _ in range(rng.randrange(0, 4)):  # free a few more at the front
        if read_one(ring) is not None:
            ring.release_read()
            del live[order.popleft()]
    ring.close()
    return live
