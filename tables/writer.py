"""Writes a batch's table rows: the changelog records first, then the local store.

Faust writes a row by storing it and sending one changelog message through its producer buffer
(a future, a callback, sensors and a partition lookup per row); with one dedupe row and about two
count rows per event, that was ~40 % of the core worker's CPU (bench/core.py). The core agent
instead hands all rows of a batch here at once:
  1. each row is serialised as Faust serialises it (the table's own changelog topic and
     serialisers, so recovery and standbys read it as their own), and the rows are published
     per changelog partition as ready-made Kafka batches (app/kafka/writer.py), acks awaited;
  2. only then are they put in the store, registered for window expiry, and the changelog offset
     recorded as persisted (RocksDB stores start their recovery from it).
A row lands on the changelog partition of the raw record that caused it (Faust's rule for
tables written from a stream: the partition owns the row and moves with it on failover).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import orjson
from faust.serializers import codecs
from faust.types import TP

from app.kafka.writer import BatchWriter
from app.worker.faust_context import current_for


def _dumps(serializer: Any, value: Any) -> bytes:
    """Faust's codec ``serializer``; for "json" (every kubevents table), orjson, which gives the
    same compact JSON for the rows' strings, numbers, lists and dicts at a fifth of the cost
    (tests/unit/test_table_writer.py compares the bytes with Faust's own changelog send)."""
    if serializer == "json":
        return orjson.dumps(value)
    return bytes(codecs.dumps(serializer, value))


Row = tuple[Any, Any, Any, Any]  # (Faust table, event whose partition owns the row, key, value)


class TableWriter:
    def __init__(self, publisher: BatchWriter):
        self._publisher = publisher

    async def write(self, rows: Sequence[Row]) -> None:
        """Returns once every row is acknowledged on its changelog and stored."""
        groups: dict[tuple[str, int], list[tuple[bytes, bytes]]] = defaultdict(list)
        tables: dict[str, Any] = {}  # changelog topic -> its table
        for table, event, key, value in rows:
            topic = table.changelog_topic.get_topic_name()
            tables[topic] = table
            # The table's serialisers, as its changelog topic applies them.
            groups[(topic, event.message.partition)].append(
                (_dumps(table.key_serializer, key), _dumps(table.value_serializer, value))
            )
        offsets = await self._publisher.write_partitions(groups)
        for table, event, key, value in rows:
            with current_for(table, event):  # a RocksDB store picks the partition's database
                table.data[key] = value
            table._maybe_set_key_ttl(key, event.message.partition)
        for (topic, partition), offset in offsets.items():
            tables[topic].data.set_persisted_offset(TP(topic, partition), offset)
