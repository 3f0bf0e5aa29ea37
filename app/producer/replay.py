"""``kubevents replay FILE|-``: publish a ``kubectl get events -A -o json`` dump to the raw topic.

Accepts a List (``{"kind": "EventList", "items": [...]}``), a JSON array, or NDJSON (one Event per
line). The records are the producer's own format (``via: replay``), so the core pipeline dedupes
them against what it has already seen.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

from app.errors import UserError
from app.kafka.client import ensure_topics, start_producer
from app.kafka.writer import BatchWriter
from app.model.envelope import build_raw
from app.producer.publisher import Publisher
from app.settings import Settings


def _check(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise UserError(f"{where}: expected an Event object, found {type(item).__name__}")
    if item.get("kind") not in (None, "Event"):
        raise UserError(f"{where}: expected an Event, found kind {item.get('kind')!r}")
    if "involvedObject" not in item and "regarding" not in item:
        raise UserError(f"{where}: not an Event (no involvedObject or regarding)")
    if not (item.get("metadata") or {}).get("uid"):
        raise UserError(f"{where}: Event without metadata.uid")
    return item


def read_events(stream: IO[str], name: str) -> Iterator[dict[str, Any]]:
    """Yield Events from a List, an array or NDJSON; a bad item is a UserError naming it."""
    text = stream.read()
    stripped = text.lstrip()
    if not stripped:
        raise UserError(f"{name}: empty input")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        if stripped.startswith("[") or (stripped.startswith("{") and "\n" not in text.strip()):
            raise UserError(f"{name}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
        doc = None  # perhaps NDJSON
    if doc is None:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{name}: line {lineno}: invalid JSON ({exc.msg})") from None
            yield _check(item, f"{name}: line {lineno}")
        return
    if isinstance(doc, dict) and "items" in doc:
        items = doc["items"]
    elif isinstance(doc, list):
        items = doc
    else:
        items = [doc]
    if not isinstance(items, list):
        raise UserError(f"{name}: 'items' is not a list")
    for index, item in enumerate(items):
        yield _check(item, f"{name}: item {index}")


def _progress(done: int, total: int, started: float) -> None:
    rate = done / max(time.monotonic() - started, 1e-6)
    width = 30
    filled = int(width * done / total) if total else width
    sys.stderr.write(
        f"\rreplay [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:,.0f} events/s"
    )
    sys.stderr.flush()


async def replay(settings: Settings, stream: IO[str], name: str, *, progress: bool) -> int:
    events = list(read_events(stream, name))  # validate everything before publishing anything
    await ensure_topics(settings.kafka, settings.topics)
    kafka = await start_producer(settings.kafka, "kubevents-replay")
    publisher = Publisher(
        BatchWriter(kafka), settings.topics.raw, settings.kafka.max_in_flight_events
    )
    started = time.monotonic()
    try:
        for start in range(0, len(events), 500):
            chunk = events[start : start + 500]
            await publisher.publish(
                [
                    build_raw(
                        obj,
                        watch_type="ADDED",
                        via="replay",
                        cluster=settings.cluster.name,
                        producer="replay",
                    )
                    for obj in chunk
                ]
            )
            if progress:
                _progress(start + len(chunk), len(events), started)
        await publisher.drain()
    finally:
        await kafka.stop()
    if progress:
        sys.stderr.write("\n")
    return len(events)
