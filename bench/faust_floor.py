"""Faust's own stream path, for bench/core.py: a Faust agent that reads the raw topic one event at a
time through Faust's stream (``noack_take``, in batches of 1000) and acks, doing nothing else,
with kubevents' corrections to Faust's fetcher loop and commits applied
(app/worker/faust_fixes.py). Its rate is what that path costs per record here; the core worker
bypasses it (its records come in batches straight from the fetcher loop). Run as a worker by
bench/core.py: ``python -m bench.faust_floor worker``, with BENCH_TOPIC, BENCH_N, BENCH_OUT and
KUBEVENTS_KAFKA_BROKERS set."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import faust

from app.worker import faust_fixes

faust_fixes.apply()
TOPIC, N, OUT = os.environ["BENCH_TOPIC"], int(os.environ["BENCH_N"]), os.environ["BENCH_OUT"]
app = faust.App(
    f"{TOPIC}-floor",
    broker=f"kafka://{os.environ['KUBEVENTS_KAFKA_BROKERS']}",
    store="memory://",
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
    datadir=f"/tmp/{TOPIC}-floor",
)
raw = app.topic(
    TOPIC, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
)


@app.agent(raw)
async def floor(stream: Any) -> None:
    # Timed as bench.common.Progress times the core worker: from the end of the first batch,
    # counting only the records after it (the first batch was read before the interval began).
    seen, first, first_seen = 0, 0.0, 0
    async for events in stream.noack_take(1000, within=0.05):
        seen += len(events)
        for event in events:
            await stream.ack(event)
        if not first:
            first, first_seen = time.monotonic(), seen
        if seen >= N:
            elapsed = time.monotonic() - first
            rate = (seen - first_seen) / elapsed if seen > first_seen else float("nan")
            Path(OUT).write_text(str(rate))  # noqa: ASYNC240
            os._exit(0)


if __name__ == "__main__":
    app.main()
