"""The batch loop: how every pipeline commits only after the write. The one place of the protocol.

Faust's fetcher loop hands a topic's records over in batches, straight from each fetch and in
each partition's order (app/worker/batched_delivery.py, ``deliver_in_batches``), into this loop's
queue (at most two batches wait). For each batch the loop:
  1. optionally lingers for more (up to ``linger_ms`` or ``linger_records``): sinks want fuller
     batches than one fetch; batches of another consumer generation are never merged;
  2. skips it if it was read before a rebalance (its consumer generation is not the current one):
     the seek that follows every rebalance reads those records again, on whichever worker owns
     their partition now; they are not acked, so nothing past them is committed meanwhile
     (counted in ``kubevents_pipeline_stale_records_total``). Records read after a rebalance but
     before its seek are not even handed over (app/worker/faust_fixes.py, fix 5): handled ahead
     of the records between the committed offset and them, they would take those records'
     counts with them;
  3. awaits the pipeline's handler, which returns only once everything the batch must write is
     acknowledged by its destination (Kafka, a table's changelog, Elasticsearch, MySQL) or
     dead-lettered; a sink pipeline's next batch is meanwhile taken and decoded (``Preparing``),
     nothing more: it is judged and handled only after this one, and acked after that;
  4. acks every record, which lets Faust commit their offsets (app/worker/faust_fixes.py commits
     only an unbroken run of acked offsets from the committed one).
A handler that raises stops the worker (``app.crash``): going on past a failed batch would leave
its offsets unacked and the commit stuck until a restart, so the worker stops and its
replacement processes the batch again. At-least-once, then, and every write idempotent.

Not a Faust channel: Faust clears the channels' queues when it resumes the flow at the end of a
rebalance, right after seeking to the committed offsets, so a batch read from there and handed
over in between was cleared with its read offsets already past it: lost until a restart
(tests/integration/test_core.py, the join/leave test's slow variant, and the mutation gate's
faust-channel-hand-over mutant).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from prometheus_client import Counter

from app.errors import UserError
from app.testing import faults
from app.worker import batched_delivery
from app.worker.stall import StallWatch

log = logging.getLogger("kubevents.batch_loop")

STALE = Counter(
    "kubevents_pipeline_stale_records_total",
    "Records read before a rebalance and left for the seek that follows it to read again.",
    ["pipeline"],
)


def current_generation(app: Any, message: Any) -> bool:
    """Whether ``message`` was read under the consumer's current generation (no rebalance since)."""
    return bool(message.generation_id == app.consumer_generation_id)


def settle_garbage_collector() -> None:
    """Once the worker has started: move every object alive now (the imported modules, Faust's
    app, the clients: ~130k objects) to the collector's permanent generation, which its full
    collections no longer scan. Each full collection of that heap took 60-140 ms, and the
    batches' short-lived objects set one off every second or so: 28 % of a sink worker's CPU
    while it wrote (bench.sinks, measured with gc.callbacks). And a young generation of 50,000
    objects, not 700: the collector counts objects tracked minus objects freed, so the batches
    in flight (a few thousand records, ~10 containers each, freed by reference counting) never
    reach it and no collection runs while records flow (with 700, or 10,000, the young
    collections still took 7-11 % of the CPU); only garbage in cycles accumulates towards it, a
    few MB at most. Idempotent; a second loop in the process freezes what it finds then."""
    gc.collect()  # start-up's garbage goes first, not into the permanent generation
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


class Handler(Protocol):
    """What a pipeline runs on the loop."""

    async def start(self) -> None:
        """Open connections; called once the worker's tables are recovered."""

    async def handle(self, messages: list[Any]) -> None:
        """Write the batch; return only once every write is acknowledged (or raise)."""

    async def stop(self) -> None:
        """Close connections."""


@runtime_checkable
class Preparing(Protocol):
    """A handler whose batches need CPU work first that depends on nothing written before
    (decoding, filtering): the loop does it for the next batch while this one is written."""

    def prepare(self, messages: list[Any]) -> Any:
        """Pure: no write, no state the handling of earlier batches changes."""

    async def handle_prepared(self, messages: list[Any], prepared: Any) -> None:
        """``handle`` of a batch ``prepare`` was given."""


