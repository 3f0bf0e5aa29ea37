"""The dedupe decision: is this event version new, newer, or already seen?

A re-list after a restart, a producer failover and a Kafka redelivery all bring back versions
the core pipeline has seen; only a newer version (its count grew, or it changed) passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from app.model.normalize import NormalizedEvent
from app.model.timeutil import format_time


class Verdict(StrEnum):
    NEW = "new"  # first time this uid is seen
    UPDATE = "update"  # a newer version of a known uid
    DUPLICATE = "duplicate"  # the same version again
    STALE = "stale"  # an older version, arriving late


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    count_delta: int  # occurrences this version adds (count 3 -> 5 adds 2)

    @property
    def passes(self) -> bool:
        return self.verdict in (Verdict.NEW, Verdict.UPDATE)


def state_of(event: NormalizedEvent) -> dict[str, Any]:
    """What the dedupe table keeps per event uid (small: it is replicated via a changelog)."""
    return {
        "rv": event.resource_version,
        "count": event.count,
        "last_seen": format_time(event.last_seen),
        "deleted": event.watch_type == "DELETED",
    }


def compare(new: dict[str, Any], old: dict[str, Any]) -> int:
    """-1, 0 or 1 as state ``new`` is older than, the same as, or newer than ``old``."""
    new_rv, old_rv = str(new.get("rv", "")), str(old.get("rv", ""))
    a: tuple[int | str, ...]
    b: tuple[int | str, ...]
    if new_rv.isdigit() and old_rv.isdigit():
        # resourceVersions are etcd revisions (integers) on every real API server.
        a, b = (int(new_rv),), (int(old_rv),)
    else:
        # They are formally opaque: without numbers, order by (count, last_seen).
        a = (int(new.get("count", 0)), str(new.get("last_seen", "")))
        b = (int(old.get("count", 0)), str(old.get("last_seen", "")))
    return (a > b) - (a < b)


def decide(previous: dict[str, Any] | None, event: NormalizedEvent) -> Decision:
    if previous is None:
        return Decision(Verdict.NEW, 0 if event.watch_type == "DELETED" else event.count)
    order = compare(state_of(event), previous)
    if order == 0:
        return Decision(Verdict.DUPLICATE, 0)
    if order < 0:
        return Decision(Verdict.STALE, 0)
    if event.watch_type == "DELETED" or previous.get("deleted"):
        return Decision(Verdict.UPDATE, 0)
    return Decision(Verdict.UPDATE, max(0, event.count - int(previous.get("count", 0))))
