"""app/worker/batch_loop.py driven with an in-memory handler: a batch is acked only after its
handler returned, batches read before a rebalance are skipped unacked, a failing handler crashes
the worker with nothing acked, lingering fills batches without mixing generations, and a sink's
next batch is prepared while one is written but judged and handled only after its ack."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from app.worker.batch_loop import STALE, BatchLoop


class FakeApp:
    def __init__(self) -> None:
        self.consumer_generation_id = 1
        self.acked: list[int] = []
        self.crashed: BaseException | None = None
        self.consumer = SimpleNamespace(ack=lambda m: self.acked.append(m.offset))

    async def crash(self, exc: BaseException) -> None:
        self.crashed = exc


class Memory:
    """An in-memory sink: records what it wrote, and when, relative to the acks."""

    def __init__(self, app: FakeApp, fail_on: int | None = None) -> None:
        self.app, self.fail_on = app, fail_on
        self.batches: list[list[int]] = []
        self.acked_before: list[int] = []
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def handle(self, messages: list[Any]) -> None:
        offsets = [m.offset for m in messages]
        if self.fail_on in offsets:
            raise RuntimeError("destination refused")
        self.acked_before.append(len(self.app.acked))
        await asyncio.sleep(0)
        self.batches.append(offsets)

    async def stop(self) -> None:
        self.stopped = True


def records(offsets: range, generation: int = 1) -> list[Any]:
    return [SimpleNamespace(offset=o, generation_id=generation) for o in offsets]


def loop_for(app: FakeApp, sink: Memory, **linger: Any) -> BatchLoop:
    return BatchLoop(app, None, sink, name="unit", batch_size=100, **linger)


async def run_until_idle(loop: BatchLoop, batches: list[list[Any]]) -> None:
    task = asyncio.ensure_future(loop.run())
    for batch in batches:
        await loop.queue.put(batch)
    for _ in range(50):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises((asyncio.CancelledError, RuntimeError)):
        await task


def test_acks_follow_the_write_and_stale_batches_are_skipped() -> None:
    app = FakeApp()
    sink = Memory(app)
    loop = loop_for(app, sink)
    stale_before = STALE.labels("unit")._value.get()

    async def scenario() -> None:
        task = asyncio.ensure_future(loop.run())
        await loop.queue.put(records(range(0, 3)))
        await asyncio.sleep(0.05)
        app.consumer_generation_id = 2  # a rebalance: generation-1 batches are stale now
        await loop.queue.put(records(range(3, 5), generation=1))
        await loop.queue.put(records(range(3, 6), generation=2))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert sink.started and sink.stopped
    assert sink.batches == [[0, 1, 2], [3, 4, 5]]
    assert sink.acked_before == [0, 3], "nothing of a batch is acked before its write returned"
    assert app.acked == [0, 1, 2, 3, 4, 5]
    assert STALE.labels("unit")._value.get() == stale_before + 2


def test_a_failing_handler_crashes_the_worker_and_acks_nothing_of_its_batch() -> None:
    app = FakeApp()
    sink = Memory(app, fail_on=4)
    loop = loop_for(app, sink)
    asyncio.run(run_until_idle(loop, [records(range(0, 3)), records(range(3, 6))]))
    assert app.acked == [0, 1, 2]
    assert isinstance(app.crashed, RuntimeError) and sink.stopped


def test_linger_fills_a_batch_but_never_mixes_generations() -> None:
    app = FakeApp()
    sink = Memory(app)
    loop = loop_for(app, sink, linger_ms=200, linger_records=6)

    async def scenario() -> None:
        task = asyncio.ensure_future(loop.run())
        await loop.queue.put(records(range(0, 2)))
        await loop.queue.put(records(range(2, 4)))
        await loop.queue.put(records(range(4, 6)))  # 6 records: the batch is full
        await asyncio.sleep(0.05)
        await loop.queue.put(records(range(6, 7)))
        app.consumer_generation_id = 2
        await loop.queue.put(records(range(7, 9), generation=2))  # not merged with 6
        await asyncio.sleep(0.5)  # the linger of the last batch runs out
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert sink.batches == [[0, 1, 2, 3, 4, 5], [7, 8]]  # [6] read before the rebalance: skipped
    assert app.acked == [0, 1, 2, 3, 4, 5, 7, 8]


class Preparing(Memory):
    """A handler with a prepare step: the loop prepares the next batch while one is written."""

    def __init__(self, app: FakeApp) -> None:
        super().__init__(app)
        self.log: list[str] = []
        self.release = asyncio.Event()

    def prepare(self, messages: list[Any]) -> list[int]:
        self.log.append(f"prepare {messages[0].offset}")
        return [m.offset * 10 for m in messages]

    async def handle_prepared(self, messages: list[Any], prepared: list[int]) -> None:
        first = messages[0].offset
        self.log.append(f"write {first} acked={len(self.app.acked)}")
        assert prepared == [m.offset * 10 for m in messages], "its own batch's preparation"
        if first == 0:
            await self.release.wait()  # the first write is slow: the destination's time
        self.batches.append([m.offset for m in messages])


def test_the_next_batch_is_prepared_while_one_is_written_and_handled_after_its_ack() -> None:
    app = FakeApp()
    sink = Preparing(app)
    loop = loop_for(app, sink)

    async def scenario() -> None:
        task = asyncio.ensure_future(loop.run())
        await loop.queue.put(records(range(0, 3)))
        await loop.queue.put(records(range(3, 5)))
        await asyncio.sleep(0.05)
        # The first batch is being written: the second is prepared, not written, nothing acked.
        assert sink.log == ["prepare 0", "write 0 acked=0", "prepare 3"]
        assert app.acked == []
        app.consumer_generation_id = 2  # a rebalance while it waits: the prepared one is stale
        sink.release.set()
        await asyncio.sleep(0.05)
        await loop.queue.put(records(range(3, 5), generation=2))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert sink.log == ["prepare 0", "write 0 acked=0", "prepare 3", "prepare 3", "write 3 acked=3"]
    assert sink.batches == [[0, 1, 2], [3, 4]]
    assert app.acked == [0, 1, 2, 3, 4]
