"""The producer against the real API server and Kafka: nothing lost across restarts, expiry
(410 Gone) and failover; each version once from the leader; clear one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.integration.conftest import (
    ROOT,
    Proc,
    consume,
    free_port,
    get_json,
    kafka_ctl,
    metric,
    wait_http,
)
from tests.integration.kube_helpers import (
    create_event,
    create_namespace,
    delete_namespace,
    repeat_event,
)


def producer_env(names: dict[str, str], namespaces: list[str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in names.items() if k.startswith("KUBEVENTS_")}
    env.update(
        KUBEVENTS_PRODUCER_NAMESPACES=",".join(namespaces),
        KUBEVENTS_PRODUCER_LEASE_NAMESPACE="default",
        KUBEVENTS_PRODUCER_LEASE_DURATION_S="4",
        KUBEVENTS_PRODUCER_RENEW_PERIOD_S="1",
        KUBEVENTS_CLUSTER_NAME="it",
    )
    env.update(extra)
    return env


def start_producer(
    procs: list[Proc], env: dict[str, str], identity: str = "p1"
) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc(
        ["produce", "--http-port", str(port)],
        {**env, "KUBEVENTS_PRODUCER_IDENTITY": identity},
        f"producer-{identity}",
    )
    procs.append(proc)
    return proc, port


def wait_watching(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if get_json(f"http://127.0.0.1:{port}/readyz")["reason"] == "watching":
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError("producer never reached 'watching'")


def published(brokers: str, topic: str, **kw: Any) -> list[dict[str, Any]]:
    return [{"key": k, **json.loads(v)} for k, v, _ in consume(brokers, topic, **kw) if v]


def versions(records: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter(
        (r["object"]["metadata"]["uid"], r["object"]["metadata"]["resourceVersion"])
        for r in records
    )


def wait_for_versions(
    brokers: str, topic: str, wanted: set[tuple[str, str]], timeout: float = 90
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    records: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        records = published(brokers, topic, idle_s=2, timeout_s=30)
        if wanted <= set(versions(records)):
            return records
        time.sleep(1)
    missing = wanted - set(versions(records))
    raise AssertionError(f"{len(missing)} versions never published, e.g. {sorted(missing)[:3]}")


def test_events_from_several_namespaces_and_their_repeats_all_arrive(
    api: k8s.ApiClient, brokers: str, names: dict[str, str], procs: list[Proc]
) -> None:
    nss = [create_namespace(api, "pa"), create_namespace(api, "pb")]
    try:
        before = [create_event(api, ns) for ns in nss for _ in range(5)]  # listed at start
        # Pages of 2: each namespace's LIST takes three requests chained by continue tokens.
        env = producer_env(names, nss, KUBEVENTS_PRODUCER_LIST_PAGE_SIZE="2")
        _, port = start_producer(procs, env)
        wait_watching(port)
        after = [
            create_event(api, ns, type_="Warning", reason="BackOff") for ns in nss for _ in range(5)
        ]
        wanted = {(e["uid"], e["rv"]) for e in before + after}
        repeated = []
        for original in before[:3] + after[:3]:
            e = original
            for _ in range(2):
                e = repeat_event(api, e)
                wanted.add((e["uid"], e["rv"]))
            repeated.append(e)
        records = wait_for_versions(brokers, names["KUBEVENTS_TOPICS_RAW"], wanted)
        by_uid = {r["object"]["metadata"]["uid"]: r for r in records}
        for e in repeated:
            assert (
                max(
                    r["object"]["count"]
                    for r in records
                    if r["object"]["metadata"]["uid"] == e["uid"]
                )
                == 3
            )
        for e in before + after:
            rec = by_uid[e["uid"]]
            assert rec["key"] == e["involved_uid"].encode(), "keyed by the involved object's uid"
            assert rec["kind"] == "kubevents.raw/v1" and rec["cluster"] == "it"
            assert rec["producer"] == "p1" and rec["type"] in ("ADDED", "MODIFIED")
        assert {r["via"] for r in records} == {"list", "watch"}
        listed = {r["object"]["metadata"]["uid"] for r in records if r["via"] == "list"}
        assert listed == {e["uid"] for e in before}, "every page of the LIST was published"
        assert metric(port, "kubevents_producer_published_total") >= len(wanted)
    finally:
        for ns in nss:
            delete_namespace(api, ns)


def test_sigkill_mid_stream_then_restart_loses_no_event(
    api: k8s.ApiClient, brokers: str, names: dict[str, str], procs: list[Proc]
) -> None:
    ns = create_namespace(api, "pk")
    try:
        env = producer_env(names, [ns])
        proc, port = start_producer(procs, env)
        wait_watching(port)
        latest: dict[str, dict[str, Any]] = {}
        for i in range(60):
            e = create_event(api, ns, reason=f"R{i % 3}")
            latest[e["uid"]] = e
            if i == 30:
                proc.kill()  # SIGKILL: nothing flushed, nothing released
        for e in list(latest.values())[:10]:
            latest[e["uid"]] = repeat_event(api, e)  # repeats while the producer is down
        _, port2 = start_producer(procs, env, identity="p1-restarted")
        wait_watching(port2)
        records = wait_for_versions(
            brokers, names["KUBEVENTS_TOPICS_RAW"], {(e["uid"], e["rv"]) for e in latest.values()}
        )
        assert {r["object"]["metadata"]["uid"] for r in records} >= set(latest)
    finally:
        delete_namespace(api, ns)


def etcd_compact() -> int:
    """Compact etcd's history at its current revision (as the API server does every 5 min)."""
    import base64
    import urllib.request

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:2379{path}",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        return dict(json.loads(urllib.request.urlopen(req, timeout=10).read()))

    rev = int(post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
    post("/v3/kv/compaction", {"revision": rev, "physical": True})
    return rev


def test_watch_forced_into_410_gone_relists_without_loss(
    api: k8s.ApiClient, brokers: str, names: dict[str, str], procs: list[Proc]
) -> None:
    """The producer is frozen (SIGSTOP) with its watch at an old resourceVersion, history is
    compacted, and when its watch is renewed the API server answers 410: it must list again."""
    ns = create_namespace(api, "pg")
    try:
        env = producer_env(names, [ns], KUBEVENTS_PRODUCER_WATCH_TIMEOUT_S="10")
        proc, port = start_producer(procs, env)
        wait_watching(port)
        import os
        import signal

        os.killpg(proc.proc.pid, signal.SIGSTOP)
        try:
            created = [create_event(api, ns) for _ in range(30)]
            time.sleep(12)  # the frozen watch times out on the server side
            etcd_compact()
            created += [create_event(api, ns) for _ in range(5)]
        finally:
            os.killpg(proc.proc.pid, signal.SIGCONT)
        wait_for_versions(
            brokers, names["KUBEVENTS_TOPICS_RAW"], {(e["uid"], e["rv"]) for e in created}
        )
        deadline = time.monotonic() + 30
        while metric(port, 'kubevents_producer_relists_total{reason="gone"}') < 1:
            assert time.monotonic() < deadline, "no re-list after 410 Gone"
            time.sleep(1)
    finally:
        delete_namespace(api, ns)


def lease_holder(api: k8s.ApiClient, name: str) -> str | None:
    lease = k8s.CoordinationV1Api(api).read_namespaced_lease(name, "default")
    return lease.spec.holder_identity or None


def test_two_replicas_publish_once_and_fail_over_within_the_lease(
    api: k8s.ApiClient, brokers: str, names: dict[str, str], procs: list[Proc]
) -> None:
    ns = create_namespace(api, "pl")
    try:
        env = producer_env(names, [ns])
        a, port_a = start_producer(procs, env, identity="replica-a")
        b, port_b = start_producer(procs, env, identity="replica-b")
        lease = names["KUBEVENTS_PRODUCER_LEASE_NAME"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if lease_holder(api, lease):
                    break
            except k8s.ApiException:
                pass
            time.sleep(0.3)
        leader = lease_holder(api, lease)
        assert leader in ("replica-a", "replica-b")
        leader_proc, leader_port, other_port, other = (
            (a, port_a, port_b, "replica-b")
            if leader == "replica-a"
            else (b, port_b, port_a, "replica-a")
        )
        wait_watching(leader_port)
        wait_http(f"http://127.0.0.1:{other_port}/healthz")  # the follower is up too
        assert metric(leader_port, "kubevents_producer_leader") == 1
        assert metric(other_port, "kubevents_producer_leader") == 0
        first = [create_event(api, ns) for _ in range(20)]
        records = wait_for_versions(
            brokers, names["KUBEVENTS_TOPICS_RAW"], {(e["uid"], e["rv"]) for e in first}
        )
        counts = versions(records)
        assert all(counts[(e["uid"], e["rv"])] == 1 for e in first), "each version exactly once"
        assert {r["producer"] for r in records} == {leader}

        leader_proc.kill()
        killed_at = time.monotonic()
        while lease_holder(api, lease) != other:
            assert time.monotonic() - killed_at < 4 + 4, "hand-over took longer than the lease"
            time.sleep(0.2)
        handover = time.monotonic() - killed_at
        second = [create_event(api, ns) for _ in range(10)]
        records = wait_for_versions(
            brokers, names["KUBEVENTS_TOPICS_RAW"], {(e["uid"], e["rv"]) for e in second}
        )
        assert {
            r["producer"]
            for r in records
            if r["object"]["metadata"]["uid"] in {e["uid"] for e in second}
        } == {other}
        print(f"hand-over after SIGKILL of the leader: {handover:.1f}s (lease 4s)")
    finally:
        delete_namespace(api, ns)


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        check=False,
        text=True,
        timeout=90,
        cwd=str(ROOT),
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("kubevents: error:")]
    assert len(errors) == 1, result.stderr
    assert re.search(pattern, errors[0]), errors[0]


def test_clear_errors(tmp_path: Path, api: k8s.ApiClient, kubeconfig: str) -> None:
    base = {"KUBEVENTS_PRODUCER_HTTP_PORT": "0"}
    missing = run_cli(["produce"], {**base, "KUBECONFIG": str(tmp_path / "nope")})
    assert_one_line_error(missing, r"kubeconfig .*nope.* does not exist.*KUBECONFIG")

    bad = tmp_path / "bad.yaml"
    bad.write_text("this: [is not: a kubeconfig")
    assert_one_line_error(
        run_cli(["produce"], {**base, "KUBECONFIG": str(bad)}),
        r"kubeconfig .*bad.yaml.*(not usable|could not be parsed)",
    )

    import yaml

    cfg = yaml.safe_load(Path(kubeconfig).read_text())
    cfg["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    unreachable = tmp_path / "unreachable.yaml"
    unreachable.write_text(yaml.safe_dump(cfg))
    assert_one_line_error(
        run_cli(["produce"], {**base, "KUBECONFIG": str(unreachable)}),
        r"cannot reach the Kubernetes API server at https://127.0.0.1:1",
    )

    # A real identity without permissions: a fresh ServiceAccount's token.
    ns = create_namespace(api, "perm")
    try:
        core = k8s.CoreV1Api(api)
        core.create_namespaced_service_account(ns, {"metadata": {"name": "nobody"}})
        token = core.create_namespaced_service_account_token(
            "nobody", ns, {"spec": {"expirationSeconds": 600}}
        ).status.token
        cfg = yaml.safe_load(Path(kubeconfig).read_text())
        cfg["users"][0]["user"] = {"token": token}
        noperm = tmp_path / "noperm.yaml"
        noperm.write_text(yaml.safe_dump(cfg))
        assert_one_line_error(
            run_cli(["produce"], {**base, "KUBECONFIG": str(noperm)}),
            r"permission denied \(403\) to list events.*deploy/kubernetes",
        )
    finally:
        delete_namespace(api, ns)

    assert_one_line_error(
        run_cli(
            ["produce"],
            {**base, "KUBECONFIG": kubeconfig, "KUBEVENTS_KAFKA_BROKERS": "127.0.0.1:1"},
        ),
        r"cannot reach Kafka at 127.0.0.1:1.*KUBEVENTS_KAFKA_BROKERS",
    )


@pytest.mark.parametrize("content", ["[{]", '{"kind": "EventList", "items": [{"kind": "Pod"}]}'])
def test_replay_rejects_malformed_files_naming_the_place(tmp_path: Path, content: str) -> None:
    path = tmp_path / "dump.json"
    path.write_text(content)
    result = run_cli(["replay", str(path)], {})
    assert_one_line_error(result, r"dump.json: (line 1|item 0)")


def test_events_k8s_io_api_selectors_and_deleted(
    api: k8s.ApiClient, brokers: str, names: dict[str, str], procs: list[Proc]
) -> None:
    """The events.k8s.io/v1 API, a field selector, and DELETED published when asked for."""
    ns = create_namespace(api, "pn")
    try:
        env = producer_env(
            names,
            [ns],
            KUBEVENTS_PRODUCER_API="events.k8s.io/v1",
            KUBEVENTS_PRODUCER_FIELD_SELECTOR="type=Warning",
            KUBEVENTS_PRODUCER_INCLUDE_DELETED="true",
        )
        _, port = start_producer(procs, env)
        wait_watching(port)
        warning = create_event(api, ns, type_="Warning", reason="BackOff")
        normal = create_event(api, ns, type_="Normal", reason="Pulled")
        k8s.CoreV1Api(api).delete_namespaced_event(warning["name"], ns)
        records = wait_for_versions(
            brokers, names["KUBEVENTS_TOPICS_RAW"], {(warning["uid"], warning["rv"])}
        )
        deadline = time.monotonic() + 30
        while not any(r["type"] == "DELETED" for r in records):
            assert time.monotonic() < deadline, "DELETED never published"
            records = published(brokers, names["KUBEVENTS_TOPICS_RAW"], idle_s=2)
        assert {r["api"] for r in records} == {"events.k8s.io/v1"}
        assert all("regarding" in r["object"] for r in records)
        assert {r["object"]["metadata"]["uid"] for r in records} == {warning["uid"]}, (
            "the field selector kept the Normal event out"
        )
        assert normal["uid"] not in {r["object"]["metadata"]["uid"] for r in records}
        assert records[0]["key"] == warning["involved_uid"].encode()
    finally:
        delete_namespace(api, ns)


def test_kafka_down_pauses_reading_and_loses_nothing(
    api: k8s.ApiClient, brokers: str, names: dict[str, str], procs: list[Proc]
) -> None:
    """Kafka stopped under a running producer: it says so (readyz, metrics), keeps what it has
    in a bounded buffer, and delivers everything once Kafka is back."""
    ns = create_namespace(api, "pd")
    try:
        env = producer_env(
            names,
            [ns],
            KUBEVENTS_KAFKA_MAX_IN_FLIGHT_EVENTS="20",
            KUBEVENTS_KAFKA_REQUEST_TIMEOUT_MS="3000",
        )
        _, port = start_producer(procs, env)
        wait_watching(port)
        before = [create_event(api, ns) for _ in range(5)]
        wait_for_versions(
            brokers, names["KUBEVENTS_TOPICS_RAW"], {(e["uid"], e["rv"]) for e in before}
        )
        kafka_ctl("stop")
        try:
            during = [create_event(api, ns) for _ in range(60)]
            deadline = time.monotonic() + 60
            while metric(port, "kubevents_producer_kafka_blocked") < 1:
                assert time.monotonic() < deadline, "never reported that Kafka is not keeping up"
                time.sleep(1)
            assert metric(port, "kubevents_producer_in_flight") <= 20, "bounded buffer"
            import urllib.error
            import urllib.request

            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
                raise AssertionError("/readyz said ready while Kafka was down")
            except urllib.error.HTTPError as exc:
                assert exc.code == 503
        finally:
            kafka_ctl("start")
            kafka_ctl("wait")
        wait_for_versions(
            brokers,
            names["KUBEVENTS_TOPICS_RAW"],
            {(e["uid"], e["rv"]) for e in before + during},
            timeout=180,
        )
    finally:
        delete_namespace(api, ns)
