"""Benchmark: raw topic -> enriched topic through one core worker, against a bare aiokafka loop.

Preloads M raw messages (distinct events, a fifth of them with a second version), then measures
  * bare: an aiokafka consumer that reads, decodes (parse_raw + normalize) and re-publishes each
          message (acks=all), committing as it goes;
  * floor: a Faust agent that only reads and acks the same records one event at a time through
          Faust's stream (``noack_take``), with kubevents' Faust corrections
          (bench/faust_floor.py): what Faust's own per-event path costs, which the core worker
          bypasses (its records come in batches from the fetcher loop);
  * core: `kubevents worker --pipeline core` (dedupe, enrichment without owner lookups, tables,
          counts), timed until the enriched topic holds every expected record; its peak RSS.
Each rate counts the records done after its first instant over the time from that instant to
the end (``bench.common.Progress``): the core worker's from its counter of processed records, the
bare loop's and the floor's from the end of their first batch. (Before, the core worker's rate
divided all M records by the time since its counter was first seen above 0, although the records
already counted then were done before that interval: the rate was overstated by the first
poll's records, most at small M; the bare loop was timed from its start, group join and first
fetch included; the floor counted its first batch too.) Prints events/s for each and the ratios
core/bare and core/floor; a record missing anywhere fails the run (exit status 1).
Usage: python -m bench.core [--messages 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.model.envelope import build_raw, parse_raw
from app.model.normalize import normalize
from app.settings import TopicSettings
from bench.common import (
    ROOT,
    Progress,
    create_topic,
    free_port,
    start,
    topic_size,
    wait_metric_progress,
    wait_topic_size,
)


def make_messages(m: int) -> list[tuple[bytes, bytes]]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out: list[tuple[bytes, bytes]] = []
    i = 0
    while len(out) < m:
        versions = 2 if i % 5 == 0 else 1
        for v in range(versions):
            obj = {
                "kind": "Event",
                "apiVersion": "v1",
                "metadata": {
                    "name": f"e{i}",
                    "namespace": f"ns{i % 20}",
                    "uid": f"uid-{i}",
                    "resourceVersion": str(1000 + v),
                },
                "involvedObject": {
                    "kind": "Pod",
                    "name": f"pod-{i % 2000}",
                    "namespace": f"ns{i % 20}",
                    "uid": f"pod-{i % 2000}",
                    "apiVersion": "v1",
                },
                "reason": ("BackOff", "Pulled", "Scheduled", "FailedMount")[i % 4],
                "message": "benchmark",
                "type": "Warning" if i % 4 in (0, 3) else "Normal",
                "count": 1 + v,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "source": {"component": "bench"},
            }
            out.append(
                build_raw(
                    obj,
                    watch_type="MODIFIED" if v else "ADDED",
                    via="watch",
                    cluster="bench",
                    producer="bench",
                )
            )
        i += 1
    return out[:m]


async def preload(brokers: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    # as many partitions as the worker's tables (KUBEVENTS_TOPICS_PARTITIONS default)
    await create_topic(brokers, topic, TopicSettings().partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=brokers, acks="all", linger_ms=20, max_batch_size=1 << 20
    )
    await producer.start()
    for key, value in messages:
        await producer.send(topic, value, key=key)
    await producer.stop()


async def bare_loop(
    brokers: str, src: str, dst: str, m: int, timeout_s: float
) -> tuple[Progress, float]:
    """Reads, decodes and re-publishes m records; (progress, seconds from start to the end).
    Progress is taken as the core worker's is (bench.common.Progress): ``first`` when the first
    batch is done, the records done then excluded from the rate."""
    consumer = AIOKafkaConsumer(
        src,
        bootstrap_servers=brokers,
        group_id=f"bare-{uuid.uuid4()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", linger_ms=20)
    await consumer.start()
    await producer.start()
    started, seen = time.monotonic(), 0
    first, first_value = math.nan, 0
    deadline = started + timeout_s
    while seen < m and time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=500, max_records=2000)
        futures = []
        for msgs in batch.values():
            for msg in msgs:
                event = normalize(parse_raw(msg.value, max_bytes=1 << 20), default_cluster="b")
                futures.append(
                    await producer.send(
                        dst,
                        json.dumps(
                            {"uid": event.uid, "count": event.count, "raw": event.raw}
                        ).encode(),
                        key=msg.key,
                    )
                )
                seen += 1
        await asyncio.gather(*futures)
        await consumer.commit()
        if seen and math.isnan(first):
            first, first_value = time.monotonic(), seen
    done = time.monotonic() if seen >= m else math.nan
    await producer.stop()
    await consumer.stop()
    return Progress(first, first_value, done, seen, 0.0), done - started


def faust_floor(topic: str, m: int, timeout_s: float) -> float:
    out = Path(tempfile.mkdtemp()) / "rate"
    env = {**os.environ, "BENCH_TOPIC": topic, "BENCH_N": str(m), "BENCH_OUT": str(out)}
    log = open(ROOT / ".stack" / "logs" / "bench-floor.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.faust_floor", "worker", "-l", "warn"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    # "rate": records after the first batch over the time since it (nan: everything came in
    # one batch); missing file: the floor never saw all m records.
    return float(out.read_text()) if out.exists() else -1.0


def figure(value: float) -> int | None:
    """A rate for the JSON output: None when it could not be measured (nan)."""
    return None if math.isnan(value) or math.isinf(value) else round(value)


def ratio(a: float, b: float) -> float | None:
    return None if not (a > 0 and b > 0) else round(a / b, 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200_000)
    args = parser.parse_args()
    brokers = os.environ["KUBEVENTS_KAFKA_BROKERS"]
    tag = uuid.uuid4().hex[:6]
    raw_topic = f"bench-{tag}-raw"
    messages = make_messages(args.messages)
    m = len(messages)
    timeout_s = 120 + m / 200  # 40x the time a 5k events/s worker needs
    t = time.monotonic()
    asyncio.run(preload(brokers, raw_topic, messages))
    print(f"preloaded {m} raw messages in {time.monotonic() - t:.1f}s", flush=True)

    bare, bare_wall_s = asyncio.run(
        bare_loop(brokers, raw_topic, f"bench-{tag}-bare", m, timeout_s)
    )
    floor_rate = faust_floor(raw_topic, m, timeout_s)
    port = free_port()
    env = {
        "KUBEVENTS_TOPICS_RAW": raw_topic,
        "KUBEVENTS_TOPICS_ENRICHED": f"bench-{tag}-events",
        "KUBEVENTS_TOPICS_DLQ": f"bench-{tag}-dlq",
        "KUBEVENTS_CORE_APP_ID": f"bench-{tag}",
        "KUBEVENTS_CORE_OWNER_LOOKUP": "false",
        "KUBEVENTS_WORKER_WEB_PORT": str(port),
    }
    started = time.monotonic()
    proc = start(["worker", "--pipeline", "core", "--loglevel", "warning"], env, "bench-core.log")
    # Progress from the worker's counter of processed records (cheap to poll, unlike a
    # consumer); then the enriched topic must hold them all (outputs go out at each commit).
    core = wait_metric_progress(port, "kubevents_core_records_total", m, timeout_s, proc)
    _, published, _ = wait_topic_size(brokers, f"bench-{tag}-events", m, 120)
    enriched = asyncio.run(topic_size(brokers, f"bench-{tag}-events"))
    proc.terminate()
    proc.wait(60)
    # Every rate counts the records done after its first instant over the time since then
    # (Progress.rate): the core worker's and the bare loop's alike.
    print(
        json.dumps(
            {
                "messages": m,
                "bare_loop_events_per_s_after_first": figure(bare.rate),
                "bare_loop_events_per_s_wall": figure(m / bare_wall_s),
                "core_events_per_s_after_first": figure(core.rate),
                "core_events_per_s_wall": figure(m / (core.done - started)),
                "faust_floor_events_per_s": figure(floor_rate),
                "ratio_after_first": ratio(core.rate, bare.rate),
                "ratio_to_faust_floor": ratio(core.rate, floor_rate),
                "core_peak_rss_mib": round(core.peak_rss_mib, 1),
                "enriched_records": enriched,
                "all_published": not math.isnan(published),
            },
            indent=2,
        )
    )
    # Figures are only figures; a record missing anywhere is a failure.
    missing = []
    if not bare.complete:
        missing.append(f"the bare loop saw {int(bare.done_value)} of {m} records")
    if floor_rate < 0:
        missing.append(f"the Faust floor never saw all {m} records")
    if not core.complete:
        missing.append(f"the core worker did not process all {m} records in {timeout_s:.0f}s")
    if enriched < m:
        missing.append(f"the enriched topic holds {enriched} of {m} records")
    if missing:
        sys.exit("bench.core: records missing: " + "; ".join(missing))


if __name__ == "__main__":
    main()
