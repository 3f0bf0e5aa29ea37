"""app/worker/batched_delivery.py and the fetcher loop's sequence rules (app/worker/faust_fixes.py):
records are handed over in each partition's order, and their read offsets move only when they
really were handed over."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from app.worker import batched_delivery, faust_fixes
from app.worker.batched_delivery import Batches
from app.worker.faust_fixes import ReadState

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
    batched_delivery.deliver_in_batches(TOPIC, r, max_batch=3)
    yield r
    batched_delivery.batched.pop(TOPIC)


def consumer() -> Any:
    return SimpleNamespace(
        app=SimpleNamespace(consumer_generation_id=1),
        suspend_flow=asyncio.Event(),
        _read_offset={0: 10, 1: 20},
    )


def test_hands_over_in_order_and_moves_read_offsets(receiver: Receiver) -> None:
    async def run() -> Any:
        c, state = consumer(), ReadState()
        b = Batches(c, state)
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
        c, state = consumer(), ReadState()
        b = Batches(c, state)
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
    batched_delivery.deliver_in_batches(TOPIC, blocked, max_batch=10)

    async def run() -> Any:
        c = consumer()
        b = Batches(c, ReadState())
        await b.add(0, message(0, 10), 0)
        asyncio.get_running_loop().call_later(0.05, c.suspend_flow.set)
        await asyncio.wait_for(b.flush(), 5)  # returns once the flow is suspended
        return c._read_offset

    try:
        assert asyncio.run(run()) == {0: 10, 1: 20}
        assert blocked.batches == []
    finally:
        batched_delivery.batched.pop(TOPIC)


def test_nothing_is_handed_over_between_an_assignment_and_its_seek(receiver: Receiver) -> None:
    """Fix 5: records fetched after a generation is assigned and before its seek to the committed
    offsets are read again after the seek; handed over first, they made the count rows skip the
    increments of the records before them."""

    async def run() -> Any:
        c, state = consumer(), ReadState()
        b = Batches(c, state)
        state.unsought = 1  # generation 1 assigned, its seek not done yet
        await b.add(0, message(0, 10), 0)
        await b.flush()
        state.unsought = None  # the seek
        await b.add(0, message(0, 10), 0)
        await b.flush()
        return c._read_offset

    assert asyncio.run(run()) == {0: 11, 1: 20}
    assert receiver.batches == [[(0, 10)]]


class SeekingConsumer:
    """aiokafka's consumer as _seek_all uses it: each committed offset is a request (an await),
    the seeks are immediate."""

    def __init__(self, committed: dict[Any, int | None]) -> None:
        self._committed = committed
        self.sought: dict[Any, int] = {}

    def assignment(self) -> set[Any]:
        return set(self._committed)

    async def committed(self, tp: Any) -> int | None:
        await asyncio.sleep(0)  # a request: the consumer thread's loop runs fetches meanwhile
        return self._committed[tp]

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        await asyncio.sleep(0)
        return {tp: 3 for tp in tps}

    def seek(self, tp: Any, offset: int) -> None:
        self.sought[tp] = offset

    # aiokafka's own seek_to_committed, which fix 6 no longer uses (kept so that the mutation
    # gate's mutant going back to it runs): an await per partition between the seeks.
    async def seek_to_committed(self) -> dict[Any, int | None]:
        out = {}
        for tp in self._committed:
            out[tp] = offset = await self.committed(tp)
            if offset and offset > 0:
                self.seek(tp, offset)
        return out

    async def seek_to_beginning(self, tp: Any) -> None:
        self.seek(tp, 3)

    async def position(self, tp: Any) -> int:
        return self.sought[tp]


def unsought(state: ReadState) -> int | None:
    """``state.unsought`` read anew: mypy would keep it narrowed by the assignment before the
    seek that cleared it."""
    return state.unsought


def test_no_fetch_is_returned_between_the_seeks_and_the_end_of_the_hold() -> None:
    """Fix 6: while a rebalance's seek runs, the consumer thread's loop returns fetches (here: a
    task looking at every turn). None may see a partition already sought while the hold of fix 5
    still drops records: those records would be dropped with nothing to seek them back."""
    tps = [TP(TOPIC, p) for p in range(4)]
    kafka = SeekingConsumer({tps[0]: 7, tps[1]: 0, tps[2]: None, tps[3]: 12})
    faust = SimpleNamespace(
        app=SimpleNamespace(consumer_generation_id=5), _read_offset={}, _committed_offset={}
    )
    state = faust_fixes._state(faust)
    state.unsought = 5  # assigned, not sought yet
    seen: list[tuple[int, int | None]] = []

    async def fetches() -> None:
        while True:
            with state.lock:
                seen.append((len(kafka.sought), state.unsought))
            await asyncio.sleep(0)

    async def run() -> Any:
        watcher = asyncio.ensure_future(fetches())
        await asyncio.sleep(0)
        result = await faust_fixes._seek_all(kafka, faust, lambda topic: topic == TOPIC)
        await asyncio.sleep(0)
        watcher.cancel()
        return result

    positions = asyncio.run(run())
    assert positions == {tps[0]: 7, tps[1]: 0, tps[2]: 3, tps[3]: 12}
    assert kafka.sought == positions  # 0 sought too; nothing committed: the beginning
    assert faust._read_offset == positions and unsought(state) is None and state.seeks == 1
    assert len(seen) >= 4, "the fetches never ran while the offsets were asked"
    held_after_a_seek = [s for s in seen if s[0] > 0 and s[1] is not None]
    assert not held_after_a_seek, f"fetches returned after a seek, still held: {seen}"


def test_a_record_read_before_a_recovery_seek_does_not_move_the_read_offset_it_set() -> None:
    """Fix 7: a worker reading changelog partition 2 as a standby when it becomes active: the
    recovery seeks it to the start (offset 0: read offset unset, every record delivered); a
    standby record read just before and handed over just after must not move the read offset
    past the records the seek reads again (they would be dropped as read, and the recovery would
    wait for them forever)."""
    tp = TP("app-counts-changelog", 2)
    other = TP("app-counts-changelog", 3)
    faust = SimpleNamespace(_read_offset={tp: 45, other: 30})
    state = faust_fixes._state(faust)

    class Kafka:
        def __init__(self) -> None:
            self.sought: dict[Any, int] = {}

        def seek(self, tp: Any, offset: int) -> None:
            self.sought[tp] = offset

        async def position(self, tp: Any) -> int:
            return self.sought[tp]

    thread = SimpleNamespace(
        consumer=faust, app=SimpleNamespace(conf=SimpleNamespace(broker_request_timeout=5))
    )
    kafka = Kafka()
    # The fetcher loop reads record 44 of both partitions (what _drain_messages notes under the
    # lock), then the recovery seeks partition 2 only, then the records are handed over.
    with state.lock:
        seeks, read = state.seeks, {t: state.sought.get(t, 0) for t in (tp, other)}
    asyncio.run(faust_fixes._seek_wait(thread, kafka, {tp: 0}))
    assert kafka.sought == {tp: 0} and tp not in faust._read_offset
    for t in (tp, other):
        state.advance(faust._read_offset, seeks, {t: 45}, {t: read[t]})
    assert tp not in faust._read_offset, "the seek's read offset was overwritten"
    assert faust._read_offset[other] == 45  # a partition not sought moves on
