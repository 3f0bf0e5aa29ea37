"""The core agent: raw topic -> decode/dedupe/enrich -> enriched topic, DLQ and count messages.

Offsets: every output is attached to the offset of the raw record that caused it
(``stream_publish_on_commit``); Faust publishes the attached messages, waits for Kafka's
acknowledgements, and only then commits that offset. A publish that fails stops the worker
rather than committing past it, so a restart processes the record again: at-least-once, and
the dedupe step plus idempotent sinks make the repeats harmless. (A first version acked
``noack`` events itself after delivery; it lost records that were in flight during a
rebalance, see tests/integration/test_core.py::test_two_workers_*.)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from app import pipeline
from app.core_app import app, counts_topic, dlq_topic, enriched_topic, raw_topic, settings
from app.enrich import Enricher
from app.kube import KubeClient
from app.owners import TTLCache
from tables.dedupe import seen

log = logging.getLogger("kubevents.core")

TOPICS = {"enriched": enriched_topic, "dlq": dlq_topic, "counts": counts_topic}

# Versions this worker emitted that the tracker may not have written back yet.
recent = TTLCache(200_000, settings.core.dedupe_ttl_s)


def _enricher() -> Enricher:
    client = None
    if settings.core.owner_lookup:
        try:
            client = KubeClient.from_settings(settings.kubernetes)
        except Exception as exc:  # no kubeconfig: run without owner lookups, and say so
            log.warning("owner lookups disabled: %s", exc)
    return Enricher(settings.core, client)


def seen_get(uid: str, partition: int, offset: int) -> Any:
    """Newest version known for ``uid``: what this worker emitted from an earlier record of the
    same partition, else the dedupe table (written from the delivered enriched topic).

    A note from a record at or after ``offset`` means the partition is being read again (a
    rebalance, a seek): that note may describe output that was never published, so it is
    ignored and the table, which only holds delivered versions, decides.
    """
    hit, note = recent.get((uid,))
    if hit and note[1] == partition and note[2] < offset:
        return note[0]
    return seen.get(uid)


def seen_note(uid: str, state: Any, partition: int, offset: int) -> None:
    recent.put((uid,), (state, partition, offset))


@app.agent(raw_topic, name="core")
async def core(stream: Any) -> AsyncIterator[None]:
    enricher = _enricher()
    async for event in stream.events():
        message = event.message
        part, off = message.partition, message.offset
        outputs = await pipeline.process(
            event.value,
            pipeline.Origin(message.topic, message.partition, message.offset, event.key),
            max_bytes=settings.core.max_record_bytes,
            default_cluster=settings.cluster.name,
            seen_get=partial(seen_get, partition=part, offset=off),
            seen_set=partial(seen_note, partition=part, offset=off),
            enricher=enricher,
        )
        for output in outputs:
            # Attached to this event's offset (stream_publish_on_commit): Faust publishes it
            # and waits for Kafka's acknowledgement before it commits that offset.
            await TOPICS[output.topic].send(
                key=output.key, value=output.value, timestamp=output.timestamp
            )
        yield None
