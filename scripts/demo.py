"""``make demo``: the whole job on the live local cluster, checked against the API server.

1. ``kubevents run`` with examples/pipelines.yaml starts two producer replicas (one holds the
   Lease and publishes), a core worker and the three sink pipelines of that file: every event
   to Elasticsearch, every event to MySQL, Warnings only to their own Elasticsearch index.
2. Real activity in a namespace of its own on the kwok nodes, answered by the real
   controller-manager and scheduler: Deployments scaled up and down, a rollout, pods that cannot
   be scheduled, a Job; and, since kwok runs no kubelet, kubelet Warnings (BackOff, FailedMount,
   Unhealthy) written and repeated as a kubelet does (scripts/demo_kubelet.py), marked simulated.
3. Progress every two seconds: events the API server holds, documents and rows in each sink,
   each pipeline's lag, dead-lettered records.
4. Once every sink holds exactly the API server's events of the namespace (same uids, same
   resourceVersions, so the same counts), what a user wants to see: the totals side by side, a
   full-text search, an SQL query, the top Warning reasons from the counts API, where to look.

Then a new round of activity every ``--pause`` seconds until Ctrl-C; ``--once`` does one round
and exits 0 only when the sinks agree with the API server (1 otherwise, saying what differs).
Default names are the users' (topics k8s-events-raw/k8s-events, alias k8s-events, table
k8s_events); ``--isolated`` gives every topic, consumer group, index and table a name of this run
(and free ports), so the demo can run beside anything else on the stack, and removes its topics,
indices and table at the end (aiokafka cannot delete consumer groups: empty, they expire).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import urllib3
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from elasticsearch import ApiError, Elasticsearch, NotFoundError, TransportError
from elasticsearch.helpers import scan
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from app.kafka.client import client_kwargs
from app.settings import PipelineSettings, Settings, load_settings
from app.sinks.elasticsearch_indices import template_name
from app.sinks.filters import Filter
from app.supervise import Child, plan
from scripts import demo_kubelet

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pipelines.yaml"
LOGS = ROOT / ".stack" / "logs"
PREFIX = "KUBEVENTS_"
SIMULATED_PLAN = (("BackOff", 4), ("Unhealthy", 3), ("FailedMount", 2))  # (reason, occurrences)


def say(text: str = "") -> None:
    print(text, flush=True)


class DemoError(Exception):
    """Why the demo cannot go on, in one line."""


# A server that does not answer (the stack starting, or a test stopping one for a while).
UNREACHABLE = (
    TransportError,
    ApiError,
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    KafkaError,
    k8s.ApiException,
    urllib3.exceptions.HTTPError,
    OSError,
)


def brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


# --------------------------------------------------------------------------------------------
# names, settings and ports


def overrides_of(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``KUBEVENTS_SECTION_FIELD=value`` as load_settings' overrides, so the demo's own view of
    the settings is the one its ``kubevents run`` builds from the same variables."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in env.items():
        section, _, name = key.removeprefix(PREFIX).lower().partition("_")
        out.setdefault(section, {})[name] = value
    return out


def ports_free(base: int, count: int) -> bool:
    for port in range(base, base + count):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_block(count: int) -> int:
    """The first of ``count`` consecutive free ports (kubevents run numbers its processes' ports
    from ``run.base_port`` up)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + count < 65000 and ports_free(base, count):
            return base
    raise DemoError(f"no {count} consecutive free ports found on 127.0.0.1")


@dataclass
class Names:
    """Everything this run is called: its namespace, the variables its ``kubevents run`` gets,
    the pipelines file and the settings they make."""

    tag: str
    namespace: str
    isolated: bool
    workdir: Path
    config: Path
    env: dict[str, str]
    settings: Settings
    children: list[Child]
    shown: dict[str, str] = field(default_factory=dict)  # pipeline id -> its id in the example

    def pipelines(self) -> list[PipelineSettings]:
        return self.settings.sink_pipelines()

    def port(self, name: str) -> int:
        return next(c.port for c in self.children if c.name == name)


