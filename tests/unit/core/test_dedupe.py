from __future__ import annotations

from app.core.dedupe import Verdict, decide, state_of
from app.model.envelope import RawEvent
from app.model.normalize import NormalizedEvent, normalize
from tests.fixtures.events import core_event


def ev(
    rv: str, count: int, watch_type: str = "MODIFIED", last: str = "2024-05-01T12:05:00Z"
) -> NormalizedEvent:
    obj = core_event(meta_resourceVersion=rv, count=count, lastTimestamp=last)
    return normalize(RawEvent(watch_type, "watch", None, None, None, obj), default_cluster="c")


def test_first_sight_counts_every_occurrence() -> None:
    d = decide(None, ev("10", 3))
    assert d.verdict is Verdict.NEW and d.count_delta == 3 and d.passes


def test_count_growth_passes_with_the_increment() -> None:
    d = decide(state_of(ev("10", 3)), ev("12", 5))
    assert d.verdict is Verdict.UPDATE and d.count_delta == 2


def test_same_version_is_duplicate_and_older_is_stale() -> None:
    prev = state_of(ev("12", 5))
    assert decide(prev, ev("12", 5)).verdict is Verdict.DUPLICATE
    stale = decide(prev, ev("10", 3))
    assert stale.verdict is Verdict.STALE and not stale.passes and stale.count_delta == 0


def test_rv_compared_as_numbers_not_strings() -> None:
    assert decide(state_of(ev("9", 1)), ev("10", 1)).verdict is Verdict.UPDATE


def test_change_without_count_growth_passes_with_zero_delta() -> None:
    d = decide(state_of(ev("10", 3)), ev("11", 3))
    assert d.verdict is Verdict.UPDATE and d.count_delta == 0


def test_deleted_passes_without_counting() -> None:
    d = decide(state_of(ev("10", 3)), ev("15", 3, watch_type="DELETED"))
    assert d.verdict is Verdict.UPDATE and d.count_delta == 0
    assert decide(None, ev("15", 3, watch_type="DELETED")).count_delta == 0


def test_opaque_resource_versions_fall_back_to_count_and_time() -> None:
    prev = state_of(ev("abc", 3))
    assert decide(prev, ev("xyz", 4, last="2024-05-01T12:06:00Z")).verdict is Verdict.UPDATE
    assert decide(prev, ev("abc", 3)).verdict is Verdict.DUPLICATE
    assert decide(prev, ev("old", 2, last="2024-05-01T12:01:00Z")).verdict is Verdict.STALE
