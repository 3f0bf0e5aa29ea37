"""Sink pipelines as processes, against the real Kafka: filters, dead letters, commits after the
write, and `kubevents run` supervising them (the Elasticsearch and MySQL sinks have their own
files; this one proves the pipeline around any sink, on the Kafka sink)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.records import key_of, record
from tests.integration.conftest import (
    ROOT,
    Proc,
    committed,
    consume,
    free_port,
    json_values,
    need_env,
    produce,
    wait_committed,
    wait_http,
)

pytestmark = pytest.mark.integration


def config(tmp_path: Path, names: dict[str, str], **pipeline: Any) -> Path:
    path = tmp_path / "kubevents.yaml"
    declared = {
        "id": "copy",
        "sink": "kafka",
        "batch_delay_ms": 50,
        "kafka": {"topic": f"t{names['tag']}-copy"},
        **pipeline,
    }
    path.write_text(yaml.safe_dump({"pipelines": [declared]}))
    return path


def env_of(names: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in names.items() if k.startswith("KUBEVENTS_")}


def stream(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        warning = i % 3 == 0
        out.append(
            record(
                f"e{i}",
                rv=1000 + i,
                type_="Warning" if warning else "Normal",
                reason="BackOff" if warning else "Scheduled",
                namespace="kube-system" if i % 5 == 0 else "default",
            )
        )
    return out


def test_a_filtered_kafka_pipeline_copies_exactly_its_events_and_dead_letters_bad_records(
    brokers: str, names: dict[str, str], tmp_path: Path, procs: list[Proc]
) -> None:
    cfg = config(
        tmp_path, names, filters={"types": ["Warning"], "exclude_namespaces": ["kube-system"]}
    )
    events = stream(60)
    records = [(key_of(e), json.dumps(e).encode()) for e in events]
    records.insert(17, (b"junk", b"{this is not json"))
    produce(brokers, names["KUBEVENTS_TOPICS_ENRICHED"], records)
    port = free_port()
    env = {**env_of(names), "KUBEVENTS_WORKER_WEB_PORT": str(port)}
    procs.append(Proc(["--config", str(cfg), "worker", "--pipeline", "copy"], env, "sink-copy"))
    wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120)
    wanted = [e for e in events if e["type"] == "Warning" and e["namespace"] != "kube-system"]
    copied = consume(brokers, f"t{names['tag']}-copy", until=len(wanted), idle_s=3)
    docs = json_values(copied)
    assert sorted(d["uid"] for d in docs) == sorted(e["uid"] for e in wanted)  # each once
    assert all(k == key_of(d) for (k, _, _), d in zip(copied, docs, strict=True))
    by_uid = lambda d: d["uid"]  # noqa: E731
    assert sorted(docs, key=by_uid) == sorted(wanted, key=by_uid)  # whole documents, unchanged
    [letter] = json_values(consume(brokers, names["KUBEVENTS_TOPICS_DLQ"], until=1, idle_s=2))
    assert letter["pipeline"] == "copy" and letter["reason"].startswith("not JSON")
    assert letter["value_text"] == "{this is not json"
    # Everything settled (written, filtered or dead-lettered) is committed.
    wait_committed(
        brokers,
        names["KUBEVENTS_WORKER_SINK_GROUP_PREFIX"] + "copy",
        names["KUBEVENTS_TOPICS_ENRICHED"],
        61,
    )


def started_pids(log: str, name: str) -> list[int]:
    return [int(m) for m in re.findall(rf"started {re.escape(name)} \(pid (\d+)", log)]


def test_kubevents_run_restarts_a_pipeline_killed_under_it_and_stops_everything(
    brokers: str, names: dict[str, str], tmp_path: Path
) -> None:
    cfg = config(tmp_path, names)
    base = free_port()
    env = {
        **os.environ,
        **env_of(names),
        "KUBEVENTS_LOG_FORMAT": "text",
        "KUBEVENTS_RUN_BASE_PORT": str(base),
        "KUBEVENTS_RUN_STATUS_INTERVAL_S": "1",
        "KUBEVENTS_WORKER_DATA_DIR": str(tmp_path / "data"),
    }
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        run = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "--config", str(cfg), "run", "--only", "copy"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{base}/readyz", timeout=120)
        first = started_pids(log_path.read_text(), "copy-0")
        assert len(first) == 1
        produce(
            brokers,
            names["KUBEVENTS_TOPICS_ENRICHED"],
            [(b"k", json.dumps(record("a")).encode())],
        )
        assert json_values(consume(brokers, f"t{names['tag']}-copy", until=1, idle_s=2))
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(started_pids(log_path.read_text(), "copy-0")) < 2:
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        text = log_path.read_text()
        assert f"copy-0 (pid {first[0]}) exited with status -9" in text
        wait_http(f"http://127.0.0.1:{base}/readyz", timeout=120)
        # The restarted pipeline carries on: a record written after the kill is copied.
        produce(
            brokers,
            names["KUBEVENTS_TOPICS_ENRICHED"],
            [(b"k", json.dumps(record("b")).encode())],
        )
        copied = json_values(consume(brokers, f"t{names['tag']}-copy", until=2, idle_s=2))
        assert {d["uid"] for d in copied} >= {"a", "b"}
        status = r"copy-0 +pid \d+ +port \d+ +restarts 1 +copy: running; copy: writing"
        assert re.search(status, log_path.read_text())
    finally:
        os.killpg(run.pid, signal.SIGINT)
        code = run.wait(60)
    assert code == 0
    assert "every process stopped" in log_path.read_text()
    second = started_pids(log_path.read_text(), "copy-0")[-1]
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)


# -- a sink worker killed after its write, before its commit ---------------------------------------


def partition_offsets(
    brokers: str, topic: str, total: int
) -> list[tuple[int, int, dict[str, Any]]]:
    """(partition, offset, record) of every record of a fresh topic (read in each partition's
    order from its start: the position is the offset)."""
    seen: dict[int, int] = {}
    out = []
    for _, value, partition in consume(brokers, topic, until=total, idle_s=2):
        offset = seen.get(partition, 0)
        seen[partition] = offset + 1
        out.append((partition, offset, json.loads(value or b"{}")))
    return out


def versions_stream(uids: int, versions: int) -> list[dict[str, Any]]:
    """Each event repeated: count 1..versions with rising resourceVersions, interleaved."""
    return [
        record(
            f"ev{u}",
            rv=10_000 + v * 1000 + u,
            count=v,
            type_="Warning",
            reason="BackOff",
            last=f"2026-12-03T10:{v:02d}:00.000000Z",
        )
        for v in range(1, versions + 1)
        for u in range(uids)
    ]


class Destination:
    """One real destination of the kill test: its pipeline declaration, a record it refuses for
    good, and what it holds: uid -> (version as written, document or row)."""

    kind = ""

    def declaration(self) -> dict[str, Any]:
        raise NotImplementedError

    def poison(self) -> dict[str, Any]:
        raise NotImplementedError

    def held(self) -> dict[str, tuple[int, dict[str, Any]]]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class ElasticsearchDestination(Destination):
    kind = "elasticsearch"

    def __init__(self, tag: str) -> None:
        from elasticsearch import Elasticsearch

        self.url = need_env("KUBEVENTS_ELASTICSEARCH_URL")
        self.index = f"t-{tag}"
        self.es = Elasticsearch(self.url, request_timeout=30)

    def declaration(self) -> dict[str, Any]:
        return {"elasticsearch": {"url": self.url, "index": self.index}}

    def poison(self) -> dict[str, Any]:
        return record("poison", count="not-a-number")  # type: ignore[arg-type]  # a 400

    def held(self) -> dict[str, tuple[int, dict[str, Any]]]:
        self.es.indices.refresh(index=self.index)
        hits = self.es.search(index=self.index, size=1000, version=True)["hits"]["hits"]
        assert len(hits) == len({h["_id"] for h in hits})
        return {h["_id"]: (h["_version"], h["_source"]) for h in hits}

    def close(self) -> None:
        from app.sinks.elasticsearch_indices import template_name

        for name in self.es.indices.get(index=f"{self.index}-*", ignore_unavailable=True).body:
            self.es.options(ignore_status=404).indices.delete(index=name)
        self.es.options(ignore_status=404).indices.delete_index_template(
            name=template_name(self.index)
        )
        self.es.close()


class MySQLDestination(Destination):
    kind = "mysql"

    def __init__(self, tag: str) -> None:
        import sqlalchemy as sa

        base = sa.engine.make_url(need_env("KUBEVENTS_MYSQL_URL"))
        self.database = f"kv_kill_{tag}"
        self.admin = sa.create_engine(base.set(database=""))
        with self.admin.begin() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {self.database} CHARACTER SET utf8mb4"))
        self.url = base.set(database=self.database).render_as_string(hide_password=False)

    def declaration(self) -> dict[str, Any]:
        return {"mysql": {"url": self.url}}

    def poison(self) -> dict[str, Any]:
        return record("poison", reason="R" * 300)  # MariaDB: 1406, the statement refused whole

    def held(self) -> dict[str, tuple[int, dict[str, Any]]]:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT uid, count, resource_version, message FROM k8s_events")
                ).all()
        finally:
            engine.dispose()
        assert len(rows) == len({r[0] for r in rows})
        return {
            r[0]: (int(r[2]), {"count": r[1], "resource_version": r[2], "message": r[3]})
            for r in rows
        }

    def close(self) -> None:
        import sqlalchemy as sa

        with self.admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {self.database}"))
        self.admin.dispose()


@pytest.mark.parametrize("kind", ["elasticsearch", "mysql"])
def test_a_sink_worker_killed_between_write_and_commit_leaves_no_gap_and_no_duplicate(
    kind: str, brokers: str, names: dict[str, str], tmp_path: Path, procs: list[Proc]
) -> None:
    """Killed right after its destination acknowledged a batch, before the batch is acked (so
    committed): asserted that exactly the first records are committed and that records past the
    commit are already written. After the restart: one document/row per event, final version.
    A record the destination refuses for good (Elasticsearch: a 400 per item; MariaDB: a
    multi-row statement refused whole, bisected) goes to the DLQ while its batch is written."""
    dest: Destination = (
        ElasticsearchDestination(names["tag"])
        if kind == "elasticsearch"
        else MySQLDestination(names["tag"])
    )
    cfg = tmp_path / "kubevents.yaml"
    pipeline = {"id": "sink", "sink": kind, "batch_size": 50, "batch_delay_ms": 0}
    cfg.write_text(yaml.safe_dump({"pipelines": [{**pipeline, **dest.declaration()}]}))
    topic, group = (
        names["KUBEVENTS_TOPICS_ENRICHED"],
        names["KUBEVENTS_WORKER_SINK_GROUP_PREFIX"] + "sink",
    )
    events = versions_stream(100, 3)
    poison = dest.poison()
    first, rest = [*events[:10], poison, *events[10:150]], events[150:]
    produce(brokers, topic, [(key_of(e), json.dumps(e).encode()) for e in first])
    try:
        port = free_port()
        env = {**env_of(names), "KUBEVENTS_WORKER_WEB_PORT": str(port)}
        args = ["--config", str(cfg), "worker", "--pipeline", "sink"]
        doomed = Proc(args, {**env, "KUBEVENTS_FAULTS": "sink.written=exit@151"}, f"{kind}-doomed")
        procs.append(doomed)
        # The first 151 are settled and committed; the fault is armed from then on.
        wait_committed(brokers, group, topic, len(first))
        produce(brokers, topic, [(key_of(e), json.dumps(e).encode()) for e in rest])
        assert doomed.proc.wait(120) == 137, doomed.output()[-3000:]
        done = committed(brokers, group, topic)
        assert sum(done.values()) == len(first)
        [letter] = json_values(consume(brokers, names["KUBEVENTS_TOPICS_DLQ"], until=1))
        assert letter["pipeline"] == "sink" and json.loads(letter["value_text"]) == poison
        assert ("parsing_exception" if kind == "elasticsearch" else "1406") in letter["reason"]
        located = partition_offsets(brokers, topic, len(events) + 1)
        uncommitted = {
            (r["uid"], int(r["resource_version"])) for p, o, r in located if o >= done.get(p, 0)
        }
        assert len(uncommitted) == len(rest)
        written = {(uid, version) for uid, (version, _) in dest.held().items()}
        assert written & uncommitted, "the fault landed with a batch written and not committed"
        # Restarted: the uncommitted records are read and written again, harmlessly.
        procs.append(Proc(args, env, kind))
        wait_committed(brokers, group, topic, len(events) + 1)
        held = dest.held()
        final = {e["uid"]: e for e in events if e["count"] == 3}
        assert sorted(held) == sorted(final)  # one per event: no gap, no duplicate, no poison
        for uid, (version, doc) in held.items():
            assert version == int(final[uid]["resource_version"])
            assert {k: doc[k] for k in ("count", "resource_version", "message")} == {
                k: final[uid][k] for k in ("count", "resource_version", "message")
            }
            if kind == "elasticsearch":
                assert doc == final[uid]
    finally:
        dest.close()


def readyz(port: int) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status, str(json.load(resp)["reason"])
    except urllib.error.HTTPError as exc:
        return exc.code, str(json.load(exc)["reason"])
    except OSError as exc:
        return 0, str(exc)


def test_a_sink_worker_killed_while_its_destination_is_away_loses_nothing(
    brokers: str, names: dict[str, str], tmp_path: Path, procs: list[Proc]
) -> None:
    """Elasticsearch goes away for this worker only (a TCP proxy in front of the stack's server is
    cut): the pipeline blocks, retrying in place, with records read and not written. Asserted: it
    says so on /readyz and nothing it holds is committed, even after several commit intervals.
    SIGKILLed there, then restarted once Elasticsearch is back: every event is written, once,
    in its final version (the mutation gate's sink-ack-before-write mutant dies here)."""
    from urllib.parse import urlsplit

    from tests.integration.tcp_proxy import TcpProxy

    dest = ElasticsearchDestination(names["tag"])
    target = urlsplit(dest.url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 9200)
    cfg = tmp_path / "kubevents.yaml"
    pipeline = {
        "id": "sink",
        "sink": "elasticsearch",
        "batch_delay_ms": 0,
        "retry_initial_ms": 100,
        "retry_max_ms": 500,
        "elasticsearch": {
            "url": f"http://{proxy.url_host}",
            "index": dest.index,
            "request_timeout_s": 2,
        },
    }
    cfg.write_text(yaml.safe_dump({"pipelines": [pipeline]}))
    topic, group = (
        names["KUBEVENTS_TOPICS_ENRICHED"],
        names["KUBEVENTS_WORKER_SINK_GROUP_PREFIX"] + "sink",
    )
    events = versions_stream(40, 2)
    first, rest = events[:40], events[40:]
    try:
        port = free_port()
        env = {**env_of(names), "KUBEVENTS_WORKER_WEB_PORT": str(port)}
        args = ["--config", str(cfg), "worker", "--pipeline", "sink"]
        worker = Proc(args, env, "es-away")
        procs.append(worker)
        produce(brokers, topic, [(key_of(e), json.dumps(e).encode()) for e in first])
        wait_committed(brokers, group, topic, len(first))
        proxy.down()
        produce(brokers, topic, [(key_of(e), json.dumps(e).encode()) for e in rest])
        deadline = time.monotonic() + 60
        while not ((answer := readyz(port))[0] == 503 and "blocked" in answer[1]):
            assert time.monotonic() < deadline, f"never blocked: {answer}"
            time.sleep(0.2)
        time.sleep(3)  # several commit intervals (1 s): an acked batch would be committed by now
        assert sum(committed(brokers, group, topic).values()) == len(first), (
            "records the destination never took were committed"
        )
        worker.kill()
        assert sum(committed(brokers, group, topic).values()) == len(first)
        proxy.up()
        procs.append(Proc(args, env, "es-back"))
        wait_committed(brokers, group, topic, len(events))
        held = dest.held()
        assert sorted(held) == sorted(e["uid"] for e in rest)
        assert all(doc["count"] == 2 for _, doc in held.values())
    finally:
        proxy.close()
        dest.close()


def test_a_sink_worker_whose_destination_refuses_its_settings_exits_2_on_one_line(
    names: dict[str, str],
) -> None:
    """A setting only the destination can judge (here MariaDB refusing the password) stops the
    worker as any kubevents command stops on a user error: one line saying what to fix, exit
    status 2, no traceback (not Faust's crash, status 1)."""
    url = need_env("KUBEVENTS_MYSQL_URL").replace("root@", "root:not-the-password@")
    env = {
        **os.environ,
        **env_of(names),
        "KUBEVENTS_MYSQL_URL": url,
        "KUBEVENTS_ELASTICSEARCH_URL": "",
        "KUBEVENTS_WORKER_WEB_PORT": str(free_port()),
    }
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker", "--pipeline", "mysql"],
        check=False,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("kubevents: error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "refused user 'root'" in errors[0] and "KUBEVENTS_MYSQL_URL" in errors[0], errors[0]
    assert "Traceback" not in result.stdout + result.stderr
