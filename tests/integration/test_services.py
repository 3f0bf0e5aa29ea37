"""Each service of the stack is the real one, reachable with the clients kubevents uses."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kubernetes import client as k8s

from tests.integration.conftest import need_env
from tests.integration.kube_helpers import filled


def test_kafka_round_trip_with_group_commit(brokers: str) -> None:
    topic, group = f"svc-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"

    async def run() -> tuple[list[bytes], int | None]:
        producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", enable_idempotence=True)
        await producer.start()
        for i in range(10):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=b"k")
        await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=brokers,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        got: list[bytes] = []
        partitions: set[int] = set()
        deadline = time.monotonic() + 60
        while len(got) < 10 and time.monotonic() < deadline:
            for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                got.extend(m.value for m in msgs)
                partitions.add(tp.partition)
        await consumer.commit()
        assert len(partitions) == 1, "one key, one partition"
        committed = await consumer.committed(TopicPartition(topic, partitions.pop()))
        await consumer.stop()
        return got, committed

    got, committed = asyncio.run(run())
    assert got == [f"m{i}".encode() for i in range(10)]
    assert committed == 10


@pytest.mark.parametrize(
    ("url_env", "major"),
    [("KUBEVENTS_ELASTICSEARCH_URL", "8."), ("KUBEVENTS_TEST_ELASTICSEARCH9_URL", "9.")],
)
def test_elasticsearch_index_refresh_search(url_env: str, major: str) -> None:
    """Both servers the sink is tested against, through the 8.x client (9: REST compatibility)."""
    from elasticsearch import Elasticsearch

    es = Elasticsearch(need_env(url_env))
    # The integ-test distribution answers no GET /: read the version from the nodes API.
    nodes = es.nodes.info()["nodes"]
    assert nodes and all(n["version"].startswith(major) for n in nodes.values())
    index = f"svc-{uuid.uuid4().hex[:8]}"
    es.index(index=index, id="e1", document={"reason": "BackOff", "count": 3})
    es.index(index=index, id="e1", document={"reason": "BackOff", "count": 5})
    es.indices.refresh(index=index)
    hits = es.search(index=index, query={"match": {"reason": "BackOff"}})["hits"]
    assert hits["total"]["value"] == 1 and hits["hits"][0]["_source"]["count"] == 5
    es.indices.delete(index=index)


def test_mariadb_upsert_through_sqlalchemy() -> None:
    from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select
    from sqlalchemy.dialects.mysql import insert

    engine = create_engine(need_env("KUBEVENTS_MYSQL_URL"))
    meta = MetaData()
    table = Table(
        f"svc_{uuid.uuid4().hex[:8]}",
        meta,
        Column("uid", String(64), primary_key=True),
        Column("count", Integer),
    )
    meta.create_all(engine)
    try:
        with engine.begin() as conn:
            for count in (3, 5):
                stmt = insert(table).values(uid="e1", count=count)
                conn.execute(stmt.on_duplicate_key_update(count=stmt.inserted.count))
        with engine.connect() as conn:
            assert conn.execute(select(table.c.uid, table.c.count)).tuples().all() == [("e1", 5)]
            version = conn.exec_driver_sql("select version()").scalar()
            assert "MariaDB" in str(version)
    finally:
        meta.drop_all(engine)


def test_deployment_yields_real_controller_and_scheduler_events(api: k8s.ApiClient) -> None:
    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
    ns = f"svc-{uuid.uuid4().hex[:6]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=ns)))
    try:
        labels = {"app": "web"}
        apps.create_namespaced_deployment(
            ns,
            k8s.V1Deployment(
                metadata=k8s.V1ObjectMeta(name="web"),
                spec=k8s.V1DeploymentSpec(
                    replicas=2,
                    selector=k8s.V1LabelSelector(match_labels=labels),
                    template=k8s.V1PodTemplateSpec(
                        metadata=k8s.V1ObjectMeta(labels=labels),
                        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="web", image="nginx")]),
                    ),
                ),
            ),
        )
        wanted = {"ScalingReplicaSet", "SuccessfulCreate", "Scheduled"}
        deadline = time.monotonic() + 120
        reasons: set[str | None] = set()
        while time.monotonic() < deadline and not wanted <= reasons:
            reasons = {e.reason for e in core.list_namespaced_event(ns).items}
            time.sleep(1)
        assert wanted <= reasons, f"events seen: {sorted(reasons, key=str)}"
        pods = core.list_namespaced_pod(ns).items
        assert pods and all((filled(p.spec).node_name or "").startswith("kwok-node") for p in pods)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            phases = {filled(p.status).phase for p in core.list_namespaced_pod(ns).items}
            if phases == {"Running"}:
                break
            time.sleep(1)
        assert phases == {"Running"}, "kwok runs the pods on its fake nodes"
    finally:
        core.delete_namespace(ns)


@pytest.mark.parametrize(
    "name",
    [
        "KUBEVENTS_KAFKA_BROKERS",
        "KUBEVENTS_ELASTICSEARCH_URL",
        "KUBEVENTS_TEST_ELASTICSEARCH9_URL",
        "KUBEVENTS_MYSQL_URL",
        "KUBECONFIG",
    ],
)
def test_stack_env_file_exports(name: str) -> None:
    text = (Path(__file__).parents[2] / ".stack" / "env").read_text()
    assert f"export {name}=" in text
