"""A key -> value map whose entries expire, built on a tumbling windowed Faust table.

Faust expires whole windows (and the changelog topic of a windowed table is compacted *and*
deleted after ``expires``), so an entry written in window W is found while W or W+1 is current:
it lives between ``ttl`` and ``2 * ttl``. That keeps dedupe state bounded without a sweeper.
"""

from __future__ import annotations

from typing import Any


def _none() -> None:
    return None


class ExpiringMap:
    def __init__(self, app: Any, name: str, ttl_s: float, help: str):
        self.ttl = ttl_s
        self.table = app.Table(name, default=_none, help=help).tumbling(ttl_s, expires=2 * ttl_s)

    def get(self, key: str) -> Any:
        """Only inside stream iteration (windows are relative to the current event)."""
        windows = self.table[key]
        value = windows.current()
        if value is None:
            value = windows.delta(self.ttl)
        return value

    def set(self, key: str, value: Any) -> None:
        self.table[key] = value