def make_names(isolated: bool) -> Names:
    for needed in ("KUBEVENTS_ELASTICSEARCH_URL", "KUBEVENTS_MYSQL_URL", "KUBECONFIG"):
        if not os.environ.get(needed):
            raise DemoError(f"${needed} is not set: source .stack/env first (make demo does)")
    tag = uuid.uuid4().hex[:6]
    namespace = f"kubevents-demo-{tag}"
    workdir = Path(tempfile.mkdtemp(prefix=f"kubevents-demo-{tag}-"))
    env = {
        "KUBEVENTS_PRODUCER_NAMESPACES": namespace,
        # The Lease lives and dies with the namespace: a re-run never waits for a stale holder.
        "KUBEVENTS_PRODUCER_LEASE_NAMESPACE": namespace,
        "KUBEVENTS_PRODUCER_LEASE_NAME": "kubevents-demo",
        "KUBEVENTS_RUN_PRODUCER_REPLICAS": "2",
        "KUBEVENTS_RUN_CORE_REPLICAS": "1",
        "KUBEVENTS_RUN_STATUS_INTERVAL_S": "60",
        "KUBEVENTS_WORKER_DATA_DIR": str(workdir / "data"),
        "KUBEVENTS_LOG_FORMAT": "text",
    }
    config = EXAMPLE
    shown: dict[str, str] = {}
    if isolated:
        prefix = f"demo-{tag}"
        env |= {
            "KUBEVENTS_TOPICS_RAW": f"{prefix}-raw",
            "KUBEVENTS_TOPICS_ENRICHED": f"{prefix}-events",
            "KUBEVENTS_TOPICS_DLQ": f"{prefix}-dlq",
            "KUBEVENTS_CORE_APP_ID": f"{prefix}-core",
            "KUBEVENTS_ELASTICSEARCH_INDEX": f"{prefix}-k8s-events",
            "KUBEVENTS_MYSQL_TABLE": f"demo_{tag}_k8s_events",
        }
        # A pipeline's consumer group is named after its id, and an index written in the file
        # wins over the environment: a copy of the example with both made this run's own.
        data = yaml.safe_load(EXAMPLE.read_text())
        for pipeline in data["pipelines"]:
            own = f"{pipeline['id']}-{tag}"
            shown[own] = pipeline["id"]
            pipeline["id"] = own
            options = pipeline.get("elasticsearch") or {}
            if "index" in options:
                options["index"] = f"{prefix}-{options['index']}"
        config = workdir / "pipelines.yaml"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
    settings = load_settings(str(config), overrides_of(env))
    count = len(plan(settings, str(config), []))
    base = settings.run.base_port
    if isolated or ("KUBEVENTS_RUN_BASE_PORT" not in os.environ and not ports_free(base, count)):
        base = free_block(count)
    env["KUBEVENTS_RUN_BASE_PORT"] = str(base)
    settings = load_settings(str(config), overrides_of(env))
    children = plan(settings, str(config), [])
    names = Names(tag, namespace, isolated, workdir, config, env, settings, children, shown)
    for p in names.pipelines():
        names.shown.setdefault(p.id, p.id)
    return names


# --------------------------------------------------------------------------------------------
# what each side holds


@dataclass(frozen=True)
class Held:
    """One event as one side holds it."""

    resource_version: str
    type: str
    reason: str
    count: int
    kind: str = ""  # the involved object's (what a pipeline's ``kinds`` filter looks at)


class ApiServer:
    def __init__(self, api: k8s.ApiClient, namespace: str):
        # Any: the client takes plain dicts as bodies, and its optional fields are set here.
        self.core: Any = k8s.CoreV1Api(api)
        self.namespace = namespace

    def events(self) -> dict[str, Held]:
        out = {}
        for e in self.core.list_namespaced_event(self.namespace).items:
            series = e.series.count if e.series is not None else 0
            # The count the normaliser derives (app/model/normalize.py): the larger of count and
            # series.count (events.k8s.io Events, the scheduler's, carry the latter), at least 1.
            count = max(e.count or 0, series or 0, 1)
            kind = e.involved_object.kind if e.involved_object is not None else ""
            out[e.metadata.uid] = Held(e.metadata.resource_version, e.type, e.reason, count, kind)
        return out

    @staticmethod
    def expected(events: dict[str, Held], pipeline: PipelineSettings, ns: str) -> dict[str, str]:
        """uid -> resourceVersion of the events ``pipeline``'s filters let through (all but a
        ``min_severity`` filter, which needs the core's severity: the example file has none)."""
        f = Filter(pipeline.filters, pipeline.id)
        return {
            uid: e.resource_version
            for uid, e in events.items()
            if f.matches(
                {
                    "type": e.type,
                    "reason": e.reason,
                    "namespace": ns,
                    "involved_object": {"kind": e.kind},
                }
            )
        }


