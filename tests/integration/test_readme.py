"""The README's examples run against the real stack, each with its output checked: every
``kubevents`` line and every ``curl`` line of its console blocks (a line no test runs fails
``test_every_readme_line_is_run``), its SCRAM example and its ``.stack/env``. ``make demo`` runs
in tests/e2e/test_demo.py.

Each line is taken from the README itself and run as it is written; only what the README leaves
to the user's environment is the test's: unique topic names (KUBEVENTS_TOPICS_*), the namespaces
the producer watches (KUBEVENTS_PRODUCER_NAMESPACES: the cluster is shared) and the core
worker's port, put in place of 6066 in the curl lines. One producer and one core worker serve
the whole module (the ``pipeline`` fixture)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from kubernetes import client as k8s

from app.cli import build_parser
from app.model.envelope import build_raw
from app.settings import Settings, TopicSettings
from tests.fixtures.events import core_event
from tests.integration.conftest import (
    ROOT,
    Proc,
    consume,
    free_port,
    get_json,
    json_values,
    make_names,
    metric,
    produce,
)
from tests.integration.kube_helpers import create_event, create_namespace, delete_namespace
from tests.integration.test_deploy import find_kubectl

README = (ROOT / "README.md").read_text()
SCHEMA_FILE = ROOT / "schemas" / "k8s-event.v1.json"
PACKAGED_SCHEMA_FILE = ROOT / "app" / "schemas" / "k8s-event.v1.json"
README_PORT = "127.0.0.1:6066"


# --------------------------------------------------------------------------------------------
# the README's lines


def console_blocks() -> list[str]:
    return re.findall(r"```console\n(.*?)```", README, flags=re.S)


def readme_lines(program: str) -> list[str]:
    """Every line of a console block that runs ``program``, without its comment."""
    lines = [
        line.split(" #")[0].strip() for block in console_blocks() for line in block.splitlines()
    ]
    return [line for line in lines if line.startswith(program + " ")]


def readme_commands(program: str) -> list[list[str]]:
    return [shlex.split(line)[1:] for line in readme_lines(program)]


def readme_args(subcommand: str) -> list[str]:
    """The README's ``kubevents SUBCOMMAND ...`` line (its first one), as arguments."""
    found = [args for args in readme_commands("kubevents") if args[0] == subcommand]
    assert found, f"no 'kubevents {subcommand}' line in the README"
    return found[0]


def documented_default(variable: str) -> str:
    """The default column of the README's configuration table for a variable's row, without
    backquotes (``a / b`` for a row of several variables)."""
    for line in README.splitlines():
        if line.startswith(f"| `{variable}`"):
            return line.split("|")[2].strip().replace("`", "")
    raise AssertionError(f"{variable} is not in the README's configuration table")


RUN_BY_A_TEST = {"topics", "produce", "worker", "replay", "schema", "config", "pipelines"}


def test_every_readme_line_is_run() -> None:
    """A new ``kubevents`` subcommand or ``curl`` line in the README needs a test here."""
    commands = readme_commands("kubevents")
    assert {args[0] for args in commands} == RUN_BY_A_TEST
    for args in commands:
        build_parser().parse_args(args)  # SystemExit (a failure) if the CLI rejects it
    curls = readme_lines("curl")
    assert all(README_PORT in line for line in curls), curls
    assert sorted(curl_url(line) for line in curls) == sorted(CURL_CHECKS), curls


