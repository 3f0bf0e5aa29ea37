"""Counts occurrences per key in the windowed tables, from the repartitioned counts topic.

Each message says "event uid X of key K now has count N"; ``applied`` remembers the count
already added for (K, X), so only the increment is added and a redelivered message adds nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from app.core_app import app, counts_topic
from app.dedupe import compare
from tables.counts import add, applied


@app.agent(counts_topic, name="counts")
async def counts(stream: Any) -> AsyncIterator[None]:
    async for value in stream:
        msg = json.loads(value)
        key = msg["key"]
        marker = f"{key}\x1f{msg['uid']}"
        state = {"rv": msg["rv"], "count": msg["count"], "last_seen": ""}
        before = applied.get(marker)
        if isinstance(before, dict) and compare(state, before) <= 0:
            yield None
            continue
        already = int(before["count"]) if isinstance(before, dict) else msg["count"] - msg["delta"]
        increment = max(0, int(msg["count"]) - already)
        if increment:
            add(key, increment)
        applied.set(marker, state)
        yield None