class Sinks:
    """Reads back what each sink pipeline wrote for the namespace."""

    def __init__(self, names: Names):
        self.names = names
        self.pipelines = names.pipelines()
        self.es: dict[str, Elasticsearch] = {}
        self.mysql: dict[str, sa.Engine] = {}
        for p in self.pipelines:
            if p.sink == "elasticsearch" and p.elasticsearch is not None:
                self.es[p.id] = Elasticsearch(p.elasticsearch.urls, request_timeout=10)
            elif p.sink == "mysql" and p.mysql is not None and p.mysql.url is not None:
                url = p.mysql.url.get_secret_value()
                self.mysql[p.id] = sa.create_engine(url, pool_pre_ping=True)

    def where(self, p: PipelineSettings) -> str:
        if p.elasticsearch is not None:
            return f"index {p.elasticsearch.index}"
        if p.mysql is not None:
            return f"table {p.mysql.table}"
        return p.sink

    def held(self, p: PipelineSettings) -> tuple[dict[str, Held], int]:
        """uid -> what the sink holds, and how many documents/rows that is (more than the uids:
        an event written twice)."""
        ns = self.names.namespace
        if p.id in self.es and p.elasticsearch is not None:
            es, index = self.es[p.id], p.elasticsearch.index
            # Every hit (a scroll: a demo left running outgrows one page); a uid found twice
            # (in two daily indices) is an event written twice.
            try:
                es.indices.refresh(index=index)
                hits = list(
                    scan(
                        es,
                        index=index,
                        query={"query": {"term": {"namespace": ns}}},
                        _source=["resource_version", "type", "reason", "count"],
                        size=1000,
                    )
                )
            except NotFoundError:  # the pipeline has not created its first index yet
                return {}, 0
            return {h["_id"]: self._held(h["_source"]) for h in hits}, len(hits)
        if p.id in self.mysql and p.mysql is not None:
            query = sa.text(
                f"SELECT uid, resource_version, type, reason, count FROM {p.mysql.table}"
                " WHERE namespace = :ns"
            )
            try:
                with self.mysql[p.id].connect() as conn:
                    rows = conn.execute(query, {"ns": ns}).mappings().all()
            except sa.exc.ProgrammingError:  # no table yet (migrated at the worker's start)
                return {}, 0
            return {r["uid"]: self._held(r) for r in rows}, len(rows)
        return {}, 0

    @staticmethod
    def _held(doc: Any) -> Held:
        return Held(str(doc["resource_version"]), doc["type"], doc["reason"], int(doc["count"]))

    def close(self) -> None:
        for es in self.es.values():
            es.close()
        for engine in self.mysql.values():
            engine.dispose()


class Kafka:
    """Lag of each consumer group and records on the dead-letter topic, through an admin client
    and a group-less consumer on a loop of their own."""

    def __init__(self, names: Names):
        self.names = names
        self.loop = asyncio.new_event_loop()
        try:
            self.admin, self.consumer = self.loop.run_until_complete(self._start())
        except KafkaError as exc:
            self.loop.close()
            brokers = names.settings.kafka.brokers
            raise DemoError(
                f"cannot reach Kafka at {brokers} ({brief(exc)}): is the stack up? (make stack)"
            ) from None
        self.dlq_at_start = self.records(names.settings.topics.dlq)

    async def _start(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        # aiokafka's clients take the running loop when they are made.
        options = client_kwargs(self.names.settings.kafka)
        admin = AIOKafkaAdminClient(**options)
        await admin.start()
        consumer = AIOKafkaConsumer(**options, enable_auto_commit=False)
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            await admin.close()
            raise
        return admin, consumer

    def _ends(self, topic: str) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        async def run() -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
            await self.consumer._client.force_metadata_update()
            parts = self.consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in parts]
            if not tps:
                return {}, {}
            starts = await self.consumer.beginning_offsets(tps)
            ends = await self.consumer.end_offsets(tps)
            return starts, ends

        return self.loop.run_until_complete(run())

    def records(self, topic: str) -> int:
        starts, ends = self._ends(topic)
        return sum(ends[tp] - starts[tp] for tp in ends)

    def lag(self, group: str, topic: str) -> int | None:
        starts, ends = self._ends(topic)
        if not ends:
            return None
        offsets = self.loop.run_until_complete(self.admin.list_consumer_group_offsets(group))
        done = {tp: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
        return sum(int(end - max(done.get(tp, -1), starts[tp])) for tp, end in ends.items())

    def dead_lettered(self) -> int:
        return self.records(self.names.settings.topics.dlq) - self.dlq_at_start

    def close(self) -> None:
        self.loop.run_until_complete(self.consumer.stop())
        self.loop.run_until_complete(self.admin.close())
        self.loop.close()


# --------------------------------------------------------------------------------------------
# activity on the cluster


class Workload:
    """Deployments, a rollout, unschedulable pods, Jobs and simulated kubelet Warnings in the
    demo's namespace; the real controller-manager and scheduler write the rest."""

    def __init__(self, api: k8s.ApiClient, namespace: str):
        self.api = api
        self.ns = namespace
        # Any: the client takes plain dicts as bodies (kubectl's manifests, as users write them).
        self.core: Any = k8s.CoreV1Api(api)
        self.apps: Any = k8s.AppsV1Api(api)
        self.batch: Any = k8s.BatchV1Api(api)
        self.simulated: dict[str, demo_kubelet.Recorded] = {}  # event uid -> as last written

    def create_namespace(self) -> None:
        self.core.create_namespace({"metadata": {"name": self.ns, "labels": {"demo": "kubevents"}}})

    def delete_namespace(self) -> None:
        """Delete the namespace (its pods, Jobs and Events go with it); try for a while, the API
        server may be away for a moment."""
        for _ in range(10):
            try:
                self.core.delete_namespace(self.ns)
                return
            except k8s.ApiException as exc:
                if exc.status == 404:
                    return
                error: BaseException = exc
            except UNREACHABLE as exc:
                error = exc
            time.sleep(3)
        say(f"[demo] could not delete namespace {self.ns} ({brief(error)}): delete it yourself")

    def deployment(self, name: str, replicas: int, cpu: str = "100m") -> None:
        labels = {"app": name, "app.kubernetes.io/part-of": "shop"}
        container = {
            "name": name,
            "image": f"registry.example/shop/{name}:1.0",
            "resources": {"requests": {"cpu": cpu}},
        }
        self.apps.create_namespaced_deployment(
            self.ns,
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [container]},
                    },
                },
            },
        )

    def scale(self, name: str, replicas: int) -> int:
        before = self.apps.read_namespaced_deployment_scale(name, self.ns).spec.replicas
        self.apps.patch_namespaced_deployment_scale(name, self.ns, {"spec": {"replicas": replicas}})
        return int(before)

    def rollout(self, name: str, version: str) -> None:
        """A new pod template (image and annotation): a new ReplicaSet replaces the old one."""
        patch = {
            "spec": {
                "template": {
                    "metadata": {"annotations": {"kubevents.io/demo-version": version}},
                    "spec": {
                        "containers": [
                            {"name": name, "image": f"registry.example/shop/{name}:{version}"}
                        ]
                    },
                }
            }
        }
        self.apps.patch_namespaced_deployment(name, self.ns, patch)

    def unschedulable_pod(self, name: str) -> None:
        """No node has the label it asks for: FailedScheduling Warnings from the scheduler."""
        self.core.create_namespaced_pod(
            self.ns,
            {
                "metadata": {"name": name, "labels": {"app": "pending"}},
                "spec": {
                    "nodeSelector": {"disktype": "nvme"},
                    "containers": [{"name": "c", "image": "registry.example/shop/indexer:1.0"}],
                },
            },
        )

    def job(self, name: str) -> None:
        self.batch.create_namespaced_job(
            self.ns,
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": name},
                "spec": {
                    "backoffLimit": 1,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {"name": "report", "image": "registry.example/shop/report:1.0"}
                            ],
                        }
                    },
                },
            },
        )

    def running_pods(self, app: str, at_least: int, timeout: float = 20) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            pods = [
                p
                for p in self.core.list_namespaced_pod(self.ns, label_selector=f"app={app}").items
                if p.spec.node_name
                and p.status.phase == "Running"
                and p.metadata.deletion_timestamp is None
            ]
            if len(pods) >= at_least or time.monotonic() > deadline:
                return sorted(pods, key=lambda p: p.metadata.name)
            time.sleep(0.5)

    def kubelet_warnings(self, pods: list[Any]) -> list[demo_kubelet.Recorded]:
        """BackOff, Unhealthy and FailedMount on three pods, each repeated as a kubelet does
        (interleaved, a moment apart, as real ones are)."""
        plan_ = [
            (demo_kubelet.PodRef.of(pod), reason, times)
            for pod, (reason, times) in zip(pods, SIMULATED_PLAN, strict=False)
        ]
        written = []
        for step in range(max(times for _, _, times in plan_) if plan_ else 0):
            for pod, reason, times in plan_:
                if step < times:
                    rec = demo_kubelet.record(self.api, pod, reason)
                    self.simulated[rec.uid] = rec
                    written.append(rec)
            time.sleep(0.4)
        return written


