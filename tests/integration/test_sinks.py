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
    consume,
    free_port,
    json_values,
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
    wait_committed(brokers, "kubevents-sink-copy", names["KUBEVENTS_TOPICS_ENRICHED"], 61)


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


def test_an_elasticsearch_worker_killed_between_write_and_commit_leaves_no_gap_and_no_duplicate(
    brokers: str, names: dict[str, str], tmp_path: Path, procs: list[Proc]
) -> None:
    from elasticsearch import Elasticsearch

    from tests.integration.conftest import committed, need_env

    url = need_env("KUBEVENTS_ELASTICSEARCH_URL")
    index = f"t-{names['tag']}"
    cfg = tmp_path / "kubevents.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "pipelines": [
                    {
                        "id": "es",
                        "sink": "elasticsearch",
                        "batch_size": 50,
                        "batch_delay_ms": 0,
                        "elasticsearch": {"url": url, "index": index},
                    }
                ]
            }
        )
    )
    topic, group = names["KUBEVENTS_TOPICS_ENRICHED"], "kubevents-sink-es"
    events = versions_stream(100, 3)
    # A record Elasticsearch refuses for good among them: dead-lettered, its batch written.
    poison = record("poison", count="not-a-number")  # type: ignore[arg-type]
    first, rest = [*events[:10], poison, *events[10:150]], events[150:]
    produce(brokers, topic, [(key_of(e), json.dumps(e).encode()) for e in first])
    es = Elasticsearch(url, request_timeout=30)
    try:
        port = free_port()
        env = {**env_of(names), "KUBEVENTS_WORKER_WEB_PORT": str(port)}
        # Dies right after a write is acknowledged by Elasticsearch, before the batch is acked.
        doomed = Proc(
            ["--config", str(cfg), "worker", "--pipeline", "es"],
            {**env, "KUBEVENTS_FAULTS": "sink.written=exit@151"},
            "sink-es-doomed",
        )
        procs.append(doomed)
        # The first 150 are written and committed; the fault is armed from then on.
        wait_committed(brokers, group, topic, len(first))
        produce(brokers, topic, [(key_of(e), json.dumps(e).encode()) for e in rest])
        assert doomed.proc.wait(120) == 137, doomed.output()[-3000:]
        done = committed(brokers, group, topic)
        assert sum(done.values()) == len(first)
        [letter] = json_values(consume(brokers, names["KUBEVENTS_TOPICS_DLQ"], until=1))
        assert letter["pipeline"] == "es" and "parsing_exception" in letter["reason"]
        assert json.loads(letter["value_text"]) == poison
        located = partition_offsets(brokers, topic, len(events) + 1)
        uncommitted = [r for p, o, r in located if o >= done.get(p, 0)]
        assert len(uncommitted) == len(rest)
        es.indices.refresh(index=index)
        hits = es.search(index=index, size=1000, version=True)["hits"]["hits"]
        written_after = {(h["_id"], h["_version"]) for h in hits} & {
            (r["uid"], int(r["resource_version"])) for r in uncommitted
        }
        assert written_after, "the fault landed with a batch written and not committed"
        # Restarted: the uncommitted batch is read and written again, harmlessly.
        procs.append(Proc(["--config", str(cfg), "worker", "--pipeline", "es"], env, "sink-es"))
        wait_committed(brokers, group, topic, len(events) + 1)
        es.indices.refresh(index=index)
        hits = es.search(index=index, size=1000, version=True)["hits"]["hits"]
        final = {e["uid"]: e for e in events if e["count"] == 3}
        assert len(hits) == len(final) == 100  # one document per event: no gap, no duplicate
        for hit in hits:
            assert hit["_source"] == final[hit["_id"]]
            assert hit["_version"] == int(final[hit["_id"]]["resource_version"])
    finally:
        for name in es.indices.get(index=f"{index}-*", ignore_unavailable=True).body:
            es.options(ignore_status=404).indices.delete(index=name)
        from app.sinks.elasticsearch import template_name

        es.options(ignore_status=404).indices.delete_index_template(name=template_name(index))
        es.close()
