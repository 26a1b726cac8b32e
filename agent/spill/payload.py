"""The payload of one spilled batch: how a chunk's events become a run's pieces and back.

This module owns the batch payload encoding (pure: bytes in, bytes out; no
files). The store (store.py) pushes what `encode_run` makes and hands back what
`decode_run` makes; the run and piece framing around it is format.py's.

Batch payload (one in-memory chunk = one run of pieces, format.py)::

    each piece: base  u32: the run offset where the piece's first event starts
                ends  count x u32 little-endian: cumulative end offset of each
                      event, relative to the run's start
                blob  the events' bytes, back to back, exactly as received

An intact run reads back as the chunk's own ends array and blob (no rebasing);
a run that lost pieces to damage is rebased piece by piece from `base`.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence

from agent.spill.format import PIECE_PREFIX, Buffer, piece_bounds
from agent.spill.ring import Piece

ENDS_ITEM = 4  # bytes per event in the ends array (u32)
_LITTLE = sys.byteorder == "little"


def encode_run(blob: Buffer, ends: Sequence[int]) -> tuple[list[Piece], int]:
    """The pieces of a batch's run (format.py): each (base, its ends, its events'
    bytes), the ends and bytes as views of the caller's arrays where possible."""
    count = len(ends)
    if count == 0:
        raise ValueError("a spilled batch needs at least one event")
    view = memoryview(blob)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    used = ends[-1]
    if used > view.nbytes or used <= 0:
        raise ValueError(f"batch ends at {used} but its blob holds {view.nbytes} bytes")
    if isinstance(ends, array) and ends.typecode == "I" and ends.itemsize == 4 and _LITTLE:
        ends_view = memoryview(ends).cast("B")  # the chunk's own array: no copy
    else:
        packed = array("I", ends)
        if packed.itemsize != ENDS_ITEM:  # pragma: no cover - no such Linux ABI today
            raise RuntimeError("array('I') is not 32-bit on this platform")
        if not _LITTLE:
            packed.byteswap()
        ends_view = memoryview(packed).cast("B")
    pieces: list[Piece] = []
    a = 0
    base = 0
    for b in piece_bounds(ends):
        end = ends[b - 1]
        prefix = base.to_bytes(PIECE_PREFIX, "little")
        parts = (prefix, ends_view[a * ENDS_ITEM : b * ENDS_ITEM], view[base:end])
        pieces.append((parts, b - a))
        a, base = b, end
    return pieces, count


def decode_run(pieces: list[tuple[int, bytes]]) -> tuple[bytes, array[int]]:
    """A run's sound pieces back as one blob and its ends (relative to the blob).
    An intact run's ends are already relative to its start; after a piece lost
    to damage (or a run that starts mid-way) the rest is shifted by the gap."""
    ends = array("I")
    parts: list[bytes] = []
    size = 0
    for count, payload in pieces:
        base = int.from_bytes(payload[:PIECE_PREFIX], "little")
        cut = PIECE_PREFIX + ENDS_ITEM * count
        mine = array("I")
        mine.frombytes(payload[PIECE_PREFIX:cut])
        if not _LITTLE:
            mine.byteswap()
        if base != size:
            shift = size - base
            mine = array("I", (e + shift for e in mine))
        ends.extend(mine)
        part = payload[cut:]
        parts.append(part)
        size += len(part)
    return b"".join(parts), ends
