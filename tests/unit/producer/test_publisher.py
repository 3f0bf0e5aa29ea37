"""The publisher's in-flight bound and partitioning, against a stand-in for aiokafka's producer
(no broker: the integration tests cover the real one, including Kafka going away)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import OutOfOrderSequenceNumber
from aiokafka.partitioner import murmur2

from app.kafka.renewing import RenewingProducer
from app.kafka.writer import BatchWriter
from app.producer.publisher import Publisher


class FakeBatch:
    def __init__(self, capacity: int):
        self.records: list[tuple[bytes, bytes]] = []
        self.capacity, self.closed = capacity, False

    def append(self, *, key: bytes, value: bytes, timestamp: None) -> object | None:
        assert not self.closed
        if len(self.records) >= self.capacity:
            self.closed = True
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """Acknowledges a batch only when the test says so."""

    def __init__(self, partitions: int = 3, capacity: int = 4):
        self.partitions, self.capacity = partitions, capacity
        self.sent: list[tuple[int, FakeBatch, asyncio.Future[None]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        assert batch.closed, "a complete batch is closed so that it does not linger"
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent.append((partition, batch, fut))
        return fut

    def ack_all(self) -> None:
        for _, _, fut in self.sent:
            if not fut.done():
                fut.set_result(None)


def records(n: int) -> list[tuple[bytes, bytes]]:
    return [(f"uid-{i % 7}".encode(), f"v{i}".encode()) for i in range(n)]


def test_partitions_are_murmur2_of_the_key_and_order_is_kept() -> None:
    async def go() -> None:
        fake = FakeProducer(partitions=3, capacity=1000)
        pub = Publisher(BatchWriter(RenewingProducer(lambda: fake)), "t", max_in_flight=1000)
        await pub.publish(records(50))
        await asyncio.sleep(0)  # the writes run as tasks, in the order they were handed over
        for partition, batch, _ in fake.sent:
            for key, _ in batch.records:
                assert (murmur2(key) & 0x7FFFFFFF) % 3 == partition
        sent = [r for _, batch, _ in fake.sent for r in batch.records]
        assert sorted(sent) == sorted(records(50))
        for key in {k for k, _ in records(50)}:
            assert [v for k, v in sent if k == key] == [v for k, v in records(50) if k == key]
        fake.ack_all()
        await asyncio.wait_for(pub.drain(), 1)
        assert pub.in_flight == 0

    asyncio.run(go())


def test_in_flight_never_exceeds_the_limit_and_a_page_larger_than_it_does_not_deadlock() -> None:
    async def go() -> None:
        fake = FakeProducer(partitions=2, capacity=4)
        pub = Publisher(BatchWriter(RenewingProducer(lambda: fake)), "t", max_in_flight=5)
        task = asyncio.ensure_future(pub.publish(records(40)))
        published = 0
        for _ in range(100):
            await asyncio.sleep(0)
            assert pub.in_flight <= 5
            if task.done():
                break
            if pub.full:  # blocked: Kafka acknowledges what it has, reading resumes
                published = sum(len(b.records) for _, b, _ in fake.sent)
                fake.ack_all()
        await asyncio.wait_for(task, 1)
        assert published > 0, "the publisher blocked at the limit at least once"
        fake.ack_all()
        await asyncio.wait_for(pub.drain(), 1)
        assert sum(len(b.records) for _, b, _ in fake.sent) == 40

    asyncio.run(go())


def test_blocks_while_nothing_is_acknowledged() -> None:
    async def go() -> None:
        fake = FakeProducer(partitions=1, capacity=100)
        pub = Publisher(BatchWriter(RenewingProducer(lambda: fake)), "t", max_in_flight=10)
        await pub.publish(records(10))
        assert pub.in_flight == 10
        blocked = asyncio.ensure_future(pub.publish(records(1)))
        await asyncio.sleep(0.05)
        assert not blocked.done() and pub.full
        fake.ack_all()
        await asyncio.wait_for(blocked, 1)
        assert pub.in_flight == 1 and not pub.full

    asyncio.run(go())


class OneShotProducer(FakeProducer):
    """Acknowledges at once, or fails every batch as aiokafka does once its sender stopped."""

    def __init__(self, broken: bool):
        super().__init__(partitions=1)
        self.broken, self.started, self.stopped = broken, False, False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        fut = await super().send_batch(batch, topic, partition=partition)
        if self.broken:
            fut.set_exception(OutOfOrderSequenceNumber())
        else:
            fut.set_result(type("Meta", (), {"offset": 41})())
        return fut


def test_a_producer_whose_sender_stopped_is_replaced_and_the_records_sent_again() -> None:
    made: list[OneShotProducer] = []

    def make() -> Any:
        made.append(OneShotProducer(broken=not made))  # the first one is broken
        return made[-1]

    async def run() -> dict[tuple[str, int], int]:
        writer = BatchWriter(RenewingProducer(make))
        offsets = await writer.write_partitions({("t", 0): [(b"k1", b"v1"), (b"k2", b"v2")]})
        await asyncio.sleep(0.05)  # the old producer is stopped in the background
        return offsets

    assert asyncio.run(run()) == {("t", 0): 42}  # acknowledged by the new producer
    assert len(made) == 2 and made[1].started and made[0].stopped
    assert [r for _, batch, _ in made[1].sent for r in batch.records] == [
        (b"k1", b"v1"),
        (b"k2", b"v2"),
    ]
