"""The batched hand-over of a topic's records from Faust's fetcher loop to a pipeline's batch loop.

Every pipeline (the core and each sink) takes its records in batches (app/worker/batch_loop.py)
instead of one event at a time through Faust's conductor, topic queue and stream: that path costs
~100 us per record here, more than all the work the core agent does on it (bench/core.py). The
fetcher loop (app/worker/faust_fixes.py, ``_drain_messages``) collects the records of a batched
topic read by one pass (``Batches``) and hands them over together, in each partition's order.
A record's read offset moves only once it is really handed over, under the generation and seek
count it was read with; a batch overtaken by a seek, a rebalance or a flow suspension is dropped
and read again from where the seek put its partition (the sequence rules of faust_fixes' fixes
3, 5 and 6).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the read state is faust_fixes', which imports this module
    from app.worker.faust_fixes import ReadState

batched: dict[str, tuple[Callable[[list[Any]], Awaitable[Any]], int]] = {}


def deliver_in_batches(
    topic: str, hand_over: Callable[[list[Any]], Awaitable[Any]], max_batch: int
) -> None:
    """Have the fetcher loop hand ``topic``'s records over as lists (at most ``max_batch``, in
    each partition's order) to ``hand_over`` instead of one by one through Faust's conductor,
    topic queue and stream: that path costs ~100 us per record here, more than all the work the
    core agent does on it. Records handed over are acked with ``consumer.ack(message)`` (fix 1
    and 4 apply); records of an earlier generation are not handed over."""
    batched[topic] = (hand_over, max_batch)


def deliverable_check(consumer: Any) -> Any:
    """A check that Faust's delivery of a record of a partition (the conductor's callback) will
    complete without waiting: flow not suspended, Faust's producer buffer not over its limit,
    the conductor's index not being rebuilt, and room in the queue of every channel reading the
    partition. Then the fetcher loop awaits the callback itself; otherwise it races it against
    a flow suspension (``wait_first``, which costs two tasks and a wait per record: ~10 % of a
    worker's CPU, bench/core.py)."""
    app = consumer.app
    suspend_flow, flow_control, buffer = consumer.suspend_flow, app.flow_control, None
    tp_index, lock = app.topics._tp_index, app.topics._tp_to_callback_lock

    def deliverable(tp: Any) -> bool:
        nonlocal buffer
        if buffer is None:
            buffer = app.producer.buffer
        return (
            not suspend_flow.is_set()
            and flow_control.is_active()
            and buffer.size <= buffer.max_messages
            and not lock.locked()
            and not any(channel.queue.full() for channel in tp_index.get(tp, ()))
        )

    return deliverable


class Batches:
    """The records of batched topics (``deliver_in_batches``) read by one pass of the fetcher
    loop, handed over together. Their read offsets move only once they are handed over, and only
    if no seek happened since they were read (a seek sets the next offset itself); a batch read
    under an earlier generation, or overtaken by a seek or a flow suspension, is dropped: its
    records are read again from where the seek put the partition."""

    def __init__(self, consumer: Any, state: ReadState) -> None:
        self.consumer, self.state = consumer, state
        self.pending: dict[str, list[Any]] = {}
        self.next: dict[Any, int] = {}  # partition -> next offset, counting pending records
        self.seeks = -1  # the seek count the pending records were read under

    def next_offset(self, tp: Any, seeks: int, expected: int | None) -> int | None:
        if seeks != self.seeks:  # a seek since: pending records are stale
            self.drop()
            return expected
        return self.next.get(tp, expected)

    def drop(self) -> None:
        self.pending.clear()
        self.next.clear()

    async def add(self, tp: Any, message: Any, seeks: int) -> None:
        if not self.pending:
            self.seeks = seeks
        records = self.pending.setdefault(message.topic, [])
        records.append(message)
        self.next[tp] = message.offset + 1
        if len(records) >= batched[message.topic][1]:
            await self.flush()

    async def flush(self) -> None:
        if not self.pending:
            return
        consumer, state = self.consumer, self.state
        generation = consumer.app.consumer_generation_id
        with state.lock:
            # Else read before a seek, or before the seek of this generation: they come again.
            handed = state.seeks == self.seeks and state.unsought is None
        for topic, records in self.pending.items():
            if any(getattr(m, "generation_id", None) != generation for m in records):
                handed = False
            if handed:
                handed = await self._hand_over(batched[topic][0], records)
        if handed:
            state.advance(consumer._read_offset, self.seeks, self.next)
        self.drop()

    async def _hand_over(
        self, hand_over: Callable[[list[Any]], Awaitable[Any]], records: list[Any]
    ) -> bool:
        """Hand the records over unless the flow is suspended (a rebalance) first."""
        suspend_flow = self.consumer.suspend_flow
        if suspend_flow.is_set():
            return False
        put = asyncio.ensure_future(hand_over(list(records)))
        suspended = asyncio.ensure_future(suspend_flow.wait())
        await asyncio.wait({put, suspended}, return_when=asyncio.FIRST_COMPLETED)
        suspended.cancel()
        if not put.done():
            put.cancel()  # not queued: its records come again after the rebalance's seek
            with contextlib.suppress(asyncio.CancelledError):
                await put
            return False
        if put.cancelled():
            return False
        put.result()  # the hand-over's own error, if any, is raised
        return True
