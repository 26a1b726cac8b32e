"""One run of pieces in a ring's data region: checking it, writing it, reading it back.

This module owns a run at the level of its bytes: checking what the caller hands
in (`prepare_run`: pieces, event counts, the ring's largest span), writing the
run piece by piece and a skip item into a writable buffer (`write_run`,
`write_skip`), and reading a run back with every piece checked again
(`read_run`). It is pure over the buffer it is given (the ring's mapping, or a
bytearray in a test): no file, no clock, no ring state. `SpillRing` (ring.py)
decides where a run goes and with which seq, floor and stamp, marks the bytes
dirty and moves its head and tail; format.py says what the bytes mean.

Promises:
- Each piece's crc is written last (`format.seal_record`), after its header and
  payload, so a piece cut short by a crash fails it; the payload's parts are
  copied once, back to back, and nothing else is copied.
- A run that cannot be stored is refused before a byte is written (ValueError
  naming the ring's path): no pieces or more than `MAX_RUN_PIECES`, a piece
  without bytes or events, more events than a header counts, a span beyond the
  ring's largest.
- `read_run` never raises for bad bytes and never hangs: a piece that fails its
  checks is skipped and counted, and the rest of the run is found by the same
  resync as at open (recover.find_valid, its hashing capped per run).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from agent.spill.format import (
    KIND_BATCH,
    KIND_SKIP,
    MAX_RUN_PIECES,
    REC_HDR,
    Buffer,
    Seeds,
    decode_record_header,
    pack_record_header,
    record_crc_ok,
    record_span,
    seal_record,
)
from agent.spill.recover import LiveRecord, _Budget, find_valid

__all__ = [
    "MAX_RECORD_EVENTS",
    "Piece",
    "PreparedRun",
    "RunRead",
    "prepare_run",
    "read_run",
    "write_run",
    "write_skip",
]

# A record's event count is a u32 in its header (format.py).
MAX_RECORD_EVENTS = 0xFFFF_FFFF

# One piece of a run as the caller hands it in: its payload's parts (copied
# once, back to back, into the mapping) and its event count.
Piece = tuple[Sequence[Buffer], int]


@dataclasses.dataclass(frozen=True)
class PreparedRun:
    """A run checked and ready to write: per piece its parts as byte views, its
    payload length and its event count; the totals."""

    views: list[list[memoryview]]
    lengths: list[int]
    counts: list[int]
    count: int  # events of the whole run
    span: int  # bytes the run occupies in the region (headers and padding)

    @property
    def pieces(self) -> int:
        return len(self.lengths)

    @property
    def length(self) -> int:
        """Payload bytes of the whole run."""
        return sum(self.lengths)


@dataclasses.dataclass(frozen=True)
class RunRead:
    """What `read_run` found: the sound pieces as (events, position of the
    payload in the region, payload bytes), and what it skipped."""

    pieces: list[tuple[int, int, int]]
    corrupt: int  # pieces lost (by seq)
    corrupt_events: int  # events of lost pieces whose header survived
    corrupt_bytes: int  # bytes skipped over damage


def _as_bytes_view(part: Buffer) -> memoryview:
    view = memoryview(part)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def prepare_run(path: str, pieces: Sequence[Piece], max_span: int) -> PreparedRun:
    """Check a run for a ring (`path` names it in errors) whose runs may occupy at
    most `max_span` bytes. Raises ValueError for a run that can never be stored."""
    if not pieces or len(pieces) > MAX_RUN_PIECES:
        raise ValueError(f"spill ring {path}: a run needs 1..{MAX_RUN_PIECES} pieces")
    views: list[list[memoryview]] = []
    lengths: list[int] = []
    counts: list[int] = []
    span = 0
    for parts, n in pieces:
        vs = [_as_bytes_view(p) for p in parts]
        length = sum(v.nbytes for v in vs)
        if length <= 0 or n <= 0:
            raise ValueError(f"spill ring {path}: a record needs bytes and events")
        if n > MAX_RECORD_EVENTS:
            raise ValueError(
                f"spill ring {path}: record of {n} events exceeds the most a "
                f"record can count ({MAX_RECORD_EVENTS})"
            )
        views.append(vs)
        lengths.append(length)
        counts.append(n)
        span += record_span(length)
    if span > max_span:
        raise ValueError(
            f"spill ring {path}: record of {sum(lengths)} bytes exceeds the ring's "
            f"largest ({max_span - REC_HDR})"
        )
    return PreparedRun(views, lengths, counts, sum(counts), span)


def write_run(
    buf: memoryview,
    off: int,
    run: PreparedRun,
    *,
    seq: int,
    floor: int,
    stamp: int,
    class_index: int,
    seeds: Seeds,
) -> int:
    """Every piece of `run` at file offset `off`, seqs from `seq` on, each header
    then payload then its crc (written last, so a piece cut short by a crash
    fails it). Returns the offset just past the run."""
    last = run.pieces - 1
    for i, (vs, length) in enumerate(zip(run.views, run.lengths, strict=True)):
        pack_record_header(
            buf,
            off,
            seq=seq + i,
            floor=floor,
            stamp=stamp,
            length=length,
            count=run.counts[i],
            class_index=class_index,
            kind=KIND_BATCH,
            more=last - i,
            seeds=seeds,
        )
        at = off + REC_HDR
        for v in vs:
            buf[at : at + v.nbytes] = v
            at += v.nbytes
        seal_record(buf, off, length, seeds)
        off += record_span(length)
    return off


def write_skip(
    buf: memoryview, off: int, *, skip: int, seq: int, stamp: int, class_index: int, seeds: Seeds
) -> None:
    """A skip item at file offset `off`: the reader jumps `skip` bytes past its header."""
    pack_record_header(
        buf,
        off,
        seq=seq,
        floor=seq,
        stamp=stamp,
        length=skip,
        count=0,
        class_index=class_index,
        kind=KIND_SKIP,
        seeds=seeds,
    )
    seal_record(buf, off, 0, seeds)


def read_run(data: memoryview, entry: LiveRecord, class_index: int, seeds: Seeds) -> RunRead:
    """The run `entry` in the data region `data`, every piece checked again (the
    disk may have damaged it since the open): a piece that fails is skipped and
    counted, and the rest of the run is found by the same resync as at the open.
    `pieces` may be empty (all of it damaged)."""
    out: list[tuple[int, int, int]] = []
    corrupt = corrupt_events = corrupt_bytes = 0
    pos, seq, end = entry.pos, entry.seq, entry.pos + entry.bytes_held
    while seq < entry.end_seq and pos < end:
        hdr = decode_record_header(data, pos, class_index, seeds)
        if (
            hdr is not None
            and hdr.seq == seq
            and hdr.kind == KIND_BATCH
            and pos + record_span(hdr.length) <= end
            and record_crc_ok(data, pos, hdr, seeds)
        ):
            out.append((hdr.count, pos + REC_HDR, hdr.length))
            pos += record_span(hdr.length)
            seq += 1
            continue
        if hdr is not None and hdr.seq == seq and hdr.kind == KIND_BATCH:
            corrupt_events += hdr.count
        budget = _Budget(entry.bytes_held)
        hit = find_valid(data, class_index, pos, end - pos, seq - 1, budget, seeds)
        if hit is None or hit[1].seq >= entry.end_seq:
            corrupt += entry.end_seq - seq
            corrupt_bytes += end - pos
            break
        corrupt += hit[1].seq - seq
        corrupt_bytes += hit[0] - pos
        pos, seq = hit[0], hit[1].seq
    return RunRead(out, corrupt, corrupt_events, corrupt_bytes)
