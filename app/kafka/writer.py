"""The one Kafka batch writer: hands records over and returns once Kafka acknowledged all of them.

Every path that writes to Kafka goes through it: the producer's raw records (behind the bounded
publisher, app/producer/publisher.py), the core's outputs, the tables' changelog rows
(tables/writer.py), the sinks' dead letters and the Kafka sink. Records are grouped per topic and
partition (``partition_of``: murmur2 of the key, as Faust, Java and aiokafka partition) into
ready-made batches (``ready_batches``): one future per batch instead of one per record is what
keeps publishing cheap next to a bare LIST or Faust's per-event cost.

A failed partition batch is retried in place, with capped backoff, for as long as it takes: never
skipped, so a Kafka outage stalls the caller (and its lag grows) instead of losing records. A
producer whose sender stopped for good (app/kafka/renewing.py) is replaced before the retry. The
idempotent producer makes a resend of an acknowledged-but-unreported batch an exact repeat at
worst, which the dedupe and the idempotent sinks absorb.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka.errors import KafkaError
from prometheus_client import Counter

from app.kafka.client import partition_of, ready_batches, start_producer
from app.kafka.renewing import RenewingProducer, acknowledged
from app.settings import KafkaSettings

log = logging.getLogger("kubevents.kafka")

WRITTEN = Counter("kubevents_kafka_written_total", "Records acknowledged by Kafka.", ["topic"])
RETRIES = Counter(
    "kubevents_kafka_write_retries_total",
    "Partition batches sent again after a failure.",
    ["topic"],
)

Record = tuple[str, bytes, bytes]  # topic, key, value
Groups = Mapping[tuple[str, int], Sequence[tuple[bytes, bytes]]]  # (topic, partition) -> records


class BatchWriter:
    def __init__(self, kafka: RenewingProducer):
        self._kafka = kafka
        self._partitions: dict[str, list[int]] = {}
        self._last_warning = 0.0

    @classmethod
    async def start(cls, kafka: KafkaSettings, client_id: str) -> BatchWriter:
        """A writer with its own idempotent producer (acks=all) for ``kafka``; a UserError when
        Kafka cannot be reached."""
        return cls(await start_producer(kafka, client_id))

    async def stop(self) -> None:
        await self._kafka.stop()

    async def partitions(self, topic: str) -> list[int]:
        """The topic's partitions, from the producer's metadata (a topic's count is fixed while
        kubevents runs: ensure_topics checks it at start)."""
        if topic not in self._partitions:
            self._partitions[topic] = sorted(await self._kafka.current.partitions_for(topic))
        return self._partitions[topic]

    async def write(self, records: Sequence[Record]) -> None:
        """Returns when every record is acknowledged (acks=all); retries failures in place."""
        groups: dict[tuple[str, int], list[tuple[bytes, bytes]]] = defaultdict(list)
        for topic, key, value in records:
            groups[(topic, partition_of(key, await self.partitions(topic)))].append((key, value))
        await self.write_partitions(groups)

    async def write_partitions(self, groups: Groups) -> dict[tuple[str, int], int]:
        """Writes each (topic, partition)'s records there, in order; returns when all are
        acknowledged, with the offset of each partition's last record."""
        items = list(groups.items())
        last = await asyncio.gather(*(self.write_partition(t, p, rs) for (t, p), rs in items))
        return {tp: offset for (tp, _), offset in zip(items, last, strict=True)}

    async def write_partition(
        self, topic: str, partition: int, items: Sequence[tuple[bytes, bytes]], attempt: int = 0
    ) -> int:
        """Writes ``items`` to one partition, in order, until acknowledged; the last offset."""
        while True:
            producer = self._kafka.current
            try:
                return await self._settle(
                    producer, topic, items, await self._enqueue(producer, topic, partition, items)
                )
            except KafkaError as exc:
                attempt += 1
                await self._failed(producer, topic, partition, len(items), exc, attempt=attempt)

    async def send_partition(
        self, topic: str, partition: int, items: Sequence[tuple[bytes, bytes]]
    ) -> asyncio.Future[int]:
        """Hands ``items`` to Kafka's client now (so they leave with the next request) and
        returns a future of the last offset, which retries in place until acknowledged: for a
        caller that goes on reading meanwhile (the producer's bounded publisher)."""
        producer = self._kafka.current
        try:
            sent = await self._enqueue(producer, topic, partition, items)
        except KafkaError as exc:
            failure: KafkaError | None = exc
        else:
            failure = None

        async def settled() -> int:
            if failure is None:
                try:
                    return await self._settle(producer, topic, items, sent)
                except KafkaError as exc:
                    await self._failed(producer, topic, partition, len(items), exc, attempt=1)
            else:
                await self._failed(producer, topic, partition, len(items), failure, attempt=1)
            return await self.write_partition(topic, partition, items, attempt=1)

        return asyncio.ensure_future(settled())

    @staticmethod
    async def _enqueue(
        producer: Any, topic: str, partition: int, items: Sequence[tuple[bytes, bytes]]
    ) -> list[tuple[Any, int]]:
        return [
            (await producer.send_batch(batch, topic, partition=partition), len(chunk))
            for batch, chunk in ready_batches(producer, items)
        ]

    @staticmethod
    async def _settle(
        producer: Any, topic: str, items: Sequence[tuple[bytes, bytes]], sent: list[tuple[Any, int]]
    ) -> int:
        # Not a bare gather: a batch left behind by a stopped sender never resolves
        # (app/kafka/renewing.py); its end is a failure, retried on the renewed producer.
        metadata = await acknowledged(producer, [future for future, _ in sent])
        WRITTEN.labels(topic).inc(len(items))
        if not sent:
            return -1
        # A batch's future gives the offset of its first record.
        return int(metadata[-1].offset) + sent[-1][1] - 1

    async def _failed(
        self, producer: Any, topic: str, partition: int, n: int, exc: KafkaError, *, attempt: int
    ) -> None:
        RETRIES.labels(topic).inc()
        self._warn(topic, partition, n, exc)
        await self._kafka.renew_if_broken(producer, exc)
        await asyncio.sleep(min(5.0, 0.2 * 2**attempt))

    def _warn(self, topic: str, partition: int, n: int, exc: BaseException) -> None:
        now = time.monotonic()  # one line per 5 s at most, however long Kafka is away
        if now - self._last_warning > 5:
            self._last_warning = now
            log.warning(
                "Kafka did not acknowledge %d records for %s[%d] (%s: %s); retrying, the caller"
                " waits (nothing is committed past them)",
                n,
                topic,
                partition,
                type(exc).__name__,
                exc,
            )
