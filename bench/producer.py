"""Benchmark: API server -> Kafka via `kubevents produce`, against a bare lister in the same run.

Creates N events in a fresh namespace, then, for each of R rounds (alternating, so that both see
the same machine load), measures
  * bare:     a paginated LIST of those events (the producer's page size) that reads and parses
              every page and discards it: the floor of what reading the stream costs. It runs
              with the producer's garbage-collector settings (``tune_gc``), else Python's
              collector alone makes it ~10 % slower than it need be;
  * producer: a fresh `kubevents produce` listing the same events and publishing each to Kafka
              (acks=all, default settings), into a topic created with LogAppendTime; its peak RSS
              (VmHWM) and CPU time (start-up included).
The producer's steady rate comes from the broker's append times: the records appended after the
first append, over the time from the first append to the last (no polling error, and nothing
asked of the producer while it works; its /metrics is polled every 100 ms only to see the end).
The bare rate covers its whole LIST, first page included; a round's ratio divides the two. The
"wall" rate counts from the producer's process start (imports, connections). Per-round figures,
medians and the ratio of the medians are printed.

Usage: python -m bench.producer [--events 20000] [--rounds 3] [--namespace NS --keep]
                                [--set KUBEVENTS_KAFKA_COMPRESSION=zstd ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.kube import ApiError, KubeClient
from app.producer import tune_gc
from app.settings import KubernetesSettings, ProducerSettings, TopicSettings
from bench.common import (
    append_times,
    cpu_seconds,
    create_log_append_time_topic,
    start,
    steady_rate,
    topic_size,
    wait_metric_progress,
)

PAGE = ProducerSettings.model_fields["list_page_size"].default
PARTITIONS = TopicSettings.model_fields["partitions"].default


def create_events(client: KubeClient, ns: str, n: int) -> None:
    client.send_json(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
    )
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def one(i: int) -> None:
        client.send_json(
            "POST",
            f"/api/v1/namespaces/{ns}/events",
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"bench.{i}", "namespace": ns},
                "involvedObject": {
                    "kind": "Pod",
                    "name": f"pod-{i % 500}",
                    "namespace": ns,
                    "uid": f"uid-{i % 500}",
                    "apiVersion": "v1",
                },
                "reason": "Bench",
                "message": f"benchmark event {i}",
                "type": "Normal",
                "count": 1,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "source": {"component": "bench"},
            },
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(n)))


def count_events(client: KubeClient, ns: str) -> int:
    try:
        client.get_json(f"/api/v1/namespaces/{ns}")
    except ApiError as exc:
        if exc.status == 404:
            return -1
        raise
    return bare_list(client, ns)[0]


def bare_list(client: KubeClient, ns: str) -> tuple[int, float]:
    """What the producer's LIST costs with nothing done with the items: fetch and parse."""
    started = time.monotonic()
    cont, total = None, 0
    while True:
        page = client.get_json(f"/api/v1/namespaces/{ns}/events", {"limit": PAGE, "continue": cont})
        total += len(page["items"])
        cont = page["metadata"].get("continue")
        if not cont:
            return total, time.monotonic() - started


