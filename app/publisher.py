"""Publishes raw records to Kafka with a hard bound on what is in flight.

When Kafka is away, sends fail and are retried in place (never dropped), the in-flight slots stay
taken, ``publish`` blocks, and so the thread reading the API server stops reading: memory stays
bounded and the watch resumes (or re-lists) once Kafka is back.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

log = logging.getLogger("kubevents.publisher")

PUBLISHED = Counter("kubevents_producer_published_total", "Records acknowledged by Kafka.")
PUBLISH_ERRORS = Counter(
    "kubevents_producer_publish_errors_total", "Failed sends (each one is retried)."
)
IN_FLIGHT = Gauge("kubevents_producer_in_flight", "Records sent and not yet acknowledged.")
BLOCKED = Gauge(
    "kubevents_producer_kafka_blocked", "1 while reading is paused because Kafka is not keeping up."
)


class Publisher:
    def __init__(self, producer: AIOKafkaProducer, topic: str, max_in_flight: int):
        self._producer, self._topic = producer, topic
        self._slots = asyncio.Semaphore(max_in_flight)
        self._max = max_in_flight
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_error_log = 0.0

    async def publish(self, records: list[tuple[bytes, bytes]]) -> None:
        """Hand records to Kafka; returns once each has a slot (not once delivered)."""
        for key, value in records:
            if self._slots.locked():
                BLOCKED.set(1)
                self._warn(
                    f"{self._pending} records await Kafka's acknowledgement (the limit):"
                    " reading from the API server is paused until Kafka catches up"
                )
            await self._slots.acquire()
            BLOCKED.set(0)
            self._pending += 1
            self._idle.clear()
            IN_FLIGHT.set(self._pending)
            await self._send(key, value, attempt=0)

    async def _send(self, key: bytes, value: bytes, attempt: int) -> None:
        try:
            fut = await self._producer.send(self._topic, value, key=key)
        except KafkaError as exc:
            self._failed(key, value, attempt, exc)
            return
        fut.add_done_callback(lambda f: self._done(f, key, value, attempt))

    def _done(self, fut: asyncio.Future[object], key: bytes, value: bytes, attempt: int) -> None:
        exc = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
        if exc is None:
            PUBLISHED.inc()
            self._release()
        else:
            self._failed(key, value, attempt, exc)

    def _failed(self, key: bytes, value: bytes, attempt: int, exc: BaseException) -> None:
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
        asyncio.get_running_loop().call_later(
            delay, lambda: asyncio.ensure_future(self._send(key, value, attempt + 1))
        )

    def _warn(self, message: str) -> None:
        now = time.monotonic()  # at most one line per 5 s, however long Kafka is away
        if now - self._last_error_log > 5:
            self._last_error_log = now
            log.warning(message)

    def _release(self) -> None:
        self._pending -= 1
        IN_FLIGHT.set(self._pending)
        self._slots.release()
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
        return self._pending >= self._max
