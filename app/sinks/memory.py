"""A sink that keeps documents in a dict: the pipeline's unit tests run on it (no server).

It keeps the destinations' contract (app/sinks/base.py): one document per uid, never replaced
by an older version, and it can be told to misbehave the ways real destinations do: be away for
the next N writes, refuse some records for good one by one (as Elasticsearch answers per item),
refuse a whole write that contains some record (as a multi-row MySQL statement does), or ask for
some records to be retried once (a 429 on one item).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.errors import Rejected, TransientError
from app.sinks.base import Event, Failure, Unwritable, numeric_version, write_events


class MemorySink:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.writes: list[list[str]] = []  # the uids of each write() call, in order
        self.away = 0  # the next N writes raise TransientError
        self.refuse: set[str] = set()  # uids refused for good, per item
        self.refuse_atomically: set[str] = set()  # uids whose presence rejects the whole write
        self.busy_once: set[str] = set()  # uids answered "retry" once
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def write(self, events: Sequence[Event]) -> list[Failure]:
        self.writes.append([str(e.get("uid")) for e in events])
        if self.away:
            self.away -= 1
            raise TransientError("connection refused")
        poison = [e["uid"] for e in events if e.get("uid") in self.refuse_atomically]
        if poison:
            raise Rejected(f"row for {poison[0]} out of range")
        failures = []
        for index, event in enumerate(events):
            uid = str(event.get("uid"))
            if uid in self.refuse:
                failures.append(Failure(index, f"mapper_parsing_exception for {uid}", False))
            elif uid in self.busy_once:
                self.busy_once.discard(uid)
                failures.append(Failure(index, "es_rejected_execution_exception", True))
            else:
                have = self.docs.get(uid)
                if have is None or (numeric_version(event) or 0) >= (numeric_version(have) or 0):
                    self.docs[uid] = dict(event)
        return failures


class PreparingMemorySink(MemorySink):
    """The same sink as a ``PreparingSink``: each event's ready form is made ahead (a frozen
    copy), and some uids can be told to have none (``Unwritable``, as an event MySQL can make no
    row of)."""

    def __init__(self) -> None:
        super().__init__()
        self.unwritable: set[str] = set()
        self.prepared = 0

    def prepare(self, event: Event) -> Ready:
        uid = str(event.get("uid"))
        if uid in self.unwritable:
            raise Unwritable(f"no row can hold {uid}")
        self.prepared += 1
        return Ready(event)

    async def write_prepared(self, ready: Sequence[Ready]) -> list[Failure]:
        return await MemorySink.write(self, [r.event for r in ready])

    async def write(self, events: Sequence[Event]) -> list[Failure]:
        return await write_events(self, events)


class Ready:
    __slots__ = ("event",)

    def __init__(self, event: Event) -> None:
        self.event = dict(event)
