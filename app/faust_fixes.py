"""Two corrections to faust-streaming 0.15.x / aiokafka 0.14 that "nothing lost" depends on.

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
committed: kubevents reads with auto_offset_reset=earliest).
"""

from __future__ import annotations

from typing import Any

from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

_original_ack = faust_consumer.Consumer.ack


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


async def _seek_all(consumer: Any) -> Any:
    committed = await consumer.seek_to_committed()
    for tp, offset in committed.items():
        if offset is None or offset < 0:
            await consumer.seek_to_beginning(tp)
        elif offset == 0:
            consumer.seek(tp, 0)
    return committed


async def _seek_to_committed(self: Any) -> Any:
    return await self.call_thread(_seek_all, self._ensure_consumer())


def apply() -> None:
    faust_consumer.Consumer.ack = _ack  # type: ignore[method-assign]
    faust_aiokafka.AIOKafkaConsumerThread.seek_to_committed = _seek_to_committed  # type: ignore[method-assign]
