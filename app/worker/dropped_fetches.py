"""Records a fetch returned that Faust's ``getmany`` drops: a changelog partition is read again.

Fix 9 of app/worker/faust_fixes.py. Faust's ``Consumer.getmany`` (faust/transport/consumer.py)
drops records aiokafka has already returned (and moved its fetch position past) when, while it
hands them out, the flow stops (a rebalance), the consumer generation changes, or their partition
left Faust's set of active partitions (``pause_partitions`` mutates the very set the fetch was
asked with). For a streamed topic the sequence rules of faust_fixes notice it (the next record
comes after a gap, or the rebalance's seek to committed offsets reads them again). For a table's
changelog nothing does: Faust's recovery seeks a changelog partition once and then waits for its
records; when the fetch that returned all of them is dropped, no later record reveals the gap
and the recovery waits for ever ("No event received for active tp ... since recovery start"),
the worker handing nothing over (tests/integration/test_core.py, a worker taking the partitions
of one SIGKILLed: ~1 run in 10 on the RocksDB store).

Here ``getmany`` is Faust's, except that it notes the first offset it drops of each changelog
partition and seeks that partition back to it, in the consumer's thread and only when no seek of
the recovery happened since the fetch (the read state's per-partition seek count, fix 7): such a
seek reads the partition again from where it must anyway. Records read twice are harmless there:
the recovery applies a changelog record only past the offset it has applied.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiokafka.errors import IllegalStateError

if TYPE_CHECKING:  # the read state is faust_fixes', which imports this module
    from app.worker.faust_fixes import ReadState

_log = logging.getLogger("kubevents.faust_fixes")


def note_drop(dropped: dict[Any, int], tp: Any, offset: int) -> None:
    """Remember the first (lowest) offset dropped of ``tp``."""
    if tp not in dropped or offset < dropped[tp]:
        dropped[tp] = offset


async def seek_back(
    aiokafka_consumer: Any, state: ReadState, dropped: dict[Any, tuple[int, int]]
) -> list[Any]:
    """In the consumer thread: seek each partition of ``dropped`` (partition -> (first offset
    dropped, the recovery's seek count when the fetch was asked)) back to that offset, unless the
    recovery sought it since; returns the partitions sought back."""
    sought_back = []
    assigned = aiokafka_consumer.assignment()
    with state.lock:
        for tp, (offset, sought) in dropped.items():
            if tp not in assigned or state.sought.get(tp, 0) != sought:
                continue
            with contextlib.suppress(IllegalStateError):  # no longer assigned
                aiokafka_consumer.seek(tp, offset)
                sought_back.append(tp)
    return sought_back


async def getmany(self: Any, timeout: float) -> AsyncIterator[tuple[Any, Any]]:  # noqa: ASYNC109 (Faust's signature)
    """Faust's ``Consumer.getmany``; changelog records it drops are fetched again."""
    from app.worker.faust_fixes import _state  # here: faust_fixes imports this module

    state = _state(self)
    with state.lock:
        sought_before = dict(state.sought)
    records, active_partitions = await self._wait_next_records(timeout)
    generation_id = self.app.consumer_generation_id
    if records is None or self.should_stop:
        return
    changelog = self._is_changelog_tp
    dropped: dict[Any, int] = {}
    if self.flow_active:
        to_message = self._to_message
        buffered = self._buffered_partitions
        for tp, record in self.scheduler.iterate(records):
            # Faust stops handing records out here (``break``); the rest are noted as dropped.
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                note_drop(dropped, tp, record.offset)
                continue
            if active_partitions is None or tp in active_partitions or tp in buffered:
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                yield tp, to_message(tp, record)
            else:
                note_drop(dropped, tp, record.offset)
    else:
        for tp, tp_records in records.items():
            for record in tp_records:
                note_drop(dropped, tp, record.offset)
        try:  # Faust's own: streamed partitions back to their committed offsets
            await self.perform_seek()
        except Exception as exc:
            self.log.warning(f"exception performing seek when flow not active {exc}")
    again = {
        tp: (offset, sought_before.get(tp, 0)) for tp, offset in dropped.items() if changelog(tp)
    }
    if again:
        thread = self._thread
        sought = await thread.call_thread(seek_back, thread._ensure_consumer(), state, again)
        for tp in sought:
            _log.info("records of %s dropped by a fetch: read again from %d", tp, again[tp][0])
