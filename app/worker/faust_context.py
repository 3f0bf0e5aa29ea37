"""Make a given Faust event "the current event" for a few table operations.

Faust tables find the partition (RocksDB store, changelog partition, expiry bookkeeping) and the
window time of a write from ``faust.streams.current_event()``, a context variable the stream sets
to the event it last yielded. The core agent processes a batch of events at once and writes its
tables after the batch's outputs are acknowledged, so it sets each event in turn, and each row
lands on the partition of the record that caused it, as with per-event processing.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from faust import streams
from faust.stores.memory import Store as MemoryStore


@contextmanager
def current(event: Any) -> Iterator[None]:
    var = getattr(streams, "_current_event")  # noqa: B009 (private, no public setter)
    token = var.set(weakref.ref(event))
    try:
        yield
    finally:
        var.reset(token)


_NOTHING = nullcontext()


def current_for(table: Any, event: Any) -> AbstractContextManager[None]:
    """``current(event)`` where ``table``'s store reads it (RocksDB keeps one database per
    partition and picks it from the current event); nothing for the memory store, which is one
    dict: the context costs a few microseconds per row."""
    return _NOTHING if isinstance(table.data, MemoryStore) else current(event)