class BatchLoop:
    def __init__(
        self,
        app: Any,
        topic: Any,
        handler: Handler,
        *,
        name: str,
        batch_size: int,
        linger_ms: float = 0,
        linger_records: int = 0,
        stall_warning_s: float = 30.0,
    ):
        self.app, self.topic, self.handler, self.name = app, topic, handler, name
        self.batch_size, self.linger_ms, self.linger_records = batch_size, linger_ms, linger_records
        self.queue: asyncio.Queue[list[Any]] = asyncio.Queue(maxsize=2)
        self._next: list[Any] | None = None  # a batch of another generation, met while lingering
        self._stale = STALE.labels(name)
        self._running = False
        self.watch = StallWatch(app, topic, name, stall_warning_s)

    def check(self) -> tuple[bool, str]:
        """For /readyz: ready once the handler started (after the tables' recovery)."""
        if not self._running or self.app.consumer is None:
            return False, f"{self.name}: starting"
        return True, f"{self.name}: running"

    def register(self) -> None:
        """Subscribe the app to the topic (same group, same assignment as any agent's topic),
        have the fetcher hand its records over here, and run the loop as an app task (started
        with the worker, once its tables are recovered)."""
        self.app.topics.add(self.topic)
        batched_delivery.deliver_in_batches(
            self.topic.get_topic_name(), self.queue.put, self.batch_size
        )
        self.app.task(self.run)

        # Every 5 s: a worker owning unread records that hands nothing over says so (stall.py).
        async def watch_for_stalls() -> None:
            await self.watch.check()

        self.app.timer(5.0)(watch_for_stalls)

    def current(self, message: Any) -> bool:
        return current_generation(self.app, message)

    async def take(self) -> list[Any]:
        """The next batch, lingering for more of the same generation if so configured."""
        if self._next is not None:
            batch, self._next = self._next, None
        else:
            batch = await self.queue.get()
        self.watch.progress()
        if not (self.linger_ms or self.linger_records):
            return batch
        limit = self.linger_records or self.batch_size
        deadline = time.monotonic() + (self.linger_ms or 0) / 1000
        generation = batch[0].generation_id
        while len(batch) < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                more = await asyncio.wait_for(self.queue.get(), left)
            except TimeoutError:
                break
            if more[0].generation_id != generation:
                self._next = more  # never merged: each generation is judged on its own
                break
            batch = batch + more
        return batch

    def _rebalanced(self, messages: list[Any]) -> Callable[[], bool]:
        generation = messages[0].generation_id
        return lambda: bool(generation != self.app.consumer_generation_id)

    async def run(self) -> None:
        try:
            await self.handler.start()
        except UserError as exc:
            # A setting the user must fix (a wrong password, a CA that does not match): one line
            # and exit status 2, as every kubevents command says it, instead of Faust's crash
            # (a traceback and status 1). Nothing was read or written yet, so nothing is lost by
            # leaving at once; the consumer group sees this member go after its session timeout.
            log.error("pipeline %s cannot start: %s", self.name, exc)
            print(f"kubevents: error: {exc}", file=sys.stderr, flush=True)
            logging.shutdown()
            os._exit(2)
        settle_garbage_collector()
        self._running = True
        preparing = self.handler if isinstance(self.handler, Preparing) else None
        ahead: asyncio.Task[tuple[list[Any], Any]] | None = None
        try:
            while True:
                if ahead is None:
                    messages, prepared = await self._take_prepared(preparing)
                else:
                    messages, prepared = await ahead
                    ahead = None
                # Tests hold a batch here until a rebalance, or slow every batch down.
                await faults.point(
                    f"{self.name}.batch-taken", len(messages), until=self._rebalanced(messages)
                )
                if not all(map(self.current, messages)):
                    self._stale.inc(len(messages))
                    continue
                if preparing is not None:
                    # The next batch is taken and prepared while this one is written (the
                    # destination's time, when this process waits): only prepared. It is judged
                    # (its generation) and handled after this one, and acked after that.
                    ahead = asyncio.ensure_future(self._take_prepared(preparing))
                await self._handle(preparing, messages, prepared)
                for message in messages:
                    self.app.consumer.ack(message)  # lets Faust commit up to it
                self.watch.progress()
        except Exception as exc:
            log.exception(
                "pipeline %s failed; stopping the worker (nothing past it is committed)", self.name
            )
            await self.app.crash(exc)
            raise
        finally:
            self._running = False
            if ahead is not None:
                ahead.cancel()  # taken, never acked: read again by whoever runs next
            await self.handler.stop()

    async def _handle(
        self, preparing: Preparing | None, messages: list[Any], prepared: Any
    ) -> None:
        if preparing is None:
            await self.handler.handle(messages)
        else:
            await preparing.handle_prepared(messages, prepared)

    async def _take_prepared(self, preparing: Preparing | None) -> tuple[list[Any], Any]:
        messages = await self.take()
        return messages, None if preparing is None else preparing.prepare(messages)
