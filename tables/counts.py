"""Windowed occurrence counts, written by the core agent next to the dedupe table.

Count keys are strings: ``reason|<namespace>|<reason>|<type>`` and
``object|<namespace>|<kind>|<name>|<uid>`` (Warnings only); values are occurrences (count
increments). Each raw-topic partition keeps its own row per key (stored as ``<key>@<partition>``)
and readers add the rows up: a row then has exactly one writer, the worker that owns the
partition, and lives on that partition's changelog like the dedupe row of the same event, so a
failover moves both together. (Re-partitioning by count key instead cost one more Faust agent
event per count key and raw record, which measured as the slowest part of the worker.)

Increments come from the dedupe decision (an event whose count went from 3 to 5 adds 2; a
redelivered or re-listed version adds 0), and are written only after the batch's outputs are
acknowledged, and before the dedupe rows (tables/writer.py, agents/core.py). Each row carries
the last raw offset it holds, so that a batch processed again after a crash adds nothing twice
(``rows``): counts stay exact wherever a worker dies.

The hopping window (size ``hopping_size_s``, step ``hopping_step_s``) is served from step-sized
tumbling buckets summed when read: one changelog write per increment instead of one per
overlapping window, and the same answer, the window [E - size, E) with E the end of the current
step. Windows are event time: an increment falls in the window of the event's last_seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from app.settings import CoreSettings
from app.worker.faust_context import current_for
from tables.writer import Row


def row_key(key: str, partition: int) -> str:
    return f"{key}@{partition}"


def split_row_key(row: str) -> tuple[str, int] | None:
    key, _, partition = row.rpartition("@")
    return (key, int(partition)) if key and partition.isdigit() else None


def count_of(value: Any) -> int:
    """The occurrences a stored row holds: ``[n, upto]`` (an int in rows written before the
    offset guard)."""
    if isinstance(value, list | tuple):
        return int(value[0])
    return int(value or 0)


def _upto(value: Any) -> int:
    """The last raw offset whose increments the row holds (-1: unknown)."""
    return int(value[1]) if isinstance(value, list | tuple) else -1


class Window:
    """Read side of one window kind, outside stream iteration, at any instant."""

    def __init__(self, name: str, table: Any, size: float, step: float):
        self.name, self.table, self.size, self.step = name, table, size, step

    def bounds(self, at: float) -> tuple[float, float]:
        end = (math.floor(at / self.step) + 1) * self.step
        return end - self.size, end

    def row_value(self, row: str, at: float) -> int:
        start, end = self.bounds(at)
        total, t = 0, start
        window = self.table.table.window
        while t < end:
            total += count_of(self.table[row][window.ranges(t)[0]])
            t += self.step
        return total

    def local_values(self, partitions: Iterable[int], at: float) -> dict[str, int]:
        """Key -> occurrences over the rows of ``partitions`` (this worker's active ones: a
        standby copy of another worker's rows must not be counted twice)."""
        wanted = set(partitions)
        rows = {k[0] for k in list(self.table.table.keys())}
        totals: dict[str, int] = {}
        for row in rows:
            parsed = split_row_key(row)
            if parsed is None or parsed[1] not in wanted:
                continue
            value = self.row_value(row, at)
            if value:
                totals[parsed[0]] = totals.get(parsed[0], 0) + value
        return totals


class Counts:
    """The count tables of one core app: a tumbling window and the hopping window's steps."""

    def __init__(self, app: Any, core: CoreSettings):
        keep = max(core.window_expires_s, core.hopping_size_s + core.hopping_step_s)
        self.tumbling = app.Table(
            "counts-tumbling",
            default=int,
            help="Occurrences per key and partition, tumbling window.",
        ).tumbling(core.tumbling_s, expires=keep)
        self.steps = app.Table(
            "counts-steps",
            default=int,
            help="Occurrences per key and partition per hopping step.",
        ).tumbling(core.hopping_step_s, expires=keep)
        self.windows = {
            "tumbling": Window("tumbling", self.tumbling, core.tumbling_s, core.tumbling_s),
            "hopping": Window("hopping", self.steps, core.hopping_size_s, core.hopping_step_s),
        }

    def rows(self, increments: Iterable[tuple[Any, str, int, float]]) -> list[Row]:
        """The table rows that add ``(event, key, delta, at)`` increments, for tables/writer.py: one
        row per count row and window, owned by ``event`` (the raw record that caused it: its
        partition owns the row).

        A row is ``[n, upto]``: n occurrences, made of the increments of the row's partition up to
        raw offset ``upto``. An increment from a record at or before ``upto`` is in the row already
        and is skipped: a batch processed again after a crash (its records were not acked) never
        counts twice, whatever part of its rows had reached the changelog. Increments come in
        offset order per partition (the core agent takes each partition's records in order)."""
        items = list(increments)
        out: list[Row] = []
        for wrapper in (self.tumbling, self.steps):
            table: Any = wrapper.table  # Faust's windowed-table internals are not in its types
            window, data = table.window, table.data
            acc: dict[tuple[str, Any], list[Any]] = {}  # slot -> [event, n, upto, changed]
            for event, key, delta, at in items:
                slot = (row_key(key, event.message.partition), window.current(at))
                entry = acc.get(slot)
                if entry is None:
                    with current_for(table, event):  # a RocksDB store reads the partition's db
                        stored = data.get(slot)
                    entry = acc[slot] = [event, count_of(stored), _upto(stored), False]
                offset = event.message.offset
                if offset > entry[2]:
                    entry[0], entry[1], entry[2], entry[3] = event, entry[1] + delta, offset, True
            out += [(table, e[0], slot, [e[1], e[2]]) for slot, e in acc.items() if e[3]]
        return out
