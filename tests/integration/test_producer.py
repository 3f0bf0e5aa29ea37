"""The producer against the real API server and Kafka: nothing lost across restarts, expiry
(410 Gone) and failover; each version once from the leader; clear one-line errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest
import urllib3
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
    filled,
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


def wait_until(
    what: str, cond: Callable[[], bool], timeout: float = 60, step: float = 0.1
) -> float:
    """Poll ``cond`` until it holds; returns how long that took (fails naming ``what``). A
    process whose HTTP port is not open yet (OSError) has not met the condition yet."""
    start = time.monotonic()
    while True:
        try:
            if cond():
                return time.monotonic() - start
        except OSError:
            pass
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout}s"
        time.sleep(step)


def running(proc: Proc) -> bool:
    """True while ``proc`` runs; once it exited, a failure that shows why."""
    assert proc.proc.poll() is None, f"{proc.log_path.name} exited:\n{proc.output()[-2000:]}"
    return True


def create_events(api: k8s.ApiClient, ns: str, n: int, threads: int = 8) -> list[dict[str, Any]]:
    """``n`` events created by ``threads`` parallel writers (a backlog, quickly)."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda i: create_event(api, ns, reason=f"R{i % 7}"), range(n)))


def api_versions(api: k8s.ApiClient, ns: str) -> set[tuple[str, str]]:
    """Every (uid, resourceVersion) the API server holds in ``ns`` now: the ground truth."""
    # Without preloading the client returns urllib3's response, not the model it annotates.
    resp = cast(
        urllib3.BaseHTTPResponse,
        k8s.CoreV1Api(api).list_namespaced_event(ns, _preload_content=False),
    )
    items = json.loads(resp.data)["items"]
    return {(i["metadata"]["uid"], i["metadata"]["resourceVersion"]) for i in items}


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


def test_sigkill_mid_list_of_a_backlog_then_restart_loses_nothing(
    api: k8s.ApiClient, brokers: str, names: dict[str, str], procs: list[Proc]
) -> None:
    """A backlog of 2500 events, SIGKILL while its LIST is half done (pages slowed by a fault
    point), events created and repeated while the producer is down, a restart: every version the
    API server holds at the end was published."""
    backlog_n, page = 2500, 100
    ns = create_namespace(api, "pk")
    topic = names["KUBEVENTS_TOPICS_RAW"]
    try:
        t0 = time.monotonic()
        backlog = create_events(api, ns, backlog_n)
        print(f"backlog of {backlog_n} events created in {time.monotonic() - t0:.1f}s")
        env = producer_env(names, [ns], KUBEVENTS_PRODUCER_LIST_PAGE_SIZE=str(page))
        proc, port = start_producer(
            procs, {**env, "KUBEVENTS_FAULTS": "source.list-page=delay:0.3"}, identity="p1"
        )
        wait_until(
            "LIST under way",
            lambda: running(proc) and metric(port, "kubevents_producer_listed_total") >= 5 * page,
            timeout=60,
            step=0.05,
        )
        hits = metric(port, 'kubevents_fault_hits_total{point="source.list-page"}')
        listed = metric(port, "kubevents_producer_listed_total")
        proc.kill()  # SIGKILL: nothing flushed, nothing released
        assert hits >= 5 and listed < backlog_n - 2 * page, "the kill landed after the LIST"
        first = published(brokers, topic, idle_s=2)
        assert len(first) < backlog_n, f"the kill landed after the LIST ({len(first)} published)"
        print(f"killed after {listed:.0f} listed, {len(first)} published, {hits:.0f} slowed pages")

        during = create_events(api, ns, 100)  # while it is down
        for e in backlog[::25] + during[:10]:  # repeats of old and new ones while it is down
            repeat_event(api, e)
        _, port2 = start_producer(procs, env, identity="p1-restarted")
        wait_watching(port2)
        for e in backlog[1::50]:
            repeat_event(api, e)  # and some through the new watch
        truth = api_versions(api, ns)
        assert len(truth) == backlog_n + 100
        wait_for_versions(brokers, topic, truth, timeout=60)
    finally:
        delete_namespace(api, ns)


