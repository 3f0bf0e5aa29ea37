"""The stall watch of a batch loop: says loudly when a pipeline has records to read and reads none.

A worker that owns partitions with records past their committed offsets must hand a batch over
within seconds. When it has not for ``after_s`` seconds, every ``after_s`` seconds the watch logs a
WARNING with what decides delivery (consumer generation, the seek bookkeeping of
app/worker/faust_fixes.py, flow control, paused partitions, each partition's committed, read and
fetch positions, the tables' recovery) and sets ``kubevents_pipeline_stalled_seconds``: a stuck
worker shows itself in its log and metrics instead of looking idle. Diagnostics only: it changes
nothing it reads (Faust's and aiokafka's internals, read without their locks; a wrong value costs
a wrong line in a warning, never a record).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import Gauge

from app.worker import faust_fixes

log = logging.getLogger("kubevents.stall")

STALLED = Gauge(
    "kubevents_pipeline_stalled_seconds",
    "How long the pipeline has owned unread records without handing a batch over (0: not stalled).",
    ["pipeline"],
)


def _name(tp: Any) -> str:
    return f"{tp.topic}[{tp.partition}]"


class StallWatch:
    def __init__(self, app: Any, topic: Any, pipeline: str, after_s: float = 30.0):
        self.app, self.topic, self.pipeline, self.after_s = app, topic, pipeline, after_s
        self.last_progress = time.monotonic()
        self.last_warning = 0.0
        self._gauge = STALLED.labels(pipeline)

    def progress(self) -> None:
        """A batch was handed over or handled."""
        self.last_progress = time.monotonic()
        self._gauge.set(0)

    async def unread(self) -> dict[Any, tuple[int | None, int | None]]:
        """Owned partitions of the topic with records past their committed offset:
        partition -> (committed, log end offset). The log end offsets are asked of the brokers
        (the consumer's own highwaters are known only for partitions it fetched from)."""
        consumer = self.app.consumer
        name = self.topic.get_topic_name()
        owned = [tp for tp in consumer.assignment() if tp.topic == name]
        if not owned:
            return {}
        ends = await consumer.highwaters(*owned)
        out: dict[Any, tuple[int | None, int | None]] = {}
        for tp in owned:
            end, committed = ends.get(tp), consumer._committed_offset.get(tp)
            if end is not None and end > (committed or 0):
                out[tp] = (committed, end)
        return out

    async def check(self) -> None:
        """Called every few seconds by the worker."""
        if self.app.consumer is None:
            return
        now = time.monotonic()
        idle = now - self.last_progress
        unread = await self.unread() if idle >= self.after_s else {}
        if not unread:
            if idle >= self.after_s:
                self.last_progress = now  # nothing to read: idle, not stalled
            self._gauge.set(0)
            return
        self._gauge.set(idle)
        if now - self.last_warning >= self.after_s:
            self.last_warning = now
            log.warning(
                "pipeline %s has handed no batch over for %.0f s with unread records: %s",
                self.pipeline,
                idle,
                self.describe(unread),
            )

    def describe(self, unread: dict[Any, tuple[int | None, int | None]]) -> str:
        app = self.app
        consumer = app.consumer
        state = faust_fixes._state(consumer)
        parts = [
            f"generation={app.consumer_generation_id}",
            f"unsought={state.unsought}",
            f"seeks={state.seeks}",
            f"flow_active={app.flow_control.is_active()}",
            f"suspend_flow={consumer.suspend_flow.is_set()}",
        ]
        try:
            kafka = consumer._thread._ensure_consumer()
            parts.append(f"paused={sorted(_name(tp) for tp in kafka.paused())}")
            assignment = kafka._subscription.subscription.assignment
            positions = {_name(tp): assignment.state_value(tp).position for tp in unread}
            parts.append(f"fetch_positions={positions}")
        except Exception as exc:  # diagnostics only
            parts.append(f"(aiokafka state unreadable: {exc!r})")
        read = {_name(tp): consumer._read_offset.get(tp) for tp in unread}
        parts.append(f"committed_highwater={ {_name(tp): v for tp, v in unread.items()} }")
        parts.append(f"read_offsets={read}")
        try:
            recovery = app.tables.recovery
            waiting = {tp: n for tp, n in recovery.active_remaining().items() if n}
            remaining = {_name(tp): n for tp, n in waiting.items()}
            parts.append(f"in_recovery={recovery.in_recovery} active_remaining={remaining}")
            if waiting:  # what the fetcher does with the changelogs the recovery waits for
                kafka = consumer._thread._ensure_consumer()
                assignment = kafka._subscription.subscription.assignment
                active = consumer._active_partitions or set()
                faust_paused, buffered = consumer._paused_partitions, consumer._buffered_partitions
                changelogs = {
                    _name(tp): (
                        assignment.state_value(tp).position,
                        consumer._read_offset.get(tp),
                        state.sought.get(tp, 0),
                        recovery.active_offsets.get(tp),
                        "fetched" if tp in active else "not fetched",
                        "faust-paused" if tp in faust_paused else "",
                        "buffered" if tp in buffered else "",
                    )
                    for tp in waiting
                }
                parts.append(
                    "changelogs(position, read_offset, seeks, applied, Faust's active"
                    f" partitions, paused, buffer full)={changelogs}"
                )
        except Exception as exc:  # diagnostics only
            parts.append(f"(recovery state unreadable: {exc!r})")
        return " ".join(parts)
