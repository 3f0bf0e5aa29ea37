"""Isolation, proved: one destination stopped for 60 s while events flow does not delay the other
(under 5 s of lag throughout), and once it is back it catches up to exactly the same events, with
the same counts, once each. The stopped destination's worker is also SIGKILLed while it is
blocked (records verifiably in flight: read, not written, not committed) and replaced: nothing it
had read is lost (the mutation gate's ack-before-publish mutant dies here).

Both real servers of the stack are stopped and started again (stack/elasticsearch.sh,
stack/mariadb.sh): run these tests alone on a stack (CI runs the suite serially)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from elasticsearch import Elasticsearch

from app.sinks.elasticsearch import template_name
from tests.fixtures.records import key_of, record
from tests.integration.conftest import (
    Proc,
    committed,
    free_port,
    need_env,
    produce,
    stack_ctl,
    wait_committed,
    wait_http,
)

pytestmark = pytest.mark.integration

OUTAGE_S = 60.0
MAX_LAG_S = 5.0


class Stream:
    """Enriched events with repeats: new events and higher counts of earlier ones."""

    def __init__(self, brokers: str, topic: str):
        self.brokers, self.topic = brokers, topic
        self.final: dict[str, dict[str, Any]] = {}
        self.sent = 0
        self.rv = 50_000

    def send(self, new: int = 8, repeats: int = 4) -> str:
        """Publish a few records; returns the uid of the last new event."""
        out: list[dict[str, Any]] = []
        for _ in range(new):
            uid = f"iso-{uuid.uuid4().hex[:10]}"
            self.rv += 1
            out.append(record(uid, rv=self.rv, count=1, type_="Warning", reason="BackOff"))
        olds = list(self.final)[-repeats * 5 :: 5][:repeats]
        for uid in olds:
            self.rv += 1
            count = self.final[uid]["count"] + 1
            out.append(record(uid, rv=self.rv, count=count, type_="Warning", reason="BackOff"))
        for doc in out:
            self.final[doc["uid"]] = doc
        produce(self.brokers, self.topic, [(key_of(d), json.dumps(d).encode()) for d in out])
        self.sent += len(out)
        return out[new - 1]["uid"]


@pytest.fixture()
def destinations(names: dict[str, str]) -> Iterator[dict[str, Any]]:
    es_url = need_env("KUBEVENTS_ELASTICSEARCH_URL")
    base = sa.engine.make_url(need_env("KUBEVENTS_MYSQL_URL"))
    database = f"kv_iso_{names['tag']}"
    admin = sa.create_engine(base.set(database=""))
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {database} CHARACTER SET utf8mb4"))
    index = f"t-{names['tag']}"
    es = Elasticsearch(es_url, request_timeout=30)
    mysql_url = base.set(database=database).render_as_string(hide_password=False)
    try:
        yield {"es": es, "es_url": es_url, "index": index, "mysql_url": mysql_url}
    finally:
        stack_ctl("elasticsearch", "start")  # whatever the test did, the servers are up again
        stack_ctl("elasticsearch", "wait")
        stack_ctl("mariadb", "start")
        stack_ctl("mariadb", "wait")
        for name in es.indices.get(index=f"{index}-*", ignore_unavailable=True).body:
            es.options(ignore_status=404).indices.delete(index=name)
        es.options(ignore_status=404).indices.delete_index_template(name=template_name(index))
        es.close()
        admin.dispose()  # its pooled connection died with the server it may have restarted
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {database}"))
        admin.dispose()


def es_docs(es: Elasticsearch, index: str) -> list[dict[str, Any]]:
    es.indices.refresh(index=index)
    hits = es.search(index=index, size=10_000)["hits"]["hits"]
    return [h["_source"] for h in hits]


def mysql_rows(url: str) -> list[tuple[str, int, str]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT uid, count, resource_version FROM k8s_events"))
            return [(r[0], int(r[1]), r[2]) for r in rows]
    finally:
        engine.dispose()


def present(kind: str, dest: dict[str, Any], uid: str) -> bool:
    if kind == "es":
        es: Elasticsearch = dest["es"]
        es.indices.refresh(index=dest["index"])
        return bool(
            es.search(index=dest["index"], query={"ids": {"values": [uid]}})["hits"]["hits"]
        )
    engine = sa.create_engine(dest["mysql_url"])
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.text("SELECT 1 FROM k8s_events WHERE uid = :u"), {"u": uid})
            return found.first() is not None
    finally:
        engine.dispose()


def readyz(port: int) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status, json.load(resp)["reason"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)["reason"]
    except OSError as exc:
        return 0, str(exc)


@pytest.mark.parametrize(("stopped", "server"), [("es", "elasticsearch"), ("mysql", "mariadb")])
def test_one_destination_down_for_a_minute_does_not_delay_the_other_and_catches_up_exactly(  # noqa: PLR0917
    stopped: str,
    server: str,
    brokers: str,
    names: dict[str, str],
    destinations: dict[str, Any],
    tmp_path: Path,
    procs: list[Proc],
) -> None:
    other = "mysql" if stopped == "es" else "es"
    cfg = tmp_path / "kubevents.yaml"
    common = {"batch_delay_ms": 100, "retry_initial_ms": 200, "retry_max_ms": 2000}
    cfg.write_text(
        yaml.safe_dump(
            {
                "pipelines": [
                    {
                        "id": "es",
                        "sink": "elasticsearch",
                        **common,
                        "elasticsearch": {
                            "url": destinations["es_url"],
                            "index": destinations["index"],
                            "request_timeout_s": 5,
                        },
                    },
                    {
                        "id": "mysql",
                        "sink": "mysql",
                        **common,
                        "mysql": {"url": destinations["mysql_url"], "connect_timeout_s": 3},
                    },
                ]
            }
        )
    )
    env = {k: v for k, v in names.items() if k.startswith("KUBEVENTS_")}
    topic = names["KUBEVENTS_TOPICS_ENRICHED"]
    ports = {"es": free_port(), "mysql": free_port()}

    def start(pipeline: str) -> Proc:
        worker_env = {**env, "KUBEVENTS_WORKER_WEB_PORT": str(ports[pipeline])}
        proc = Proc(["--config", str(cfg), "worker", "--pipeline", pipeline], worker_env, pipeline)
        procs.append(proc)
        return proc

    workers = {"es": start("es"), "mysql": start("mysql")}
    for port in ports.values():
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120)
    stream = Stream(brokers, topic)
    for _ in range(5):
        stream.send()
    wait_committed(brokers, f"kubevents-sink-{stopped}", topic, stream.sent)

    stack_ctl(server, "stop")
    outage_started = time.monotonic()
    lags: list[float] = []
    blocked_seen = killed = False
    while time.monotonic() - outage_started < OUTAGE_S:
        uid = stream.send()
        sent_at = time.monotonic()
        while not present(other, destinations, uid):
            assert time.monotonic() - sent_at < 30, f"{other} stopped taking events"
            time.sleep(0.1)
        lags.append(time.monotonic() - sent_at)
        status, reason = readyz(ports[stopped])
        if status == 503 and "blocked" in reason:
            blocked_seen = True
        if blocked_seen and not killed and time.monotonic() - outage_started > 20:
            # Records in flight through the blocked worker: read, not written, not committed.
            done = sum(committed(brokers, f"kubevents-sink-{stopped}", topic).values())
            assert done < stream.sent
            workers[stopped].kill()
            workers[stopped] = start(stopped)
            killed = True
        time.sleep(0.5)
    assert blocked_seen, f"the {stopped} pipeline never said it was blocked"
    assert killed
    assert max(lags) < MAX_LAG_S, f"{other} lagged {max(lags):.1f}s while {stopped} was down"
    assert len(lags) >= 20

    stack_ctl(server, "start")
    stack_ctl(server, "wait")
    for pipeline in ("es", "mysql"):
        wait_committed(brokers, f"kubevents-sink-{pipeline}", topic, stream.sent, timeout=240)
    docs = es_docs(destinations["es"], destinations["index"])
    rows = mysql_rows(destinations["mysql_url"])
    expected = {uid: (d["count"], d["resource_version"]) for uid, d in stream.final.items()}
    assert len(docs) == len({d["uid"] for d in docs}) == len(expected)  # no duplicate, no gap
    assert {d["uid"]: (d["count"], d["resource_version"]) for d in docs} == expected
    assert len(rows) == len(expected)
    assert {uid: (count, rv) for uid, count, rv in rows} == expected
