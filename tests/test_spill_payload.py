"""agent/spill/payload.py: a batch's events as a run's pieces and back.

The model: a batch is a list of events (bytes). Encoding then decoding every
piece gives the batch back exactly; decoding with pieces missing (damage) gives
exactly the events of the pieces kept, in order.
"""

from __future__ import annotations

from array import array
from itertools import accumulate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.spill.payload import decode_run, encode_run

events_st = st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=40)


def _stored(events: list[bytes]) -> list[tuple[int, list[bytes], bytes]]:
    """Each piece as a ring would store it: (count, its events, payload bytes)."""
    ends = array("I", accumulate(len(e) for e in events))
    pieces, count = encode_run(b"".join(events), ends)
    assert count == len(events)
    out = []
    at = 0
    for parts, n in pieces:
        out.append((n, events[at : at + n], b"".join(bytes(p) for p in parts)))
        at += n
    assert at == len(events)
    return out


def _events(blob: bytes, ends: array[int]) -> list[bytes]:
    starts = [0, *ends[:-1]][: len(ends)]
    return [blob[a:b] for a, b in zip(starts, ends, strict=True)]


@given(events_st)
def test_round_trip(events: list[bytes]) -> None:
    blob, ends = decode_run([(n, payload) for n, _, payload in _stored(events)])
    assert _events(blob, ends) == events
    assert blob == b"".join(events)


@given(events_st, st.data())
def test_pieces_lost_to_damage_leave_the_rest_whole(
    events: list[bytes], data: st.DataObject
) -> None:
    stored = _stored(events)
    keep = data.draw(st.lists(st.booleans(), min_size=len(stored), max_size=len(stored)))
    kept = [s for s, k in zip(stored, keep, strict=True) if k]
    blob, ends = decode_run([(n, payload) for n, _, payload in kept])
    assert _events(blob, ends) == [e for _, evs, _ in kept for e in evs]


def test_an_empty_batch_or_ends_past_the_blob_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one event"):
        encode_run(b"x", [])
    with pytest.raises(ValueError, match="ends at 5 but its blob holds 3 bytes"):
        encode_run(b"abc", [5])
