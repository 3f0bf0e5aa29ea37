"""Publishes a batch of the core pipeline's outputs and returns once Kafka acknowledged all of it.

The core agent hands over every output of a batch of raw records at once and only then writes
its tables and acks the records (so their offsets can be committed): "commit after the write was
acknowledged". Records are grouped per topic and partition (``partition_of``: murmur2 of the key,
as Faust, Java and aiokafka partition) into ready-made batches (``ready_batches``): one future per
batch instead of one per record is what keeps publishing cheap next to Faust's per-event cost.

A failed batch is retried in place, with backoff, for as long as it takes: never skipped, so a
Kafka outage stalls the worker (and its lag grows) instead of losing outputs. A producer whose
sender stopped for good (app/kafka/renewing.py) is replaced before the retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter

from app.kafka.client import partition_of, producer_kwargs, ready_batches
from app.kafka.renewing import RenewingProducer
from app.settings import KafkaSettings

log = logging.getLogger("kubevents.outputs")

SENT = Counter("kubevents_core_outputs_total", "Outputs acknowledged by Kafka.", ["topic"])
RETRIES = Counter("kubevents_core_output_retries_total", "Output batches sent again.")

Record = tuple[str, bytes, bytes]  # topic, key, value


class OutputPublisher:
    def __init__(self, kafka: RenewingProducer):
        self._kafka = kafka
        self._last_warning = 0.0

    @classmethod
    async def start(cls, kafka: KafkaSettings, client_id: str) -> OutputPublisher:
        producer = RenewingProducer(lambda: AIOKafkaProducer(**producer_kwargs(kafka, client_id)))
        await producer.start()
        return cls(producer)

    async def stop(self) -> None:
        await self._kafka.stop()

    async def publish(self, records: Sequence[Record]) -> None:
        """Returns when every record is acknowledged (acks=all); retries failures in place."""
        partitions: dict[str, list[int]] = {}
        groups: dict[tuple[str, int], list[tuple[bytes, bytes]]] = defaultdict(list)
        for topic, key, value in records:
            if topic not in partitions:
                partitions[topic] = sorted(await self._kafka.current.partitions_for(topic))
            groups[(topic, partition_of(key, partitions[topic]))].append((key, value))
        await self.publish_to(groups)

    async def publish_to(
        self, groups: Mapping[tuple[str, int], list[tuple[bytes, bytes]]]
    ) -> dict[tuple[str, int], int]:
        """Publishes each (topic, partition)'s records there, in order; returns when all are
        acknowledged, with the offset of each partition's last record."""
        items = list(groups.items())
        last = await asyncio.gather(*(self._send(t, p, records) for (t, p), records in items))
        return {tp: offset for (tp, _), offset in zip(items, last, strict=True)}

    async def _send(self, topic: str, partition: int, items: list[tuple[bytes, bytes]]) -> int:
        attempt = 0
        while True:
            producer = self._kafka.current
            try:
                sent = [
                    (await producer.send_batch(batch, topic, partition=partition), len(chunk))
                    for batch, chunk in ready_batches(producer, items)
                ]
                metadata = await asyncio.gather(*(future for future, _ in sent))
                SENT.labels(topic).inc(len(items))
                if not sent:
                    return -1
                # A batch's future gives the offset of its first record.
                return int(metadata[-1].offset) + sent[-1][1] - 1
            except KafkaError as exc:
                # The idempotent producer makes a resend of an acknowledged-but-unreported batch
                # an exact repeat at worst, which downstream upserts absorb.
                attempt += 1
                RETRIES.inc()
                self._warn(topic, partition, len(items), exc)
                await self._kafka.renew_if_broken(producer, exc)
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))

    def _warn(self, topic: str, partition: int, n: int, exc: BaseException) -> None:
        now = time.monotonic()  # one line per 5 s at most, however long Kafka is away
        if now - self._last_warning > 5:
            self._last_warning = now
            log.warning(
                "Kafka did not acknowledge %d outputs for %s[%d] (%s: %s); retrying, the worker"
                " waits (nothing is committed past them)",
                n,
                topic,
                partition,
                type(exc).__name__,
                exc,
            )
