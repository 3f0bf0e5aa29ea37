"""The commit rule of app/faust_fixes.py: never commit over an offset that was not processed."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from intervaltree import IntervalTree

from app.faust_fixes import _new_offset

TP = ("raw", 0)


def consumer(committed: int | None, acked: list[int]) -> Any:
    c = SimpleNamespace(
        _acked=defaultdict(list),
        _acked_index=defaultdict(set),
        _gap=defaultdict(IntervalTree),
        _committed_offset=defaultdict(lambda: None),
    )
    c._committed_offset[TP] = committed
    c._acked[TP].extend(acked)
    c._acked_index[TP].update(acked)
    return c


def test_commits_the_run_that_starts_at_the_committed_offset() -> None:
    assert _new_offset(consumer(10, [12, 10, 11, 14]), TP) == 13


def test_waits_while_the_committed_offset_itself_is_in_flight() -> None:
    # Faust 0.15.3 would commit 12 here (it accepts a first acked offset one past the
    # committed one, and checks nothing when the committed offset is 0).
    assert _new_offset(consumer(10, [11]), TP) is None
    assert _new_offset(consumer(0, [1, 2]), TP) is None


def test_offsets_missing_from_the_log_count_as_done() -> None:
    c = consumer(10, [13, 14])
    c._gap[TP].addi(10, 13)  # 10..12 compacted away: the fetcher saw 13 right after the seek
    assert _new_offset(c, TP) == 15


def test_unknown_committed_offset_commits_the_first_run() -> None:
    assert _new_offset(consumer(None, [5, 6, 8]), TP) == 7
