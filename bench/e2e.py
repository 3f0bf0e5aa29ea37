"""Benchmark: the whole pipeline, every process on this machine, as users run it.

(a) Throughput, replay-fed: N raw envelopes (bench/core.py's, a fifth of the events with a second
    version) preloaded on a fresh raw topic; the Elasticsearch and MySQL sink workers
    (`kubevents worker --pipeline <id>`) are started and ready first, then the core worker
    (`kubevents worker --pipeline core`, owner lookups off: the envelopes name no real objects).
    Timed from the core's first processed record (its /metrics counter, polled every 0.1 s; the
    records it had done then are not counted) until both sinks have written every record (their
    counters), each sink's own finish too. The same run measures the bare stages on the same N:
    bench/core.py's decode + re-publish loop on the raw topic, and bench/sinks.py's
    ``async_streaming_bulk`` and ``executemany`` writing the very documents the core produced
    (read back from the enriched topic); the ratio is e2e / the slowest of the three. At the end
    each destination must hold exactly the distinct events, with their final counts.
(b) Latency, API server to search: `kubevents produce` (list+watch of a fresh namespace), the core
    (owner lookups on: the events name ConfigMaps that exist) and both sink workers running; a
    paced generator creates core/v1 Events through the API server at a steady rate (default 300/s
    for 60 s, after 10 s of warm-up whose events are checked but measured apart) from a few
    threads. An event's creation instant is when the API server answered its
    POST; it is visible when a poll finds it: an ``ids`` search on the Elasticsearch alias (no
    forced refresh: what a user's search sees, so the index's 1 s refresh interval is part of it)
    and ``SELECT uid ... WHERE uid IN`` on MySQL, each polled every ~100 ms (the poll's send
    time is taken, so a figure is late by up to one interval plus a query). p50/p95/p99 for each
    destination and for both; per-stage medians from the records' own stamps (the producer's
    ``observed_at``, the raw and enriched records' Kafka timestamps) say where the time goes.
(c) Each process's peak RSS (VmHWM) and CPU seconds, in total and inside the measured window (the
    share of a core it used there: the process near 1.0 is the limit).
Also printed: the machine, the versions, the command. Figures are only figures; a record, a
document or a row missing fails the run (exit status 1).

Usage: python -m bench.e2e [--events 100000] [--rate 300] [--duration 60] [--warmup 10]
                           [--only throughput|latency] [--poll-ms 100] [--trace FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
import yaml
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import Elasticsearch

import app
from app.kube.client import KubeClient
from app.settings import KubernetesSettings, TopicSettings
from bench import core as bench_core
from bench import sinks as bench_sinks
from bench.common import (
    ROOT,
    cpu_seconds,
    create_databases,
    create_topic,
    delete_indices,
    drop_databases,
    free_port,
    metric_total,
    peak_rss_mib,
    read_records,
    start,
    stop,
    wait_ready,
)

PARTITIONS = TopicSettings.model_fields["partitions"].default
POLL_S = 0.1  # /metrics of the processes under test, during (a)


class Incomplete(Exception):
    """A phase could not measure: a process died or never got every record through."""


class Stack:
    """The kubevents processes of one phase, started as real subprocesses."""

    def __init__(self, tag: str, phase: str, config: Path, data_dir: Path):
        self.tag, self.phase, self.config = tag, phase, config
        self.procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        self.server_pids = server_pids()  # a pid that changes: a server restarted under us
        self.env = {
            "KUBEVENTS_TOPICS_RAW": f"bench-e2e-{tag}-{phase}-raw",
            "KUBEVENTS_TOPICS_ENRICHED": f"bench-e2e-{tag}-{phase}-events",
            "KUBEVENTS_TOPICS_DLQ": f"bench-e2e-{tag}-{phase}-dlq",
            "KUBEVENTS_CORE_APP_ID": f"bench-e2e-{tag}-{phase}-core",
            "KUBEVENTS_WORKER_DATA_DIR": str(data_dir),
        }

    def start(self, name: str, args: list[str], env: dict[str, str], port_var: str) -> int:
        port = free_port()
        proc = start(
            ["--config", str(self.config), *args],
            {**self.env, **env, port_var: str(port)},
            f"bench-e2e-{self.tag}-{self.phase}-{name}.log",
        )
        self.procs[name] = (proc, port)
        return port

    def worker(self, name: str, pipeline: str, env: dict[str, str] | None = None) -> int:
        args = ["worker", "--pipeline", pipeline, "--loglevel", "warning"]
        return self.start(name, args, env or {}, "KUBEVENTS_WORKER_WEB_PORT")

    def wait_ready(self, *names: str) -> None:
        for name in names:
            proc, port = self.procs[name]
            if not wait_ready(port, proc):
                raise Incomplete(f"{name} never became ready (exit {proc.poll()})")

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each process, of each server of the stack (shared with anyone
        using it) and of the whole machine (busy time of every core)."""
        out = {n: cpu_seconds(p.pid) for n, (p, _) in self.procs.items() if p.poll() is None}
        for name, pid in server_pids().items():
            out[f"server {name}"] = tree_cpu_seconds(pid)
        out["machine"] = machine_busy_seconds()
        return out

    def shared(self, cpu_at_start: dict[str, float], window_s: float) -> dict[str, Any]:
        """The servers' share of a core in the window, and how many cores the whole machine
        kept busy (other engineers' work included: the noise of a figure)."""
        now = self.cpu()
        pids = server_pids()
        restarted = sorted(n for n, pid in pids.items() if self.server_pids.get(n) != pid)
        servers = {
            name: round((now[key] - cpu_at_start[key]) / window_s, 2)
            for key in now
            if key.startswith("server ")
            and key in cpu_at_start
            and (name := key.removeprefix("server ")) not in restarted
        }
        busy = (now["machine"] - cpu_at_start["machine"]) / window_s
        return {
            "server_core_shares_in_window": servers,
            "machine_busy_cores_in_window": round(busy, 2),
            # Someone's fault test restarted a shared server during the phase: its figures
            # measure that outage, not the pipeline.
            "servers_restarted": restarted,
        }

    def sink_timings(self, *names: str) -> dict[str, Any]:
        """Each sink worker's own histograms (app/sinks/pipeline.py): how long its writes took
        and how late its batches were written after the core published them; the quantiles are
        the upper bounds of the histograms' buckets."""
        return {name: histograms(self.procs[name][1]) for name in names if name in self.procs}

    def exited(self) -> list[str]:
        return [f"{n} (exit {p.returncode})" for n, (p, _) in self.procs.items() if p.poll()]

    def figures(self, cpu_at_start: dict[str, float], window_s: float) -> dict[str, Any]:
        """(c): peak RSS and CPU of each process, read while it still runs."""
        out: dict[str, Any] = {}
        for name, (proc, _) in self.procs.items():
            if proc.poll() is not None:
                out[name] = {"exited": proc.returncode}
                continue
            cpu = cpu_seconds(proc.pid)
            in_window = cpu - cpu_at_start.get(name, 0.0)
            out[name] = {
                "peak_rss_mib": round(peak_rss_mib(proc.pid), 1),
                "cpu_s": round(cpu, 2),
                "cpu_s_in_window": round(in_window, 2),
                "core_share_in_window": round(in_window / window_s, 2) if window_s > 0 else None,
            }
        return out

    def stop(self) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.procs.values():
            stop(proc)


