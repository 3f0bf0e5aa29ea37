"""Corrections to faust-streaming 0.15.x / aiokafka 0.14 that "nothing lost" depends on.

1. Acks of messages skipped during a rebalance.

During a rebalance, Faust's stream skips messages fetched under the previous consumer generation
(or while flow is paused) and *acks* them, "so that the lag does not grow" (faust/streams.py,
``skipped_value``). An ack lets the offset be committed, so those messages are never processed:
tests/integration/test_core.py::test_two_workers_* lost about a quarter of the records that
arrived while a second worker joined. Here such a message is released (so nothing waits for it)
without recording its offset as done; after the rebalance Faust seeks to the committed offset
and the message is fetched and processed again. Re-processing, not loss: at-least-once.

2. Seeking to a committed offset of 0. aiokafka's ``seek_to_committed`` seeks only when the
committed offset is > 0 (``if offset and offset > 0``); for 0 or none it leaves the position
wherever the fetcher had got to before the rebalance, past records that Faust dropped from its
buffers. Here those partitions are sought explicitly (0, or the beginning when nothing was
committed: kubevents reads with auto_offset_reset=earliest). Only partitions of streamed topics:
seeking the changelogs to their beginning as well made each rebalance take 15-20 s.

3. Records skipped by the fetcher loop. It hands a record to the stream and then records its
offset as read; records before the read offset are dropped as "already read". A record fetched
before a seek (a rebalance, or a second, late seek Faust starts when the fetcher runs while the
flow is stopped) and delivered after it moved the read offset past the records fetched again
from the committed offset, which were then dropped: ~50 % of the records of a partition that
changed hands while a worker joined were never processed (reproduced in the two-worker tests).
Here records are delivered per partition strictly in sequence: the read offset is the next
offset expected and is set by the seek itself, in the consumer thread, under a lock; a record
after a gap makes the loop seek back to the expected offset; a record of an earlier generation,
or one delivered while a seek happened, does not move it.

4. Committing over a hole. Faust commits the acked offsets from the committed one on, but takes
"committed offset C" to mean C was processed (it is the next one to read) and skips the check
altogether when C is 0 or unknown: an acked C+1 with C still in flight, or acked offsets after
records dropped as in 3, were committed over the hole. Here the first acked offset must be C
itself (offsets missing from the log, found by 3, count as acked, as in Faust).

5. Records read before the seek that ends a rebalance. Faust resumes the flow to read the
changelogs, then resumes the streamed partitions and only then seeks them to their committed
offsets. In between, the fetcher reads on from wherever it had got to before the rebalance (far
ahead when the agent was behind: its queue of batches was full) and stamps those records with the
new generation, so they pass every generation check and are handled first; the records from the
committed offset up to there come after the seek. Handled out of order, they lost their counts:
a count row keeps the last raw offset it holds and skips any increment at or before it
(tables/counts.py), so the increments of the records that came late were dropped as already
counted: 51 of 1820 occurrences in a run of tests/integration/test_core.py's join/leave test
(135 of 1550 with its changelog writes slowed further), every event out once. Here no record
of a streamed topic is handed over under a generation before that generation's seek; it is read
again from the committed offset.

6. Records dropped between a seek and the end of the hold of 5. The seek to committed offsets
that ends a rebalance awaited each partition's committed offset between the partitions' seeks,
and the hold of 5 ended only after the last one: records fetched from a partition already sought
were dropped as read before the seek, and nothing sought that partition back. When its stream
had ended there, they were never read (a worker taking over an idle topic stayed behind until the
next record arrived). Here the offsets are asked first and the seeks and the end of the hold
happen together, with nothing in between.

7. A changelog's read offset moved back past its recovery's seek. Faust's recovery seeks the
changelog partitions it must read and sets their read offsets itself (``_seek_wait``), outside
the read state's lock and seek count: a record of such a partition read just before (a worker
reading it as a standby when the partition became active) and handed over just after moved the
read offset past the records the seek reads again, which were then dropped as already read, and
the recovery waited for them forever ("No event received for active tp"). Here those seeks are
counted per partition under the lock, and a record read before one of them moves nothing.

8. Fetches that wait 1.5 s. Faust creates its worker's consumer with ``fetch_max_wait_ms=1500``
(a constant in faust/transport/drivers/aiokafka.py, no setting), and aiokafka keeps one fetch in
flight per broker, asking only for partitions whose fetched records were all taken. The app's
one-partition leader topic (``<app>-__assignor-__leader``) never has records, so once the
streamed partitions still held records from the last fetch, the next fetch asked for the
leader topic alone and the broker held it for 1.5 s; the streamed partitions, drained
meanwhile, could not be fetched until it returned. A sink worker waited 0.4-1.5 s for records
every ~6,000 (bench.sinks, aiokafka's fetch requests timed): both sink pipelines topped out at
~7k events/s whatever their destination. Here the broker holds a fetch ``FETCH_MAX_WAIT_MS`` at
most; it still answers at once when records arrive, so nothing waits longer for them.

9. Changelog records a fetch returned that Faust's ``getmany`` dropped (the flow stopped, the
generation changed, or the partition left the set the fetch was asked with while it ran): nothing
read them again, and a recovery waiting for them waited for ever. Here they are read again
(app/worker/dropped_fetches.py).

Besides the corrections, the fetcher loop here can hand a topic's records over in batches
(app/worker/batched_delivery.py, used by every pipeline's batch loop) instead of one event at a
time through Faust's conductor, topic queue and stream. The same sequence rules apply: read
offsets move only for records really handed over, under the generation and seek count they were
read with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any, cast

from aiokafka.errors import IllegalStateError
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.utils.functional import consecutive_numbers

from app.testing import faults
from app.worker import dropped_fetches
from app.worker.batched_delivery import Batches, batched, deliverable_check

_original_ack = faust_consumer.Consumer.ack
# Fix 8: long enough that an idle worker asks the broker only ~10 times a second.
FETCH_MAX_WAIT_MS = 100
_log = logging.getLogger("kubevents.faust_fixes")


def _is_stale(consumer: Any, message: Any) -> bool:
    app = consumer.app
    generation = getattr(message, "generation_id", None)
    return generation != app.consumer_generation_id or not app.flow_control.is_active()


def _ack(self: Any, message: Any) -> bool:
    if _is_stale(self, message):
        with getattr(faust_consumer, "ack_lock"):  # noqa: B009 (not re-exported)
            message.acked = True
            self._unacked_messages.discard(message)
            getattr(faust_consumer, "notify")(self._waiting_for_ack)  # noqa: B009
        return False
    return bool(_original_ack(self, message))


class ReadState:
    """Shared by the consumer thread (which seeks) and the fetcher loop (which delivers)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seeks = 0  # seeks to committed offsets done so far
        # The generation assigned last, until the seek to committed offsets that follows it:
        # meanwhile no record of a streamed topic is handed over (fix 5).
        self.unsought: int | None = None
        self.reseek: dict[Any, tuple[int, int]] = {}  # partition -> (offset, times) sought back
        # Seeks of single partitions by Faust's recovery (changelogs), per partition (fix 7).
        self.sought: dict[Any, int] = {}

    def advance(
        self,
        read_offset: Any,
        seeks: int,
        nexts: dict[Any, int],
        sought: dict[Any, int] | None = None,
    ) -> None:
        """Move partitions' read offsets past records handed over, unless a seek happened since
        they were read (``seeks``, and per partition ``sought``): the seek set the next offset
        itself."""
        with self.lock:
            if self.seeks != seeks:
                return
            for tp, offset in nexts.items():
                if sought is not None and self.sought.get(tp, 0) != sought.get(tp, 0):
                    continue
                read_offset[tp] = offset
                self.reseek.pop(tp, None)


