"""The Kafka sink: a filtered re-publish of k8s-events to another topic, maybe on another cluster.

Records keep the public topic's key (the involved object's uid, else the event's uid), so one
object's events stay on one partition, in order. Writes go through the one Kafka batch writer
(app/kafka/writer.py): acknowledged (acks=all, idempotent producer) before the pipeline acks the
source records, retried in place while the destination is away. The destination cluster has its
own brokers and security settings (kube-eventer's ``kafka:`` options); unset brokers mean the
source cluster, with its settings.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from app.kafka.client import ensure_topic
from app.kafka.writer import BatchWriter
from app.settings import KafkaSettings, KafkaSinkSettings
from app.sinks.base import Event, Failure


def key_of(event: Event) -> bytes:
    involved = event.get("involved_object") or {}
    return str(involved.get("uid") or event.get("uid") or "").encode()


def destination(options: KafkaSinkSettings, source: KafkaSettings) -> KafkaSettings:
    """The destination cluster's client settings: its own when it names brokers, else the
    source cluster's (with this sink's compression)."""
    if options.brokers is None:
        return source.model_copy(update={"compression": options.compression})
    fields = options.model_dump(exclude={"topic"})
    return KafkaSettings.model_validate(fields)


class KafkaSink:
    def __init__(
        self, options: KafkaSinkSettings, source: KafkaSettings, partitions: int, replicas: int
    ):
        self.topic = options.topic
        self.kafka = destination(options, source)
        self.partitions, self.replicas = partitions, replicas
        self.writer: BatchWriter | None = None

    async def start(self) -> None:
        await ensure_topic(self.kafka, self.topic, self.partitions, self.replicas)
        self.writer = await BatchWriter.start(self.kafka, f"kubevents-sink-kafka-{self.topic}")

    async def stop(self) -> None:
        if self.writer is not None:
            await self.writer.stop()

    async def write(self, events: Sequence[Event]) -> list[Failure]:
        assert self.writer is not None, "started first"
        # The writer retries in place until Kafka acknowledges: nothing to report per record.
        await self.writer.write([(self.topic, key_of(e), orjson.dumps(e)) for e in events])
        return []
