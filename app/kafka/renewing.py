"""An idempotent Kafka producer that is replaced when its sender stops for good.

aiokafka's idempotent producer numbers each partition's batches; when the broker restarts with
batches in flight, a resent batch can meet the broker's ``OutOfOrderSequenceNumber``, and
aiokafka's sender task then stops for good: every later send fails, however often it is retried
(tests/integration/test_core.py, Kafka stopped and restarted under a worker, hung on it).
A fresh producer (a new producer id, new sequences) is the way out. Records the old one had in
flight fail and are sent again by their callers, who retry until acknowledged: exact repeats at
worst, never a loss.

A stopped sender also leaves batches nobody will ever resolve: aiokafka fails the queued batches
only when its sender dies of an error, not when it is cancelled (as ``stop`` does), and a produce
request Kafka answered with a retriable error (NotEnoughReplicas while a cluster restarts) puts its
batch back into the queue even after the sender stopped. Awaiting such a batch's future hangs
forever and its records are never sent again: one repeat of an event lost in the fault suite's
Kafka cluster restart. ``acknowledged`` waits for the batches or the sender's end, whichever
comes first, and the latter is a failure the caller retries on the renewed producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

import aiokafka.codec
import aiokafka.record._crecords.default_records as c_default_records
import aiokafka.record.default_records as py_default_records
import aiokafka.record.legacy_records as py_legacy_records
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)

log = logging.getLogger("kubevents.kafka")

# Errors after which aiokafka's sender no longer works (it re-raises them and stops).
BROKEN = (OutOfOrderSequenceNumber, ProducerFenced, UnknownProducerId, InvalidProducerEpoch)


class SenderStopped(KafkaError):  # type: ignore[misc]  # aiokafka is untyped
    """The producer's sender stopped while batches of ours were unresolved: they never will be."""

    retriable = True


def sender_task(producer: Any) -> asyncio.Task[None] | None:
    sender = getattr(producer, "_sender", None)
    return getattr(sender, "sender_task", None)


async def acknowledged(producer: Any, futures: Sequence[asyncio.Future[Any]]) -> list[Any]:
    """The results of ``producer``'s batch ``futures`` once all are resolved (the first failure
    raised, as ``gather`` would); ``SenderStopped`` if its sender ends with some unresolved."""
    sender = sender_task(producer)
    if sender is None or all(f.done() for f in futures):
        return list(await asyncio.gather(*futures))
    gathered: asyncio.Future[Any] = asyncio.gather(*futures)
    # One wake-up: when all are resolved, or at the first failure, or at the sender's end.
    await asyncio.wait(
        {gathered, cast(asyncio.Future[Any], sender)}, return_when=asyncio.FIRST_COMPLETED
    )
    if all(f.done() for f in futures):  # gather's own callback may not have run yet
        return [f.result() for f in futures]
    if gathered.done():
        return list(gathered.result())  # raises the first failure
    gathered.add_done_callback(_retrieve)  # abandoned: a late failure is nobody's to report
    unsent = sum(not f.done() for f in futures)
    raise SenderStopped(f"the producer's sender stopped with {unsent} batches unsent")


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class RenewingProducer:
    def __init__(self, make: Callable[[], AIOKafkaProducer]):
        self._make = make
        self.current = make()
        self._lock = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.current.start()

    async def stop(self) -> None:
        await self.current.stop()

    @staticmethod
    def broken(producer: AIOKafkaProducer, exc: BaseException) -> bool:
        task = sender_task(producer)
        return isinstance(exc, BROKEN) or (task is not None and task.done())

    async def renew(self, producer: AIOKafkaProducer) -> None:
        """Replace ``producer`` (the one a failed send used) unless that happened already.
        Raises if the new one cannot start (Kafka still away): the caller retries later."""
        async with self._lock:
            if producer is not self.current:
                return
            fresh = self._make()
            await fresh.start()
            self.current = fresh
        log.warning("the Kafka producer's sender had stopped for good; it was replaced")
        task = asyncio.ensure_future(self._retire(producer))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def renew_if_broken(self, producer: AIOKafkaProducer, exc: BaseException) -> None:
        if self.broken(producer, exc):
            with contextlib.suppress(Exception):  # still away: the next failure tries again
                await self.renew(producer)

    @staticmethod
    async def _retire(producer: AIOKafkaProducer) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 10)


_ENCODER = {  # codec -> (aiokafka's encoder, its level argument)
    "lz4": ("lz4_encode", "level"),
    "gzip": ("gzip_encode", "compresslevel"),
    "zstd": ("zstd_encode", "level"),
}
_DEFAULT_LEVEL = {"lz4": 1}
_BUILDERS = (c_default_records, py_default_records, py_legacy_records)


def set_compression_level(codec: str, level: int | None) -> None:
    """Use ``level`` for ``codec`` in every producer of this process. aiokafka takes no level and
    compresses lz4 at 9, its slowest: 6 us per 560-byte raw record here against 0.35 us at 1,
    for batches 18x instead of 11x smaller; that was a fifth of the producer's CPU per event.
    Its batch builders look the encoder up by name, so it is replaced there."""
    if codec not in _ENCODER:
        return
    level = level if level is not None else _DEFAULT_LEVEL.get(codec)
    if level is None:
        return
    name, argument = _ENCODER[codec]
    encode = functools.partial(getattr(aiokafka.codec, name), **{argument: level})
    for module in _BUILDERS:
        if hasattr(module, name):
            setattr(module, name, encode)