def _state(consumer: Any) -> ReadState:
    return cast(ReadState, consumer.__dict__.setdefault("_kubevents_read", ReadState()))


async def _seek_all(consumer: Any, faust: Any, streamed: Any) -> Any:
    """In the consumer thread: seek every partition of ``streamed`` topics to its committed
    offset and make that the next offset to read, at once (see _drain_messages); returns the
    positions. Changelog partitions are left to Faust's recovery.

    The offsets are asked first; the seeks and the state they set (the end of the generation's
    hold, the read offsets) then happen with no await in between (fix 6). aiokafka's own
    ``seek_to_committed`` awaits each partition's committed offset between the seeks: a fetch
    returned in such a gap, after its partition's seek but before the hold ended, was dropped
    by the fetcher loop as read before the seek, with nothing left to seek it back, and a
    partition whose stream had ended stayed unread (tests/integration/test_core.py, the
    worker dying between count rows and dedupe rows: ~1 run in 20)."""
    # Read before seeking: a rebalance meanwhile stays unsought (fix 5) until its own seek.
    generation = faust.app.consumer_generation_id
    tps = [tp for tp in consumer.assignment() if streamed(tp.topic)]
    committed = {tp: await consumer.committed(tp) for tp in tps}
    # Nothing committed: the beginning (kubevents reads with auto_offset_reset=earliest).
    fresh = [tp for tp, offset in committed.items() if offset is None or offset < 0]
    if fresh:
        committed.update(await consumer.beginning_offsets(fresh))
    # From here on no await: no fetch is returned between the seeks and the state they set.
    assigned = consumer.assignment()
    committed = {tp: offset for tp, offset in committed.items() if tp in assigned}
    for tp, offset in committed.items():
        consumer.seek(tp, offset)
    state = _state(faust)
    with state.lock:
        state.seeks += 1
        if state.unsought == generation:
            state.unsought = None
        for tp, offset in committed.items():
            key = faust_consumer.ensure_TP(tp)
            faust._read_offset[key] = offset
            faust._committed_offset[key] = offset  # 0 included: Faust records 0 as unknown
            state.reseek.pop(key, None)
    return committed


