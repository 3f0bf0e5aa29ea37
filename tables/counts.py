"""Windowed occurrence counts.

Keys are strings: ``reason|<namespace>|<reason>|<type>`` and ``object|<uid>`` (Warnings only).
Values are integers: the occurrences (count increments) in the window. ``applied`` remembers,
per (key, event uid), the count already added, so a re-delivered count message adds nothing.
"""

from __future__ import annotations

from app.core_app import app, settings
from tables.expiring import ExpiringMap

core = settings.core

tumbling = app.Table(
    "counts-tumbling", default=int, help="Occurrences per key, tumbling window."
).tumbling(core.tumbling_s, expires=core.window_expires_s, key_index=True)

hopping = app.Table(
    "counts-hopping", default=int, help="Occurrences per key, hopping window."
).hopping(core.hopping_size_s, core.hopping_step_s, expires=core.window_expires_s, key_index=True)

applied = ExpiringMap(
    app, "counts-applied", core.dedupe_ttl_s, help="(count key, event uid) -> count applied."
)

WINDOWS = {"tumbling": tumbling, "hopping": hopping}