SERVERS = ("kafka", "elasticsearch", "mariadb", "kube-apiserver", "etcd")


def server_pids() -> dict[str, int]:
    """The stack's servers this pipeline uses (stack/*.sh write their pids)."""
    out = {}
    for name in SERVERS:
        try:
            out[name] = int((ROOT / ".stack" / "run" / f"{name}.pid").read_text())
        except (OSError, ValueError):
            continue
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its descendants (Elasticsearch's pid is its launcher's)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += cpu_seconds(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return total


def machine_busy_seconds() -> float:
    """Busy CPU seconds of all cores since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def pipelines_config(path: Path, es_url: str, ids: dict[str, str], index: str, db_url: str) -> None:
    """The two sink pipelines, with the defaults users get (batch size, linger, concurrency)."""
    pipelines = [
        {
            "id": ids["es"],
            "sink": "elasticsearch",
            "elasticsearch": {"url": es_url, "index": index},
        },
        {"id": ids["mysql"], "sink": "mysql", "mysql": {"url": db_url}},
    ]
    path.write_text(yaml.safe_dump({"pipelines": pipelines}))


def check_destinations(
    es_url: str, index: str, db_url: str, expected: dict[str, int], query: dict[str, Any]
) -> dict[str, Any]:
    """Documents and rows, and the sum of their counts, against ``expected`` (uid -> final
    count): the destinations must hold each event once, with its last count."""
    with Elasticsearch(es_url, request_timeout=60) as es:
        es.indices.refresh(index=index)
        found = es.search(
            index=index,
            query=query["es"],
            size=0,
            aggs={"counts": {"sum": {"field": "count"}}},
            track_total_hits=True,
        )
        docs = found["hits"]["total"]["value"]
        es_counts = int(found["aggregations"]["counts"]["value"])
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows, row_counts = conn.execute(
                sa.text(f"SELECT COUNT(*), COALESCE(SUM(count), 0) FROM k8s_events {query['sql']}")
            ).one()
    finally:
        engine.dispose()
    want_counts = sum(expected.values())
    return {
        "elasticsearch_documents": docs,
        "mysql_rows": int(rows),
        "expected_events": len(expected),
        "elasticsearch_count_sum": es_counts,
        "mysql_count_sum": int(row_counts),
        "expected_count_sum": want_counts,
        "exact": docs == rows == len(expected) and es_counts == row_counts == want_counts,
    }


# ------------------------------------------------------------------------------- (a) throughput


def throughput(
    args: argparse.Namespace, tag: str, env: dict[str, str], work: Path
) -> dict[str, Any]:
    brokers, es_url, mysql_url = env["brokers"], env["es_url"], env["mysql_url"]
    stack = Stack(tag, "a", work / "a.yaml", work / "data-a")
    raw, enriched = stack.env["KUBEVENTS_TOPICS_RAW"], stack.env["KUBEVENTS_TOPICS_ENRICHED"]
    messages = bench_core.make_messages(args.events)
    m = len(messages)
    expected: dict[str, int] = {}
    for _, envelope in messages:
        obj = orjson.loads(envelope)["object"]
        expected[obj["metadata"]["uid"]] = obj["count"]  # the later version comes later
    t = time.monotonic()
    asyncio.run(bench_core.preload(brokers, raw, messages))
    print(
        f"(a) preloaded {m} raw envelopes ({len(expected)} events) in {time.monotonic() - t:.1f}s"
    )
    timeout_s = 120 + m / 200

    bare_decode, _ = asyncio.run(
        bench_core.bare_loop(brokers, raw, f"bench-e2e-{tag}-a-bare", m, timeout_s)
    )
    print(f"(a) bare decode loop: {figure(bare_decode.rate)} events/s", flush=True)

    dbs = create_databases(mysql_url, [f"bench_e2e_{tag}_a", f"bench_e2e_{tag}_a_bare"])
    sink_db, bare_db = dbs.values()
    index = f"bench-e2e-{tag}-a-sink"
    ids = {"es": f"bench-e2e-{tag}-a-es", "mysql": f"bench-e2e-{tag}-a-mysql"}
    pipelines_config(stack.config, es_url, ids, index, sink_db)
    for topic in (enriched, stack.env["KUBEVENTS_TOPICS_DLQ"]):
        asyncio.run(create_topic(brokers, topic, PARTITIONS))
    try:
        es_port = stack.worker("sink-es", ids["es"])
        mysql_port = stack.worker("sink-mysql", ids["mysql"])
        stack.wait_ready("sink-es", "sink-mysql")  # as in a running system: sinks wait for events
        started = time.monotonic()
        core_port = stack.worker("core", "core", {"KUBEVENTS_CORE_OWNER_LOOKUP": "false"})
        counters = {
            "core": (core_port, "kubevents_core_records_total"),
            "sink-es": (es_port, "kubevents_sink_written_total"),
            "sink-mysql": (mysql_port, "kubevents_sink_written_total"),
        }
        first = math.nan
        first_done = 0.0
        cpu_at_first: dict[str, float] = {}
        done: dict[str, float] = {}
        deadline = time.monotonic() + timeout_s
        while len(done) < 3 and time.monotonic() < deadline and not stack.exited():
            for name, (port, metric) in counters.items():
                if name in done:
                    continue
                value = metric_total(port, metric)
                now = time.monotonic()
                if name == "core" and math.isnan(first) and value > 0:
                    first, first_done, cpu_at_first = now, value, stack.cpu()
                if value >= m:
                    done[name] = now
            time.sleep(POLL_S)
        end = max(done.values()) if len(done) == 3 else math.nan
        processes = stack.figures(cpu_at_first, end - first)
        shared = stack.shared(cpu_at_first, end - first) if cpu_at_first else {}
        problems = stack.exited()
    finally:
        stack.stop()
    if len(done) < 3:
        raise Incomplete(
            f"(a) not every record got through in {timeout_s:.0f}s: finished {done},"
            f" exited {problems}"
        )
    counted = m - first_done  # the records done after the first instant
    e2e = per_s(counted, end - first)
    result: dict[str, Any] = {
        "raw_envelopes": m,
        "events": len(expected),
        "e2e_events_per_s": figure(e2e),
        "e2e_events_per_s_with_core_start": figure(per_s(m, end - started)),
        "elasticsearch_finished_events_per_s": figure(per_s(counted, done["sink-es"] - first)),
        "mysql_finished_events_per_s": figure(per_s(counted, done["sink-mysql"] - first)),
        "core_finished_events_per_s": figure(per_s(counted, done["core"] - first)),
        "seconds": round(end - first, 2),
        "processes": processes,
        **shared,
    }
    for p in processes.values():  # what one event costs each process
        if "cpu_s_in_window" in p and counted > 0:
            p["cpu_us_per_event"] = round(p["cpu_s_in_window"] / counted * 1e6)
    if shared and counted > 0:
        # What one event costs in CPU, the servers it goes through included (their figure also
        # holds whatever else used them meanwhile: an upper bound), and the rate the machine's
        # cores could carry at that cost if the pipeline had them to itself: an estimate of
        # what the figure would be on an idle machine, the work spread perfectly.
        servers = {
            name: round(share * (end - first) / counted * 1e6)
            for name, share in shared["server_core_shares_in_window"].items()
            if name in ("kafka", "elasticsearch", "mariadb")
        }
        ours = sum(p.get("cpu_us_per_event", 0) for p in processes.values())
        result["kubevents_cpu_us_per_event"] = ours
        result["server_cpu_us_per_event"] = servers
        total = ours + sum(servers.values())
        result["cpu_ceiling_events_per_s"] = (
            round((os.cpu_count() or 1) * 1e6 / total) if total else None
        )
    result.update(check_destinations(es_url, index, sink_db, expected, {"es": None, "sql": ""}))
    print(f"(a) end to end: {result['e2e_events_per_s']} events/s", flush=True)

    # The bare writes, of the very documents the core produced.
    events = [orjson.loads(r.value) for r in asyncio.run(read_records(brokers, enriched, m))]
    bare_bulk, _ = asyncio.run(
        bench_sinks.bare_elasticsearch(es_url, f"bench-e2e-{tag}-a-bare", events)
    )
    asyncio.run(bench_sinks.migrate_mysql(bare_db))
    bare_executemany, _ = bench_sinks.bare_mysql(bare_db, events)
    bare = {
        "decode_loop": bare_decode.rate,
        "async_streaming_bulk": bare_bulk,
        "executemany": bare_executemany,
    }
    slowest = min(bare, key=lambda k: bare[k] if math.isfinite(bare[k]) else math.inf)
    result["bare_events_per_s"] = {k: figure(v) for k, v in bare.items()}
    result["slowest_bare_stage"] = slowest
    result["ratio_to_slowest_bare"] = ratio(e2e, bare[slowest])
    result["limit"] = busiest(processes)
    return result


# ---------------------------------------------------------------------------------- (b) latency


Finder = Callable[[list[str]], set[str]]  # the uids a destination holds, of those asked


class Poller(threading.Thread):
    """Finds when each generated event becomes visible in one destination: every ``interval``
    it asks for all the uids not seen yet and stamps the ones found with the query's send
    time."""

    def __init__(self, name: str, find: Finder, interval: float):
        super().__init__(name=f"poll-{name}", daemon=True)
        self.find, self.interval = find, interval
        self.pending: set[str] = set()
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.queries = 0
        self.errors = 0
        self.first_tick = self.last_tick = math.nan  # polls that asked: the achieved interval

    def expect(self, uid: str) -> None:
        with self.lock:
            self.pending.add(uid)

    def left(self) -> int:
        with self.lock:
            return len(self.pending)

    def run(self) -> None:
        while not self.stopping.is_set():
            tick = time.time()
            with self.lock:
                uids = list(self.pending)[:5000]
            if uids:
                try:
                    found = self.find(uids)
                except Exception:  # an outage of the destination: poll on, it shows as latency
                    self.errors += 1
                    found = set()
                self.queries += 1
                if math.isnan(self.first_tick):
                    self.first_tick = tick
                self.last_tick = tick
                with self.lock:
                    for uid in found:
                        if uid in self.pending:
                            self.pending.discard(uid)
                            self.seen[uid] = tick
            self.stopping.wait(max(0.0, tick + self.interval - time.time()))


def es_finder(es_url: str, index: str) -> Finder:
    es = Elasticsearch(es_url, request_timeout=10)

    def find(uids: list[str]) -> set[str]:
        # No refresh forced: what a search sees (the index's refresh interval is part of it).
        hits = es.search(
            index=index,
            query={"ids": {"values": uids}},
            size=len(uids),
            source=False,
            ignore_unavailable=True,  # the alias exists once the first document is written
        )["hits"]["hits"]
        return {h["_id"] for h in hits}

    return find


def mysql_finder(db_url: str) -> Finder:
    # Autocommit: each query sees what is committed now, not a transaction's old snapshot.
    engine = sa.create_engine(db_url, isolation_level="AUTOCOMMIT", pool_size=1)
    query = sa.text("SELECT uid FROM k8s_events WHERE uid IN :uids").bindparams(
        sa.bindparam("uids", expanding=True)
    )

    def find(uids: list[str]) -> set[str]:
        with engine.connect() as conn:
            return {row[0] for row in conn.execute(query, {"uids": uids})}

    return find


class Generator:
    """Creates core/v1 Events at a steady rate: a pacer hands event i to a pool of threads at
    start + i / rate (the client is synchronous; the threads absorb each request's latency)."""

    def __init__(self, client: KubeClient, ns: str, objects: list[str], threads: int):
        self.client, self.ns, self.objects = client, ns, objects
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="create")
        self.created: dict[str, float] = {}  # uid -> when the API server answered
        self.index: dict[str, int] = {}  # uid -> its place in the sequence (warm-up first)
        self.request_s: list[float] = []
        self.late_s: list[float] = []
        self.failed = 0
        self.lock = threading.Lock()

    def one(self, i: int, due: float, on_created: Callable[[str], None]) -> None:
        sent = time.time()
        obj = self.objects[i % len(self.objects)]
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            created = self.client.send_json(
                "POST",
                f"/api/v1/namespaces/{self.ns}/events",
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": f"{obj}.e2e{i}", "namespace": self.ns},
                    "involvedObject": {
                        "kind": "ConfigMap",
                        "name": obj,
                        "namespace": self.ns,
                        "apiVersion": "v1",
                    },
                    "reason": ("BackOff", "Pulled", "Scheduled", "FailedMount")[i % 4],
                    "message": f"end-to-end benchmark event {i}",
                    "type": "Warning" if i % 4 in (0, 3) else "Normal",
                    "count": 1,
                    "firstTimestamp": stamp,
                    "lastTimestamp": stamp,
                    "source": {"component": "bench-e2e"},
                },
            )
        except Exception:  # counted: the achieved rate shows it
            with self.lock:
                self.failed += 1
            return
        answered = time.time()
        uid = created["metadata"]["uid"]
        with self.lock:
            self.created[uid] = answered
            self.index[uid] = i
            self.request_s.append(answered - sent)
            self.late_s.append(sent - due)
        on_created(uid)

    def run(self, rate: float, duration_s: float, on_created: Callable[[str], None]) -> None:
        total = round(rate * duration_s)
        start_at = time.time() + 0.1
        for i in range(total):
            due = start_at + i / rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            self.pool.submit(self.one, i, due, on_created)
        self.pool.shutdown(wait=True)


