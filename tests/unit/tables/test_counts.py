"""tables/counts.py: count rows hold the last raw offset they counted, so a batch processed again
after a crash adds nothing twice."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import faust
import pytest

from app.settings import CoreSettings
from tables import counts
from tables.counts import Counts

AT = 1_764_000_000.0


class Event:  # weakly referable, as Faust's events are
    def __init__(self, partition: int, offset: int) -> None:
        self.message = SimpleNamespace(partition=partition, offset=offset)


def store(rows: list[Any]) -> None:
    for table, _, slot, value in rows:
        table.data[slot] = value


def values(rows: list[Any]) -> dict[str, Any]:
    return {table.name: value for table, _, _, value in rows}


@pytest.fixture()
def tables() -> Counts:
    """The count tables on an app of their own: nothing is read from the environment."""
    return Counts(faust.App("counts-test", store="memory://"), CoreSettings())


def test_a_batch_processed_again_counts_nothing_twice(tables: Counts) -> None:
    key = "reason|ns|BackOff|Warning|again"
    batch = [(Event(3, 5), key, 1, AT), (Event(3, 6), key, 2, AT)]
    first = tables.rows(batch)
    assert values(first) == {"counts-tumbling": [3, 6], "counts-steps": [3, 6]}
    store(first)
    assert tables.rows(batch) == []  # redelivered after the rows were written: nothing to add
    # A redelivery that reaches past what the rows hold adds only the records after them.
    assert values(tables.rows([*batch, (Event(3, 7), key, 4, AT)]))["counts-tumbling"] == [7, 7]


def test_rows_are_per_partition_and_read_back_as_counts(tables: Counts) -> None:
    key = "reason|ns|Pulled|Normal|parts"
    rows = tables.rows([(Event(0, 9), key, 1, AT), (Event(1, 2), key, 5, AT)])
    assert sorted(slot[0] for table, _, slot, _ in rows if table.name == "counts-steps") == [
        f"{key}@0",
        f"{key}@1",
    ]
    assert counts.count_of([5, 2]) == 5
    assert counts.count_of(4) == 4  # a row written before the offset guard
    assert counts.count_of(None) == 0


def test_rows_written_before_the_offset_guard_keep_counting(tables: Counts) -> None:
    key = "reason|ns|Killing|Normal|legacy"
    table: Any = tables.tumbling.table
    slot = (counts.row_key(key, 2), table.window.current(AT))
    table.data[slot] = 4
    assert values(tables.rows([(Event(2, 0), key, 1, AT)]))["counts-tumbling"] == [5, 0]
