"""tables/writer.py: rows are published as Faust would write them to the changelog, and stored
only after Kafka acknowledged them."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import faust

from tables.writer import TableWriter


class Event:  # weakly referable, as Faust's events are (app/faust_context.py)
    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


class Publisher:
    def __init__(self, table: Any) -> None:
        self.table = table
        self.groups: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
        self.stored_when_published: list[Any] = []

    async def publish_to(self, groups: Any) -> dict[tuple[str, int], int]:
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
    sent = [(json.loads(k), json.loads(v)) for k, v in publisher.groups[(topic, 2)]]
    assert sent == [(["a", list(window)], 3), (["b", list(window)], 1)]
    # Faust's recovery turns the changelog key back into the store key.
    assert table._to_key(sent[0][0]) == ("a", window)
    assert dict(table.data.items()) == {("a", window): 3, ("b", window): 1, ("c", window): 7}
    # Registered for expiry like Faust's own writes: the window's keys, per partition.
    assert table._partition_timestamp_keys[(2, window[1])] == {("a", window), ("b", window)}
