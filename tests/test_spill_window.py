"""agent/spill/window.py: a sparse ring's window against a real sparse file and a fake budget."""

from __future__ import annotations

import mmap
import os

import pytest

from agent.spill.format import DATA_OFFSET, Placement
from agent.spill.window import ALLOC_STEP, SparseWindow

PAGE = mmap.PAGESIZE
SIZE = 4 * ALLOC_STEP  # the data region


class FakeBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, nbytes: int, *, force: bool = False) -> bool:
        if not force and self.held + nbytes > self.limit:
            return False
        self.held += nbytes
        return True

    def give(self, nbytes: int) -> None:
        self.held -= nbytes
        assert self.held >= 0


@pytest.fixture
def ring_fd(tmp_path):
    fd = os.open(tmp_path / "ring", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, DATA_OFFSET + SIZE)
    yield fd
    os.close(fd)


def allocated(fd: int) -> int:
    return os.fstat(fd).st_blocks * 512


def test_the_budget_is_charged_exactly_the_window(ring_fd) -> None:
    budget = FakeBudget(SIZE)
    w = SparseWindow(ring_fd, SIZE, budget)
    w.adopt(0, None)
    assert w.allocated == 0 and budget.held == 0
    assert w.room_back(Placement(0, -1, 0), 1000, 0, empty=True)
    assert w.allocated == ALLOC_STEP == budget.held  # a whole step ahead of the tail
    assert allocated(ring_fd) >= ALLOC_STEP
    assert w.cover_back(ALLOC_STEP + 1)
    assert w.allocated == 2 * ALLOC_STEP == budget.held
    w.release(ALLOC_STEP + PAGE + 8, empty=False)  # the head moved: whole pages behind it go
    assert w.allocated == ALLOC_STEP - PAGE == budget.held
    w.release(0, empty=True)
    assert w.allocated == 0 == budget.held
    assert allocated(ring_fd) < PAGE * 4


def test_no_room_in_the_budget_changes_nothing(ring_fd) -> None:
    budget = FakeBudget(PAGE * 2)
    w = SparseWindow(ring_fd, SIZE, budget)
    w.adopt(0, None)
    assert w.cover_back(PAGE)  # a full step does not fit: the exact pages do
    assert w.allocated == PAGE == budget.held
    assert not w.cover_back(3 * PAGE)
    assert w.allocated == PAGE == budget.held


def test_the_tail_never_enters_the_head_page_nor_the_head_the_tail_page(ring_fd) -> None:
    w = SparseWindow(ring_fd, SIZE, FakeBudget(SIZE))
    w.adopt(0, None)
    head = 3 * PAGE + 100
    assert not w.room_back(Placement(0, -1, 0), 3 * PAGE + 8, head, empty=False)
    assert w.room_back(Placement(0, -1, 0), 3 * PAGE, head, empty=False)
    tail = 5 * PAGE + 64
    assert not w.room_front(Placement(tail + 8, -1, 0), tail)


def test_a_window_wraps_around_the_circle(ring_fd) -> None:
    budget = FakeBudget(SIZE)
    w = SparseWindow(ring_fd, SIZE, budget)
    w.adopt(SIZE - PAGE, SIZE)  # one live page at the very end
    assert w.allocated == PAGE == budget.held
    assert w.cover_back(PAGE)  # grows over the end to the start of the region
    assert w.allocated == budget.held and PAGE < w.allocated <= PAGE + ALLOC_STEP
    assert w.cover_front(SIZE - 2 * PAGE)
    assert w.allocated == budget.held
    w.release(0, empty=True)
    assert budget.held == 0
