"""The one Kafka batch writer (app/kafka/writer.py) against the stack's real broker, where
aiokafka's producer can leave a batch that nobody resolves."""

from __future__ import annotations

import asyncio

from app.kafka.client import ensure_topic
from app.kafka.renewing import sender_task
from app.kafka.writer import BatchWriter
from app.settings import KafkaSettings
from tests.integration.conftest import consume


def test_records_left_behind_by_a_stopped_sender_are_sent_again(
    brokers: str, names: dict[str, str]
) -> None:
    """aiokafka's sender cancelled (as ``stop`` cancels it while a request is in flight) leaves
    its queued batches unresolved for ever: aiokafka fails them only when its sender dies of an
    error. A write whose records sit there must renew the producer and send them again, not
    wait for ever (the repeat lost in the fault suite's Kafka cluster restart)."""
    topic = names["KUBEVENTS_TOPICS_RAW"]
    records = [(topic, f"k{i}".encode(), f"v{i}".encode()) for i in range(20)]

    async def run() -> None:
        kafka = KafkaSettings(brokers=brokers)
        await ensure_topic(kafka, topic, partitions=3, replication_factor=1)
        writer = await BatchWriter.start(kafka, "test-writer")
        try:
            await writer.write(records[:10])  # the topic exists, the producer works
            old = writer._kafka.current
            task = sender_task(old)
            assert task is not None
            task.cancel()
            await asyncio.wait({task})  # aiokafka's sender returns from a cancel: no error
            # Without the watch on the sender, this waits for ever on batches nobody sends.
            await asyncio.wait_for(writer.write(records[10:]), 20)
            assert writer._kafka.current is not old, "the producer was renewed"
        finally:
            await writer.stop()

    asyncio.run(run())
    got = consume(brokers, topic, until=len(records))
    assert sorted((k, v) for k, v, _ in got) == sorted((k, v) for _, k, v in records)
