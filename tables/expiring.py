"""A key -> value map whose entries expire, built on a tumbling windowed Faust table.

Faust expires whole windows (and the changelog topic of a windowed table is compacted *and*
deleted after ``expires``), so an entry written in window W is found while W or W+1 is current:
it lives between ``ttl`` and ``2 * ttl``. That keeps dedupe state bounded without a sweeper.
Windows are those of the record's timestamp (``at``), as Faust's own windowed access picks them.
Reads and writes address the store directly: writes go through tables/writer.py, which sends the
changelog records of a whole batch at once.
"""

from __future__ import annotations

from typing import Any


def _none() -> None:
    return None


class ExpiringMap:
    def __init__(self, app: Any, name: str, ttl_s: float, help: str):
        self.ttl = ttl_s
        wrapper = app.Table(name, default=_none, help=help).tumbling(ttl_s, expires=2 * ttl_s)
        self.table: Any = wrapper.table  # the Faust table: store, changelog, window

    def get(self, key: str, at: float) -> Any:
        """The value set in ``at``'s window or the one before. A RocksDB store needs the event
        whose partition holds the key as the current event (app/worker/faust_context.py)."""
        window, data = self.table.window, self.table.data
        value = data.get((key, window.current(at)))
        if value is None:
            value = data.get((key, window.current(at - self.ttl)))
        return value

    def row(self, key: str, value: Any, at: float) -> tuple[Any, Any, Any]:
        """(table, store key, value) of setting ``key`` at ``at``, for tables/writer.py."""
        return self.table, (key, self.table.window.current(at)), value