def produce_once(
    ns: str, n: int, brokers: str, topic: str, extra_env: dict[str, str]
) -> dict[str, Any]:
    asyncio.run(create_log_append_time_topic(brokers, topic, PARTITIONS))
    env = {
        **extra_env,
        "KUBEVENTS_TOPICS_RAW": topic,
        "KUBEVENTS_PRODUCER_NAMESPACES": ns,
        "KUBEVENTS_PRODUCER_LEADER_ELECTION": "false",
        "KUBEVENTS_PRODUCER_HTTP_PORT": "18080",
        "KUBEVENTS_KUBERNETES_QPS": "1000",
        "KUBEVENTS_KUBERNETES_BURST": "1000",
    }
    started = time.monotonic()
    proc = start(["produce"], env, "bench-producer.log")
    try:
        # Completion from the producer's own counter of records Kafka acknowledged, polled
        # slowly (serving /metrics costs the producer CPU); the rate from the broker's append
        # times, read once at the end.
        _, _, done, peak = wait_metric_progress(
            18080, "kubevents_producer_published_total", n, 600, proc, interval_s=0.1
        )
        cpu = cpu_seconds(proc.pid) if proc.poll() is None else float("nan")
    finally:
        proc.terminate()
        proc.wait(30)
    times = asyncio.run(append_times(brokers, topic, n)) if not math.isnan(done) else []
    in_topic = asyncio.run(topic_size(brokers, topic))
    return {
        "steady": steady_rate(times) if len(times) == n else 0.0,
        "wall": n / (done - started) if not math.isnan(done) else 0.0,
        "peak_rss_mib": peak,
        "cpu_s": cpu,
        "in_topic": in_topic,
    }


def delete_topics(brokers: str, topics: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    async def go() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
        await admin.start()
        try:
            await admin.delete_topics(topics)
        finally:
            await admin.close()

    try:
        asyncio.run(go())
    except Exception as exc:  # cleanup only: report and go on
        print(f"could not delete topics {topics}: {exc}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--namespace", help="reuse this namespace's events (created if missing)")
    parser.add_argument("--keep", action="store_true", help="do not delete the namespace")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help="extra environment for the producer, e.g. KUBEVENTS_KAFKA_COMPRESSION=zstd",
    )
    args = parser.parse_args()
    brokers = os.environ["KUBEVENTS_KAFKA_BROKERS"]
    client = KubeClient.from_settings(KubernetesSettings(qps=5000, burst=5000))
    ns = args.namespace or f"bench-{uuid.uuid4().hex[:6]}"
    have = count_events(client, ns) if args.namespace else -1
    if have < 0:
        t = time.monotonic()
        create_events(client, ns, args.events)
        print(f"created {args.events} events in {time.monotonic() - t:.1f}s")
    extra_env = dict(item.split("=", 1) for item in args.set)
    tune_gc()  # the bare reader runs with the producer's garbage-collector settings
    rounds: list[dict[str, Any]] = []
    topics: list[str] = []
    try:
        for r in range(args.rounds):
            n, bare_s = bare_list(client, ns)
            topics.append(f"bench-raw-{uuid.uuid4().hex[:6]}")
            run = produce_once(ns, n, brokers, topics[-1], extra_env)
            bare = n / bare_s
            round_ = {
                "events": n,
                "bare_events_per_s": round(bare),
                "producer_events_per_s": round(run["steady"]),
                "producer_events_per_s_wall": round(run["wall"]),
                "ratio": round(run["steady"] / bare, 3),
                "peak_rss_mib": round(run["peak_rss_mib"], 1),
                "producer_cpu_s": round(run["cpu_s"], 2),
                "records_in_topic": run["in_topic"],
            }
            print(f"round {r + 1}: {json.dumps(round_)}", flush=True)
            rounds.append(round_)
    finally:
        if not args.keep:
            client.request("DELETE", f"/api/v1/namespaces/{ns}")
        if topics:
            delete_topics(brokers, topics)
    bare_med = statistics.median(r["bare_events_per_s"] for r in rounds)
    prod_med = statistics.median(r["producer_events_per_s"] for r in rounds)
    result = {
        "events": rounds[0]["events"],
        "rounds": len(rounds),
        "bare_events_per_s_median": round(bare_med),
        "producer_events_per_s_median": round(prod_med),
        "producer_events_per_s_wall_median": round(
            statistics.median(r["producer_events_per_s_wall"] for r in rounds)
        ),
        "ratio_of_medians": round(prod_med / bare_med, 3),
        "ratio_median": statistics.median(r["ratio"] for r in rounds),
        "peak_rss_mib_max": max(r["peak_rss_mib"] for r in rounds),
        "all_records_in_topic": all(r["records_in_topic"] == r["events"] for r in rounds),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