def etcd_compact() -> int:
    """Compact etcd's history at its current revision (as the API server does every 5 min).

    Revisions before it are gone, the current one stays readable: a caller whose snapshot must
    expire writes something after that snapshot first. Someone else (another test on the same
    etcd) may have compacted at or past it already: that is as good."""
    import base64
    import urllib.error
    import urllib.request

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:2379{path}",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        return dict(json.loads(urllib.request.urlopen(req, timeout=10).read()))

    rev = int(post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
    try:
        post("/v3/kv/compaction", {"revision": rev, "physical": True})
    except urllib.error.HTTPError as exc:
        if "required revision has been compacted" not in exc.read().decode(errors="replace"):
            raise
    return rev


@pytest.mark.alone
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


@pytest.mark.alone
def test_list_continue_token_expired_mid_list_lists_again_without_loss(
    api: k8s.ApiClient, brokers: str, names: dict[str, str], procs: list[Proc]
) -> None:
    """etcd compacted while a paginated LIST is under way: the next page's continue token is
    410 "too old", and the producer lists again from the start, losing nothing."""
    backlog_n, page = 400, 20
    ns = create_namespace(api, "pc")
    topic = names["KUBEVENTS_TOPICS_RAW"]
    try:
        backlog = create_events(api, ns, backlog_n)
        env = producer_env(
            names,
            [ns],
            KUBEVENTS_PRODUCER_LIST_PAGE_SIZE=str(page),
            KUBEVENTS_FAULTS="source.list-page=delay:0.2",
        )
        proc, port = start_producer(procs, env)
        wait_until(
            "LIST under way",
            lambda: running(proc) and metric(port, "kubevents_producer_listed_total") >= 3 * page,
            step=0.05,
        )
        # A write after the LIST's snapshot, then compaction: the snapshot's revision is gone
        # (compacting at a revision keeps that one), and with it the LIST's continue token.
        changed = [create_event(api, ns)]
        etcd_compact()
        listed = metric(port, "kubevents_producer_listed_total")
        assert listed < backlog_n - 3 * page, "the compaction landed after the LIST"
        changed += create_events(api, ns, 20) + [repeat_event(api, e) for e in backlog[::20]]
        wait_until(
            "a LIST restarted after its continue token expired",
            lambda: (
                metric(port, 'kubevents_producer_relists_total{reason="continue-expired"}') >= 1
            ),
        )
        wait_watching(port)
        assert metric(port, "kubevents_producer_listed_total") >= listed + backlog_n
        truth = api_versions(api, ns)
        assert {(e["uid"], e["rv"]) for e in changed} <= truth
        wait_for_versions(brokers, topic, truth, timeout=60)
    finally:
        delete_namespace(api, ns)


LEADER = "kubevents_producer_leader"


def lease_holder(api: k8s.ApiClient, name: str) -> str | None:
    lease = k8s.CoordinationV1Api(api).read_namespaced_lease(name, "default")
    return filled(lease.spec).holder_identity or None


def wait_leader(api: k8s.ApiClient, lease: str, want: str | None = None) -> str:
    """The Lease's holder once there is one (``want``: once it is that one)."""
    holder: list[str | None] = [None]

    def held() -> bool:
        try:
            holder[0] = lease_holder(api, lease)
        except k8s.ApiException:
            return False
        return holder[0] is not None and (want is None or holder[0] == want)

    wait_until(f"Lease {lease} held by {want or 'anyone'}", held, timeout=30, step=0.05)
    assert holder[0] is not None
    return holder[0]


def wait_renewal(api: k8s.ApiClient, lease: str) -> None:
    """Return right after the holder renewed the Lease (its renewTime changed)."""

    def renew_time() -> datetime | None:
        spec = k8s.CoordinationV1Api(api).read_namespaced_lease(lease, "default").spec
        return filled(spec).renew_time

    before = renew_time()
    wait_until("a Lease renewal", lambda: renew_time() != before, timeout=10, step=0.03)


@pytest.mark.alone
def test_two_replicas_publish_once_and_fail_over_within_the_lease(
    api: k8s.ApiClient, brokers: str, names: dict[str, str], procs: list[Proc]
) -> None:
    """Two replicas: only the leader publishes, each version once. SIGKILL of the leader: the
    other takes over after about a lease (4 s), not sooner, not much later. SIGTERM of a leader:
    it releases the Lease, and a standby takes over at once."""
    ns = create_namespace(api, "pl")
    topic = names["KUBEVENTS_TOPICS_RAW"]
    lease = names["KUBEVENTS_PRODUCER_LEASE_NAME"]
    try:
        env = producer_env(names, [ns])
        a, port_a = start_producer(procs, env, identity="replica-a")
        b, port_b = start_producer(procs, env, identity="replica-b")
        leader = wait_leader(api, lease)
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
        records = wait_for_versions(brokers, topic, {(e["uid"], e["rv"]) for e in first})
        counts = versions(records)
        assert all(counts[(e["uid"], e["rv"])] == 1 for e in first), "each version exactly once"
        assert {r["producer"] for r in records} == {leader}
        assert metric(other_port, "kubevents_producer_published_total") == 0

        # SIGKILL right after a renewal: the Lease is taken over once it is a lease old.
        wait_renewal(api, lease)
        leader_proc.kill()
        killed = wait_until(
            "hand-over after SIGKILL", lambda: lease_holder(api, lease) == other, step=0.05
        )
        print(f"hand-over after SIGKILL of the leader: {killed:.2f}s (lease 4s, renew 1s)")
        assert 4 * 0.8 < killed < 4 + 1 + 0.7, f"hand-over after {killed:.2f}s (lease 4s)"
        second = [create_event(api, ns) for _ in range(10)]
        records = wait_for_versions(brokers, topic, {(e["uid"], e["rv"]) for e in second})
        assert {
            r["producer"]
            for r in records
            if r["object"]["metadata"]["uid"] in {e["uid"] for e in second}
        } == {other}

        # SIGTERM: the leader gives the Lease up on its way out; a standby takes it at once.
        _, port_c = start_producer(procs, env, identity="replica-c")
        wait_http(f"http://127.0.0.1:{port_c}/healthz")
        other_proc = b if other == "replica-b" else a
        os.killpg(other_proc.proc.pid, signal.SIGTERM)
        released = wait_until(
            "hand-over after SIGTERM", lambda: lease_holder(api, lease) == "replica-c", step=0.05
        )
        print(f"hand-over after SIGTERM of the leader: {released:.2f}s (lease 4s)")
        assert released < 2, f"hand-over after SIGTERM took {released:.2f}s"
        assert other_proc.proc.wait(30) == 0
        third = [create_event(api, ns) for _ in range(5)]
        records = wait_for_versions(brokers, topic, {(e["uid"], e["rv"]) for e in third})
        assert {
            r["producer"]
            for r in records
            if r["object"]["metadata"]["uid"] in {e["uid"] for e in third}
        } == {"replica-c"}
    finally:
        delete_namespace(api, ns)


@pytest.mark.alone
def test_frozen_leader_publishes_nothing_once_it_lost_the_lease(
    api: k8s.ApiClient, brokers: str, names: dict[str, str], procs: list[Proc]
) -> None:
    """Split brain: the leader is frozen (SIGSTOP) past its lease, the other replica takes over,
    events happen, and the old leader resumes with them buffered on its watch. Its elector runs
    late (a fault point delays each lease round by 1 s), so only the leadership check before
    sending stops it: no version created after the take-over is published by two replicas."""
    ns = create_namespace(api, "ps")
    topic = names["KUBEVENTS_TOPICS_RAW"]
    lease = names["KUBEVENTS_PRODUCER_LEASE_NAME"]
    try:
        env = producer_env(names, [ns])
        a, port_a = start_producer(
            procs, {**env, "KUBEVENTS_FAULTS": "election.round=delay:1"}, identity="replica-a"
        )
        wait_leader(api, lease, "replica-a")
        _, port_b = start_producer(procs, env, identity="replica-b")
        wait_watching(port_a)
        wait_http(f"http://127.0.0.1:{port_b}/healthz")
        before = [create_event(api, ns) for _ in range(10)]
        wait_for_versions(brokers, topic, {(e["uid"], e["rv"]) for e in before})

        wait_renewal(api, lease)  # freeze a between two rounds, its elector asleep
        os.killpg(a.proc.pid, signal.SIGSTOP)
        try:
            took = wait_leader(api, lease, "replica-b")
            assert took == "replica-b"
            # Created after the take-over, read by both: a's frozen watch buffers them.
            during = [create_event(api, ns) for _ in range(20)]
            during += [repeat_event(api, e) for e in before[:5]]
            # Once b has them, the API server has sent them down a's watch connection too.
            wait_for_versions(brokers, topic, {(e["uid"], e["rv"]) for e in during})
        finally:
            os.killpg(a.proc.pid, signal.SIGCONT)
        wait_until("a noticed it lost the Lease", lambda: metric(port_a, LEADER) == 0)
        after = [create_event(api, ns) for _ in range(10)]
        after += [repeat_event(api, e) for e in during[:5]]
        late = {(e["uid"], e["rv"]) for e in during + after}
        records = wait_for_versions(brokers, topic, late)
        by_version: dict[tuple[str, str], set[str]] = {}
        for r in records:
            key = (r["object"]["metadata"]["uid"], r["object"]["metadata"]["resourceVersion"])
            by_version.setdefault(key, set()).add(r["producer"])
        twice = {v: p for v, p in by_version.items() if v in late and p != {"replica-b"}}
        assert not twice, (
            f"{len(twice)} versions published by the old leader after it lost the Lease, e.g."
            f" {sorted(twice.items())[:3]}"
        )
        withheld = metric(port_a, "kubevents_producer_withheld_total")
        print(f"the resumed old leader withheld {withheld:.0f} records")
        assert withheld > 0, "the old leader never read the buffered events: nothing was tested"
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
        # Dict bodies (ignored arg-type): the client validates them into the annotated models.
        core.create_namespaced_service_account(ns, {"metadata": {"name": "nobody"}})  # type: ignore[arg-type]
        token = filled(
            core.create_namespaced_service_account_token(
                "nobody",
                ns,
                {"spec": {"expirationSeconds": 600}},  # type: ignore[arg-type]
            ).status
        ).token
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


@pytest.mark.alone
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
