"""app/worker/dropped_fetches.py (fix 9): changelog records a fetch returned and Faust's getmany
dropped are read again, unless the recovery sought their partition since the fetch; the records
it hands out are Faust's own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from app.worker import dropped_fetches, faust_fixes

CHANGELOG = TP("app-dedupe-changelog", 2)
OTHER_CHANGELOG = TP("app-dedupe-changelog", 3)
STREAMED = TP("raw", 2)


class Kafka:
    """aiokafka's consumer as seek_back uses it."""

    def __init__(self, assigned: set[TP]) -> None:
        self.assigned = assigned
        self.sought: dict[TP, int] = {}

    def assignment(self) -> set[TP]:
        return self.assigned

    def seek(self, tp: TP, offset: int) -> None:
        self.sought[tp] = offset


class Thread:
    def __init__(self, kafka: Kafka) -> None:
        self.kafka = kafka

    def _ensure_consumer(self) -> Kafka:
        return self.kafka

    async def call_thread(self, fun: Callable[..., Any], *args: Any) -> Any:
        return await fun(*args)


class Consumer:
    """The parts of Faust's Consumer that getmany reads; ``during_fetch`` runs while the fetch
    is awaited (a pause, a recovery seek), ``during_iteration`` after the first record."""

    def __init__(self, records: dict[TP, list[int]], active: set[TP]) -> None:
        self.records = {
            tp: [SimpleNamespace(offset=o) for o in offs] for tp, offs in records.items()
        }
        self.active = active
        self.app = SimpleNamespace(
            consumer_generation_id=1,
            monitor=SimpleNamespace(track_tp_end_offset=lambda tp, highwater: None),
        )
        self.flow_active = True
        self.should_stop = False
        self._buffered_partitions: set[TP] = set()
        self.scheduler = SimpleNamespace(iterate=self._iterate)
        self.kafka = Kafka(set(records))
        self._thread = Thread(self.kafka)
        self.log = logging.getLogger("test")
        self.during_fetch: Callable[[], None] = lambda: None
        self.during_iteration: Callable[[], None] = lambda: None
        self.performed_seek = False

    def _iterate(self, records: dict[TP, list[Any]]) -> Any:
        first = True
        for tp, recs in records.items():
            for r in recs:
                yield tp, r
                if first:
                    first = False
                    self.during_iteration()

    async def _wait_next_records(self, timeout: float) -> tuple[Any, set[TP]]:  # noqa: ASYNC109
        self.during_fetch()
        return self.records, self.active

    def _is_changelog_tp(self, tp: TP) -> bool:
        return tp.topic.endswith("-changelog")

    def _to_message(self, tp: TP, record: Any) -> tuple[TP, int]:
        return tp, record.offset

    def highwater(self, tp: TP) -> int:
        return 100

    async def perform_seek(self) -> None:
        self.performed_seek = True


def handed_out(c: Consumer) -> list[tuple[TP, int]]:
    async def run() -> list[tuple[TP, int]]:
        return [m async for _, m in dropped_fetches.getmany(c, 1.0)]

    return asyncio.run(run())


def test_every_record_handed_out_nothing_sought() -> None:
    c = Consumer({CHANGELOG: [0, 1], STREAMED: [5]}, {CHANGELOG, STREAMED})
    assert handed_out(c) == [(CHANGELOG, 0), (CHANGELOG, 1), (STREAMED, 5)]
    assert c.kafka.sought == {}


def test_a_changelog_paused_while_fetched_is_read_again_from_its_first_dropped_record() -> None:
    """Faust's pause_partitions mutates the set the fetch was asked with: the fetch returns the
    partition's records, getmany skips them; a streamed partition is left to the sequence
    rules (the next record after the gap, or the rebalance's seek)."""
    active = {CHANGELOG, OTHER_CHANGELOG, STREAMED}
    c = Consumer({CHANGELOG: [0, 1, 2], OTHER_CHANGELOG: [7], STREAMED: [5, 6]}, active)
    c.during_fetch = lambda: active.difference_update({CHANGELOG, STREAMED})
    assert handed_out(c) == [(OTHER_CHANGELOG, 7)]
    assert c.kafka.sought == {CHANGELOG: 0}


def test_records_after_a_generation_change_are_dropped_and_changelogs_read_again() -> None:
    c = Consumer({CHANGELOG: [4, 5, 6], OTHER_CHANGELOG: [9]}, {CHANGELOG, OTHER_CHANGELOG})

    def rebalanced() -> None:
        c.app.consumer_generation_id = 2

    c.during_iteration = rebalanced
    assert handed_out(c) == [(CHANGELOG, 4)]  # Faust stops handing out at the change
    assert c.kafka.sought == {CHANGELOG: 5, OTHER_CHANGELOG: 9}


def test_a_partition_the_recovery_sought_since_the_fetch_is_left_where_the_seek_put_it() -> None:
    """The recovery's seek (fix 7's count) reads the partition again from where it must: a seek
    back to a record of the fetch before it would skip what lies between."""
    active = {CHANGELOG, OTHER_CHANGELOG}
    c = Consumer({CHANGELOG: [30, 31], OTHER_CHANGELOG: [8]}, active)

    def paused_and_sought() -> None:
        active.clear()
        state = faust_fixes._state(c)
        with state.lock:
            state.sought[CHANGELOG] = state.sought.get(CHANGELOG, 0) + 1

    c.during_fetch = paused_and_sought
    assert handed_out(c) == []
    assert c.kafka.sought == {OTHER_CHANGELOG: 8}


def test_a_fetch_returned_while_the_flow_is_stopped_reads_its_changelogs_again() -> None:
    c = Consumer({CHANGELOG: [3, 4], STREAMED: [1]}, {CHANGELOG, STREAMED})
    c.flow_active = False
    assert handed_out(c) == []
    assert c.performed_seek  # Faust's own: streamed partitions to their committed offsets
    assert c.kafka.sought == {CHANGELOG: 3}


def test_a_partition_no_longer_assigned_is_not_sought() -> None:
    active = {CHANGELOG}
    c = Consumer({CHANGELOG: [3]}, active)
    c.kafka.assigned = set()  # revoked meanwhile
    c.during_fetch = active.clear
    assert handed_out(c) == [] and c.kafka.sought == {}