def activity(w: Workload, round_: int, say_: Callable[[str], None]) -> None:
    """One round of activity; round 1 creates the Deployments."""
    ts = f"[round {round_}]"
    if round_ == 1:
        w.deployment("web", 3)
        w.deployment("api", 2)
        say_(f"{ts} created Deployments web (3 replicas) and api (2) on the kwok nodes")
        w.deployment("trainer", 2, cpu="100")
        say_(f"{ts} created Deployment trainer (2 replicas of 100 CPUs: more than any node has)")
    up = round_ % 2 == 1
    w.unschedulable_pod(f"indexer-{round_}")
    say_(f"{ts} created pod indexer-{round_}: its nodeSelector matches no node (FailedScheduling)")
    w.job(f"report-{round_}")
    say_(f"{ts} created Job report-{round_}")
    pods = w.running_pods("web", 3)
    before = w.scale("web", 5 if up else 3)
    say_(f"{ts} scaled Deployment web {before} -> {5 if up else 3}")
    before = w.scale("api", 1 if up else 3)
    say_(f"{ts} scaled Deployment api {before} -> {1 if up else 3}")
    recorded = w.kubelet_warnings(pods)
    for uid in dict.fromkeys(r.uid for r in recorded):
        last = w.simulated[uid]
        pod = last.name.rsplit(".", 1)[0]
        say_(
            f"{ts} [SIMULATED kubelet] Warning {last.reason:<11} pod {pod}: count now"
            f" {last.count} (created, then repeated by patching count/lastTimestamp)"
        )
    w.rollout("web", f"1.{round_}")
    say_(f"{ts} rolled out Deployment web: image shop/web:1.{round_} (a new ReplicaSet)")


# --------------------------------------------------------------------------------------------
# progress and the comparison


