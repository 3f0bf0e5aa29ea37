"""Publishes raw records to Kafka with a hard bound on what is in flight.

When Kafka is away, sends fail and are retried in place (never dropped), the in-flight slots stay
taken, ``publish`` blocks, and so the thread reading the API server stops reading: memory stays
bounded and the watch resumes (or re-lists) once Kafka is back. A producer whose sender stopped
for good is replaced before the retries (app/kafka/renewing.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from app.kafka.client import partition_of, ready_batches
from app.kafka.renewing import RenewingProducer

log = logging.getLogger("kubevents.publisher")

PUBLISHED = Counter("kubevents_producer_published_total", "Records acknowledged by Kafka.")
PUBLISH_ERRORS = Counter(
    "kubevents_producer_publish_errors_total", "Failed sends (each one is retried)."
)
IN_FLIGHT = Gauge("kubevents_producer_in_flight", "Records sent and not yet acknowledged.")
BLOCKED = Gauge(
    "kubevents_producer_kafka_blocked", "1 while reading is paused because Kafka is not keeping up."
)

# Asked right before a batch of n records goes to Kafka's client: True to send it, False to drop
# it; it may wait.
Allowed = Callable[[int], Awaitable[bool]]


class Publisher:
    def __init__(self, kafka: RenewingProducer, topic: str, max_in_flight: int):
        self._kafka, self._topic = kafka, topic
        self._max = max_in_flight
        self._pending = 0
        self._waiting = 0  # publishers waiting for room under the in-flight limit
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_error_log = 0.0

    async def publish(
        self, records: list[tuple[bytes, bytes]], allowed: Allowed | None = None
    ) -> None:
        """Hand records to Kafka; returns once each has a slot (not once delivered).

        Records are grouped by partition (murmur2 of the key, exactly as aiokafka's and Java's
        default partitioner) into ready-made batches: one future per batch instead of one per
        record is what lets the producer keep up with a bare LIST. ``allowed`` is asked before
        each batch is handed to Kafka's client, after any wait for room (the producer's
        leadership check, which must hold at the moment of sending, not when the batch was read).
        """
        producer = self._kafka.current
        partitions = sorted(await producer.partitions_for(self._topic))
        by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        for record in records:
            by_partition[partition_of(record[0], partitions)].append(record)
        for partition, items in by_partition.items():
            # never more records in one go than the in-flight limit allows at all
            for start in range(0, len(items), self._max):
                part = items[start : start + self._max]
                for batch, chunk in ready_batches(producer, part):
                    await self._send_batch(producer, batch, partition, chunk, allowed)

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

    async def _send_batch(
        self,
        producer: AIOKafkaProducer,
        batch: Any,
        partition: int,
        chunk: list[tuple[bytes, bytes]],
        allowed: Allowed | None = None,
    ) -> None:
        await self._take_slots(len(chunk))
        if allowed is not None and not await allowed(len(chunk)):
            self._release(len(chunk))
            return
        try:
            fut = await producer.send_batch(batch, self._topic, partition=partition)
        except KafkaError as exc:
            for key, value in chunk:
                self._failed(producer, key, value, 0, exc)
            return

        def done(f: asyncio.Future[object]) -> None:
            exc = f.exception() if not f.cancelled() else asyncio.CancelledError()
            if exc is None:
                PUBLISHED.inc(len(chunk))
                self._release(len(chunk))
            else:  # the batch failed as a whole: retry its records one by one, in place
                for key, value in chunk:
                    self._failed(producer, key, value, 0, exc)

        fut.add_done_callback(done)

    async def _send(self, key: bytes, value: bytes, attempt: int) -> None:
        producer = self._kafka.current
        try:
            fut = await producer.send(self._topic, value, key=key)
        except KafkaError as exc:
            self._failed(producer, key, value, attempt, exc)
            return
        fut.add_done_callback(lambda f: self._done(f, producer, key, value, attempt))

    def _done(
        self,
        fut: asyncio.Future[object],
        producer: AIOKafkaProducer,
        key: bytes,
        value: bytes,
        attempt: int,
    ) -> None:
        exc = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
        if exc is None:
            PUBLISHED.inc()
            self._release()
        else:
            self._failed(producer, key, value, attempt, exc)

    def _failed(
        self, producer: AIOKafkaProducer, key: bytes, value: bytes, attempt: int, exc: BaseException
    ) -> None:
        PUBLISH_ERRORS.inc()
        now = time.monotonic()
        if now - self._last_error_log > 5:
            self._last_error_log = now
            log.warning(
                "Kafka did not acknowledge a record (%s: %s); retrying, %d in flight,"
                " reading paused while the buffer is full",
                type(exc).__name__,
                exc,
                self._pending,
            )
        delay = min(5.0, 0.2 * 2**attempt)

        async def retry() -> None:
            await self._kafka.renew_if_broken(producer, exc)  # a sender stopped for good
            await self._send(key, value, attempt + 1)

        asyncio.get_running_loop().call_later(delay, lambda: asyncio.ensure_future(retry()))

    def _warn(self, message: str) -> None:
        now = time.monotonic()  # at most one line per 5 s, however long Kafka is away
        if now - self._last_error_log > 5:
            self._last_error_log = now
            log.warning(message)

    def _release(self, n: int = 1) -> None:
        self._pending -= n
        IN_FLIGHT.set(self._pending)
        self._room.set()
        if self._pending == 0:
            self._idle.set()

    async def drain(self) -> None:
        """Wait until every record handed over so far is acknowledged."""
        await self._idle.wait()

    @property
    def in_flight(self) -> int:
        return self._pending

    @property
    def full(self) -> bool:
        return self._waiting > 0 or self._pending >= self._max
