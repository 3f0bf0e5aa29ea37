"""Benchmark: API server -> Kafka via `kubevents produce`, against a bare lister in the same run.

Creates N events in a fresh namespace, then measures
  * bare:     a paginated LIST of those events that reads every page and discards it;
  * producer: `kubevents produce` listing the same events and publishing each to Kafka (acks=all),
              timed until Kafka holds all N; its peak RSS (VmHWM).
Prints events/s for both and the ratio. Usage: python -m bench.producer [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from app.kube import KubeClient
from app.settings import KubernetesSettings
from bench.common import start, topic_size, wait_metric


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


def bare_list(client: KubeClient, ns: str) -> tuple[int, float]:
    started = time.monotonic()
    cont, total = None, 0
    while True:
        page = client.get_json(f"/api/v1/namespaces/{ns}/events", {"limit": 500, "continue": cont})
        total += len(page["items"])
        cont = page["metadata"].get("continue")
        if not cont:
            return total, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    brokers = os.environ["KUBEVENTS_KAFKA_BROKERS"]
    client = KubeClient.from_settings(KubernetesSettings(qps=5000, burst=5000))
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    t = time.monotonic()
    create_events(client, ns, args.events)
    print(f"created {args.events} events in {time.monotonic() - t:.1f}s")

    n, bare_s = bare_list(client, ns)
    topic = f"bench-raw-{uuid.uuid4().hex[:6]}"
    env = {
        "KUBEVENTS_TOPICS_RAW": topic,
        "KUBEVENTS_PRODUCER_NAMESPACES": ns,
        "KUBEVENTS_PRODUCER_LEADER_ELECTION": "false",
        "KUBEVENTS_PRODUCER_HTTP_PORT": "18080",
        "KUBEVENTS_KUBERNETES_QPS": "1000",
        "KUBEVENTS_KUBERNETES_BURST": "1000",
    }
    started = time.monotonic()
    proc = start(["produce"], env, "bench-producer.log")
    # Progress from the producer's own counter of records Kafka acknowledged (cheap to poll,
    # unlike a consumer); the topic's size is checked once at the end.
    first, done, peak = wait_metric(18080, "kubevents_producer_published_total", n, 600, proc)
    in_topic = asyncio.run(topic_size(brokers, topic))
    proc.terminate()
    proc.wait(30)
    client.request("DELETE", f"/api/v1/namespaces/{ns}")
    ok = not math.isnan(done)
    steady = n / (done - first) if ok else 0.0
    wall = n / (done - started) if ok else 0.0
    result = {
        "events": n,
        "bare_list_events_per_s": round(n / bare_s),
        "producer_events_per_s_wall": round(wall),
        "producer_events_per_s_after_first": round(steady),
        "ratio_wall": round(wall / (n / bare_s), 3),
        "ratio_after_first": round(steady / (n / bare_s), 3),
        "producer_peak_rss_mib": round(peak, 1),
        "records_in_topic": in_topic,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