@dataclass
class Snapshot:
    api: dict[str, Held]  # what the API server holds, and held earlier in this run
    held: dict[str, tuple[dict[str, Held], int]]  # pipeline id -> (uid -> held, docs/rows)
    expected: dict[str, dict[str, str]]  # pipeline id -> uid -> resourceVersion
    expired: int = 0  # events of ``api`` the API server no longer lists (its one-hour TTL)
    unanswered: dict[str, str] = field(default_factory=dict)  # pipeline id -> the error

    def agrees(self, pipeline_id: str) -> bool:
        if pipeline_id in self.unanswered:
            return False
        docs, total = self.held[pipeline_id]
        got = {uid: h.resource_version for uid, h in docs.items()}
        return got == self.expected[pipeline_id] and total == len(docs)

    def all_agree(self) -> bool:
        return bool(self.api) and all(self.agrees(p) for p in self.held)


def is_ready(answer: str) -> bool:
    """``Child.ready()``'s answer (app/supervise.py) is a 200 from /readyz."""
    return answer != "no answer" and not answer.startswith("not ready")


class Demo:
    def __init__(self, names: Names, api: k8s.ApiClient):
        self.names = names
        self.apiserver = ApiServer(api, names.namespace)
        self.sinks = Sinks(names)
        self.kafka = Kafka(names)
        self.workload = Workload(api, names.namespace)
        self.started = time.monotonic()
        self.known: dict[str, Held] = {}  # every event the API server listed in this run

    def snapshot(self) -> Snapshot:
        current = self.apiserver.events()  # first: a sink may then hold more, never less
        # The API server forgets an Event an hour after its last change, the sinks never: one
        # seen earlier in this run is still expected, at the last version it was seen with.
        self.known.update(current)
        api = dict(self.known)
        held: dict[str, tuple[dict[str, Held], int]] = {}
        unanswered: dict[str, str] = {}
        for p in self.sinks.pipelines:
            try:
                held[p.id] = self.sinks.held(p)
            except UNREACHABLE as exc:  # one destination away: the others still show
                held[p.id], unanswered[p.id] = ({}, 0), brief(exc)
        ns = self.names.namespace
        expected = {p.id: ApiServer.expected(api, p, ns) for p in self.sinks.pipelines}
        return Snapshot(api, held, expected, len(api) - len(current), unanswered)

    def lags(self) -> dict[str, int | None]:
        s = self.names.settings
        out = {"core": self.kafka.lag(s.core.app_id, s.topics.raw)}
        for p in self.sinks.pipelines:
            out[self.names.shown[p.id]] = self.kafka.lag(p.app_id, s.topics.enriched)
        return out

    def ready(self) -> int:
        """Processes whose /readyz answers 200."""
        return sum(is_ready(c.ready()) for c in self.names.children)

    def progress(self, snap: Snapshot) -> str:
        warnings = sum(e.type == "Warning" for e in snap.api.values())
        parts = [f"api-server {len(snap.api)} events ({warnings} Warnings)"]
        for p in self.sinks.pipelines:
            docs, _ = snap.held[p.id]
            have = "no answer" if p.id in snap.unanswered else str(len(docs))
            parts.append(f"{self.names.shown[p.id]} {have}/{len(snap.expected[p.id])}")
        try:
            lag = ", ".join(f"{k} {'-' if v is None else v}" for k, v in self.lags().items())
            dlq = str(self.kafka.dead_lettered())
        except UNREACHABLE as exc:
            lag, dlq = f"? (Kafka: {brief(exc)})", "?"
        parts += [f"lag {lag}", f"dlq {dlq}"]
        parts.append(f"ready {self.ready()}/{len(self.names.children)}")
        elapsed = time.monotonic() - self.started
        return f"  {elapsed:5.1f}s  " + " | ".join(parts)

    def wait_agreement(
        self, timeout: float, startup: float, run: subprocess.Popen[bytes], stopping: list[bool]
    ) -> Snapshot | None:
        """The first snapshot in which every sink agrees, else the last one ``timeout`` seconds
        after every process was ready (which may take up to ``startup`` seconds: six Python
        processes starting at once on a busy 2-core machine); None when Ctrl-C came first."""
        began = time.monotonic()
        deadline: float | None = None
        last_line = 0.0
        while not stopping[0]:
            if run.poll() is not None:
                raise DemoError(f"kubevents run exited with status {run.returncode}: see its log")
            if deadline is None:
                answers = {c.name: c.ready() for c in self.names.children}
                waiting = {n: a for n, a in answers.items() if not is_ready(a)}
                if not waiting:
                    deadline = time.monotonic() + timeout
                elif time.monotonic() - began > startup:
                    why = "; ".join(f"{n}: {a}" for n, a in waiting.items())
                    raise DemoError(f"not every process was ready after {startup:.0f}s ({why})")
            past = deadline is not None and time.monotonic() >= deadline
            try:
                snap = self.snapshot()
            except UNREACHABLE as exc:
                if past:
                    raise DemoError(f"still no answer after {timeout:.0f}s: {brief(exc)}") from None
                if time.monotonic() - last_line >= 2:
                    say(f"  waiting: no answer ({brief(exc)})")
                    last_line = time.monotonic()
                time.sleep(1.0)
                continue
            if snap.all_agree():
                say(self.progress(snap))
                return snap
            if past:
                say(self.progress(snap))
                return snap
            if time.monotonic() - last_line >= 2:
                say(self.progress(snap))
                last_line = time.monotonic()
            time.sleep(1.0)  # each look is an API list, two searches and a query
        return None

    # the report

    def report(self, snap: Snapshot) -> bool:
        ns = self.names.namespace
        api = snap.api
        warnings = {u for u, e in api.items() if e.type == "Warning"}
        say()
        say(f"== Events of namespace {ns}: the API server vs each sink (uids and versions) ==")
        say(
            f"  {'API server':<13} {'kubectl get events -n ' + ns:<44} {len(api):>5} events"
            f" ({len(warnings)} Warnings)"
            + (
                f"; {snap.expired} expired since (1 h TTL), kept by the sinks"
                if snap.expired
                else ""
            )
        )
        totals = {"api": len(api)}
        ok = bool(api)
        for p in self.sinks.pipelines:
            shown = self.names.shown[p.id]
            docs, total = snap.held[p.id]
            expected = snap.expected[p.id]
            unit = "rows" if p.sink == "mysql" else "documents"
            if p.id in snap.unanswered:
                verdict = f"NO ANSWER: {snap.unanswered[p.id]}"
            elif snap.agrees(p.id):
                verdict = "equal"
            else:
                verdict = self.difference(docs, total, expected)
            scope = "" if len(expected) == len(api) else f" of the API server's {len(expected)}"
            say(f"  {shown:<13} {self.sinks.where(p):<44} {total:>5} {unit}{scope}: {verdict}")
            totals[shown] = total
            ok = ok and snap.agrees(p.id)
        line = " ".join(f"{k}={v}" for k, v in totals.items())
        say(f"TOTALS {line}: {'AGREE' if ok else 'DIFFER'}")
        self.report_simulated(snap)
        for section in (self.report_search, self.report_sql, lambda: self.report_counts(api)):
            try:
                section()
            # The totals above stand; a sample is only missing (a server away, no table yet).
            except (*UNREACHABLE, sa.exc.ProgrammingError) as exc:
                say(f"  (not available: {brief(exc)})")
        self.report_where()
        return ok

    @staticmethod
    def difference(docs: dict[str, Held], total: int, expected: dict[str, str]) -> str:
        missing = expected.keys() - docs.keys()
        extra = docs.keys() - expected.keys()
        stale = [
            u for u in expected.keys() & docs.keys() if docs[u].resource_version != expected[u]
        ]
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(sorted(missing)[:3])})")
        if extra:
            parts.append(f"{len(extra)} not on the API server")
        if stale:
            parts.append(f"{len(stale)} at an older version")
        if total != len(docs):
            parts.append(f"{total - len(docs)} written twice")
        return "DIFFERS: " + "; ".join(parts)

    def report_simulated(self, snap: Snapshot) -> None:
        say()
        say(
            "== SIMULATED kubelet Warnings (kwok runs no kubelet; scripts/demo_kubelet.py wrote"
            " them as one does) =="
        )
        heads = [self.names.shown[p.id] for p in self.sinks.pipelines]
        say(
            f"  {'':<9} {'reason':<12} {'event uid':<37} {'api':>4} "
            + " ".join(f"{h:>14}" for h in heads)
        )
        for uid, rec in sorted(self.workload.simulated.items(), key=lambda i: i[1].reason):
            api_count = snap.api[uid].count if uid in snap.api else 0
            counts = []
            for p in self.sinks.pipelines:
                held = snap.held[p.id][0].get(uid)
                counts.append(f"{'-' if held is None else held.count:>14}")
            say(f"  SIMULATED {rec.reason:<12} {uid:<37} {api_count:>4} " + " ".join(counts))

    def es_all_events(self) -> PipelineSettings | None:
        return next(
            (
                p
                for p in self.sinks.pipelines
                if p.sink == "elasticsearch" and Filter(p.filters).everything
            ),
            None,
        )

    def report_search(self) -> None:
        p = self.es_all_events()
        if p is None or p.elasticsearch is None:
            return
        index, ns = p.elasticsearch.index, self.names.namespace
        # The query string the printed curl line sends, so a user can paste it.
        text = f'message:failed AND namespace:"{ns}"'
        found = self.sinks.es[p.id].search(
            index=index, query={"query_string": {"query": text}}, size=5
        )
        say()
        say(f"== Full-text search (Elasticsearch, alias {index}): {text} ==")
        q = urllib.parse.quote(text)
        say(f"  curl -s '{p.elasticsearch.urls[0]}/{index}/_search?q={q}&pretty'")
        say(f"  {found['hits']['total']['value']} hits:")
        for h in found["hits"]["hits"]:
            s = h["_source"]
            say(
                f"  SEARCH {s['reason']:<10} count {s['count']:<3} {s['involved_object']['kind']}/"
                f"{s['involved_object']['name']}: {s['message'][:70]}"
            )

    def mysql_pipeline(self) -> PipelineSettings | None:
        return next((p for p in self.sinks.pipelines if p.sink == "mysql"), None)

    def report_sql(self) -> None:
        p = self.mysql_pipeline()
        if p is None or p.mysql is None:
            return
        sql = (
            f"SELECT reason, type, COUNT(*) AS events, SUM(count) AS occurrences"
            f" FROM {p.mysql.table} WHERE namespace = '{self.names.namespace}'"
            " GROUP BY reason, type ORDER BY occurrences DESC, reason LIMIT 12"
        )
        say()
        say("== SQL (MySQL/MariaDB): events and occurrences per reason ==")
        say(f"  {sql};")
        with self.sinks.mysql[p.id].connect() as conn:
            rows = conn.execute(sa.text(sql)).all()
        say(f"  {'reason':<22} {'type':<8} {'events':>6} {'occurrences':>11}")
        for r in rows:
            say(f"  SQL {r.reason:<18} {r.type:<8} {r.events:>6} {int(r.occurrences):>11}")

    def report_counts(self, api: dict[str, Held]) -> None:
        port = self.names.port("core-0")
        ns = self.names.namespace
        url = f"http://127.0.0.1:{port}/counts/?window=hopping&type=Warning&namespace={ns}&top=5"
        say()
        say("== Top Warning reasons of the last hour (the core worker's counts API) ==")
        say(f"  curl -s '{url}'")
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                rows = json.load(resp)["rows"]
        except (OSError, ValueError) as exc:
            say(f"  the counts API did not answer: {exc}")
            return
        occurrences: Counter[str] = Counter()
        for e in api.values():
            if e.type == "Warning":
                occurrences[e.reason] += e.count
        for r in rows:
            same = "=" if occurrences[r["reason"]] == r["count"] else "!="
            say(
                f"  TOP {r['reason']:<20} {r['count']:>5} occurrences"
                f" ({same} {occurrences[r['reason']]} by the API server's counts)"
            )

    def report_where(self) -> None:
        s = self.names.settings
        es = self.es_all_events()
        my = self.mysql_pipeline()
        ns = self.names.namespace
        core = self.names.port("core-0")
        say()
        say("== Look further ==")
        if es is not None and es.elasticsearch is not None:
            base = es.elasticsearch.urls[0]
            say(f"  Elasticsearch: {base}/{es.elasticsearch.index}/_search?q=type:Warning&pretty")
        if my is not None and my.mysql is not None and my.mysql.url is not None:
            url = sa.engine.make_url(my.mysql.url.get_secret_value())
            say(
                f"  MySQL:  mariadb -h {url.host} -P {url.port or 3306} -u {url.username}"
                f' {url.database} -e "SELECT last_seen, reason, involved_name, count, message'
                f" FROM {my.mysql.table} WHERE namespace = '{ns}' ORDER BY last_seen DESC"
                ' LIMIT 20"'
            )
        say(
            f"  Counts: http://127.0.0.1:{core}/counts/?window=hopping&top=10"
            "  (while the demo runs)"
        )
        say(
            f"  Kafka:  kafka-console-consumer.sh --bootstrap-server {s.kafka.brokers}"
            f" --topic {s.topics.enriched} --from-beginning"
        )
        say(f"  Logs:   {self.log_path()}")

    def log_path(self) -> Path:
        return LOGS / f"demo-{self.names.tag}.log"

    def close(self) -> None:
        self.sinks.close()
        self.kafka.close()


