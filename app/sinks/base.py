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

A sink may also be a ``PreparingSink``: its per-record work (a MySQL row, an encoded bulk action)
is split from the write, so that the pipeline does it for the next batch while the destination
still works on this one (the batch loop's time in the destination, when the process would wait).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

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


class Unwritable(ValueError):
    """A record that can never become this destination's document or row; its message is the
    reason given with it in the dead-letter topic."""


@runtime_checkable
class PreparingSink(Protocol):
    """A sink whose per-record work before a write (a row, an encoded bulk action) needs nothing
    from the destination: the pipeline does it while the batch before is written.
    ``write(events)`` stays the same as ``write_prepared`` of each event's ``prepare``."""

    def prepare(self, event: Event) -> Any:
        """The event's ready form; ``Unwritable`` when it has none."""

    async def write_prepared(self, ready: Sequence[Any]) -> list[Failure]:
        """``write`` of ready forms (a Failure's index is into ``ready``)."""


async def write_events(sink: PreparingSink, events: Sequence[Event]) -> list[Failure]:
    """``write`` of a preparing sink: its ``prepare`` then ``write_prepared``, with the
    failures of both indexed into ``events``."""
    ready: list[Any] = []
    at: list[int] = []  # ready[j] is events[at[j]]
    failures: list[Failure] = []
    for index, event in enumerate(events):
        try:
            ready.append(sink.prepare(event))
            at.append(index)
        except Unwritable as exc:
            failures.append(Failure(index, str(exc), retry=False))
    if ready:
        written = await sink.write_prepared(ready)
        failures += [Failure(at[f.index], f.reason, f.retry) for f in written]
    return sorted(failures, key=lambda f: f.index)


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
