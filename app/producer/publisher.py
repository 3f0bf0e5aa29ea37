"""Publishes raw records to Kafka with a hard bound on what is in flight.

The writing itself is the one Kafka batch writer's (app/kafka/writer.py: per-partition batches,
retried in place until acknowledged, a broken producer renewed). This module adds what only the
producer needs: ``publish`` returns as soon as the records have a slot, not once they are
acknowledged, so the thread reading the API server keeps reading while Kafka works; and at most
``max_in_flight`` records are unacknowledged at any time. When Kafka is away the writes keep
retrying, the slots stay taken, ``publish`` blocks, and so the reading stops: memory stays bounded
and the watch resumes (or re-lists) once Kafka is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge

from app.kafka.client import partition_of
from app.kafka.writer import BatchWriter

log = logging.getLogger("kubevents.publisher")

PUBLISHED = Counter("kubevents_producer_published_total", "Records acknowledged by Kafka.")
IN_FLIGHT = Gauge("kubevents_producer_in_flight", "Records sent and not yet acknowledged.")
BLOCKED = Gauge(
    "kubevents_producer_kafka_blocked", "1 while reading is paused because Kafka is not keeping up."
)

# Asked right before a batch of n records goes to Kafka's client: True to send it, False to drop
# it; it may wait.
Allowed = Callable[[int], Awaitable[bool]]


class Publisher:
    def __init__(self, writer: BatchWriter, topic: str, max_in_flight: int):
        self._writer, self._topic = writer, topic
        self._max = max_in_flight
        self._pending = 0
        self._waiting = 0  # publishers waiting for room under the in-flight limit
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writes: set[asyncio.Future[int]] = set()
        self._last_warning = 0.0

    async def publish(
        self, records: list[tuple[bytes, bytes]], allowed: Allowed | None = None
    ) -> None:
        """Hand records to Kafka; returns once each has a slot (not once delivered).

        ``allowed`` is asked before each chunk is handed to the writer, after any wait for room
        (the producer's leadership check, which must hold at the moment of sending, not when the
        records were read)."""
        partitions = await self._writer.partitions(self._topic)
        by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        for record in records:
            by_partition[partition_of(record[0], partitions)].append(record)
        for partition, items in by_partition.items():
            # never more records in one go than the in-flight limit allows at all
            for start in range(0, len(items), self._max):
                chunk = items[start : start + self._max]
                await self._take_slots(len(chunk))
                if allowed is not None and not await allowed(len(chunk)):
                    self._release(len(chunk))
                    continue
                # In Kafka's client before the next chunk (in the order read); acknowledged later.
                write = await self._writer.send_partition(self._topic, partition, chunk)
                self._writes.add(write)
                write.add_done_callback(self._written(len(chunk)))

    def _written(self, n: int) -> Callable[[asyncio.Future[int]], None]:
        def done(task: asyncio.Future[int]) -> None:
            self._writes.discard(task)
            if not task.cancelled() and task.exception() is None:
                PUBLISHED.inc(n)
            self._release(n)  # retried until acknowledged: only a stop cancels a write

        return done

    async def _take_slots(self, n: int) -> None:
        while self._pending + n > self._max:
            BLOCKED.set(1)
            self._warn(
                f"{self._pending} records await Kafka's acknowledgement (the limit is"
                f" {self._max}): reading from the API server is paused until Kafka catches up"
            )
            self._room.clear()
            self._waiting += 1
            try:
                await self._room.wait()
            finally:
                self._waiting -= 1
        BLOCKED.set(0)
        self._pending += n
        self._idle.clear()
        IN_FLIGHT.set(self._pending)

    def _warn(self, message: str) -> None:
        now = time.monotonic()  # at most one line per 5 s, however long Kafka is away
        if now - self._last_warning > 5:
            self._last_warning = now
            log.warning(message)

    def _release(self, n: int) -> None:
        self._pending -= n
        IN_FLIGHT.set(self._pending)
        self._room.set()
        if self._pending == 0:
            self._idle.set()

    async def drain(self) -> None:
        """Wait until every record handed over so far is acknowledged."""
        await self._idle.wait()

    async def stop(self) -> None:
        """Abandon writes still retrying (their records are re-listed by whoever runs next)."""
        for write in list(self._writes):
            write.cancel()

    @property
    def in_flight(self) -> int:
        return self._pending

    @property
    def full(self) -> bool:
        return self._waiting > 0 or self._pending >= self._max
