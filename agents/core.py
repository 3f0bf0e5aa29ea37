"""The core agent: raw topic -> decode/dedupe/enrich/count -> enriched topic, DLQ and tables.

It takes the raw records in batches, handed over by Faust's fetcher loop as it reads them (at
most ``KUBEVENTS_WORKER_BATCH_SIZE``; app/worker/batched_delivery.py) instead of one event at a
time through Faust's stream, and for each batch, in this order:
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

It runs on the batch loop every pipeline shares (app/worker/batch_loop.py: generation check, ack
after the handler returns, crash on an unexpected error). Records of a batch whose consumer
generation changed while it was handled (a rebalance meanwhile) are published but write no table
rows, and their acks are not recorded (app/worker/faust_fixes.py): the partition may belong to
another worker now, which reads them again from the committed offset."""

from __future__ import annotations

import logging
from typing import Any

from app.core import counts_api
from app.core import process as pipeline
from app.core.enrich import Enricher
from app.kafka.writer import BatchWriter, Record
from app.kube.client import KubeClient
from app.obs import HttpServer
from app.settings import Settings
from app.testing import faults
from app.worker.app import bytes_topic
from app.worker.batch_loop import BatchLoop, current_generation
from app.worker.faust_context import current_for
from tables import dedupe
from tables.counts import Counts
from tables.expiring import ExpiringMap
from tables.writer import Row, TableWriter

log = logging.getLogger("kubevents.core")


class Delivered:
    """A raw record as the core agent handles it: Faust's message, with its key and value."""

    __slots__ = ("__weakref__", "key", "message", "value")  # weakref: app/worker/faust_context.py

    def __init__(self, message: Any) -> None:
        self.message, self.key, self.value = message, message.key, message.value


class Batch:
    """What one batch decided: outputs to publish, then table writes."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.records: list[Record] = []
        self.states: dict[str, tuple[Any, Any]] = {}  # uid -> (event, newest state)
        self.increments: list[tuple[Any, pipeline.Increment]] = []

    def seen_get(self, uid: str, event: Any) -> Any:
        if uid in self.states:
            return self.states[uid][1]
        seen = self.core.seen
        with current_for(seen.table, event):  # a RocksDB store reads the partition's database
            return seen.get(uid, event.message.timestamp)

    async def add(self, event: Any) -> None:
        core, message = self.core, event.message
        result = await pipeline.process(
            event.value,
            pipeline.Origin(message.topic, message.partition, message.offset, event.key),
            max_bytes=core.settings.core.max_record_bytes,
            default_cluster=core.settings.cluster.name,
            seen_get=lambda uid: self.seen_get(uid, event),
            seen_set=lambda uid, state: self.states.__setitem__(uid, (event, state)),
            enricher=core.enricher,
        )
        for out in result.outputs:
            self.records.append((core.topic_names[out.topic], out.key, out.value))
        self.increments.extend((event, inc) for inc in result.increments)

    def count_rows(self) -> list[Row]:
        fresh = self.core.fresh
        return self.core.counts.rows(
            (event, inc.key, inc.delta, inc.at) for event, inc in self.increments if fresh(event)
        )

    def dedupe_rows(self) -> list[Row]:
        out: list[Row] = []
        for uid, (event, state) in self.states.items():
            if self.core.fresh(event):
                table, key, value = self.core.seen.row(uid, state, event.message.timestamp)
                out.append((table, event, key, value))
        return out


class Core:
    """The core pipeline's handler on the batch loop (app/worker/batch_loop.py)."""

    def __init__(self, app: Any, settings: Settings, seen: ExpiringMap, counts: Counts):
        self.app, self.settings, self.seen, self.counts = app, settings, seen, counts
        self.topic_names = {"enriched": settings.topics.enriched, "dlq": settings.topics.dlq}
        self.enricher = Enricher(settings.core, None)
        self.publisher: BatchWriter | None = None
        self.writer: TableWriter | None = None

    def _owner_client(self) -> KubeClient | None:
        if not self.settings.core.owner_lookup:
            return None
        try:
            return KubeClient.from_settings(self.settings.kubernetes)
        except Exception as exc:  # no kubeconfig: run without owner lookups, and say so
            log.warning("owner lookups disabled: %s", exc)
            return None

    def fresh(self, event: Any) -> bool:
        # Only records of the current generation write rows: an earlier generation's partition
        # may belong to another worker now, which processes its records again.
        return current_generation(self.app, event.message)

    async def start(self) -> None:
        self.enricher = Enricher(self.settings.core, self._owner_client())
        self.publisher = await BatchWriter.start(
            self.settings.kafka, f"{self.settings.core.app_id}-outputs"
        )
        self.writer = TableWriter(self.publisher)

    async def stop(self) -> None:
        if self.publisher is not None:
            await self.publisher.stop()

    async def handle(self, messages: list[Any]) -> None:
        """Decide a batch, publish its outputs, write its count rows, then its dedupe rows;
        each step acknowledged before the next."""
        assert self.publisher is not None and self.writer is not None, "started first"
        batch = Batch(self)
        for message in messages:
            await batch.add(Delivered(message))
        await faults.point("core.before-publish", len(messages))  # decided, nothing out yet
        await self.publisher.write(batch.records)
        # Count rows before dedupe rows: if the worker dies in between, the batch is decided
        # again from the same dedupe state, and the count rows skip the increments they hold.
        await self.writer.write(batch.count_rows())
        await faults.point("core.after-count-rows", len(messages))
        await self.writer.write(batch.dedupe_rows())


def register(app: Any, settings: Settings, http: HttpServer) -> None:
    """The core pipeline on ``app``: its tables, its counts API and its batch loop."""
    seen = dedupe.create(app, settings.core)
    counts = Counts(app, settings.core)
    counts_api.register(app, settings, counts.windows, http)
    core = Core(app, settings, seen, counts)
    raw = bytes_topic(app, settings.topics.raw)
    loop = BatchLoop(
        app,
        raw,
        core,
        name="core",
        batch_size=settings.worker.batch_size,
        stall_warning_s=settings.worker.stall_warning_s,
    )
    loop.register()
    http.add_check(loop.check)