def latency(args: argparse.Namespace, tag: str, env: dict[str, str], work: Path) -> dict[str, Any]:
    """(b) in a fresh namespace, deleted afterwards whatever happened."""
    ns = f"bench-e2e-{tag}"
    client = KubeClient.from_settings(KubernetesSettings(qps=5000, burst=5000))
    client.send_json(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
    )
    try:
        return measure_latency(args, tag, env, work, client=client, ns=ns)
    finally:
        client.request("DELETE", f"/api/v1/namespaces/{ns}")


def measure_latency(
    args: argparse.Namespace,
    tag: str,
    env: dict[str, str],
    work: Path,
    *,
    client: KubeClient,
    ns: str,
) -> dict[str, Any]:
    brokers, es_url, mysql_url = env["brokers"], env["es_url"], env["mysql_url"]
    stack = Stack(tag, "b", work / "b.yaml", work / "data-b")
    raw, enriched = stack.env["KUBEVENTS_TOPICS_RAW"], stack.env["KUBEVENTS_TOPICS_ENRICHED"]
    # The events' involved objects exist, so the core's owner lookups find them (and cache them).
    objects = [f"cm-{i}" for i in range(20)]
    for name in objects:
        client.send_json(
            "POST",
            f"/api/v1/namespaces/{ns}/configmaps",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "labels": {"app": f"bench-{name}"}},
                "data": {"k": "v"},
            },
        )
    (sink_db,) = create_databases(mysql_url, [f"bench_e2e_{tag}_b"]).values()
    index = f"bench-e2e-{tag}-b-sink"
    ids = {"es": f"bench-e2e-{tag}-b-es", "mysql": f"bench-e2e-{tag}-b-mysql"}
    pipelines_config(stack.config, es_url, ids, index, sink_db)
    for topic in (raw, enriched, stack.env["KUBEVENTS_TOPICS_DLQ"]):
        asyncio.run(create_topic(brokers, topic, PARTITIONS))
    pollers = {
        "elasticsearch": Poller("es", es_finder(es_url, index), args.poll_ms / 1000),
        "mysql": Poller("mysql", mysql_finder(sink_db), args.poll_ms / 1000),
    }
    gen = Generator(client, ns, objects, args.threads)

    def on_created(uid: str) -> None:
        for poller in pollers.values():
            poller.expect(uid)

    try:
        stack.worker("sink-es", ids["es"])
        stack.worker("sink-mysql", ids["mysql"])
        stack.worker("core", "core")
        stack.start(
            "producer",
            ["produce"],
            {"KUBEVENTS_PRODUCER_NAMESPACES": ns, "KUBEVENTS_PRODUCER_LEADER_ELECTION": "false"},
            "KUBEVENTS_PRODUCER_HTTP_PORT",
        )
        stack.wait_ready("sink-es", "sink-mysql", "core", "producer")
        time.sleep(2)  # the groups' first assignments settle (the readiness checks do not wait)
        for poller in pollers.values():
            poller.start()
        cpu_at_start = stack.cpu()
        t0 = time.time()
        print(
            f"(b) creating {args.rate}/s events for {args.warmup}s of warm-up, then"
            f" {args.duration}s measured, in {ns}",
            flush=True,
        )
        gen.run(args.rate, args.warmup + args.duration, on_created)
        generated_s = time.time() - t0
        deadline = time.time() + args.drain_s
        while time.time() < deadline and any(p.left() for p in pollers.values()):
            time.sleep(0.2)
        window_s = time.time() - t0
        sinks = stack.sink_timings("sink-es", "sink-mysql")
        processes = stack.figures(cpu_at_start, window_s)
        shared = stack.shared(cpu_at_start, window_s)
        exited = stack.exited()
    finally:
        for poller in pollers.values():
            poller.stopping.set()
        stack.stop()
    # The warm-up's events are written and checked like the others, but the figures are the
    # steady state's: the first seconds after the stack's start include one-off costs (a cold
    # JVM's first bulks, the daily index's creation); the warm-up's own figures are printed.
    warm_n = round(args.rate * args.warmup)
    created = {u: t for u, t in gen.created.items() if gen.index[u] >= warm_n}
    warmup = {u: t for u, t in gen.created.items() if gen.index[u] < warm_n}
    if not created:
        raise Incomplete(f"(b) no event was created ({gen.failed} failures)")
    answered = sorted(created.values())
    result: dict[str, Any] = {
        "offered_events_per_s": args.rate,
        "duration_s": args.duration,
        "created": len(created),
        "warmup_s": args.warmup,
        "warmup_events": len(warmup),
        "create_failures": gen.failed,
        "achieved_events_per_s": round((len(answered) - 1) / (answered[-1] - answered[0]), 1)
        if len(answered) > 1 and answered[-1] > answered[0]
        else None,
        "generation_s": round(generated_s, 2),
        "create_request_ms": percentiles([s * 1000 for s in gen.request_s]),
        "create_start_late_ms": percentiles([s * 1000 for s in gen.late_s]),
        "polling_interval_ms": args.poll_ms,
        "polls": {k: p.queries for k, p in pollers.items()},
        # Slower than asked when the machine is loaded: each query takes longer.
        "polling_interval_achieved_ms": {
            k: round((p.last_tick - p.first_tick) / (p.queries - 1) * 1000)
            if p.queries > 1
            else None
            for k, p in pollers.items()
        },
        "poll_errors": {k: p.errors for k, p in pollers.items()},
    }
    es, mysql = pollers["elasticsearch"].seen, pollers["mysql"].seen

    def latencies(events: dict[str, float]) -> dict[str, Any]:
        """p50/p95/p99 of the delays until each destination (and both) showed ``events``."""
        return {
            "elasticsearch_searchable": percentiles(
                [es[u] - t for u, t in events.items() if u in es]
            ),
            "mysql_present": percentiles([mysql[u] - t for u, t in events.items() if u in mysql]),
            "both": percentiles(
                [max(es[u], mysql[u]) - t for u, t in events.items() if u in es and u in mysql]
            ),
        }

    result["latency_s"] = latencies(created)
    result["warmup_latency_s"] = latencies(warmup)
    result["never_visible"] = {k: p.left() for k, p in pollers.items()}
    if args.trace:
        with args.trace.open("wb") as out:
            for uid, t in sorted(gen.created.items(), key=lambda item: item[1]):
                seen = {k: p.seen.get(uid) for k, p in pollers.items()}
                line = {"uid": uid, "created": t, "warmup": uid in warmup, **seen}
                out.write(orjson.dumps(line) + b"\n")
    result["stages_ms"] = stages(
        brokers=brokers,
        raw=raw,
        enriched=enriched,
        created=created,
        pollers=pollers,
        n=len(gen.created),  # the warm-up's records come first on the topics
    )
    result["sink_timings"] = sinks
    result["processes"] = processes
    result.update(shared)
    result["exited"] = exited
    result.update(
        check_destinations(
            es_url,
            index,
            sink_db,
            dict.fromkeys(gen.created, 1),
            {"es": {"term": {"namespace": ns}}, "sql": f"WHERE namespace = '{ns}'"},
        )
    )
    result["limit"] = busiest(processes)
    return result


