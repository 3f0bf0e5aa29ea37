"""The core agent: raw topic -> decode/dedupe/enrich/count -> enriched topic, DLQ and tables.

It takes the raw records in batches, handed over by Faust's fetcher loop as it reads them (at
most ``KUBEVENTS_CORE_BATCH_SIZE``; app/faust_fixes.py, ``deliver_in_batches``) instead of one
event at a time through Faust's stream, and for each batch, in this order:
  1. decides and builds every output (dedupe reads the table plus what this batch decided);
  2. publishes the outputs and waits until Kafka acknowledged all of them (acks=all);
  3. writes the count increments, then the dedupe rows, to the tables (tables/writer.py:
     changelog records acknowledged first, then the store);
  4. acks the records, which lets Faust commit their offsets.
A crash before 2 completes re-processes the records (outputs published again: exact repeats
that the idempotent sinks absorb); a crash between 2 and 3 does too, as the table does not know
the versions yet; a crash within 3 decides the batch again from the same dedupe rows, and the
count rows skip the increments they hold already (each row keeps the last raw offset it
counted, tables/counts.py); after 3 the versions are known and a redelivery passes nothing and
counts nothing. The table never runs ahead of the outputs, so a version is never dropped as "seen"
without having been published.

Records fetched under an earlier consumer generation (a rebalance happened meanwhile) are
published but write no table rows and are not acked: the partition may belong to another worker
now, which reads it again from the committed offset (app/faust_fixes.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import Counter

from app import faust_fixes, pipeline
from app.core_app import app, raw_topic, settings
from app.enrich import Enricher
from app.faust_context import current_for
from app.kube import KubeClient
from app.outputs import OutputPublisher, Record
from app.testing import faults
from tables import counts
from tables.dedupe import seen
from tables.writer import Row, TableWriter

log = logging.getLogger("kubevents.core")

STALE = Counter(
    "kubevents_core_stale_records_total",
    "Records read before a rebalance and left for the seek that follows it to read again.",
)

TOPIC_NAMES = {"enriched": settings.topics.enriched, "dlq": settings.topics.dlq}


def _enricher() -> Enricher:
    client = None
    if settings.core.owner_lookup:
        try:
            client = KubeClient.from_settings(settings.kubernetes)
        except Exception as exc:  # no kubeconfig: run without owner lookups, and say so
            log.warning("owner lookups disabled: %s", exc)
    return Enricher(settings.core, client)


class Batch:
    """What one batch decided: outputs to publish, then table writes."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.states: dict[str, tuple[Any, Any]] = {}  # uid -> (event, newest state)
        self.increments: list[tuple[Any, pipeline.Increment]] = []

    def seen_get(self, uid: str, event: Any) -> Any:
        if uid in self.states:
            return self.states[uid][1]
        with current_for(seen.table, event):  # a RocksDB store reads the partition's database
            return seen.get(uid, event.message.timestamp)

    async def add(self, event: Any, enricher: Enricher) -> None:
        message = event.message
        result = await pipeline.process(
            event.value,
            pipeline.Origin(message.topic, message.partition, message.offset, event.key),
            max_bytes=settings.core.max_record_bytes,
            default_cluster=settings.cluster.name,
            seen_get=lambda uid: self.seen_get(uid, event),
            seen_set=lambda uid, state: self.states.__setitem__(uid, (event, state)),
            enricher=enricher,
        )
        for out in result.outputs:
            self.records.append((TOPIC_NAMES[out.topic], out.key, out.value))
        self.increments.extend((event, inc) for inc in result.increments)

    @staticmethod
    def _fresh(event: Any) -> bool:
        # Only records of the current generation write rows: an earlier generation's partition
        # may belong to another worker now, which processes its records again.
        return _this_generation(event.message)

    def count_rows(self) -> list[Row]:
        return counts.rows(
            (event, inc.key, inc.delta, inc.at)
            for event, inc in self.increments
            if self._fresh(event)
        )

    def dedupe_rows(self) -> list[Row]:
        out: list[Row] = []
        for uid, (event, state) in self.states.items():
            if self._fresh(event):
                table, key, value = seen.row(uid, state, event.message.timestamp)
                out.append((table, event, key, value))
        return out


async def handle(
    events: Sequence[Any], enricher: Enricher, publisher: OutputPublisher, writer: TableWriter
) -> None:
    batch = Batch()
    for event in events:
        await batch.add(event, enricher)
    await faults.point("core.before-publish", len(events))  # decided, nothing out yet
    await publisher.publish(batch.records)
    # Count rows before dedupe rows: if the worker dies in between, the batch is decided again
    # from the same dedupe state, and the count rows skip the increments they hold already.
    await writer.write(batch.count_rows())
    await faults.point("core.after-count-rows", len(events))
    await writer.write(batch.dedupe_rows())


class Delivered:
    """A raw record as the core agent handles it: Faust's message, with its key and value."""

    __slots__ = ("__weakref__", "key", "message", "value")  # weakref: app/faust_context.py

    def __init__(self, message: Any) -> None:
        self.message, self.key, self.value = message, message.key, message.value


# The raw topic's records reach the agent in batches, straight from Faust's fetcher loop
# (app/faust_fixes.py, deliver_in_batches), through this queue: at most two batches wait. Not a
# Faust channel: Faust clears the channels' queues when it resumes the flow at the end of a
# rebalance, right after seeking to the committed offsets, so a batch read from there and handed
# over in between was cleared with its read offsets already past it: lost until a restart
# (tests/integration/test_core.py, the join/leave test's slow-agent-and-seek variant).
batches: asyncio.Queue[list[Any]] = asyncio.Queue(maxsize=2)
app.topics.add(raw_topic)  # subscribed as any agent's topic: same group, same assignment
faust_fixes.deliver_in_batches(settings.topics.raw, batches.put, settings.core.batch_size)


def _this_generation(message: Any) -> bool:
    """Whether ``message`` was read under the consumer's current generation (no rebalance since)."""
    return bool(message.generation_id == app.consumer_generation_id)


def _rebalanced(messages: list[Any]) -> Callable[[], bool]:
    """Whether a rebalance happened since ``messages`` were read."""
    generation = messages[0].generation_id
    return lambda: bool(generation != app.consumer_generation_id)


async def core() -> None:
    enricher = _enricher()
    publisher = await OutputPublisher.start(settings.kafka, f"{settings.core.app_id}-outputs")
    writer = TableWriter(publisher)
    try:
        while True:
            messages = await batches.get()
            # Tests hold a batch here until a rebalance, or slow every batch down.
            await faults.point("core.batch-taken", len(messages), until=_rebalanced(messages))
            if not all(map(_this_generation, messages)):
                # Read before a rebalance: the seek that follows every rebalance reads these
                # records again (on whichever worker owns them now); they are not acked, so
                # nothing past them is committed meanwhile.
                STALE.inc(len(messages))
                continue
            await handle([Delivered(m) for m in messages], enricher, publisher, writer)
            for message in messages:
                app.consumer.ack(message)  # lets Faust commit up to it (app/faust_fixes.py)
    except Exception as exc:
        # Going on past the failed batch would leave its offsets unacked and the commit stuck
        # until a restart: stop the worker now instead, so that it is restarted and the batch
        # is processed again.
        log.exception("the core agent failed; stopping the worker (nothing past it is committed)")
        await app.crash(exc)
        raise
    finally:
        await publisher.stop()


app.task(core)  # started with the worker, once its tables are recovered
