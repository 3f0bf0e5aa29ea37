"""Windowed occurrence counts.

Keys are strings: ``reason|<namespace>|<reason>|<type>`` and
``object|<namespace>|<kind>|<name>|<uid>`` (Warnings only). Values are integers: occurrences (count
increments). ``applied`` remembers, per (key, event uid), the count already added, so a
redelivered count message adds nothing.

The hopping window (size ``hopping_size_s``, step ``hopping_step_s``) is served from step-sized
tumbling buckets summed when read. Faust's own hopping table writes every overlapping window
(12 for 1 h / 5 min) plus a key index to the changelog on each increment; that made counting the
slowest part of the core worker (measured with bench/core.py: ~230 events/s). One write per
increment here, and the same answer: the window [E - size, E) with E the end of the current step.
"""

from __future__ import annotations

import math
from typing import Any

from app.core_app import app, settings
from tables.expiring import ExpiringMap

core = settings.core
_keep = max(core.window_expires_s, core.hopping_size_s + core.hopping_step_s)

tumbling = app.Table(
    "counts-tumbling", default=int, help="Occurrences per key, tumbling window."
).tumbling(core.tumbling_s, expires=_keep)

steps = app.Table(
    "counts-steps", default=int, help="Occurrences per key per hopping step."
).tumbling(core.hopping_step_s, expires=_keep)

applied = ExpiringMap(
    app, "counts-applied", core.dedupe_ttl_s, help="(count key, event uid) -> count applied."
)


def add(key: str, increment: int) -> None:
    """Inside the counts agent (windows follow the current message's timestamp)."""
    tumbling[key] += increment
    steps[key] += increment


class Window:
    """Read side of one window kind, outside stream iteration, at any instant."""

    def __init__(self, name: str, table: Any, size: float, step: float):
        self.name, self.table, self.size, self.step = name, table, size, step

    def bounds(self, at: float) -> tuple[float, float]:
        end = (math.floor(at / self.step) + 1) * self.step
        return end - self.size, end

    def value(self, key: str, at: float) -> int:
        start, end = self.bounds(at)
        total, t = 0, start
        window = self.table.table.window
        while t < end:
            total += int(self.table[key][window.ranges(t)[0]])
            t += self.step
        return total

    def local_keys(self) -> set[str]:
        """Keys with a bucket on this worker (its partitions); expired buckets are gone."""
        return {k[0] for k in list(self.table.table.keys())}


WINDOWS = {
    "tumbling": Window("tumbling", tumbling, core.tumbling_s, core.tumbling_s),
    "hopping": Window("hopping", steps, core.hopping_size_s, core.hopping_step_s),
}
