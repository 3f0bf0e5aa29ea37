"""What a sink is: a small object that knows its destination and nothing else.

A sink writes a batch of enriched events (dicts, as published on ``k8s-events``: the JSON Schema
in app/schemas/) and says, per record, what did not go in. Filtering, batching, collapsing a batch
to the newest version per uid, retrying with backoff, dead-lettering and acking belong to the
pipeline around it (app/sinks/pipeline.py), written once for every destination.

The contract of ``write``:
- it is idempotent: writing the same events again (a redelivery after a crash) changes nothing,
  and an older version of an event never overwrites a newer one already written;
- it returns the records that did not go in as ``Failure``s (their index in ``events``, the
  destination's reason, and whether retrying can help): an empty list means every record is
  written and acknowledged by the destination;
- it raises ``TransientError`` when the whole batch failed and retrying can help (connection
  refused, timeout, deadlock), and ``Rejected`` when the destination refused the batch as a whole
  without saying which record is at fault (a multi-row statement is atomic): the pipeline then
  bisects the batch to find the record(s) to dead-letter;
- it raises ``UserError`` from ``start`` for what the user must fix (a wrong password, an
  unsupported server version), with one line saying how.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Event = Mapping[str, Any]


@dataclass(frozen=True)
class Failure:
    index: int  # position in the batch handed to write()
    reason: str  # the destination's own words
    retry: bool  # True: the cluster's fault, try again; False: this record can never go in


class Sink(Protocol):
    async def start(self) -> None:
        """Connect, check the server, install or migrate the schema (idempotent)."""

    async def write(self, events: Sequence[Event]) -> list[Failure]:
        """Write ``events``; see the module's docstring for the contract."""

    async def stop(self) -> None:
        """Close connections."""


MAX_VERSION = 2**63 - 1


def numeric_version(event: Event) -> int | None:
    """The event's resourceVersion as an integer when it is one (etcd's revision: it rises with
    every write), else None. Kubernetes promises it orderable only from 1.35 (KEP-5504), so a
    non-numeric or oversized value must be met with a fallback, never a crash."""
    rv = event.get("resource_version")
    if isinstance(rv, str) and rv.isdigit() and len(rv) <= 19:
        value = int(rv)
        if 0 < value <= MAX_VERSION:
            return value
    return None
