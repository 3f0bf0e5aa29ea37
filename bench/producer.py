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
Both sides are timed the same way, from their first output to their last, counting only the
records output after the first instant (``steady_rate``): the producer's outputs are its records'
broker append times (a LogAppendTime topic: no polling error, and nothing asked of the producer
while it works; its /metrics is polled every 100 ms only to see the end), the bare reader's are
its pages, each item done when its page is parsed. (Before, the bare rate covered its whole LIST,
first request included, against the producer's rate after its first append: the bare side paid
for a first page that the producer's window left out.) A round's ratio divides the two; the bare
rate over its whole LIST is printed too. The "wall" rate counts from the producer's process start
(imports, connections). Per-round figures, medians and the ratio of the medians are printed; a
round whose topic misses records fails the run (exit status 1).

Usage: python -m bench.producer [--events 20000] [--rounds 3] [--namespace NS --keep]
                                [--page-size 500]
                                [--set KUBEVENTS_KAFKA_COMPRESSION=zstd ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.kube.client import ApiError, KubeClient
from app.producer.service import tune_gc
from app.settings import KubernetesSettings, ProducerSettings, TopicSettings
from bench.common import (
    append_times,
    cpu_seconds,
    create_log_append_time_topic,
    free_port,
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
    return bare_list(client, ns, PAGE)[0]


def bare_list(client: KubeClient, ns: str, page_size: int) -> tuple[int, float, float]:
    """What the producer's LIST costs with nothing done with the items: fetch and parse.
    Returns (items, steady rate, rate over the whole LIST). The steady rate is the producer's
    (``steady_rate``): each item is done when its page is parsed, and only the items done after
    the first page count, over the time from the first page's end to the last page's end."""
    started = time.monotonic()
    cont, done_at = None, []
    while True:
        page = client.get_json(
            f"/api/v1/namespaces/{ns}/events", {"limit": page_size, "continue": cont}
        )
        now = time.monotonic()
        done_at.extend([now] * len(page["items"]))
        cont = page["metadata"].get("continue")
        if not cont:
            whole = len(done_at) / (now - started)
            return len(done_at), steady_rate(done_at, unit_s=1.0), whole


def produce_once(
    ns: str, n: int, brokers: str, topic: str, extra_env: dict[str, str], *, page_size: int
) -> dict[str, Any]:
    asyncio.run(create_log_append_time_topic(brokers, topic, PARTITIONS))
    port = free_port()
    env = {
        **extra_env,
        "KUBEVENTS_TOPICS_RAW": topic,
        "KUBEVENTS_PRODUCER_NAMESPACES": ns,
        "KUBEVENTS_PRODUCER_LEADER_ELECTION": "false",
        "KUBEVENTS_PRODUCER_HTTP_PORT": str(port),
        "KUBEVENTS_PRODUCER_LIST_PAGE_SIZE": str(page_size),
        "KUBEVENTS_KUBERNETES_QPS": "1000",
        "KUBEVENTS_KUBERNETES_BURST": "1000",
    }
    started = time.monotonic()
    proc = start(["produce"], env, "bench-producer.log")
    try:
        # Completion from the producer's own counter of records Kafka acknowledged, polled
        # slowly (serving /metrics costs the producer CPU); the rate from the broker's append
        # times, read once at the end.
        progress = wait_metric_progress(
            port, "kubevents_producer_published_total", n, 120 + n / 200, proc, interval_s=0.1
        )
        done, peak = progress.done, progress.peak_rss_mib
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
        "--page-size",
        type=int,
        default=PAGE,
        help=f"LIST page size of both sides (default: the producer's, {PAGE})",
    )
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
            n, bare, bare_whole = bare_list(client, ns, args.page_size)
            topics.append(f"bench-raw-{uuid.uuid4().hex[:6]}")
            run = produce_once(ns, n, brokers, topics[-1], extra_env, page_size=args.page_size)
            round_ = {
                "events": n,
                "bare_events_per_s": figure(bare),
                "bare_events_per_s_whole_list": figure(bare_whole),
                "producer_events_per_s": figure(run["steady"]),
                "producer_events_per_s_wall": figure(run["wall"]),
                "ratio": ratio(run["steady"], bare),
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
    bare_med = median([r["bare_events_per_s"] for r in rounds])
    prod_med = median([r["producer_events_per_s"] for r in rounds])
    result = {
        "events": rounds[0]["events"],
        "rounds": len(rounds),
        "bare_events_per_s_median": figure(bare_med),
        "producer_events_per_s_median": figure(prod_med),
        "producer_events_per_s_wall_median": figure(
            median([r["producer_events_per_s_wall"] for r in rounds])
        ),
        "ratio_of_medians": ratio(prod_med, bare_med),
        "ratio_median": median([r["ratio"] for r in rounds]),
        "peak_rss_mib_max": max(r["peak_rss_mib"] for r in rounds),
        "all_records_in_topic": all(r["records_in_topic"] == r["events"] for r in rounds),
    }
    print(json.dumps(result, indent=2))
    # Figures are only figures; a record missing from a round's topic is a failure.
    short = [
        f"round {i}: {r['records_in_topic']} of {r['events']} events in the topic"
        for i, r in enumerate(rounds, 1)
        if r["records_in_topic"] < r["events"]
    ]
    if short:
        sys.exit("bench.producer: records missing: " + "; ".join(short))


def figure(value: float | None) -> int | None:
    """A rate for the JSON output: None when it could not be measured (nan: e.g. one page)."""
    return None if value is None or not math.isfinite(value) else round(value)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b and a > 0 and b > 0 else None


def median(values: list[Any]) -> Any:
    """The median of the values that were measured (None when none was)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


if __name__ == "__main__":
    main()
