"""Kafka as users run it: the stack's 3-node KRaft cluster (stack/kafka-cluster.sh, started by
``make stack KAFKA_BROKERS=3``). Three registered brokers and a controller quorum; kubevents'
own topics created with three replicas and ``min.insync.replicas=2``; and real kubevents
processes riding through one node SIGKILLed while they write: ``kubevents replay`` (every event
on the topic exactly once) and the core worker (every event out, exact copies at worst, counts
exact), with the partition leaders moving and the node rejoining every ISR afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, KafkaTimeoutError

from tests.integration.conftest import (
    ROOT,
    Proc,
    consume,
    free_port,
    make_names,
    metric,
    need_env,
    wait_http,
)
from tests.integration.test_core import wait_counts, wait_uids

CLUSTER_CTL = ROOT / "stack" / "kafka-cluster.sh"
PROBE = ROOT / "stack" / "kafka-probe.py"
NODES = {1, 2, 3}
# Short client timeouts: a request to the killed node fails in seconds, not in 30.
TIMEOUT_MS = 5000


@pytest.fixture(scope="module")
def cluster() -> str:
    return need_env("KUBEVENTS_TEST_KAFKA_CLUSTER")


@pytest.fixture(scope="module")
def controllers() -> str:
    return need_env("KUBEVENTS_TEST_KAFKA_CLUSTER_CONTROLLERS")


def cluster_ctl(*args: str, timeout: float = 150) -> None:
    """stack/kafka-cluster.sh ACTION [N]: kill, start or wait for one node (a real crash)."""
    result = subprocess.run(
        ["bash", str(CLUSTER_CTL), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"kafka-cluster.sh {' '.join(args)}: {result.stderr}"


def probe(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(PROBE), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.fixture(scope="module", autouse=True)
def whole_cluster(cluster: str, controllers: str) -> Iterator[None]:
    """Every test starts with all three nodes up, and leaves them so (a failed fault test must
    not leave the next one, or the next run, with a node down)."""
    for n in sorted(NODES):
        cluster_ctl("start-node", str(n))
    cluster_ctl("wait")
    yield
    for n in sorted(NODES):
        cluster_ctl("start-node", str(n))
    cluster_ctl("wait")


@pytest.fixture()
def names(cluster: str) -> Iterator[dict[str, str]]:
    """Topic names unique to one test; its topics are deleted afterwards, so that a node
    restarted after a crash has only a few logs to recover."""
    names = make_names()
    yield names

    async def delete(admin: AIOKafkaAdminClient) -> None:
        # Every topic of the test: kubevents' own and the core's table changelogs.
        if gone := [t for t in await admin.list_topics() if t.startswith(f"t{names['tag']}")]:
            await admin.delete_topics(gone)

    asyncio.run(with_admin(cluster, delete))


async def with_admin(cluster: str, fn: Callable[[AIOKafkaAdminClient], Awaitable[Any]]) -> Any:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=cluster, request_timeout_ms=TIMEOUT_MS, client_id="test-cluster"
    )
    await admin.start()
    try:
        return await fn(admin)
    finally:
        await admin.close()


async def partitions(
    admin: AIOKafkaAdminClient, topic: str, wait_s: float = 15
) -> dict[int, dict[str, Any]]:
    """partition -> {"leader": id, "replicas": [...], "isr": [...]}, as the cluster reports it
    (waiting up to ``wait_s`` for the topic to exist)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            described = await admin.describe_topics([topic])
        except KafkaError as exc:
            # The admin client may pick the node just killed; it answers from another one.
            assert exc.retriable and time.monotonic() < deadline, exc
            await asyncio.sleep(0.2)
            continue
        # 3, UNKNOWN_TOPIC_OR_PARTITION: a topic just created reaches each broker's metadata
        # cache a moment after the controller answered the creation.
        if described[0]["error_code"] != 3 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert described[0]["error_code"] == 0, described
    return {
        p["partition"]: {"leader": p["leader"], "replicas": p["replicas"], "isr": p["isr"]}
        for p in described[0]["partitions"]
    }


