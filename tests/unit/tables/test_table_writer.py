"""tables/writer.py: rows are published as Faust would write them to the changelog, and stored
only after Kafka acknowledged them."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import faust

from tables.writer import TableWriter, _dumps


class Event:  # weakly referable, as Faust's events are (app/worker/faust_context.py)
    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


class Publisher:
    def __init__(self, table: Any) -> None:
        self.table = table
        self.groups: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
        self.stored_when_published: list[Any] = []

    async def write_partitions(self, groups: Any) -> dict[tuple[str, int], int]:
        self.groups = dict(groups)
        self.stored_when_published = list(self.table.data.keys())
        return {tp: 100 + len(records) for tp, records in groups.items()}


def test_rows_go_to_the_changelog_first_then_to_the_store() -> None:
    app = faust.App("writer-test", store="memory://")
    table: Any = app.Table("t", default=int).tumbling(60, expires=120).table
    window = table.window.current(1_000_000.0)
    rows = [
        (table, Event(2), ("a", window), 3),
        (table, Event(2), ("b", window), 1),
        (table, Event(5), ("c", window), 7),
    ]
    publisher = Publisher(table)
    asyncio.run(TableWriter(publisher).write(rows))  # type: ignore[arg-type]

    assert publisher.stored_when_published == []  # nothing stored before the acks
    topic = table.changelog_topic.get_topic_name()
    assert set(publisher.groups) == {(topic, 2), (topic, 5)}  # the owning record's partition
    # Byte for byte what Faust's own changelog send would produce (standbys and recovery read it).
    key_bytes, value_bytes = publisher.groups[(topic, 2)][0]
    assert key_bytes == table.changelog_topic.prepare_key(("a", window), table.key_serializer)[0]
    assert value_bytes == table.changelog_topic.prepare_value(3, table.value_serializer)[0]
    sent = [(json.loads(k), json.loads(v)) for k, v in publisher.groups[(topic, 2)]]
    assert sent == [(["a", list(window)], 3), (["b", list(window)], 1)]
    # Faust's recovery turns the changelog key back into the store key.
    assert table._to_key(sent[0][0]) == ("a", window)
    assert dict(table.data.items()) == {("a", window): 3, ("b", window): 1, ("c", window): 7}
    # Registered for expiry like Faust's own writes: the window's keys, per partition.
    assert table._partition_timestamp_keys[(2, window[1])] == {("a", window), ("b", window)}


def test_rows_encode_as_faust_encodes_them() -> None:
    app = faust.App("writer-codec-test", store="memory://")
    table: Any = app.Table("t", default=int).tumbling(3600, expires=7200).table
    topic = table.changelog_topic
    window = table.window.current(1_764_000_059.9)
    state = {"rv": "123", "count": 5, "last_seen": "2026-11-25T08:00:00.000001Z", "deleted": False}
    for key, value in [(("uid-1", window), state), (("reason|ns|BackOff|Warning@3", window), 7)]:
        assert _dumps("json", key) == topic.prepare_key(key, table.key_serializer)[0]
        assert _dumps("json", value) == topic.prepare_value(value, table.value_serializer)[0]
    # Non-ASCII text may be escaped differently, but decodes to the same row.
    key = ("reason|ns|Fehlgeschlagen ✗|Warning@0", window)
    faust_bytes = topic.prepare_key(key, table.key_serializer)[0]
    assert json.loads(_dumps("json", key)) == json.loads(faust_bytes)