def cli(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``kubevents ARGS`` from this checkout, as a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def topic_env(names: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in names.items() if k.startswith("KUBEVENTS_")}


# --------------------------------------------------------------------------------------------
# commands that need no running pipeline


def run_bash(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A README shell block, run by bash as written; a non-zero exit fails the test."""
    result = subprocess.run(
        ["bash", "-c", script],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def topic_partitions(brokers: str, topics: list[str]) -> dict[str, int]:
    async def run() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
        await admin.start()
        try:
            described = await admin.describe_topics(topics)
        finally:
            await admin.close()
        return {d["topic"]: len(d["partitions"]) for d in described if d.get("error_code", 0) == 0}

    return asyncio.run(run())


def test_readme_topics_creates_the_three_topics(brokers: str, names: dict[str, str]) -> None:
    args = readme_args("topics")
    topics = [names[f"KUBEVENTS_TOPICS_{t}"] for t in ("RAW", "ENRICHED", "DLQ")]
    first = cli(args, topic_env(names))
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"created: {', '.join(topics)}\n"
    partitions = int(documented_default("KUBEVENTS_TOPICS_RAW").split(" / ")[-1])
    assert partitions == TopicSettings().partitions == 6
    # Created topics reach the brokers' metadata a moment after CreateTopics returned.
    deadline = time.monotonic() + 15
    while (found := topic_partitions(brokers, topics)) != dict.fromkeys(topics, partitions):
        assert time.monotonic() < deadline, found
        time.sleep(0.5)
    again = cli(args, topic_env(names))
    assert again.returncode == 0, again.stderr
    assert again.stdout == "created: nothing (all exist)\n"


def test_readme_topics_documents_the_default_names() -> None:
    assert documented_default("KUBEVENTS_TOPICS_RAW").split(" / ")[:3] == [
        TopicSettings().raw,
        TopicSettings().enriched,
        TopicSettings().dlq,
    ]
    comment = next(
        line
        for block in console_blocks()
        for line in block.splitlines()
        if "kubevents topics" in line
    )
    assert comment.split("# create ")[1] == ", ".join(
        [TopicSettings().raw, TopicSettings().enriched, TopicSettings().dlq]
    )


def test_readme_pipelines_lists_the_example_files_pipelines_with_their_groups() -> None:
    """The README's line, with the stack's URLs (the example file leaves them to them)."""
    result = cli(readme_args("pipelines"), {})
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [line[0] for line in lines] == ["core", "elasticsearch", "mysql", "warnings"]
    assert lines[3][1] == "consumer group kubevents-sink-warnings: k8s-events -> elasticsearch"


def test_readme_schema_prints_the_shipped_json_schema() -> None:
    result = cli(readme_args("schema"), {})
    assert result.returncode == 0, result.stderr
    assert result.stdout == SCHEMA_FILE.read_text() == PACKAGED_SCHEMA_FILE.read_text()
    schema = json.loads(result.stdout)
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert schema["properties"]["schema_version"]["const"] == 1


def test_readme_config_prints_the_settings_with_secrets_masked(names: dict[str, str]) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    env = {
        **topic_env(names),
        "KUBEVENTS_KAFKA_SASL_USERNAME": "readme-user",
        "KUBEVENTS_KAFKA_SASL_PASSWORD": secret,
        "KUBEVENTS_CLUSTER_NAME": "readme-cluster",
    }
    result = cli(readme_args("config"), env)
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout and secret not in result.stderr
    shown = json.loads(result.stdout)
    assert shown["kafka"]["sasl_password"] == "**********"
    assert shown["kafka"]["sasl_username"] == "readme-user"
    assert shown["cluster"]["name"] == "readme-cluster"
    assert shown["topics"]["raw"] == names["KUBEVENTS_TOPICS_RAW"]
    assert set(shown) == set(Settings.model_fields)  # every section, effective values


def test_readme_scram_example_replays_over_sasl_ssl(brokers: str, names: dict[str, str]) -> None:
    """The console block that sources .stack/env, exports the SCRAM settings and replays, run
    by bash as it is written (``kubevents`` being this checkout's CLI)."""
    (block,) = [b for b in console_blocks() if "SCRAM-SHA-512" in b]
    script = f'kubevents() {{ "{sys.executable}" -m app.cli "$@"; }}\nset -e\n{block}'
    result = run_bash(script, topic_env(names))
    assert f"published 3 events to {names['KUBEVENTS_TOPICS_RAW']}" in result.stdout
    records = json_values(consume(brokers, names["KUBEVENTS_TOPICS_RAW"], until=3))
    assert len(records) == 3 and {r["via"] for r in records} == {"replay"}


def test_readme_stack_env_lists_what_make_stack_writes() -> None:
    (block,) = [b for b in console_blocks() if b.startswith("$ cat .stack/env")]
    documented = re.findall(r"^export (\w+)=", block, flags=re.M)
    written = re.findall(r"^export (\w+)=", (ROOT / ".stack" / "env").read_text(), flags=re.M)
    assert documented and set(documented) <= set(written), (documented, written)


# --------------------------------------------------------------------------------------------
# `kubevents produce` and `kubevents worker --pipeline core`, started once for the module


@dataclass
class Pipeline:
    names: dict[str, str]
    namespace: str
    worker_port: int
    producer_port: int
    procs: list[Proc] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return topic_env(self.names)


@pytest.fixture(scope="module")
def pipeline(brokers: str, api: k8s.ApiClient) -> Iterator[Pipeline]:
    """The README's ``kubevents worker --pipeline core`` and ``kubevents produce`` as processes,
    on this module's topics, the producer watching one fresh namespace."""
    names = make_names()
    namespace = create_namespace(api, "readme")
    p = Pipeline(names, namespace, free_port(), free_port())
    common = {**p.env, "KUBEVENTS_CLUSTER_NAME": "readme"}
    try:
        p.procs.append(
            Proc(
                readme_args("worker"),
                {
                    **common,
                    "KUBEVENTS_WORKER_WEB_PORT": str(p.worker_port),
                    "KUBEVENTS_WORKER_WEB_HOST": "127.0.0.1",
                },
                "readme-worker",
            )
        )
        p.procs.append(
            Proc(
                readme_args("produce"),
                {
                    **common,
                    "KUBEVENTS_PRODUCER_NAMESPACES": namespace,
                    "KUBEVENTS_PRODUCER_HTTP_PORT": str(p.producer_port),
                    "KUBEVENTS_PRODUCER_LEASE_NAMESPACE": "default",
                    "KUBEVENTS_PRODUCER_IDENTITY": "readme-producer",
                },
                "readme-producer",
            )
        )
        worker, producer = p.procs

        def ready() -> bool:
            for proc in (worker, producer):
                assert proc.proc.poll() is None, f"exited early:\n{proc.output()[-3000:]}"
            get_json(f"http://127.0.0.1:{p.worker_port}/readyz")  # an error (503) until ready
            return bool(
                get_json(f"http://127.0.0.1:{p.producer_port}/readyz")["reason"] == "watching"
            )

        wait_until(ready, "the worker ready and the producer watching", timeout=120)
        yield p
    finally:
        for proc in p.procs:
            proc.stop()
        delete_namespace(api, namespace)


def wait_until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def enriched_by_uid(
    brokers: str, topic: str, uids: set[str], versions: int
) -> dict[str, list[Any]]:
    """The enriched records of these uids, once ``versions`` of them have arrived."""

    def read() -> dict[str, list[Any]] | None:
        got: dict[str, list[Any]] = defaultdict(list)
        for r in json_values(consume(brokers, topic, idle_s=1, timeout_s=30)):
            if r["uid"] in uids:
                got[r["uid"]].append(r)
        return got if sum(map(len, got.values())) >= versions else None

    return dict(wait_until(read, f"{versions} enriched versions", timeout=90))


def test_readme_produce_and_worker_carry_real_events_to_the_enriched_topic(
    api: k8s.ApiClient, brokers: str, pipeline: Pipeline
) -> None:
    ns = pipeline.namespace
    warning = create_event(api, ns, reason="BackOff", type_="Warning")
    normal = create_event(api, ns, reason="Pulled")
    # The README's repeat: count 1 -> 3 passes as an update with count_delta 2.
    k8s.CoreV1Api(api).patch_namespaced_event(warning["name"], ns, {"count": 3})
    topic = pipeline.names["KUBEVENTS_TOPICS_ENRICHED"]
    got = enriched_by_uid(brokers, topic, {warning["uid"], normal["uid"]}, versions=3)
    schema = json.loads(SCHEMA_FILE.read_text())
    for record in [r for records in got.values() for r in records]:
        jsonschema.validate(record, schema)
        assert record["cluster"] == "readme" and record["namespace"] == ns
        assert record["producer"] == "readme-producer"
    assert [(r["count"], r["count_delta"]) for r in got[warning["uid"]]] == [(1, 1), (3, 2)]
    assert [r["watch_type"] for r in got[warning["uid"]]] == ["ADDED", "MODIFIED"]
    assert [(r["reason"], r["type"], r["count"]) for r in got[normal["uid"]]] == [
        ("Pulled", "Normal", 1)
    ]
    # What the producer published: each version once, from the watch (the namespace was empty
    # when it listed), keyed by the involved object's uid.
    raw = [
        r
        for r in json_values(consume(brokers, pipeline.names["KUBEVENTS_TOPICS_RAW"], idle_s=1))
        if r.get("producer") == "readme-producer"
    ]
    assert sorted((r["object"]["metadata"]["uid"], r["object"]["count"]) for r in raw) == sorted(
        [(warning["uid"], 1), (warning["uid"], 3), (normal["uid"], 1)]
    )
    assert {(r["via"], r["kind"]) for r in raw} == {("watch", "kubevents.raw/v1")}
    # Both processes answer the README's health endpoints.
    for port in (pipeline.worker_port, pipeline.producer_port):
        assert get_json(f"http://127.0.0.1:{port}/healthz")
        metrics = subprocess.run(
            ["curl", "-sS", f"http://127.0.0.1:{port}/metrics"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert "kubevents_" in metrics


def test_readme_replay_example_reaches_the_enriched_topic(brokers: str, pipeline: Pipeline) -> None:
    result = cli(readme_args("replay"), pipeline.env)
    assert result.returncode == 0, result.stderr
    assert f"published 3 events to {pipeline.names['KUBEVENTS_TOPICS_RAW']}" in result.stdout
    dump = json.loads((ROOT / "examples" / "events.json").read_text())["items"]
    uids = {item["metadata"]["uid"] for item in dump}
    got = enriched_by_uid(brokers, pipeline.names["KUBEVENTS_TOPICS_ENRICHED"], uids, 3)
    assert {u: len(rs) for u, rs in got.items()} == dict.fromkeys(uids, 1)
    assert {rs[0]["reason"] for rs in got.values()} == {item["reason"] for item in dump}


def test_readme_kubectl_pipe_to_replay_adds_nothing_new(
    api: k8s.ApiClient, brokers: str, pipeline: Pipeline
) -> None:
    """The README's ``kubectl get events -A -o json | kubevents replay -``, run by bash, for the
    pipeline's namespace (``-n NS`` in place of ``-A``: the cluster is shared): the events the
    producer published already, replayed, are dropped by the worker's dedupe table."""
    (line,) = re.findall(r"`(kubectl get events -A -o json \| kubevents replay -)`", README)
    ns, port = pipeline.namespace, pipeline.worker_port
    topic = pipeline.names["KUBEVENTS_TOPICS_ENRICHED"]
    event = create_event(api, ns, reason="Replayed")
    enriched_by_uid(brokers, topic, {event["uid"]}, versions=1)
    listed = {e.metadata.uid for e in k8s.CoreV1Api(api).list_namespaced_event(ns).items}
    duplicates = 'kubevents_core_records_total{outcome="duplicate"}'
    before = metric(port, duplicates)
    script = (
        f'kubevents() {{ "{sys.executable}" -m app.cli "$@"; }}\n'
        f'kubectl() {{ "{find_kubectl()}" "$@"; }}\n'
        "set -eo pipefail\n" + line.replace(" -A ", f" -n {ns} ")
    )
    result = run_bash(script, pipeline.env)
    raw = pipeline.names["KUBEVENTS_TOPICS_RAW"]
    assert f"published {len(listed)} events to {raw}" in result.stdout
    wait_until(
        lambda: metric(port, duplicates) - before >= len(listed),
        what=f"{len(listed)} replayed events dropped as duplicates",
    )
    versions = Counter(
        (r["uid"], r["resource_version"])
        for r in json_values(consume(brokers, topic, idle_s=1))
        if r["uid"] in listed
    )
    assert set(versions.values()) == {1}, versions


# --------------------------------------------------------------------------------------------
# the curl lines, against the core worker's counts API


@dataclass(frozen=True)
class Occurrence:
    namespace: str
    reason: str
    type: str
    pod: str
    delta: int
    at: int  # epoch seconds: the window it falls in (the version's last_seen)


def stamp(at: int) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def raw_versions(t0: int) -> tuple[list[tuple[bytes, bytes]], list[Occurrence]]:
    """Events in namespaces shop (the README's) and cart, some of them repeated, spread over
    the last 90 s; and the occurrences each window must count from them."""
    tag = uuid.uuid4().hex[:6]
    plan = [  # (uid, version, namespace, reason, type, pod, count, last_seen)
        ("a", 1, "shop", "BackOff", "Warning", "web-a", 1, t0 - 90),
        ("a", 2, "shop", "BackOff", "Warning", "web-a", 3, t0 - 30),
        ("b", 1, "shop", "BackOff", "Warning", "web-b", 2, t0 - 60),
        ("c", 1, "shop", "Pulled", "Normal", "web-a", 1, t0),
        ("d", 1, "shop", "FailedMount", "Warning", "web-c", 1, t0),
        ("e", 1, "cart", "BackOff", "Warning", "api-a", 4, t0 - 60),
    ]
    messages, occurrences = [], []
    counts: dict[str, int] = {}
    for uid, version, ns, reason, type_, pod, count, at in plan:
        obj = core_event(
            meta_uid=f"{tag}-{uid}",
            meta_resourceVersion=str(version),
            meta_namespace=ns,
            meta_name=f"{pod}.{tag}{uid}",
            reason=reason,
            type=type_,
            count=count,
            firstTimestamp=stamp(t0 - 90),
            lastTimestamp=stamp(at),
            involvedObject={
                "kind": "Pod",
                "name": pod,
                "namespace": ns,
                "uid": f"{tag}-{pod}",
                "apiVersion": "v1",
            },
        )
        watch_type = "ADDED" if version == 1 else "MODIFIED"
        messages.append(
            build_raw(obj, watch_type=watch_type, via="watch", cluster="readme", producer="t")
        )
        occurrences.append(Occurrence(ns, reason, type_, pod, count - counts.get(uid, 0), at))
        counts[uid] = count
    return messages, occurrences


def reason_totals(
    occurrences: list[Occurrence], start: float, end: float
) -> Counter[tuple[str, str, str]]:
    total: Counter[tuple[str, str, str]] = Counter()
    for o in occurrences:
        if start <= o.at < end:
            total[(o.namespace, o.reason, o.type)] += o.delta
    return total


def run_curl(line: str, port: int) -> Any:
    """A README curl line as it is written, with the test's worker in place of 127.0.0.1:6066."""
    args = shlex.split(line.replace(README_PORT, f"127.0.0.1:{port}"))
    result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, f"{line}: {result.stderr}"
    return json.loads(result.stdout)


def curl_url(line: str) -> str:
    return shlex.split(line)[1].replace(f"http://{README_PORT}", "")


def ours(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["namespace"] in {"shop", "cart"}]


def check_top_reasons(answer: Any, occ: list[Occurrence], query_at: tuple[float, float]) -> None:
    """``/counts/?window=hopping&top=10``: the top reasons of the last hour, most first."""
    window = answer["window"]
    assert (window["name"], window["size_s"], window["step_s"]) == ("hopping", 3600, 300)
    assert answer["dim"] == "reason" and answer["workers"] == 1
    assert answer["unreachable_workers"] == []
    rows = answer["rows"]
    assert 0 < len(rows) <= 10
    assert [r["count"] for r in rows] == sorted((r["count"] for r in rows), reverse=True)
    expected = reason_totals(occ, window["start"], window["end"])
    assert {(r["namespace"], r["reason"], r["type"]): r["count"] for r in ours(rows)} == expected
    assert expected[("shop", "BackOff", "Warning")] == 5


def check_noisiest_objects(
    answer: Any, occ: list[Occurrence], query_at: tuple[float, float]
) -> None:
    """``/counts/?dim=object&window=hopping&type=Warning``: Warnings per involved object."""
    assert answer["dim"] == "object" and answer["window"]["name"] == "hopping"
    expected: Counter[tuple[str, str]] = Counter()
    for o in occ:
        if o.type == "Warning":
            expected[(o.namespace, o.pod)] += o.delta
    got = {(r["namespace"], r["name"]): r["count"] for r in ours(answer["rows"])}
    assert got == expected and got[("shop", "web-a")] == 3, answer
    assert {r["kind"] for r in answer["rows"]} == {"Pod"}


def check_previous_minute(
    answer: Any, occ: list[Occurrence], query_at: tuple[float, float]
) -> None:
    """``/counts/?window=tumbling&namespace=shop&ago=60``: shop's reasons a minute ago."""
    window = answer["window"]
    assert window["name"] == "tumbling" and window["size_s"] == 60
    assert window["start"] <= query_at[0] - 60 and query_at[1] - 60 < window["end"] + 1
    expected = reason_totals(
        [o for o in occ if o.namespace == "shop"], window["start"], window["end"]
    )
    got = {(r["namespace"], r["reason"], r["type"]): r["count"] for r in answer["rows"]}
    assert got == expected
    # The occurrences 90, 60 and 30 s before t0 (30 s apart) leave none of the minutes that
    # "a minute ago" can fall in during this test empty.
    assert got, answer


def check_one_key(answer: Any, occ: list[Occurrence], query_at: tuple[float, float]) -> None:
    """``/counts/key/?key=reason|shop|BackOff|Warning``: one key in both windows."""
    assert answer["key"] == "reason|shop|BackOff|Warning"
    assert answer["hopping"] == 5 and answer["workers"] == 1
    backoff = [o for o in occ if (o.namespace, o.reason) == ("shop", "BackOff")]
    minutes = {int(t // 60) * 60 for t in query_at}  # the current minute, before and after
    possible = {sum(reason_totals(backoff, m, m + 60).values()) for m in minutes}
    assert answer["tumbling"] in possible, (answer, possible)


# Each README curl line (its path and query) and what its answer must be.
CURL_CHECKS: dict[str, Callable[[Any, list[Occurrence], tuple[float, float]], None]] = {
    "/counts/?window=hopping&top=10": check_top_reasons,
    "/counts/?dim=object&window=hopping&type=Warning": check_noisiest_objects,
    "/counts/?window=tumbling&namespace=shop&ago=60": check_previous_minute,
    "/counts/key/?key=reason|shop|BackOff|Warning": check_one_key,
}


def test_readme_curl_lines_answer_the_counts(brokers: str, pipeline: Pipeline) -> None:
    t0 = int(time.time())
    messages, occurrences = raw_versions(t0)
    produce(brokers, pipeline.names["KUBEVENTS_TOPICS_RAW"], messages)
    port = pipeline.worker_port
    total = sum(o.delta for o in occurrences)

    def counted() -> bool:
        answer = get_json(f"http://127.0.0.1:{port}/counts/?window=hopping&top=1000")
        seen: int = sum(r["count"] for r in ours(answer["rows"]))
        return seen == total

    wait_until(counted, f"{total} occurrences counted")
    lines = readme_lines("curl")
    for line in lines:
        before = time.time()
        answer = run_curl(line, port)
        after = time.time()
        CURL_CHECKS[curl_url(line)](answer, occurrences, (before, after))
    assert len(lines) == len(CURL_CHECKS)