async def configs(
    admin: AIOKafkaAdminClient,
    kind: ConfigResourceType,
    name: str,
    keys: list[str],
    wait_s: float = 15,
) -> dict[str, str]:
    """The values of ``keys``. A topic just created may not have reached the broker asked yet
    (KRaft propagates it through the metadata log): it answers UNKNOWN_TOPIC_OR_PARTITION with
    no entries, asked again until ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        request = [ConfigResource(kind, name, dict.fromkeys(keys))]
        [response] = await admin.describe_configs(request)
        [resource] = response.resources
        error_code = resource[0]
        if error_code == 0 or time.monotonic() > deadline:
            return {entry[0]: entry[1] for entry in resource[4]}
        await asyncio.sleep(0.2)


def kubevents(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        check=False,
        env={**os.environ, "KUBEVENTS_LOG_FORMAT": "text", **env},
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )


def cluster_env(cluster: str, names: dict[str, str]) -> dict[str, str]:
    return {
        "KUBEVENTS_KAFKA_BROKERS": cluster,
        "KUBEVENTS_TOPICS_RAW": names["KUBEVENTS_TOPICS_RAW"],
        "KUBEVENTS_TOPICS_ENRICHED": names["KUBEVENTS_TOPICS_ENRICHED"],
        "KUBEVENTS_TOPICS_DLQ": names["KUBEVENTS_TOPICS_DLQ"],
        "KUBEVENTS_TOPICS_PARTITIONS": "6",
        "KUBEVENTS_TOPICS_REPLICATION_FACTOR": "3",
    }


def test_three_brokers_and_a_controller_quorum(cluster: str, controllers: str) -> None:
    async def brokers(admin: AIOKafkaAdminClient) -> Any:
        return await admin.describe_cluster()

    described = asyncio.run(with_admin(cluster, brokers))
    assert {b["node_id"] for b in described["brokers"]} == NODES
    assert {b["port"] for b in described["brokers"]} == {
        int(a.rsplit(":", 1)[1]) for a in cluster.split(",")
    }
    quorum = probe("quorum", controllers)
    assert quorum["leader"] in NODES
    assert {int(v) for v in quorum["voters"]} == NODES
    # Every voter has replicated the metadata log lately: a quorum, not three lone controllers.
    assert all(0 <= v["caught_up_ms_ago"] < 5000 for v in quorum["voters"].values()), quorum

    async def broker_configs(admin: AIOKafkaAdminClient) -> dict[str, str]:
        keys = [
            "default.replication.factor",
            "min.insync.replicas",
            "unclean.leader.election.enable",
            "offsets.topic.replication.factor",
            "transaction.state.log.min.isr",
        ]
        return await configs(admin, ConfigResourceType.BROKER, "1", keys)

    assert asyncio.run(with_admin(cluster, broker_configs)) == {
        "default.replication.factor": "3",
        "min.insync.replicas": "2",
        "unclean.leader.election.enable": "false",
        "offsets.topic.replication.factor": "3",
        "transaction.state.log.min.isr": "2",
    }


def test_kubevents_topics_get_three_replicas_and_min_isr_two(
    cluster: str, names: dict[str, str]
) -> None:
    result = kubevents(["topics"], cluster_env(cluster, names))
    assert result.returncode == 0, result.stderr
    topics = [names[k] for k in ("KUBEVENTS_TOPICS_RAW", "KUBEVENTS_TOPICS_ENRICHED")]
    topics.append(names["KUBEVENTS_TOPICS_DLQ"])
    assert all(t in result.stdout for t in topics), result.stdout

    async def check(admin: AIOKafkaAdminClient) -> None:
        for topic in topics:
            parts = await partitions(admin, topic)
            assert len(parts) == 6
            for p in parts.values():
                assert sorted(p["replicas"]) == sorted(NODES), (topic, p)
                assert sorted(p["isr"]) == sorted(NODES), (topic, p)
            got = await configs(admin, ConfigResourceType.TOPIC, topic, ["min.insync.replicas"])
            assert got == {"min.insync.replicas": "2"}, (topic, got)
        # The leaders are spread: one node's crash moves some partitions, not all of them.
        leaders = Counter(p["leader"] for p in (await partitions(admin, topics[0])).values())
        assert set(leaders) == NODES, leaders

    asyncio.run(with_admin(cluster, check))


def write_dump(path: Path, tag: str, n: int) -> set[str]:
    """``n`` core/v1 Events (NDJSON) about n/4 objects: several events share each key, so
    per-key order is exercised too. Returns their uids."""
    uids = set()
    # Now: the core's windowed counts take events by their last occurrence.
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with path.open("w") as out:
        for i in range(n):
            uid = f"{tag}-e{i}"
            uids.add(uid)
            event = {
                "kind": "Event",
                "apiVersion": "v1",
                "metadata": {
                    "name": f"pod-{i % (n // 4)}.{i:x}",
                    "namespace": "crash",
                    "uid": uid,
                    "resourceVersion": str(1000 + i),
                },
                "involvedObject": {
                    "kind": "Pod",
                    "namespace": "crash",
                    "name": f"pod-{i % (n // 4)}",
                    "uid": f"{tag}-pod-{i % (n // 4)}",
                },
                "reason": "BackOff",
                "message": f"Back-off restarting failed container (event {i})",
                "source": {"component": "kubelet", "host": "node-1"},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
                "type": "Warning",
            }
            out.write(json.dumps(event) + "\n")
    return uids


async def end_offsets(consumer: AIOKafkaConsumer, topic: str, parts: list[int]) -> dict[int, int]:
    """Each partition's high watermark: what acks=all acknowledged (replicated to the ISR)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        except KafkaTimeoutError:
            # A partition whose leader just died answers once the controller moved it.
            assert time.monotonic() < deadline, "no partition leaders for 30 s"
            continue
        return {tp.partition: offset for tp, offset in ends.items()}


