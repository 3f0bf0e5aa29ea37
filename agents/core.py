"""The core agent: raw topic -> decode/dedupe/enrich -> enriched topic, DLQ and count messages.

Offsets: events are taken with ``noack`` and acked strictly in arrival order once every message
they produced is acknowledged by Kafka; a failed send is retried in place, never skipped. So a
commit never passes an event whose outputs are not durable (PITFALLS: take() acks in a finally,
and faust #606 commits past in-flight offsets acked out of order).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from app import pipeline
from app.core_app import app, counts_topic, dlq_topic, enriched_topic, raw_topic, settings
from app.enrich import Enricher
from app.kube import KubeClient
from app.owners import TTLCache
from tables.dedupe import seen

log = logging.getLogger("kubevents.core")

TOPICS = {"enriched": enriched_topic, "dlq": dlq_topic, "counts": counts_topic}
MAX_PENDING = 2000  # events whose outputs are not yet acknowledged (bounded memory)

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


def seen_get(uid: str) -> Any:
    hit, value = recent.get((uid,))
    return value if hit else seen.get(uid)


def seen_set(uid: str, state: Any) -> None:
    recent.put((uid,), state)


async def _deliver(output: pipeline.Output) -> None:
    """Send one output and wait for Kafka's acknowledgement; retry in place until it comes."""
    attempt = 0
    while True:
        try:
            fut = await TOPICS[output.topic].send(
                key=output.key, value=output.value, timestamp=output.timestamp
            )
            await fut
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            attempt += 1
            delay = min(10.0, 0.2 * 2**attempt)
            log.warning("send to %s failed (%s); retrying in %.1fs", output.topic, exc, delay)
            await asyncio.sleep(delay)


async def _acker(stream: Any, pending: deque[tuple[Any, asyncio.Future[Any]]],
                 wake: asyncio.Event) -> None:
    while True:
        while not pending:
            wake.clear()
            await wake.wait()
        event, done = pending[0]
        await done
        pending.popleft()
        await stream.ack(event)


@app.agent(raw_topic, name="core")
async def core(stream: Any) -> AsyncIterator[None]:
    enricher = _enricher()
    pending: deque[tuple[Any, asyncio.Future[Any]]] = deque()
    wake = asyncio.Event()
    acker = asyncio.ensure_future(_acker(stream, pending, wake))
    try:
        async for event in stream.noack().events():
            message = event.message
            outputs = await pipeline.process(
                event.value,
                pipeline.Origin(message.topic, message.partition, message.offset, event.key),
                max_bytes=settings.core.max_record_bytes,
                default_cluster=settings.cluster.name,
                seen_get=seen_get,
                seen_set=seen_set,
                enricher=enricher,
            )
            done: asyncio.Future[Any] = asyncio.ensure_future(
                asyncio.gather(*(_deliver(o) for o in outputs))
            )
            pending.append((event, done))
            wake.set()
            while len(pending) > MAX_PENDING:
                await asyncio.sleep(0.005)
            yield None
    finally:
        acker.cancel()
