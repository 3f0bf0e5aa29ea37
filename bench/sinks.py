"""Benchmark: k8s-events -> each sink pipeline, against the same writes done by a bare loop.

Preloads N enriched events (0.7 KB each, a fifth of them with a second version) on a topic, then,
for Elasticsearch and for MySQL:
  * bare: the same events, decoded in memory beforehand, turned into the same actions / rows
          (the sink's own functions, timed: a loop writing events must build them too) and
          written directly by the plainest loop the client library offers:
          ``async_streaming_bulk`` (chunks of 1000, same ``_id``s, external versions, template
          and daily indices) / SQLAlchemy ``executemany`` of the same upsert statement (per
          1000 events one transaction of the newest version per uid, as the sink writes a
          batch, in chunks of 500). Not timed, so not in the bare figure: reading the records
          from Kafka and decoding their JSON, which the pipeline does (and Kafka serves);
  * pipeline: `kubevents worker --pipeline <id>` reading the topic from the start (Kafka fetch,
          decode, filter, write, commit after the write), timed from its counter of written
          events (``bench.common.Progress``: records after the first instant over the time since
          it); its peak RSS.
Prints events/s of each, the ratio pipeline/bare, the pipeline's peak RSS, and CPU µs per event:
the bare loop's process and the worker's (after its first instant), and the servers' each side
loads (the destination and Kafka; shared servers, so others' work counts too). The goal (issue
#12): each pipeline at least 0.8 of its bare loop, under 200 MiB. A document or row missing at
the end fails the run (exit status 1).
Usage: python -m bench.sinks [--events 100000] [--only elasticsearch|mysql] [--batch-delay-ms 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
import yaml
from aiokafka import AIOKafkaProducer
from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_streaming_bulk

from app.settings import ElasticsearchSinkSettings, TopicSettings
from app.sinks.elasticsearch import ElasticsearchSink, build_action
from app.sinks.mysql_rows import chunks, events_table, newest_per_uid, to_row, upsert
from app.worker.batch_loop import settle_garbage_collector
from bench.common import (
    ROOT,
    Progress,
    cpu_seconds,
    create_databases,
    create_topic,
    delete_indices,
    drop_databases,
    free_port,
    process_tree_cpu_seconds,
    start,
    wait_metric_progress,
)

# The servers each side loads: the pipeline also reads the topic from Kafka, the bare loop
# writes from memory (its documents were decoded beforehand).
ES_SERVERS = ("elasticsearch", "kafka")
MYSQL_SERVERS = ("mariadb", "kafka")


def server_cpu_seconds(servers: tuple[str, ...]) -> float:
    """CPU seconds so far of the local stack's servers (.stack/run/<name>.pid and their
    children); nan without the local stack's pid files. They may serve other clients too."""
    total = 0.0
    for name in servers:
        try:
            pid = int((ROOT / ".stack" / "run" / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return float("nan")
        total += process_tree_cpu_seconds(pid)
    return total


class Cpu:
    """CPU seconds of this process and of ``servers`` between ``__enter__`` and ``__exit__``."""

    def __init__(self, servers: tuple[str, ...]) -> None:
        self.servers = servers
        self.client = self.server = float("nan")

    def __enter__(self) -> Cpu:
        self._client, self._server = time.process_time(), server_cpu_seconds(self.servers)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client = time.process_time() - self._client
        self.server = server_cpu_seconds(self.servers) - self._server


def make_events(n: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out: list[dict[str, Any]] = []
    i = 0
    while len(out) < n:
        for v in range(2 if i % 5 == 0 else 1):
            ns = f"ns{i % 20}"
            warning = i % 4 in (0, 3)
            out.append(
                {
                    "schema_version": 1,
                    "uid": f"uid-{i}",
                    "cluster": "bench",
                    "namespace": ns,
                    "name": f"pod-{i % 2000}.{i:x}",
                    "resource_version": str(100_000 + 10 * i + v),
                    "api_version": "v1",
                    "watch_type": "MODIFIED" if v else "ADDED",
                    "involved_object": {
                        "kind": "Pod",
                        "name": f"pod-{i % 2000}",
                        "namespace": ns,
                        "uid": f"pod-uid-{i % 2000}",
                        "api_version": "v1",
                        "field_path": "spec.containers{app}",
                    },
                    "type": "Warning" if warning else "Normal",
                    "reason": ("BackOff", "Pulled", "Scheduled", "FailedMount")[i % 4],
                    "message": "Back-off restarting failed container app in pod (benchmark)",
                    "action": "",
                    "reporting_component": "kubelet",
                    "reporting_instance": f"node-{i % 50}",
                    "count": 1 + v,
                    "count_delta": 1,
                    "first_seen": now,
                    "last_seen": now,
                    "observed_at": now,
                    "producer": "bench",
                    "severity": "warning" if warning else "info",
                    "labels": {"app": f"app-{i % 40}", "app_kubernetes_io_name": "bench"},
                    "owners": [],
                    "root_owner": None,
                    "enrichment": {"status": "skipped", "error": None},
                    "raw": {"metadata": {"uid": f"uid-{i}", "creationTimestamp": now[:19] + "Z"}},
                }
            )
        i += 1
    return out[:n]


async def preload(brokers: str, topic: str, events: list[dict[str, Any]]) -> None:
    await create_topic(brokers, topic, TopicSettings().partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=brokers, acks="all", linger_ms=20, max_batch_size=1 << 20
    )
    await producer.start()
    for event in events:
        key = event["involved_object"]["uid"].encode()
        await producer.send(topic, orjson.dumps(event), key=key)
    await producer.stop()


async def bare_elasticsearch(
    url: str, index: str, events: list[dict[str, Any]]
) -> tuple[float, Cpu]:
    """events/s of async_streaming_bulk writing the same actions (template installed first),
    and the CPU it took (this process, Elasticsearch)."""
    sink = ElasticsearchSink(ElasticsearchSinkSettings(url=url, index=index), cluster="bench")
    await sink.start()  # the same template and alias as the pipeline's
    await sink.stop()
    now = datetime.now(UTC)
    client = AsyncElasticsearch(url, request_timeout=60)
    with Cpu(ES_SERVERS) as cpu:
        started = time.monotonic()
        actions = (build_action(e, index, "bench", now) for e in events)
        async for ok, item in async_streaming_bulk(
            client, actions, chunk_size=1000, raise_on_error=False, max_retries=3
        ):
            if not ok and item.get("index", {}).get("status") != 409:
                raise SystemExit(f"bare bulk failed: {item}")
        elapsed = time.monotonic() - started
    await client.close()
    return len(events) / elapsed, cpu


def bare_mysql(url: str, events: list[dict[str, Any]]) -> tuple[float, Cpu]:
    """events/s of executemany with the sink's own upsert, and the CPU it took (this process,
    MariaDB). Per 1000 events, the newest version per uid only, as the sink does per batch
    (~1000 records): the same rows reach the server (~5/6 of the events here)."""
    engine = sa.create_engine(url)
    table = events_table("k8s_events")
    statement = upsert(table)
    with Cpu(MYSQL_SERVERS) as cpu:
        started = time.monotonic()
        rows = [to_row(e) for e in events]
        for start_at in range(0, len(rows), 1000):
            batch = newest_per_uid(rows[start_at : start_at + 1000])
            with engine.begin() as conn:
                for chunk in chunks(batch, 500):
                    conn.execute(statement, list(chunk))
        elapsed = time.monotonic() - started
    engine.dispose()
    return len(rows) / elapsed, cpu


def run_pipeline(
    config: Path, pipeline: str, names: dict[str, str], n: int, servers: tuple[str, ...]
) -> tuple[Progress, float, float]:
    """(its progress, with the CPU seconds of the worker and of ``servers`` after the first
    instant; wall seconds; CPU seconds including start-up) of one sink worker."""
    port = free_port()
    env = {**names, "KUBEVENTS_WORKER_WEB_PORT": str(port)}
    args = ["--config", str(config), "worker", "--pipeline", pipeline, "--loglevel", "warning"]
    started = time.monotonic()
    proc = start(args, env, f"bench-sink-{pipeline}.log")
    progress = wait_metric_progress(
        port,
        "kubevents_sink_written_total",
        n,
        120 + n / 100,
        proc,
        # Each scrape of /metrics costs the worker ~1 ms: at 50 a second (0.02 s) it took
        # 7-13 % of its CPU (py-spy). 0.1 s: at most 0.1 s of error on either instant.
        interval_s=0.1,
        others=lambda: server_cpu_seconds(servers),
    )
    cpu = cpu_seconds(proc.pid) if proc.poll() is None else float("nan")
    proc.terminate()
    proc.wait(60)
    if not progress.complete:
        # done_value is nan then: say where to look instead.
        raise SystemExit(
            f"bench.sinks: {pipeline} did not write {n} events in time"
            f" (its log: .stack/logs/bench-sink-{pipeline}.log)"
        )
    return progress, progress.done - started, cpu


def ratio(a: float, b: float) -> float | None:
    """None when a rate could not be measured (everything in one batch: a tiny run)."""
    return round(a / b, 3) if a > 0 and b > 0 else None


def figure(value: float) -> int | None:
    return None if math.isnan(value) or math.isinf(value) else round(value)


def per_event_us(seconds: float, events: float) -> int | None:
    return figure(seconds / events * 1e6) if events > 0 else None


def cpu_figures(bare: Cpu, n: int, progress: Progress) -> dict[str, Any]:
    """CPU µs per event: the bare loop's process and servers, the worker and the servers after
    its first instant (Kafka and the destination, both sides; they may serve others too)."""
    done = progress.done_value - progress.first_value
    return {
        "bare_cpu_us_per_event": {
            "client": per_event_us(bare.client, n),
            "servers": per_event_us(bare.server, n),
        },
        "pipeline_cpu_us_per_event": {
            "worker": per_event_us(progress.cpu_s, done),
            "servers": per_event_us(progress.others_cpu_s, done),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--only", choices=["elasticsearch", "mysql"])
    parser.add_argument("--batch-delay-ms", type=int, default=200, help="the pipelines' linger")
    args = parser.parse_args()
    brokers = os.environ["KUBEVENTS_KAFKA_BROKERS"]
    es_url = os.environ["KUBEVENTS_ELASTICSEARCH_URL"]
    mysql_url = os.environ["KUBEVENTS_MYSQL_URL"]
    tag = uuid.uuid4().hex[:6]
    topic = f"bench-{tag}-events"
    events = make_events(args.events)
    t = time.monotonic()
    asyncio.run(preload(brokers, topic, events))
    print(f"preloaded {len(events)} enriched events in {time.monotonic() - t:.1f}s", flush=True)
    # The bare loops' process holds every event decoded (~10 objects each): the garbage
    # collector's full collections would scan them all again and again, work no writing loop
    # does. The same settling as the worker's once it started.
    settle_garbage_collector()
    names = {
        "KUBEVENTS_TOPICS_RAW": f"bench-{tag}-raw",
        "KUBEVENTS_TOPICS_ENRICHED": topic,
        "KUBEVENTS_TOPICS_DLQ": f"bench-{tag}-dlq",
    }
    databases = [f"bench_{tag}_bare", f"bench_{tag}_sink"]
    url_of = create_databases(mysql_url, databases)
    config = Path(tempfile.mkdtemp()) / "pipelines.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "pipelines": [
                    {
                        "id": f"bench-es-{tag}",
                        "sink": "elasticsearch",
                        "batch_delay_ms": args.batch_delay_ms,
                        "elasticsearch": {"url": es_url, "index": f"bench-{tag}-sink"},
                    },
                    {
                        "id": f"bench-mysql-{tag}",
                        "sink": "mysql",
                        "batch_delay_ms": args.batch_delay_ms,
                        "mysql": {"url": url_of[databases[1]]},
                    },
                ]
            }
        )
    )
    unique = len({e["uid"] for e in events})
    results: dict[str, Any] = {"events": len(events), "unique_events": unique}
    try:
        if args.only in (None, "elasticsearch"):
            bare, bare_cpu = asyncio.run(bare_elasticsearch(es_url, f"bench-{tag}-bare", events))
            progress, wall, cpu = run_pipeline(
                config, f"bench-es-{tag}", names, len(events), ES_SERVERS
            )
            results["elasticsearch"] = {
                "bare_bulk_events_per_s": figure(bare),
                "pipeline_events_per_s_after_first": figure(progress.rate),
                "pipeline_events_per_s_wall": figure(len(events) / wall),
                "ratio": ratio(progress.rate, bare),
                "pipeline_peak_rss_mib": round(progress.peak_rss_mib, 1),
                "pipeline_cpu_s": round(cpu, 1),
                **cpu_figures(bare_cpu, len(events), progress),
            }
            from elasticsearch import Elasticsearch

            with Elasticsearch(es_url, request_timeout=60) as es:
                es.indices.refresh(index=f"bench-{tag}-sink")
                docs = es.count(index=f"bench-{tag}-sink")["count"]
            results["elasticsearch"]["documents"] = docs
            if docs != unique:
                raise SystemExit(f"bench.sinks: {docs} documents, expected {unique}")
        if args.only in (None, "mysql"):
            asyncio.run(migrate_mysql(url_of[databases[0]]))
            bare, bare_cpu = bare_mysql(url_of[databases[0]], events)
            progress, wall, cpu = run_pipeline(
                config, f"bench-mysql-{tag}", names, len(events), MYSQL_SERVERS
            )
            with sa.create_engine(url_of[databases[1]]).connect() as conn:
                rows = conn.execute(sa.text("SELECT COUNT(*) FROM k8s_events")).scalar_one()
            results["mysql"] = {
                "bare_executemany_events_per_s": figure(bare),
                "pipeline_events_per_s_after_first": figure(progress.rate),
                "pipeline_events_per_s_wall": figure(len(events) / wall),
                "ratio": ratio(progress.rate, bare),
                "pipeline_peak_rss_mib": round(progress.peak_rss_mib, 1),
                "pipeline_cpu_s": round(cpu, 1),
                **cpu_figures(bare_cpu, len(events), progress),
                "rows": rows,
            }
            if rows != unique:
                raise SystemExit(f"bench.sinks: {rows} rows, expected {unique}")
    finally:
        print(json.dumps(results, indent=2), flush=True)
        drop_databases(mysql_url, databases)
        if args.only in (None, "elasticsearch"):
            delete_indices(es_url, [f"bench-{tag}-sink", f"bench-{tag}-bare"])


async def migrate_mysql(url: str) -> None:
    """The bare database gets the sink's own schema (its start migrates it)."""
    from app.settings import MySQLSinkSettings
    from app.sinks.mysql import MySQLSink

    sink = MySQLSink(MySQLSinkSettings.model_validate({"url": url}))
    await sink.start()
    await sink.stop()


if __name__ == "__main__":
    main()