_original_on_partitions_assigned = faust_aiokafka.ConsumerRebalanceListener.on_partitions_assigned


async def _on_partitions_assigned(self: Any, assigned: Any) -> None:
    """In the consumer thread, before Faust sets the new generation: nothing is handed over in
    it until the seek that follows (fix 5)."""
    state = _state(self._thread.consumer)
    with state.lock:
        state.unsought = self._thread._ensure_consumer()._coordinator.generation
    await _original_on_partitions_assigned(self, assigned)


async def _seek_to_committed(self: Any) -> Any:
    streamed = self.app.topics.acks_enabled_for
    return await self.call_thread(_seek_all, self._ensure_consumer(), self.consumer, streamed)


async def _perform_seek(self: Any) -> None:
    # Tests lengthen the time between Faust resuming the streamed partitions at the end of a
    # rebalance (the flow is already running: the changelogs were read) and the seek, where the
    # fetcher reads on from wherever it was before the rebalance (fix 5).
    await faults.point("faust.before-seek")
    await self.seek_to_committed()  # read and committed offsets are set by _seek_all
    # Tests lengthen the time between the seek that ends a rebalance and Faust resuming the
    # flow, where records read from the new position meet the flow's resumption.
    await faults.point("faust.after-seek")


async def _seek_wait(self: Any, consumer: Any, partitions: Any) -> None:
    """Faust's recovery seeking changelog partitions (AIOKafkaConsumerThread._seek_wait, in the
    consumer thread): the same seeks and read offsets, recorded per partition under the read
    state's lock (fix 7), so that a record read before the seek and handed over after it does not
    move the read offset the seek set."""
    state = _state(self.consumer)
    read_offset = self.consumer._read_offset
    for tp, offset in partitions.items():
        consumer.seek(tp, offset)
    with state.lock:
        for tp, offset in partitions.items():
            state.sought[tp] = state.sought.get(tp, 0) + 1
            state.reseek.pop(tp, None)
            if offset > 0:
                read_offset[tp] = offset
            else:
                read_offset.pop(tp, None)
    await asyncio.wait_for(
        asyncio.gather(*[consumer.position(tp) for tp in partitions]),
        timeout=self.app.conf.broker_request_timeout,
    )


def _new_offset(self: Any, tp: Any) -> int | None:
    """The offset to commit for ``tp``: one past the acked run that starts at the committed
    offset, or None while that offset itself is not acked yet."""
    acked = self._acked[tp]
    if not acked:
        return None
    gap_for_tp = self._gap[tp]
    if gap_for_tp:  # offsets the fetcher found missing (compaction, markers) count as acked
        covered = sorted(gap_for_tp.overlap(0, max(acked) + 1), key=lambda x: x.begin)
        extra = [o for iv in covered for o in range(iv.begin, iv.end)]
        if extra:
            acked.extend(o for o in extra if o not in self._acked_index[tp])
            self._acked_index[tp].update(extra)
            gap_for_tp.chop(0, max(extra[-1], *acked) + 1)
    acked.sort()
    committed = self._committed_offset[tp]
    if committed is not None and acked[0] > committed:
        return None
    batch = next(consecutive_numbers(acked))
    acked[: len(batch)] = []
    self._acked_index[tp].difference_update(batch)
    return int(batch[-1]) + 1


