"""A sink pipeline: k8s-events -> filters -> one sink, on the shared batch loop.

Every sink pipeline is this handler on app/worker/batch_loop.py (which holds the ack/commit
protocol): a batch of enriched records comes in, and ``handle`` returns only once every record
of it is written to the destination, filtered out, or dead-lettered with Kafka's acknowledgement
of the dead letter. Then the loop acks the batch and its offsets may be committed. So an offset
moves only when every record below it is settled, whatever the destination did.

What a sink says about a write (app/sinks/base.py) decides what happens here:
- ``TransientError`` (unreachable, timeout, deadlock) or a ``Failure(retry=True)`` (a 429, a
  blocked index): the records are written again in place, with capped, jittered exponential
  backoff, forever. The pipeline is then *blocked*: /readyz says so and why, and
  ``kubevents_sink_blocked{pipeline}`` is 1. Nothing is skipped: its lag grows instead, and it
  catches up from its committed offsets once the destination is back;
- ``Failure(retry=False)``: that record goes to the dead-letter topic with the destination's
  reason; the rest of the batch is written;
- ``Rejected`` (the destination refused a multi-row write without naming the record): the batch
  is split in halves and each half written on its own, down to the single record(s) at fault,
  which are dead-lettered (as the JDBC sinks find a poison row). One bad record never holds back
  or rejects its batch.
Records that are not JSON objects (nothing but kubevents should write to k8s-events, but anyone
can) are dead-lettered too.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, Protocol

import orjson
from prometheus_client import Counter, Gauge, Histogram

from app.errors import Rejected, TransientError
from app.model.deadletter import dead_letter
from app.settings import PipelineSettings
from app.sinks.base import Event, PreparingSink, Sink, Unwritable
from app.sinks.filters import Filter
from app.testing import faults

log = logging.getLogger("kubevents.sinks")

WRITTEN = Counter("kubevents_sink_written_total", "Events written.", ["pipeline"])
FILTERED = Counter("kubevents_sink_filtered_total", "Events its filters left out.", ["pipeline"])
DEAD = Counter("kubevents_sink_dead_lettered_total", "Records sent to the DLQ.", ["pipeline"])
RETRIES = Counter("kubevents_sink_retries_total", "Writes tried again.", ["pipeline"])
BLOCKED = Gauge(
    "kubevents_sink_blocked", "1 while the destination refuses writes for now.", ["pipeline"]
)
WRITE_SECONDS = Histogram(
    "kubevents_sink_write_seconds",
    "One write the destination answered (a batch, or its share with concurrency > 1);"
    " writes that raised count in kubevents_sink_retries_total instead.",
    ["pipeline"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# Once per batch, of its oldest record: per record would cost a lock and a bisect per event.
DELAY_SECONDS = Histogram(
    "kubevents_sink_delay_seconds",
    "From the core publishing a batch's oldest record to k8s-events to it being written.",
    ["pipeline"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600),
)


class DeadLetters(Protocol):
    async def write(self, records: Sequence[tuple[str, bytes, bytes]]) -> None:
        """Returns once Kafka acknowledged every record (app/kafka/writer.py)."""


class Item:
    """One record of the batch: its Kafka coordinates and, once decoded, its event."""

    __slots__ = ("event", "key", "offset", "partition", "ready", "timestamp", "topic", "value")

    def __init__(self, message: Any):
        self.topic, self.partition = message.topic, message.partition
        # s, Kafka's (when the core published it); None in a record older than Kafka 0.10
        self.timestamp: float | None = message.timestamp
        self.offset, self.key, self.value = message.offset, message.key, message.value
        self.event: Event = {}
        self.ready: Any = None  # the sink's ready form of the event (PreparingSink)


class Prepared(NamedTuple):
    items: list[Item]  # decoded, passed the filters: to write
    rejected: list[tuple[Item, str]]  # not a JSON object, or Unwritable: to the DLQ, with why
    filtered: int  # left out by the filters


class SinkPipeline:
    def __init__(
        self,
        config: PipelineSettings,
        sink: Sink,
        dead_letters: Callable[[], Awaitable[DeadLetters]],
        dlq_topic: str,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.config, self.sink, self.dlq_topic = config, sink, dlq_topic
        self._preparing = sink if isinstance(sink, PreparingSink) else None
        self.filter = Filter(config.filters, config.id)
        self._open_dead_letters = dead_letters
        self._dead_letters: DeadLetters | None = None
        self._sleep = sleep
        self.blocked: str | None = None  # why the destination takes no writes now
        self.blocked_since = time.monotonic()
        name = config.id
        self._written, self._filtered = WRITTEN.labels(name), FILTERED.labels(name)
        self._dead, self._retries = DEAD.labels(name), RETRIES.labels(name)
        self._blocked_gauge = BLOCKED.labels(name)
        self._write_seconds, self._delay = WRITE_SECONDS.labels(name), DELAY_SECONDS.labels(name)
        self._last_warning = 0.0

    # -- the batch loop's handler ------------------------------------------------------------

    async def start(self) -> None:
        self._dead_letters = await self._open_dead_letters()
        attempt = 0
        while True:
            try:
                await self.sink.start()
                break
            except TransientError as exc:
                attempt += 1
                self._block(f"cannot start: {exc.reason}")
                await self._sleep(self._backoff(attempt, exc.retry_after))
        self._unblock()
        log.info("pipeline %s writing to %s", self.config.id, self.config.sink)

    async def stop(self) -> None:
        await self.sink.stop()
        stop = getattr(self._dead_letters, "stop", None)
        if stop is not None:
            await stop()

    async def handle(self, messages: list[Any]) -> None:
        await self.handle_prepared(messages, self.prepare(messages))

    def prepare(self, messages: list[Any]) -> Prepared:
        """Decode and filter a batch (the batch loop does it for the next batch while this one
        is written): records to write, records to dead-letter, and how many were filtered out."""
        items: list[Item] = []
        rejected: list[tuple[Item, str]] = []
        for message in messages:
            item = Item(message)
            try:
                event = orjson.loads(item.value) if item.value is not None else None
            except orjson.JSONDecodeError as exc:
                rejected.append((item, f"not JSON: {exc}"))
                continue
            if not isinstance(event, dict):
                rejected.append((item, "not a JSON object"))
                continue
            item.event = event
            if not self.filter.matches(event):
                continue
            if self._preparing is not None:
                try:
                    item.ready = self._preparing.prepare(event)
                except Unwritable as exc:
                    rejected.append((item, str(exc)))
                    continue
            items.append(item)
        filtered = len(messages) - len(items) - len(rejected)
        return Prepared(items, rejected, filtered)

    async def handle_prepared(self, messages: list[Any], prepared: Prepared) -> None:
        items, rejected = prepared.items, prepared.rejected
        self._filtered.inc(prepared.filtered)
        await self._dead_letter(rejected)
        if items:
            parts = self._split(items, self.config.concurrency)
            await asyncio.gather(*(self._write(part) for part in parts))
            stamps = [item.timestamp for item in items if item.timestamp]
            if stamps:  # Kafka stamps every record since 0.10; a record without one says nothing
                self._delay.observe(max(0.0, time.time() - min(stamps)))
        # Tests kill the worker here: written, not yet acked, so not committed.
        await faults.point("sink.written", len(messages))

    def check(self) -> tuple[bool, str]:
        """For /readyz: not ready while the destination refuses writes, with the reason."""
        if self.blocked is not None:
            since = time.monotonic() - self.blocked_since
            return False, f"{self.config.id}: blocked for {since:.0f}s: {self.blocked}"
        return True, f"{self.config.id}: writing"

    # -- writing, retrying, bisecting ----------------------------------------------------------

    async def _write(self, items: list[Item]) -> None:
        """Returns once every item is written or dead-lettered."""
        pending, attempt = items, 0
        while pending:
            started = time.monotonic()
            try:
                if self._preparing is not None:
                    failures = await self._preparing.write_prepared([i.ready for i in pending])
                else:
                    failures = await self.sink.write([item.event for item in pending])
            except TransientError as exc:
                attempt += 1
                self._retry(len(pending), exc.reason)
                await self._sleep(self._backoff(attempt, exc.retry_after))
                continue
            except Rejected as exc:
                if len(pending) == 1:
                    await self._dead_letter([(pending[0], exc.reason)])
                    return
                half = len(pending) // 2
                await self._write(pending[:half])
                await self._write(pending[half:])
                return
            self._write_seconds.observe(time.monotonic() - started)
            retry = [pending[f.index] for f in failures if f.retry]
            if not retry:
                self._unblock()
            refused = [(pending[f.index], f.reason) for f in failures if not f.retry]
            self._written.inc(len(pending) - len(failures))
            await self._dead_letter(refused)
            if retry:
                attempt += 1
                reasons = {f.reason for f in failures if f.retry}
                self._retry(len(retry), "; ".join(sorted(reasons))[:500])
                await self._sleep(self._backoff(attempt, None))
            else:
                attempt = 0
            pending = retry

    async def _dead_letter(self, refused: list[tuple[Item, str]]) -> None:
        if not refused:
            return
        assert self._dead_letters is not None, "started first"
        records = [
            (
                self.dlq_topic,
                item.key or b"",
                dead_letter(
                    reason,
                    item.value,
                    topic=item.topic,
                    partition=item.partition,
                    offset=item.offset,
                    key=item.key,
                    pipeline=self.config.id,
                ),
            )
            for item, reason in refused
        ]
        await self._dead_letters.write(records)
        self._dead.inc(len(records))
        for item, reason in refused[:3]:  # the reasons, not a flood
            log.warning(
                "pipeline %s: %s[%d]@%d refused by the destination, sent to %s: %s",
                self.config.id,
                item.topic,
                item.partition,
                item.offset,
                self.dlq_topic,
                reason[:500],
            )

    # -- state -----------------------------------------------------------------------------------

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        initial, cap = self.config.retry_initial_ms / 1000, self.config.retry_max_ms / 1000
        delay = min(cap, initial * 2 ** min(attempt - 1, 30))
        # Full jitter on the upper half: replicas retrying against one cluster spread out.
        delay = random.uniform(delay / 2, delay)
        return max(delay, retry_after or 0.0)

    def _retry(self, n: int, reason: str) -> None:
        self._retries.inc()
        self._block(reason)
        now = time.monotonic()
        if now - self._last_warning > 10:  # one line per 10 s, however long it lasts
            self._last_warning = now
            log.warning(
                "pipeline %s: %d records not written (%s); retrying in place, nothing is"
                " committed past them",
                self.config.id,
                n,
                reason,
            )

    def _block(self, reason: str) -> None:
        if self.blocked is None:
            self.blocked_since = time.monotonic()
        self.blocked = reason
        self._blocked_gauge.set(1)

    def _unblock(self) -> None:
        if self.blocked is not None:
            log.info(
                "pipeline %s: the destination takes writes again after %.0fs",
                self.config.id,
                time.monotonic() - self.blocked_since,
            )
        self.blocked = None
        self._blocked_gauge.set(0)

    @staticmethod
    def _split(items: list[Item], parts: int) -> list[list[Item]]:
        """``parts`` slices by key, so that the versions of one event stay in one slice, in
        order (written concurrently, two versions could land in either order)."""
        if parts <= 1:
            return [items]
        slices: list[list[Item]] = [[] for _ in range(parts)]
        for item in items:
            slices[zlib.crc32(item.key or b"") % parts].append(item)
        return [s for s in slices if s]
