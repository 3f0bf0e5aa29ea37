"""app/worker/faust_fixes.py, batched delivery: records are handed over in each partition's order,
and their read offsets move only when they really were handed over."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from app.worker import faust_fixes
from app.worker.faust_fixes import _Batches, _ReadState

TOPIC = "batched-test"


def message(partition: int, offset: int, generation: int = 1) -> Any:
    return SimpleNamespace(
        topic=TOPIC, partition=partition, offset=offset, generation_id=generation
    )


class Receiver:
    def __init__(self, blocks: bool = False) -> None:
        self.batches: list[list[tuple[int, int]]] = []
        self.blocks = blocks

    async def __call__(self, records: list[Any]) -> None:
        if self.blocks:
            await asyncio.Event().wait()  # a full channel that never drains
        self.batches.append([(m.partition, m.offset) for m in records])


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    faust_fixes.deliver_in_batches(TOPIC, r, max_batch=3)
    yield r
    faust_fixes._batched.pop(TOPIC)


def consumer() -> Any:
    return SimpleNamespace(
        app=SimpleNamespace(consumer_generation_id=1),
        suspend_flow=asyncio.Event(),
        _read_offset={0: 10, 1: 20},
    )


def test_hands_over_in_order_and_moves_read_offsets(receiver: Receiver) -> None:
    async def run() -> Any:
        c, state = consumer(), _ReadState()
        b = _Batches(c, state)
        for m in [message(0, 10), message(1, 20), message(0, 11)]:
            assert b.next_offset(m.partition, 0, c._read_offset[m.partition]) == m.offset
            await b.add(m.partition, m, 0)  # the third reaches max_batch: handed over now
        await b.add(1, message(1, 21), 0)
        assert c._read_offset == {0: 12, 1: 21}  # the pending (1, 21) has not moved it yet
        assert b.next_offset(1, 0, 21) == 22  # but the loop expects what follows it
        await b.flush()
        return c._read_offset

    assert asyncio.run(run()) == {0: 12, 1: 22}
    assert receiver.batches == [[(0, 10), (1, 20), (0, 11)], [(1, 21)]]


def test_a_batch_of_an_earlier_generation_or_before_a_seek_is_dropped(receiver: Receiver) -> None:
    async def run() -> Any:
        c, state = consumer(), _ReadState()
        b = _Batches(c, state)
        await b.add(0, message(0, 10), 0)
        c.app.consumer_generation_id = 2  # a rebalance: the partition may be another's now
        await b.flush()
        await b.add(0, message(0, 10, generation=2), 0)
        state.seeks += 1  # a seek set the read offsets itself
        await b.flush()
        return c._read_offset

    assert asyncio.run(run()) == {0: 10, 1: 20}
    assert receiver.batches == []


def test_a_flow_suspension_while_the_channel_is_full_drops_the_batch() -> None:
    blocked = Receiver(blocks=True)
    faust_fixes.deliver_in_batches(TOPIC, blocked, max_batch=10)

    async def run() -> Any:
        c = consumer()
        b = _Batches(c, _ReadState())
        await b.add(0, message(0, 10), 0)
        asyncio.get_running_loop().call_later(0.05, c.suspend_flow.set)
        await asyncio.wait_for(b.flush(), 5)  # returns once the flow is suspended
        return c._read_offset

    try:
        assert asyncio.run(run()) == {0: 10, 1: 20}
        assert blocked.batches == []
    finally:
        faust_fixes._batched.pop(TOPIC)


def test_nothing_is_handed_over_between_an_assignment_and_its_seek(receiver: Receiver) -> None:
    """Fix 5: records fetched after a generation is assigned and before its seek to the committed
    offsets are read again after the seek; handed over first, they made the count rows skip the
    increments of the records before them."""

    async def run() -> Any:
        c, state = consumer(), _ReadState()
        b = _Batches(c, state)
        state.unsought = 1  # generation 1 assigned, its seek not done yet
        await b.add(0, message(0, 10), 0)
        await b.flush()
        state.unsought = None  # the seek
        await b.add(0, message(0, 10), 0)
        await b.flush()
        return c._read_offset

    assert asyncio.run(run()) == {0: 11, 1: 20}
    assert receiver.batches == [[(0, 10)]]