async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover
    """Faust's fetcher loop (faust/transport/consumer.py), delivering each partition's records
    strictly in sequence: the read offset is the next offset expected (as seeks set it), a
    record before it was read already, and a record after it means records in between went
    missing from this fetch (fetched before a seek, or dropped in a rebalance): the partition is
    sought back to the expected offset instead. Only when the log itself has a hole there
    (compaction) is the record after it accepted and the hole marked done (fix 4)."""
    callback, getmany = self.callback, self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    read_offset = self._read_offset
    state = _state(self)
    acks_enabled_for = self.app.topics.acks_enabled_for
    deliverable = deliverable_check(self)
    batches = Batches(self, state)
    since_yield = 0
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            self.diag.set_flag(faust_consumer.CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await self.sleep(0)
            if self.should_stop:
                continue
            sought_back: set[Any] = set()
            async for tp, message in ait:
                since_yield += 1
                if since_yield > 100:
                    await asyncio.sleep(0)
                    since_yield = 0
                if tp in sought_back:
                    continue
                offset = message.offset
                with state.lock:
                    seeks, expected = state.seeks, read_offset[tp]
                    unsought, sought = state.unsought, state.sought.get(tp, 0)
                if unsought is not None and acks_enabled_for(message.topic):
                    continue  # read before this generation's seek, which reads it again (fix 5)
                expected = batches.next_offset(tp, seeks, expected)
                if expected is not None and offset < expected:
                    continue  # already read: a re-fetch after a seek
                if expected is not None and offset > expected and batches.pending:
                    # What was read before the gap is handed over first; if it could not be,
                    # the gap starts before it.
                    await batches.flush()
                    with state.lock:
                        seeks, expected = state.seeks, read_offset[tp]
                    if expected is not None and offset < expected:
                        continue
                if expected is not None and offset > expected:
                    back, times = state.reseek.get(tp, (expected, 0))
                    times = times + 1 if back == expected else 1
                    if times <= 2:  # a third fetch from there starting later: a hole in the log
                        state.reseek[tp] = (expected, times)
                        sought_back.add(tp)
                        with contextlib.suppress(IllegalStateError):  # no longer assigned
                            await self._seek(tp, expected)
                        continue
                    if acks_enabled_for(message.topic):  # the log has a hole: nothing to wait for
                        committed = self._committed_offset[tp]
                        start = expected if committed is None else max(expected, committed)
                        if start < offset:
                            _log.warning(
                                "offsets %d..%d of %s are not in the log (compacted or markers);"
                                " taken as done",
                                start,
                                offset - 1,
                                tp,
                            )
                            self._gap[tp].addi(start, offset)
                            self._gap[tp].merge_overlaps()
                if self._commit_every is not None and self._n_acked >= self._commit_every:
                    self._n_acked = 0
                    await self.commit()
                if message.topic in batched:
                    await batches.add(tp, message, seeks)
                    continue
                if deliverable(tp):  # nothing in Faust's delivery can wait: no task needed
                    await callback(message)
                else:
                    await self.wait_first(callback(message), self.suspend_flow.wait())
                # An earlier generation's record is skipped by the stream and must come again.
                if getattr(message, "generation_id", None) == self.app.consumer_generation_id:
                    state.advance(read_offset, seeks, {tp: offset + 1}, {tp: sought})
            await batches.flush()
            self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            return
        raise
    finally:
        self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)


_original_create_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    """Faust's worker consumer, its fetches held by the broker FETCH_MAX_WAIT_MS at most (fix
    8); read by aiokafka when the consumer starts."""
    consumer = _original_create_worker_consumer(self, transport)
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
    return consumer


def apply() -> None:
    faust_consumer.Consumer.ack = _ack  # type: ignore[method-assign]
    faust_consumer.Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    faust_consumer.Consumer.perform_seek = _perform_seek  # type: ignore[method-assign]
    faust_consumer.Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]
    faust_consumer.Consumer.getmany = dropped_fetches.getmany  # type: ignore[method-assign]
    faust_aiokafka.AIOKafkaConsumerThread.seek_to_committed = _seek_to_committed  # type: ignore[method-assign]
    faust_aiokafka.AIOKafkaConsumerThread._seek_wait = _seek_wait  # type: ignore[method-assign]
    faust_aiokafka.ConsumerRebalanceListener.on_partitions_assigned = _on_partitions_assigned  # type: ignore[method-assign]
    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
