"""Writes the dedupe table from the enriched topic, i.e. from what Kafka acknowledged.

The enriched topic has the raw topic's key (the involved object's uid) and partition count, so
this agent's partitions are the core agent's: the table row sits where the core agent reads it.
If a worker dies between publishing and remembering, the event is published again (an exact
repeat, harmless to idempotent sinks), never lost.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from app.core_app import app, enriched_topic
from app.dedupe import compare
from tables.dedupe import seen


@app.agent(enriched_topic, name="tracker")
async def tracker(stream: Any) -> AsyncIterator[None]:
    async for value in stream:
        try:
            record = json.loads(value)
            uid = record["uid"]
            state = {
                "rv": record["resource_version"],
                "count": record["count"],
                "last_seen": record["last_seen"],
                "deleted": record.get("watch_type") == "DELETED",
            }
        except (ValueError, KeyError, TypeError):
            continue  # not ours; the public topic is validated by its producers
        previous = seen.get(uid)
        if not isinstance(previous, dict) or compare(state, previous) > 0:
            seen.set(uid, state)
        yield None