async def wait_leaders_moved(
    admin: AIOKafkaAdminClient, topic: str, victim: int, led: list[int], within_s: float = 60
) -> dict[int, dict[str, Any]]:
    """Until no partition of ``led`` has ``victim`` (or nobody) for leader: the controller
    fenced the dead node."""
    started = time.monotonic()
    while True:
        after = await partitions(admin, topic)
        if all(after[p]["leader"] not in (victim, -1) for p in led):
            return after
        assert time.monotonic() - started < within_s, f"leaders never moved: {after}"
        await asyncio.sleep(0.2)


async def wait_rejoined(admin: AIOKafkaAdminClient, topic: str, victim: int) -> None:
    """Until ``victim`` is back in the ISR of every partition of ``topic`` (caught up)."""
    deadline = time.monotonic() + 60
    while True:
        parts = await partitions(admin, topic)
        if all(victim in p["isr"] for p in parts.values()):
            return
        assert time.monotonic() < deadline, f"node {victim} never rejoined the ISR: {parts}"
        await asyncio.sleep(0.5)


def test_replay_rides_through_a_node_sigkilled_under_load(
    cluster: str, names: dict[str, str], tmp_path: Path
) -> None:
    """A real kubevents process writes while the node leading some of its partitions crashes:
    the fault lands with records in flight, the leaders move, the writes go on through the new
    leaders, and every event is on the topic exactly once. Then the node rejoins every ISR."""
    env = cluster_env(cluster, names)
    topic = names["KUBEVENTS_TOPICS_RAW"]
    n = 30_000
    dump = tmp_path / "events.ndjson"
    uids = write_dump(dump, names["tag"], n)

    async def scenario() -> dict[str, Any]:
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster, request_timeout_ms=TIMEOUT_MS)
        consumer = AIOKafkaConsumer(bootstrap_servers=cluster, request_timeout_ms=TIMEOUT_MS)
        await admin.start()
        await consumer.start()
        try:
            proc = Proc(["replay", "-q", str(dump)], env, "replay-cluster")
            try:
                # The topic, as replay creates it (three replicas): the victim is the node
                # that leads most of its partitions.
                before = await partitions(admin, topic, wait_s=60)
                leads = Counter(p["leader"] for p in before.values())
                victim = leads.most_common(1)[0][0]
                led = sorted(p for p, info in before.items() if info["leader"] == victim)
                assert all(len(p["replicas"]) == 3 for p in before.values()), before
                # Kill once a tenth of the records is acknowledged (acks=all: the high
                # watermarks) and the victim's partitions have some: it fails mid-stream.
                deadline = time.monotonic() + 60
                while True:
                    ends = await end_offsets(consumer, topic, sorted(before))
                    if sum(ends.values()) >= n // 10 and all(ends[p] > 0 for p in led):
                        break
                    assert proc.proc.poll() is None, f"replay ended early: {proc.output()}"
                    assert time.monotonic() < deadline, f"replay too slow: {ends}"
                    await asyncio.sleep(0.05)
                # What was acknowledged just before the kill (asking after it would wait for
                # the dead leaders).
                at_kill = ends
                in_flight = proc.proc.poll() is None
                await asyncio.to_thread(cluster_ctl, "kill", str(victim))
                killed_at = time.monotonic()
                after = await wait_leaders_moved(admin, topic, victim, led)
                moved_s = time.monotonic() - killed_at
                rc = await asyncio.to_thread(proc.proc.wait, 120)
                finished_s = time.monotonic() - killed_at
                # Back up while the topic is read and checked (a JVM start takes seconds).
                await asyncio.to_thread(cluster_ctl, "start-node", str(victim))
                final = await end_offsets(consumer, topic, sorted(before))
            finally:
                proc.kill()
            return {
                "victim": victim,
                "led": led,
                "before": before,
                "after": after,
                "at_kill": at_kill,
                "final": final,
                "in_flight": in_flight,
                "rc": rc,
                "moved_s": moved_s,
                "finished_s": finished_s,
                "output": proc.output(),
            }
        finally:
            await consumer.stop()
            await admin.close()

    started = time.monotonic()
    r = asyncio.run(scenario())
    victim, led, at_kill, final = r["victim"], r["led"], r["at_kill"], r["final"]
    new_leaders = [r["after"][p]["leader"] for p in sorted(r["after"])]
    print(
        f"\nreplay: node {victim} (leader of partitions {led}) killed at"
        f" {sum(at_kill.values())}/{n} records; leaders moved after {r['moved_s']:.1f}s;"
        f" replay done after {r['finished_s']:.1f}s; leaders now {new_leaders}"
    )
    assert r["rc"] == 0, r["output"]
    # The fault landed with records in flight: the process was still writing, and the topic
    # grew after the kill, on the partitions the dead node had led too (through their new
    # leaders).
    assert r["in_flight"] and sum(at_kill.values()) < n, at_kill
    # Most of what the dead node's partitions hold came after the kill (killed at ~a tenth of
    # the records): written through their new leaders, the dead node being gone.
    assert all(final[p] - at_kill[p] >= final[p] // 2 for p in led), (led, at_kill, final)
    assert all(r["after"][p]["leader"] != victim for p in led)

    # Exactly once: every event, none twice, none missing.
    messages = consume(cluster, topic, until=n, idle_s=5, timeout_s=90)
    print(f"replay: topic read and checked after {time.monotonic() - started:.1f}s")
    seen = Counter(orjson.loads(v)["object"]["metadata"]["uid"] for _, v, _ in messages if v)
    doubled = {uid: c for uid, c in seen.items() if c > 1}
    assert not doubled, f"{len(doubled)} events written more than once, e.g. {list(doubled)[:5]}"
    assert set(seen) == uids, f"{len(uids - set(seen))} events lost"
    assert sum(final.values()) == n

    # The node (started again above) comes back and catches up: in every partition's ISR.
    cluster_ctl("wait-node", str(victim))

    asyncio.run(with_admin(cluster, lambda admin: wait_rejoined(admin, topic, victim)))
    print(f"replay: node {victim} back in every ISR after {time.monotonic() - started:.1f}s")


def test_core_worker_rides_through_a_node_sigkilled_under_load(
    cluster: str, names: dict[str, str], tmp_path: Path
) -> None:
    """The core worker reads, dedupes, writes its outputs and table changelogs (all with three
    replicas) while the node leading most of its output partitions crashes: it goes on through
    the new leaders, every event comes out (exact copies at worst), and the counts add up
    exactly."""
    n = 20_000
    port = free_port()
    env = {
        **cluster_env(cluster, names),
        "KUBEVENTS_CORE_APP_ID": names["KUBEVENTS_CORE_APP_ID"],
        "KUBEVENTS_CORE_OWNER_LOOKUP": "false",
        "KUBEVENTS_CLUSTER_NAME": "it",
        "KUBEVENTS_WORKER_SESSION_TIMEOUT_S": "8",
        "KUBEVENTS_WORKER_WEB_HOST": "127.0.0.1",
        "KUBEVENTS_WORKER_WEB_PORT": str(port),
    }
    out_topic = names["KUBEVENTS_TOPICS_ENRICHED"]
    started = time.monotonic()
    # The backlog first (replayed): the worker then reads it as fast as it can, so that the
    # crash finds records fetched, being written and not yet committed.
    uids = write_dump(tmp_path / "events.ndjson", names["tag"], n)
    replayed = kubevents(["replay", "-q", str(tmp_path / "events.ndjson")], env)
    assert replayed.returncode == 0, replayed.stderr
    print(f"\ncore: backlog of {n} after {time.monotonic() - started:.1f}s")
    worker = Proc(["worker", "--pipeline", "core"], env, "core-cluster")
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120)

        async def scenario() -> dict[str, Any]:
            admin = AIOKafkaAdminClient(bootstrap_servers=cluster, request_timeout_ms=TIMEOUT_MS)
            await admin.start()
            try:
                before = await partitions(admin, out_topic)
                # The harder crash: the node that is also the group's coordinator (the group
                # must find a new one), if it leads output partitions too.
                coordinator = await admin.find_coordinator(env["KUBEVENTS_CORE_APP_ID"])
                leaders = Counter(p["leader"] for p in before.values())
                victim = coordinator if coordinator in leaders else leaders.most_common(1)[0][0]
                led = sorted(p for p, info in before.items() if info["leader"] == victim)
                deadline = time.monotonic() + 90
                while (written := metric(port, "kubevents_kafka_written_total")) < n // 10:
                    assert time.monotonic() < deadline, f"the worker wrote only {written}"
                    await asyncio.sleep(0.05)
                done_at_kill = metric(port, "kubevents_core_records_total")
                await asyncio.to_thread(cluster_ctl, "kill", str(victim))
                killed_at = time.monotonic()
                after = await wait_leaders_moved(admin, out_topic, victim, led)
                return {
                    "victim": victim,
                    "coordinator": coordinator,
                    "led": led,
                    "after": after,
                    "done_at_kill": done_at_kill,
                    "written_at_move": metric(port, "kubevents_kafka_written_total"),
                    "moved_s": time.monotonic() - killed_at,
                }
            finally:
                await admin.close()

        r = asyncio.run(scenario())
        victim = r["victim"]
        print(
            f"core: node {victim} (leader of output partitions {r['led']}, group coordinator:"
            f" {victim == r['coordinator']}) killed with"
            f" {r['done_at_kill']:.0f}/{n} records processed; leaders moved after"
            f" {r['moved_s']:.1f}s"
        )
        # Records were in flight through the worker when the node died.
        assert r["done_at_kill"] < n, r
        wait_uids(cluster, out_topic, uids, timeout=180)
        print(f"core: all out after {time.monotonic() - started:.1f}s")
        # Back up while the outputs and counts are checked.
        cluster_ctl("start-node", str(victim))
        # The worker went on writing after the leaders moved.
        assert metric(port, "kubevents_kafka_written_total") > r["written_at_move"]
        values: dict[str, set[bytes]] = {}
        copies: Counter[str] = Counter()
        for _, value, _ in consume(cluster, out_topic, idle_s=2):
            assert value is not None
            uid = orjson.loads(value)["uid"]
            values.setdefault(uid, set()).add(value)
            copies[uid] += 1
        repeats = sum(copies.values()) - len(copies)
        print(f"core: {repeats} events written to {out_topic} more than once")
        assert set(copies) == uids, f"{len(uids - set(copies))} events lost"
        # The crash of the group coordinator makes the group rebalance, and the batch in hand
        # is published again (agents/core.py: a generation change sends the batch's records to
        # whoever owns the partition next): at-least-once, so only exact copies are allowed,
        # which the sinks' upserts by uid and version absorb.
        changed = [uid for uid, vs in values.items() if len(vs) > 1]
        assert not changed, f"{len(changed)} events came out twice with different content"
        # Counted once each, repeats or not.
        wait_counts(port, n, timeout=120)
        assert worker.proc.poll() is None, worker.output()
    finally:
        worker.kill()
    # Back, caught up: in every ISR of the output topic again.
    cluster_ctl("wait-node", str(victim))
    asyncio.run(with_admin(cluster, lambda admin: wait_rejoined(admin, out_topic, victim)))
    print(f"core: node {victim} back in every ISR after {time.monotonic() - started:.1f}s")