def histograms(port: int) -> dict[str, Any]:
    """kubevents_sink_write_seconds and kubevents_sink_delay_seconds of one worker: count, mean
    and the bucket bounds holding its p50 and p99 (ms)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError as exc:
        return {"error": str(exc)}
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("kubevents_sink_write_seconds", "kubevents_sink_delay_seconds"):
            continue
        buckets = sorted(
            (float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")
        )
        count = next((s.value for s in family.samples if s.name.endswith("_count")), 0.0)
        total = next((s.value for s in family.samples if s.name.endswith("_sum")), 0.0)
        if not count:
            continue
        out[family.name.removeprefix("kubevents_sink_")] = {
            "n": int(count),
            "mean_ms": round(total / count * 1000, 1),
            "p50_at_most_ms": bucket_bound(buckets, 0.5 * count) * 1000,
            "p99_at_most_ms": bucket_bound(buckets, 0.99 * count) * 1000,
        }
    return out


def bucket_bound(buckets: list[tuple[float, float]], rank: float) -> float:
    """The upper bound of the first cumulative bucket holding ``rank`` observations."""
    return next(le for le, n in buckets if n >= rank)


def stages(
    *,
    brokers: str,
    raw: str,
    enriched: str,
    created: dict[str, float],
    pollers: dict[str, Poller],
    n: int,
) -> dict[str, Any]:
    """Where the time goes, per event, from the records' own stamps: created (API server's
    answer) -> observed by the producer's watch (``observed_at``) -> handed to Kafka's client by
    the producer (raw record timestamp) -> published by the core (enriched record timestamp) ->
    visible in each destination (the polls). Medians and p99s in ms; one clock (this machine)."""
    raw_at: dict[str, tuple[float, float]] = {}
    for rec in asyncio.run(read_records(brokers, raw, n, timeout_s=30)):
        env = orjson.loads(rec.value)
        uid = env["object"]["metadata"]["uid"]
        if uid in created and uid not in raw_at:
            raw_at[uid] = (parse_time(env["observed_at"]), rec.timestamp / 1000)
    out_at: dict[str, float] = {}
    for rec in asyncio.run(read_records(brokers, enriched, n, timeout_s=30)):
        uid = orjson.loads(rec.value)["uid"]
        if uid in created and uid not in out_at:
            out_at[uid] = rec.timestamp / 1000
    spans: dict[str, list[float]] = {
        "created_to_watched": [],
        "watched_to_raw_record": [],
        "raw_record_to_enriched_record": [],
        "enriched_record_to_elasticsearch_searchable": [],
        "enriched_record_to_mysql_present": [],
    }
    for uid, t in created.items():
        if uid not in raw_at or uid not in out_at:
            continue
        observed, raw_ts = raw_at[uid]
        spans["created_to_watched"].append(observed - t)
        spans["watched_to_raw_record"].append(raw_ts - observed)
        spans["raw_record_to_enriched_record"].append(out_at[uid] - raw_ts)
        for name, key in (("elasticsearch", "searchable"), ("mysql", "present")):
            if uid in pollers[name].seen:
                spans[f"enriched_record_to_{name}_{key}"].append(
                    pollers[name].seen[uid] - out_at[uid]
                )
    return {
        k: {"p50": ms(statistics.median(v)), "p99": ms(quantile(v, 0.99))} if v else None
        for k, v in spans.items()
    }


# -------------------------------------------------------------------------------------- output


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "p50": round(quantile(values, 0.50), 3),
        "p95": round(quantile(values, 0.95), 3),
        "p99": round(quantile(values, 0.99), 3),
        "max": round(max(values), 3),
        "n": len(values),
    }


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def figure(value: float) -> int | None:
    return None if not math.isfinite(value) else round(value)


def per_s(count: float, seconds: float) -> float:
    """A rate; nan when nothing was timed (a tiny run done within one poll)."""
    return count / seconds if count > 0 and seconds > 0 else math.nan


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if a > 0 and b > 0 and math.isfinite(a / b) else None


def busiest(processes: dict[str, Any]) -> str | None:
    """The process that used the largest share of a core in the measured window."""
    shares = {
        n: p["core_share_in_window"]
        for n, p in processes.items()
        if p.get("core_share_in_window") is not None
    }
    return max(shares, key=lambda n: shares[n]) if shares else None


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text()
    total_kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))  # type: ignore[union-attr]
    model = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    return {
        "cores": os.cpu_count(),
        "cpu": model.group(1).strip() if model else platform.machine(),
        "memory_gib": round(total_kib / 1024 / 1024, 1),
        "load_average_1m_at_start": os.getloadavg()[0],
        "kernel": platform.release(),
    }


def versions(es_url: str, mysql_url: str) -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version(), "kubevents": app.__version__}
    git = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    out["kubevents_commit"] = git.stdout.strip() + (" (modified)" if dirty.stdout.strip() else "")
    out["kafka"] = kafka_version()
    with Elasticsearch(es_url, request_timeout=10) as es:  # GET / answers 405 on this build
        nodes = es.nodes.info(node_id="_local")["nodes"]
        out["elasticsearch"] = next(iter(nodes.values()))["version"]
    engine = sa.create_engine(mysql_url)
    try:
        with engine.connect() as conn:
            out["mysql"] = conn.execute(sa.text("SELECT VERSION()")).scalar_one()
    finally:
        engine.dispose()
    client = KubeClient.from_settings(KubernetesSettings())
    out["kubernetes"] = client.get_json("/version")["gitVersion"]
    out["libraries"] = {
        dist: metadata.version(dist)
        for dist in ("faust-streaming", "aiokafka", "elasticsearch", "SQLAlchemy", "PyMySQL")
    }
    return out


def kafka_version() -> str:
    """From the running broker's class path (the Kafka protocol does not say its version)."""
    pid_file = ROOT / ".stack" / "run" / "kafka.pid"
    try:
        cmdline = Path(f"/proc/{pid_file.read_text().strip()}/cmdline").read_bytes()
    except (OSError, ValueError):
        return "unknown"
    for part in cmdline.split(b"\0"):
        for entry in part.decode(errors="replace").split(":"):
            libs = Path(entry.rstrip("*"))
            if libs.name == "libs" or entry.endswith("/libs/*"):
                for jar in sorted(libs.glob("kafka_2.*-*.jar")):
                    found = re.match(r"kafka_2\.\d+-([\d.]+)\.jar$", jar.name)
                    if found:
                        return found.group(1)
    return "unknown"


