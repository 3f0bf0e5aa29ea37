"""The commit rule of app/worker/faust_fixes.py: never commit over an offset that was not
processed."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from intervaltree import IntervalTree

from app.worker.batched_delivery import deliverable_check
from app.worker.faust_fixes import _new_offset

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


class _Event:
    def __init__(self, set_: bool = False) -> None:
        self._set = set_

    def is_set(self) -> bool:
        return self._set


class _Lock:
    def __init__(self, locked: bool = False) -> None:
        self._locked = locked

    def locked(self) -> bool:
        return self._locked


class _Queue:
    def __init__(self, full: bool = False) -> None:
        self._full = full

    def full(self) -> bool:
        return self._full


def fetcher_consumer(
    suspended: bool = False,
    flow_active: bool = True,
    buffered: int = 0,
    locked: bool = False,
    full_queue: bool = False,
) -> Any:
    app = SimpleNamespace(
        flow_control=SimpleNamespace(is_active=lambda: flow_active),
        producer=SimpleNamespace(buffer=SimpleNamespace(size=buffered, max_messages=100)),
        topics=SimpleNamespace(
            _tp_index={
                TP: [SimpleNamespace(queue=_Queue()), SimpleNamespace(queue=_Queue(full_queue))]
            },
            _tp_to_callback_lock=_Lock(locked),
        ),
    )
    return SimpleNamespace(app=app, suspend_flow=_Event(suspended))


def test_delivers_directly_only_when_nothing_in_faust_can_wait() -> None:
    assert deliverable_check(fetcher_consumer())(TP) is True
    assert deliverable_check(fetcher_consumer())(("unindexed", 3)) is True
    for blocked in (
        {"suspended": True},  # a rebalance suspended the flow: race it (wait_first)
        {"flow_active": False},
        {"buffered": 101},  # Faust's producer buffer is over its limit: the conductor waits
        {"locked": True},  # the conductor is rebuilding its partition index
        {"full_queue": True},  # one reading channel's queue is full: its put waits
    ):
        assert deliverable_check(fetcher_consumer(**blocked))(TP) is False, blocked


def test_worker_consumer_fetches_are_held_at_most_fetch_max_wait_ms() -> None:
    """Fix 8: Faust's 1.5 s is replaced in the consumer it builds (no broker needed: the
    consumer is only built, never started)."""
    import asyncio

    import faust
    from faust.transport.drivers import aiokafka as faust_aiokafka

    from app.worker import faust_fixes

    faust_fixes.apply()
    app = faust.App(f"unit-fetch-wait-{id(object())}", broker="kafka://127.0.0.1:1")

    async def build() -> int:
        # Typed as faust's base classes; here they are its aiokafka driver's.
        faust_consumer = app.consumer
        assert isinstance(faust_consumer, faust_aiokafka.Consumer)
        thread = faust_consumer._thread
        assert isinstance(thread, faust_aiokafka.AIOKafkaConsumerThread)
        transport = app.transport
        assert isinstance(transport, faust_aiokafka.Transport)
        consumer = thread._create_worker_consumer(transport)
        await consumer.stop()  # never started; closed so that it does not warn
        return int(consumer._fetch_max_wait_ms)

    assert faust_fixes.FETCH_MAX_WAIT_MS <= 100
    assert asyncio.run(build()) == faust_fixes.FETCH_MAX_WAIT_MS