# --------------------------------------------------------------------------------------------
# start, rounds, stop


def start_run(names: Names, log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("ab")
    # A session of its own: Ctrl-C reaches the demo alone, which stops kubevents run (SIGTERM),
    # which stops its children; whatever is left of its process group is killed after it.
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run", "--config", str(names.config)],
        cwd=ROOT,
        env={**os.environ, **names.env},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_run(run: subprocess.Popen[bytes]) -> None:
    if run.poll() is None:
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(40)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(run.pid, signal.SIGKILL)


def remove_isolated(names: Names) -> None:
    """This run's topics, consumer groups, indices and table (``--isolated`` only)."""
    s = names.settings
    prefix = f"demo-{names.tag}"

    async def kafka() -> None:
        admin = AIOKafkaAdminClient(**client_kwargs(s.kafka))
        await admin.start()
        try:
            # Faust's own topics are named after the app id: the core's starts with the prefix,
            # a sink pipeline's (kubevents-sink-<id>-...) with its group's name.
            owners = (prefix, *(f"{p.app_id}-" for p in names.pipelines()))
            topics = [t for t in await admin.list_topics() if t.startswith(owners)]
            if topics:
                await admin.delete_topics(topics)
            # aiokafka cannot delete consumer groups: empty, they expire with Kafka's
            # offsets.retention.minutes (7 days by default).
        finally:
            await admin.close()

    with contextlib.suppress(Exception):
        asyncio.run(kafka())
    for p in names.pipelines():
        if p.elasticsearch is not None:
            es = Elasticsearch(p.elasticsearch.urls, request_timeout=30)
            with contextlib.suppress(Exception):
                es.options(ignore_status=404).indices.delete(
                    index=f"{p.elasticsearch.index}-*", expand_wildcards="all"
                )
                es.options(ignore_status=404).indices.delete_index_template(
                    name=template_name(p.elasticsearch.index)
                )
            es.close()
        if p.mysql is not None and p.mysql.url is not None:
            engine = sa.create_engine(p.mysql.url.get_secret_value())
            with contextlib.suppress(Exception), engine.begin() as conn:
                for table in (p.mysql.table, f"{p.mysql.table}_alembic_version"):
                    conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
            engine.dispose()


@contextlib.contextmanager
def interrupted_as_stop() -> Iterator[list[bool]]:
    """Ctrl-C or SIGTERM: finish the current step, then stop everything."""
    flag = [False]

    def stop(signum: int, frame: Any) -> None:
        if flag[0]:
            raise KeyboardInterrupt
        flag[0] = True
        say("\n[demo] stopping (Ctrl-C again to hurry)...")

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="one round; exit 0 if the sinks agree")
    parser.add_argument(
        "--isolated", action="store_true", help="names and ports of this run only, removed after"
    )
    parser.add_argument("--pause", type=float, default=20.0, help="seconds between rounds")
    parser.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        help="longest wait for the sinks to agree once every process is ready, s",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=150.0,
        help="longest wait for every process to be ready, s",
    )
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    try:
        names = make_names(args.isolated)
    except DemoError as exc:
        say(f"demo: error: {exc}")
        return 2
    k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
    api = k8s.ApiClient()
    log = LOGS / f"demo-{names.tag}.log"
    s = names.settings
    say(f"[demo] namespace {names.namespace}; kubevents run --config {names.config}")
    say(
        f"[demo] topics {s.topics.raw} -> core ({s.core.app_id}) -> {s.topics.enriched};"
        f" dlq {s.topics.dlq}"
    )
    ids = ", ".join(f"{names.shown[p.id]} -> {p.sink}" for p in names.pipelines())
    say(f"[demo] sink pipelines: {ids}")
    say("[demo] processes: " + ", ".join(f"{c.name} :{c.port}" for c in names.children))
    say(f"[demo] their log: {log}")
    demo: Demo | None = None
    run: subprocess.Popen[bytes] | None = None
    ok = False
    with interrupted_as_stop() as stopping:
        try:
            demo = Demo(names, api)
            demo.workload.create_namespace()
            run = start_run(names, log)
            round_ = 0
            while not stopping[0]:
                round_ += 1
                began = time.monotonic()
                activity(demo.workload, round_, say)
                say(
                    f"[round {round_}] activity done in {time.monotonic() - began:.1f}s;"
                    " waiting for every sink to hold exactly the API server's events"
                )
                snap = demo.wait_agreement(args.timeout, args.startup_timeout, run, stopping)
                if snap is None:
                    break
                ok = demo.report(snap)
                took = time.monotonic() - t0 if round_ == 1 else time.monotonic() - began
                say()
                if ok:
                    say(
                        f"[demo] round {round_}: the sinks agree with the API server"
                        f" ({took:.1f}s {'since the start' if round_ == 1 else 'this round'})"
                    )
                else:
                    say(
                        f"[demo] round {round_}: FAILED: the sinks do not agree with the API"
                        f" server {args.timeout:.0f}s after every process was ready (see above;"
                        f" log {log})"
                    )
                if args.once or not ok:
                    break
                say(f"[demo] next round in {args.pause:.0f}s; Ctrl-C stops everything")
                until = time.monotonic() + args.pause
                next_line = time.monotonic() + 5
                while time.monotonic() < until and not stopping[0]:
                    if time.monotonic() >= next_line:  # the scheduler's retries go on meanwhile
                        say(demo.progress(demo.snapshot()))
                        next_line = time.monotonic() + 5
                    time.sleep(0.5)
        except DemoError as exc:
            say(f"[demo] FAILED: {exc} ({log})")
            ok = False
        except UNREACHABLE as exc:
            say(f"[demo] FAILED: a server did not answer: {brief(exc)} ({log})")
            ok = False
        except KeyboardInterrupt:
            say("[demo] interrupted")
        finally:
            if run is not None:
                stop_run(run)
                say("[demo] kubevents run and every process it started: stopped")
            if demo is not None:
                with contextlib.suppress(*UNREACHABLE):
                    demo.close()
                demo.workload.delete_namespace()
            if names.isolated:
                remove_isolated(names)
            shutil.rmtree(names.workdir, ignore_errors=True)
    say(f"[demo] {'done' if ok else 'FAILED'} in {time.monotonic() - t0:.1f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
