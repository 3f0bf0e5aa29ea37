"""Helpers shared by the benchmark scripts (figures printed, never asserted)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
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


async def append_times(brokers: str, topic: str, n: int, timeout_s: float = 120) -> list[int]:
    """The broker append time (ms) of each of the first n records of the topic."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=brokers, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[int] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            out.extend(m.timestamp for msgs in batch.values() for m in msgs)
    finally:
        await consumer.stop()
    return out


def steady_rate(times_ms: list[int]) -> float:
    """Records per second between the first and the last append, counting only those appended
    after the first instant (the window holds exactly the records counted)."""
    first, last = min(times_ms), max(times_ms)
    if last <= first:
        return float("nan")
    return sum(1 for t in times_ms if t > first) / ((last - first) / 1000)


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


def wait_metric(
    port: int, name: str, n: int, timeout_s: float, proc: subprocess.Popen[bytes]
) -> tuple[float, float, float]:
    """Poll until metric ``name`` reaches n; returns (first_seen, done, peak_rss_mib)."""
    first, _, done, peak = wait_metric_progress(port, name, n, timeout_s, proc)
    return first, done, peak


def wait_metric_progress(
    port: int,
    name: str,
    n: int,
    timeout_s: float,
    proc: subprocess.Popen[bytes],
    *,
    interval_s: float = 0.02,
) -> tuple[float, float, float, float]:
    """Poll until metric ``name`` reaches n; returns (first_seen, value at first_seen, done,
    peak_rss_mib). A rate over [first_seen, done] must count ``n - value at first_seen``."""
    first: float | None = None
    first_value = 0.0
    peak = 0.0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        value = metric_total(port, name)
        now = time.monotonic()
        peak = max(peak, peak_rss_mib(proc.pid))
        if value > 0 and first is None:
            first, first_value = now, value
        if value >= n:
            if first is None:
                first, first_value = now, value
            return first, first_value, now, peak
        time.sleep(interval_s)
    nan = float("nan")
    return (first if first is not None else nan), first_value, nan, peak
