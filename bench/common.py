"""Helpers shared by the benchmark scripts (figures printed, never asserted)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident set size."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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
    first: float | None = None
    peak = 0.0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        value = metric_total(port, name)
        now = time.monotonic()
        peak = max(peak, peak_rss_mib(proc.pid))
        if value > 0 and first is None:
            first = now
        if value >= n:
            return first if first is not None else now, now, peak
        time.sleep(0.05)
    return (first if first is not None else float("nan")), float("nan"), peak
