"""Fixtures for tests against the real services of the local stack (make stack).

A missing service is a failure, never a skip: these tests exist to prove the real thing works.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kubernetes import client as k8s
from kubernetes import config as k8s_config

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / ".stack" / "logs" / "tests"
# The logs of a failed test's processes are copied here, outside the checkout: CI runs on a clone
# it deletes afterwards, and a failure that shows once in many runs must leave its evidence.
KEPT_LOGS = Path(os.environ.get("KUBEVENTS_TEST_FAILED_LOGS", "/tmp/kubevents-failed-tests"))


def need_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"${name} is not set: run the tests through 'make test' (it sources .stack/env)"
        )
    return value


@pytest.fixture(scope="session")
def brokers() -> str:
    return need_env("KUBEVENTS_KAFKA_BROKERS")


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    return need_env("KUBECONFIG")


@pytest.fixture(scope="session")
def api(kubeconfig: str) -> k8s.ApiClient:
    k8s_config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]  # unannotated
    return k8s.ApiClient()


def make_names() -> dict[str, str]:
    """Topic names, a consumer group and a Lease unique to their user, so tests never see each
    other (the ``names`` fixture for one test; a module-scoped fixture calls it once)."""
    tag = uuid.uuid4().hex[:8]
    return {
        "KUBEVENTS_TOPICS_RAW": f"t{tag}-raw",
        "KUBEVENTS_TOPICS_ENRICHED": f"t{tag}-events",
        "KUBEVENTS_TOPICS_DLQ": f"t{tag}-dlq",
        "KUBEVENTS_CORE_APP_ID": f"t{tag}-core",
        "KUBEVENTS_PRODUCER_LEASE_NAME": f"t{tag}-lease",
        # sink pipelines' groups: t<tag>-sink-<id> (tests run side by side with the same ids)
        "KUBEVENTS_WORKER_SINK_GROUP_PREFIX": f"t{tag}-sink-",
        "tag": tag,
    }


@pytest.fixture()
def names() -> dict[str, str]:
    """Topic names and a consumer group unique to one test, so tests never see each other."""
    return make_names()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A kubevents process started as a real subprocess (so it can be SIGKILLed)."""

    def __init__(self, args: list[str], env: dict[str, str], name: str):
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.log = self.log_path.open("wb")
        full_env = {**os.environ, "KUBEVENTS_LOG_FORMAT": "text", **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            start_new_session=True,
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.returncode or 0)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")


def metric(port: int, name: str) -> float:
    """The sum of a Prometheus metric's samples (all label sets) on a kubevents /metrics."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def stack_ctl(service: str, action: str) -> None:
    """Stop, start or wait for one of the stack's servers (stack/<service>.sh): a real outage."""
    subprocess.run(
        ["bash", str(ROOT / "stack" / f"{service}.sh"), action],
        check=True,
        capture_output=True,
        timeout=240,
    )


def kafka_ctl(action: str) -> None:
    """Stop, start or wait for the stack's Kafka (stack/kafka.sh): a real outage."""
    stack_ctl("kafka", action)


def keep_logs_of_failure(item: pytest.Item, started: list[Proc]) -> None:
    """When the test failed: print the tail of each process's log (the warnings first) into the
    report and copy the whole logs to KEPT_LOGS/<time>-<test>/."""
    report = getattr(item, "report_call", None)
    if report is None or not report.failed or not started:
        return
    kept = KEPT_LOGS / f"{time.strftime('%Y%m%dT%H%M%S')}-{item.name}"[:200]
    kept.mkdir(parents=True, exist_ok=True)
    for p in started:
        p.log.flush()
        text = p.output()
        (kept / p.log_path.name).write_text(text)
        lines = text.splitlines()
        warnings = [line for line in lines if "[WARNING]" in line or "[ERROR]" in line]
        print(f"\n===== {p.log_path.name} (exit {p.proc.returncode}); kept in {kept}")
        print("\n".join(["-- warnings and errors (last 30):", *warnings[-30:]]))
        print("\n".join(["-- last 40 lines:", *lines[-40:]]))


@pytest.fixture()
def procs(request: pytest.FixtureRequest) -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()
    keep_logs_of_failure(request.node, started)


def wait_http(url: str, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready after {timeout}s")


def get_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def consume(
    brokers: str,
    topic: str,
    *,
    until: int | None = None,
    idle_s: float = 5.0,
    timeout_s: float = 120.0,
) -> list[tuple[bytes | None, bytes | None, int]]:
    """All messages of a topic from the beginning: (key, value, partition). Stops at ``until``
    messages or after ``idle_s`` without a new one (when the topic had at least ``until``)."""

    async def run() -> list[tuple[bytes | None, bytes | None, int]]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=brokers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        out: list[tuple[bytes | None, bytes | None, int]] = []
        try:
            deadline = time.monotonic() + timeout_s
            last_new = time.monotonic()
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for msgs in batch.values():
                    for m in msgs:
                        out.append((m.key, m.value, m.partition))
                        last_new = time.monotonic()
                if until is not None and len(out) >= until and time.monotonic() - last_new > 1.0:
                    break
                if until is None and time.monotonic() - last_new > idle_s:
                    break
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


def produce(brokers: str, topic: str, messages: Sequence[tuple[bytes, bytes | None]]) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all")
        await producer.start()
        try:
            for key, value in messages:
                await producer.send(topic, value, key=key)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(run())


def committed(brokers: str, group: str, topic: str) -> dict[int, int]:
    """The consumer group's committed offsets on ``topic``: partition -> next offset to read."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def run() -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}

    return asyncio.run(run())


def settled_commits(brokers: str, group: str, topic: str, timeout: float = 30) -> int:
    """Records committed on ``topic`` once the group's commits stop moving (Faust commits acked
    offsets every second): waits for two equal readings 1.5 s apart."""
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        total = sum(committed(brokers, group, topic).values())
        if total == last:
            return total
        assert time.monotonic() < deadline, "the group's commits never settled"
        last = total
        time.sleep(1.5)


def wait_committed(brokers: str, group: str, topic: str, total: int, timeout: float = 180) -> None:
    """Wait until the group has committed ``total`` records of ``topic``: a worker commits a
    record only once its outputs are acknowledged, so everything is out by then."""
    deadline = time.monotonic() + timeout
    while (done := sum(committed(brokers, group, topic).values())) < total:
        assert time.monotonic() < deadline, f"only {done} of {total} records were committed"
        time.sleep(0.5)


def wait_metric(port: int, name: str, at_least: float, timeout: float = 60) -> float:
    """Poll a kubevents /metrics until ``name`` reaches ``at_least``: a fault landed, a stage
    got so far."""
    deadline = time.monotonic() + timeout
    while True:
        value = metric(port, name)
        if value >= at_least:
            return value
        assert time.monotonic() < deadline, f"{name} stayed at {value} < {at_least}"
        time.sleep(0.2)


def json_values(messages: list[tuple[bytes | None, bytes | None, int]]) -> list[dict[str, Any]]:
    return [json.loads(v) for _, v, _ in messages if v is not None]
