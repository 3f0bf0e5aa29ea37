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
Prints events/s for each and the ratios core/bare and core/floor.
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

from app.envelope import build_raw, parse_raw
from app.normalize import normalize
from app.settings import TopicSettings
from bench.common import ROOT, create_topic, start, wait_metric, wait_topic_size


def make_messages(m: int) -> list[tuple[bytes, bytes]]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = []
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


async def bare_loop(brokers: str, src: str, dst: str, m: int) -> float:
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
    while seen < m:
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
    elapsed = time.monotonic() - started
    await producer.stop()
    await consumer.stop()
    return elapsed


def faust_floor(topic: str, m: int) -> float:
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
        proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        proc.kill()
    return float(out.read_text()) if out.exists() else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200_000)
    args = parser.parse_args()
    brokers = os.environ["KUBEVENTS_KAFKA_BROKERS"]
    tag = uuid.uuid4().hex[:6]
    raw_topic = f"bench-{tag}-raw"
    messages = make_messages(args.messages)
    t = time.monotonic()
    asyncio.run(preload(brokers, raw_topic, messages))
    print(f"preloaded {len(messages)} raw messages in {time.monotonic() - t:.1f}s")

    bare_s = asyncio.run(bare_loop(brokers, raw_topic, f"bench-{tag}-bare", len(messages)))
    floor_rate = faust_floor(raw_topic, len(messages))
    env = {
        "KUBEVENTS_TOPICS_RAW": raw_topic,
        "KUBEVENTS_TOPICS_ENRICHED": f"bench-{tag}-events",
        "KUBEVENTS_TOPICS_DLQ": f"bench-{tag}-dlq",
        "KUBEVENTS_CORE_APP_ID": f"bench-{tag}",
        "KUBEVENTS_CORE_OWNER_LOOKUP": "false",
        "KUBEVENTS_CORE_WEB_PORT": "16066",
    }
    started = time.monotonic()
    proc = start(["worker", "--pipeline", "core", "--loglevel", "warning"], env, "bench-core.log")
    # Progress from the worker's counter of processed records (cheap to poll, unlike a
    # consumer); then the enriched topic must hold them all (outputs go out at each commit).
    first, done, peak = wait_metric(
        16066, "kubevents_core_records_total", len(messages), 1800, proc
    )
    _, published, _ = wait_topic_size(brokers, f"bench-{tag}-events", len(messages), 120)
    proc.terminate()
    proc.wait(60)
    m = len(messages)
    bare_rate = m / bare_s
    core_rate = 0.0 if math.isnan(done) else m / (done - first)
    print(
        json.dumps(
            {
                "messages": m,
                "bare_loop_events_per_s": round(bare_rate),
                "core_events_per_s_after_first": round(core_rate),
                "core_events_per_s_wall": 0 if math.isnan(done) else round(m / (done - started)),
                "faust_floor_events_per_s": round(floor_rate),
                "ratio_after_first": round(core_rate / bare_rate, 3),
                "ratio_to_faust_floor": round(core_rate / floor_rate, 3) if floor_rate else None,
                "core_peak_rss_mib": round(peak, 1),
                "all_published": not math.isnan(published),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
