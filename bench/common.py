"""Helpers shared by the benchmark scripts (figures printed, never asserted)."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident set size."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every descendant (a server started through a wrapper such as
    runuser); nan when the process is gone."""
    try:
        total = cpu_seconds(pid)
    except OSError:
        return float("nan")
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            total += process_tree_cpu_seconds(int(child))
    return total


def start(args: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
    out = open(ROOT / ".stack" / "logs" / log, "wb")  # noqa: SIM115 (lives as long as the process)
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env={**os.environ, "KUBEVENTS_LOG_FORMAT": "text", **env},
        stdout=out,
        stderr=subprocess.STDOUT,
    )


async def topic_size(brokers: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def create_topic(
    brokers: str, topic: str, partitions: int, configs: dict[str, str] | None = None
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs or {})])
    finally:
        await admin.close()


async def create_log_append_time_topic(brokers: str, topic: str, partitions: int) -> None:
    """A topic whose records carry the broker's append time (ms): a timer that costs the
    process under test nothing and does not depend on how often anyone polls it."""
    await create_topic(brokers, topic, partitions, {"message.timestamp.type": "LogAppendTime"})


async def read_records(
    brokers: str, topic: str, n: int, timeout_s: float = 120
) -> list[ConsumerRecord[bytes, bytes]]:
    """The first n records of the topic (fewer if the time runs out), read from the start."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=brokers, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            out.extend(m for msgs in batch.values() for m in msgs)
    finally:
        await consumer.stop()
    return out


async def append_times(brokers: str, topic: str, n: int, timeout_s: float = 120) -> list[int]:
    """The broker append time (ms) of each of the first n records of the topic."""
    return [m.timestamp for m in await read_records(brokers, topic, n, timeout_s)]


def steady_rate(times: Sequence[float], unit_s: float = 0.001) -> float:
    """Records per second between the first and the last completion, counting only the records
    completed after the first instant: the interval and the count cover the same records.
    ``times`` holds one completion time per record (broker append times in ms by default; a
    reader's page-parsed instants, one per item of the page, work the same way)."""
    first, last = min(times), max(times)
    if last <= first:
        return float("nan")
    return sum(1 for t in times if t > first) / ((last - first) * unit_s)


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (so concurrent runs do not collide)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_topic_size(
    brokers: str, topic: str, n: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None
) -> tuple[float, float, float]:
    """Poll until the topic holds n messages; returns (first_seen, done, peak_rss_mib)."""
    first: float | None = None
    done = float("nan")
    peak = 0.0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        size = asyncio.run(topic_size(brokers, topic))
        now = time.monotonic()
        if proc is not None and proc.poll() is None:
            peak = max(peak, peak_rss_mib(proc.pid))
        if size > 0 and first is None:
            first = now
        if size >= n:
            done = now
            break
        time.sleep(0.2)
    return (first if first is not None else float("nan")), done, peak


def metric_total(port: int, name: str) -> float:
    """Sum of a Prometheus metric's samples from a kubevents process (cheap to poll)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


class Progress(NamedTuple):
    """A counter polled until it reached its target. ``first``: the first poll that saw it
    above 0, ``first_value``: its value then; ``done``/``done_value``: the poll that saw the
    target. The records counted over [first, done] are ``done_value - first_value``: the ones
    at ``first`` were done before the interval began (``rate``)."""

    first: float
    first_value: float
    done: float
    done_value: float
    peak_rss_mib: float
    # The process's CPU seconds over [first, done] (start-up excluded), and those of the
    # processes ``others`` counts (servers); nan when not measured.
    cpu_s: float = float("nan")
    others_cpu_s: float = float("nan")

    @property
    def complete(self) -> bool:
        return not math.isnan(self.done)

    @property
    def rate(self) -> float:
        """Records per second over [first, done], counting only those done inside it."""
        if not self.complete or self.done <= self.first or self.done_value <= self.first_value:
            return float("nan")  # everything was done at the first instant: nothing to time
        return (self.done_value - self.first_value) / (self.done - self.first)


def wait_metric_progress(
    port: int,
    name: str,
    n: int,
    timeout_s: float,
    proc: subprocess.Popen[bytes],
    *,
    interval_s: float = 0.02,
    others: Callable[[], float] = lambda: float("nan"),
) -> Progress:
    """Poll until metric ``name`` reaches n (or the process exits, or the time is up).
    ``others``: CPU seconds of other processes so far, taken at the same instants."""
    first: float | None = None
    first_value = 0.0
    first_cpu = first_others = float("nan")
    peak = 0.0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        value = metric_total(port, name)
        now = time.monotonic()
        peak = max(peak, peak_rss_mib(proc.pid))
        if value > 0 and first is None:
            first, first_value = now, value
            first_cpu, first_others = cpu_seconds(proc.pid), others()
        if value >= n:
            if first is None:
                first, first_value = now, value
                first_cpu, first_others = cpu_seconds(proc.pid), others()
            cpu, other = cpu_seconds(proc.pid) - first_cpu, others() - first_others
            return Progress(first, first_value, now, value, peak, cpu, other)
        time.sleep(interval_s)
    nan = float("nan")
    return Progress(first if first is not None else nan, first_value, nan, nan, peak)


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after ``timeout_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> bool:
    """Poll a kubevents process's /readyz until it answers 200 (False: it exited or the time
    ran out)."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def create_databases(mysql_url: str, names: list[str]) -> dict[str, str]:
    """Fresh utf8mb4 databases on the MySQL server of ``mysql_url``: name -> their URL."""
    import sqlalchemy as sa

    base = sa.engine.make_url(mysql_url)
    admin = sa.create_engine(base.set(database=""))
    try:
        with admin.begin() as conn:
            for name in names:
                conn.execute(sa.text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
    finally:
        admin.dispose()
    return {n: base.set(database=n).render_as_string(hide_password=False) for n in names}


def drop_databases(mysql_url: str, names: list[str]) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(sa.engine.make_url(mysql_url).set(database=""))
    try:
        with admin.begin() as conn:
            for name in names:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
    finally:
        admin.dispose()


def delete_indices(es_url: str, prefixes: list[str]) -> None:
    """Remove the daily indices ``<prefix>-*`` and the index template of each sink index
    ``prefix`` (only names the benchmark made: others' indices are never touched)."""
    from elasticsearch import Elasticsearch

    from app.sinks.elasticsearch_indices import template_name

    es = Elasticsearch(es_url, request_timeout=60)
    try:
        for prefix in prefixes:
            for name in es.indices.get(index=f"{prefix}-*", ignore_unavailable=True).body:
                es.options(ignore_status=404).indices.delete(index=name)
            es.options(ignore_status=404).indices.delete_index_template(name=template_name(prefix))
    finally:
        es.close()