def delete_topics(brokers: str, tag: str) -> None:
    """Every topic this run made (its name carries the run's tag: changelogs too)."""

    async def go() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics() if f"e2e-{tag}-" in t]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()

    asyncio.run(go())


def report(summary: dict[str, Any]) -> None:
    """The figures a reader wants, as lines; the JSON summary follows."""
    a, b = (
        data if data and "failed" not in data else None
        for data in (summary.get("throughput"), summary.get("latency"))
    )
    if a:
        bare = a["bare_events_per_s"]
        print(
            f"(a) throughput, raw topic -> both sinks ({a['raw_envelopes']} records,"
            f" {a['events']} events): {a['e2e_events_per_s']} events/s end to end"
            f" (Elasticsearch done at {a['elasticsearch_finished_events_per_s']},"
            f" MySQL at {a['mysql_finished_events_per_s']}, core at"
            f" {a['core_finished_events_per_s']}); bare: decode {bare['decode_loop']},"
            f" bulk {bare['async_streaming_bulk']}, executemany {bare['executemany']};"
            f" e2e / slowest bare ({a['slowest_bare_stage']}) = {a['ratio_to_slowest_bare']};"
            f" CPU per event: kubevents {a.get('kubevents_cpu_us_per_event')} us, servers"
            f" {json.dumps(a.get('server_cpu_us_per_event'))} us; at that cost the cores carry"
            f" {a.get('cpu_ceiling_events_per_s')} events/s"
        )
    if b:
        lat = b["latency_s"]
        print(
            f"(b) latency at {b['offered_events_per_s']}/s offered"
            f" ({b['achieved_events_per_s']}/s achieved, {b['created']} events, polled every"
            f" {b['polling_interval_ms']} ms, achieved"
            f" {json.dumps(b['polling_interval_achieved_ms'])}): "
            + "; ".join(
                f"{k} p50 {v['p50']} s, p95 {v['p95']} s, p99 {v['p99']} s"
                for k, v in lat.items()
                if v
            )
        )
        warm = b.get("warmup_latency_s") or {}
        print(
            f"(b) the {b.get('warmup_s')} s of warm-up before ({b.get('warmup_events')} events,"
            " not in the figures above): "
            + "; ".join(f"{k} p50 {v['p50']} s, p99 {v['p99']} s" for k, v in warm.items() if v)
        )
        stage = b.get("stages_ms") or {}
        print(
            "(b) per stage, ms: "
            + "; ".join(f"{k} p50 {v['p50']} p99 {v['p99']}" for k, v in stage.items() if v)
        )
        for name, timings in (b.get("sink_timings") or {}).items():
            print(f"(b) {name}'s own histograms: {json.dumps(timings)}")
    for phase, data in (("a", a), ("b", b)):
        if not data:
            continue
        for name, p in data["processes"].items():
            print(f"({phase}) {name}: {json.dumps(p)}")
        print(
            f"({phase}) busiest process: {data['limit']}; the machine kept"
            f" {data.get('machine_busy_cores_in_window')} cores busy; servers' core shares:"
            f" {json.dumps(data.get('server_core_shares_in_window'))}"
        )
        if data.get("servers_restarted"):
            print(
                f"({phase}) NOT A MEASUREMENT: {', '.join(data['servers_restarted'])} restarted"
                " during the phase (someone's fault test): run it again"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000, help="(a) raw envelopes")
    parser.add_argument("--rate", type=float, default=300, help="(b) events/s offered")
    parser.add_argument("--duration", type=float, default=60, help="(b) seconds measured")
    parser.add_argument(
        "--warmup", type=float, default=10, help="(b) seconds of load before, not measured"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=32,
        help="(b) creates in flight (each waits on the API server)",
    )
    parser.add_argument("--poll-ms", type=int, default=100, help="(b) visibility polling")
    parser.add_argument("--drain-s", type=float, default=60, help="(b) wait for the last ones")
    parser.add_argument("--only", choices=["throughput", "latency"])
    parser.add_argument(
        "--trace",
        type=Path,
        help="(b) write each event's instants (created, seen in each destination) as JSON lines",
    )
    args = parser.parse_args()
    env = {
        "brokers": os.environ["KUBEVENTS_KAFKA_BROKERS"],
        "es_url": os.environ["KUBEVENTS_ELASTICSEARCH_URL"],
        "mysql_url": os.environ["KUBEVENTS_MYSQL_URL"],
    }
    tag = uuid.uuid4().hex[:6]
    summary: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "bench.e2e", *sys.argv[1:]]),
        "machine": machine(),
        "versions": versions(env["es_url"], env["mysql_url"]),
    }
    for key in ("command", "machine", "versions"):
        print(f"{key}: {json.dumps(summary[key])}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    dbs = [f"bench_e2e_{tag}_a", f"bench_e2e_{tag}_a_bare", f"bench_e2e_{tag}_b"]
    failures: list[str] = []
    phases = [("throughput", throughput), ("latency", latency)]
    try:
        for key, phase in phases:
            if args.only not in (None, key):
                continue
            try:
                summary[key] = data = phase(args, tag, env, work)
            except Exception as exc:  # Incomplete, or a server down: the other phase still runs
                failures.append(f"{key}: {exc!r}")
                summary[key] = {"failed": repr(exc)}
                continue
            if not data["exact"]:
                failures.append(f"{key}: the destinations do not hold exactly the events")
            if any(data.get("never_visible", {}).values()):
                failures.append(f"{key}: never visible: {data['never_visible']}")
    finally:
        prefixes = [f"bench-e2e-{tag}-{p}" for p in ("a-sink", "a-bare", "b-sink")]
        steps: list[tuple[str, Callable[[], None]]] = [
            ("databases", lambda: drop_databases(env["mysql_url"], dbs)),
            ("indices", lambda: delete_indices(env["es_url"], prefixes)),
            ("topics", lambda: delete_topics(env["brokers"], tag)),
            ("work directory", lambda: shutil.rmtree(work)),
        ]
        for what, clean in steps:
            try:
                clean()
            except Exception as exc:  # a server down: say what is left behind, clean the rest
                print(f"bench.e2e: could not delete the run's {what} (tag {tag}): {exc}")
    report(summary)
    print(json.dumps(summary, indent=2), flush=True)
    if failures:
        sys.exit("bench.e2e: " + "; ".join(failures))


if __name__ == "__main__":
    main()
