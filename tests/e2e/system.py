"""The whole job as the fault suite runs it: two producer replicas, a core worker and the
Elasticsearch and MySQL sink pipelines as real processes on the real stack, a steady load of
kubelet-style Events created in the API server, and the three-way comparison (API server,
Elasticsearch, MySQL, plus the counts API) that decides whether a fault lost, doubled or
miscounted anything."""

from __future__ import annotations

import contextlib
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from elasticsearch import Elasticsearch
from kubernetes import client as k8s

from bench.common import create_databases, drop_databases
from tests.integration.conftest import (
    Proc,
    committed,
    free_port,
    get_json,
    need_env,
    wait_http,
)
from tests.integration.kube_helpers import filled

REASONS = [
    ("Warning", "BackOff", "Back-off restarting failed container app in pod {pod}"),
    ("Warning", "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 503"),
    ("Warning", "FailedMount", 'MountVolume.SetUp failed for volume "config" : not found'),
    ("Normal", "Pulled", 'Container image "registry.local/app:1.4.2" already present'),
    ("Normal", "Started", "Started container app"),
]


def micros(value: Any) -> int:
    """A time from any of the three places (ISO string with Z, aware or naive-UTC datetime) as
    microseconds since the epoch, so that they compare exactly."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1_000_000)


def metrics(port: int) -> dict[str, float]:
    """A kubevents /metrics as {name{labels}: value}; empty when the process does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metric_sum(values: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in values.items() if k == prefix or k.startswith(prefix + "{"))


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


class Load:
    """Kubelet-style Events on a few pods: new ones, and repeats patched as the kubelet's event
    correlator does (count + 1, lastTimestamp now). Every version the API server acknowledged is
    remembered with the time it was acknowledged; calls that fail (API server away) are
    counted and skipped: what the API server holds in the end is the truth, not this list."""

    def __init__(self, api: k8s.ApiClient, namespace: str, rate: float = 20.0):
        self.core = k8s.CoreV1Api(api)
        self.ns, self.rate = namespace, rate
        self.events: dict[str, dict[str, Any]] = {}  # name -> {count, uid}
        self.versions: list[tuple[float, str, str]] = []  # (monotonic, uid, rv) acknowledged
        self.failures = 0
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._stop = threading.Event()
        self._rng = random.Random(7)
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()

    # -- control -----------------------------------------------------------------------------

    def resume(self) -> None:
        self._running.set()

    def pause(self) -> None:
        self._running.clear()
        time.sleep(0.3)  # the call under way, if any, returns

    def close(self) -> None:
        self._stop.set()
        self._running.set()
        self._thread.join(10)

    def acknowledged_before(self, t: float) -> set[tuple[str, str]]:
        with self._lock:
            return {(uid, rv) for at, uid, rv in self.versions if at < t}

    def acknowledged_after(self, t: float) -> int:
        with self._lock:
            return sum(1 for at, _, _ in self.versions if at >= t)

    def last_acknowledged(self) -> tuple[float, str] | None:
        with self._lock:
            return (self.versions[-1][0], self.versions[-1][1]) if self.versions else None

    def burst(self, n: int, threads: int = 6) -> Callable[[], None]:
        """Start creating ``n`` new events as fast as the API server takes them (records in
        flight at once, while a fault lands); returns the function that waits for the end."""

        def create() -> None:
            for _ in range(n // threads):
                self.one(new=True)

        workers = [threading.Thread(target=create) for _ in range(threads)]
        for w in workers:
            w.start()

        def join() -> None:
            for w in workers:
                w.join()

        return join

    # -- the load ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._running.wait()
            if self._stop.is_set():
                return
            started = time.monotonic()
            self.one(new=self._rng.random() < 0.5 or len(self.events) < 10)
            time.sleep(max(0.0, 1 / self.rate - (time.monotonic() - started)))

    def one(self, new: bool) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            if new:
                self._create(now)
            else:
                self._repeat(now)
        except (k8s.ApiException, OSError, ValueError):
            # ValueError: urllib3 may surface a reset connection that way on some paths.
            with self._lock:
                self.failures += 1
        except Exception:
            with self._lock:
                self.failures += 1

    def _create(self, now: str) -> None:
        with self._lock:
            pod = f"web-{self._rng.randrange(12)}"
            type_, reason, message = REASONS[self._rng.randrange(len(REASONS))]
        body = {
            "metadata": {"name": f"{pod}.{uuid.uuid4().hex[:12]}", "namespace": self.ns},
            "involvedObject": {
                "kind": "Pod",
                "name": pod,
                "namespace": self.ns,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.ns}/{pod}")),
                "apiVersion": "v1",
                "fieldPath": "spec.containers{app}",
            },
            "reason": reason,
            "message": message.format(pod=pod),
            "type": type_,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": "kubelet", "host": "kwok-node-0"},
        }
        # A dict body (ignored arg-type): the client validates it into the annotated model.
        made = self.core.create_namespaced_event(self.ns, body, _request_timeout=5)  # type: ignore[arg-type]
        with self._lock:
            self.events[filled(made.metadata.name)] = {"count": 1, "uid": made.metadata.uid}
            self.versions.append(
                (
                    time.monotonic(),
                    filled(made.metadata.uid),
                    filled(made.metadata.resource_version),
                )
            )

    def _repeat(self, now: str) -> None:
        with self._lock:
            name = self._rng.choice(list(self.events))
            count = self.events[name]["count"] + 1
            self.events[name]["count"] = count
        made = self.core.patch_namespaced_event(
            name, self.ns, {"count": count, "lastTimestamp": now}, _request_timeout=5
        )
        with self._lock:
            self.versions.append(
                (
                    time.monotonic(),
                    filled(made.metadata.uid),
                    filled(made.metadata.resource_version),
                )
            )


@dataclass
class Check:
    """One three-way comparison: what each side holds against the API server."""

    api: int
    lost: dict[str, int] = field(default_factory=dict)
    duplicated: dict[str, int] = field(default_factory=dict)
    wrong: dict[str, int] = field(default_factory=dict)
    occurrences: int = 0
    counted: int | None = None
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not any(self.lost.values())
            and not any(self.duplicated.values())
            and not any(self.wrong.values())
            and self.counted == self.occurrences
        )


class System:
    """The processes, the destinations and the load of one fault suite run."""

    def __init__(self, brokers: str, api: k8s.ApiClient, names: dict[str, str], tmp: Path):
        self.brokers, self.api, self.names = brokers, api, names
        tag = names["tag"]
        self.ns = f"e2e-{tag}"
        # A dict body (ignored arg-type): the client validates it into the annotated model.
        k8s.CoreV1Api(api).create_namespace({"metadata": {"name": self.ns}})  # type: ignore[arg-type]
        self.es_url = need_env("KUBEVENTS_ELASTICSEARCH_URL")
        self.es = Elasticsearch(self.es_url, request_timeout=30)
        self.index = f"e2e-{tag}"
        self.server_url = need_env("KUBEVENTS_MYSQL_URL")
        self.database = f"kv_e2e_{tag}"
        [self.mysql_url] = create_databases(self.server_url, [self.database]).values()
        self.mysql = sa.create_engine(self.mysql_url, pool_pre_ping=True)
        common = {"batch_delay_ms": 100, "retry_initial_ms": 200, "retry_max_ms": 2000}
        self.config = tmp / "kubevents.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "pipelines": [
                        {
                            "id": "elasticsearch",
                            "sink": "elasticsearch",
                            **common,
                            "elasticsearch": {
                                "url": self.es_url,
                                "index": self.index,
                                "request_timeout_s": 5,
                            },
                        },
                        {
                            "id": "mysql",
                            "sink": "mysql",
                            **common,
                            "mysql": {"url": self.mysql_url, "connect_timeout_s": 3},
                        },
                    ]
                }
            )
        )
        self.env = {k: v for k, v in names.items() if k.startswith("KUBEVENTS_")}
        self.env.update(
            KUBEVENTS_PRODUCER_NAMESPACES=self.ns,
            KUBEVENTS_PRODUCER_LEASE_NAMESPACE="default",
            KUBEVENTS_PRODUCER_LEASE_DURATION_S="4",
            KUBEVENTS_PRODUCER_RENEW_PERIOD_S="1",
            KUBEVENTS_CLUSTER_NAME="e2e",
            KUBEVENTS_KAFKA_BROKERS=brokers,
            KUBEVENTS_TOPICS_REPLICATION_FACTOR="3",
            # A SIGKILLed worker never leaves its group: its partitions move once its session
            # times out (30 s by default), which is most of a worker kill's recovery time.
            KUBEVENTS_WORKER_SESSION_TIMEOUT_S="10",
        )
        self.ports = {
            name: free_port() for name in ("producer-a", "producer-b", "core", *self.sinks)
        }
        self.procs: dict[str, Proc] = {}
        self.started: dict[str, int] = {}  # committed records of the process's group at its start
        self.load = Load(api, self.ns)

    sinks = ("elasticsearch", "mysql")
    topics = {
        "core": "KUBEVENTS_TOPICS_RAW",
        "elasticsearch": "KUBEVENTS_TOPICS_ENRICHED",
        "mysql": "KUBEVENTS_TOPICS_ENRICHED",
    }

    # -- processes ---------------------------------------------------------------------------

    def group(self, name: str) -> str:
        return (
            self.names["KUBEVENTS_CORE_APP_ID"]
            if name == "core"
            else self.names["KUBEVENTS_WORKER_SINK_GROUP_PREFIX"] + name
        )

    def committed(self, name: str) -> int:
        return sum(
            committed(self.brokers, self.group(name), self.names[self.topics[name]]).values()
        )

    def start(self, name: str) -> Proc:
        port = str(self.ports[name])
        if name.startswith("producer-"):
            env = {**self.env, "KUBEVENTS_PRODUCER_IDENTITY": name}
            args = ["produce", "--http-port", port]
        else:
            env = {**self.env, "KUBEVENTS_WORKER_WEB_PORT": port}
            if name in self.sinks:
                # Each batch waits half a second between its write and its ack: a sink worker
                # SIGKILLed under load then always dies with records written and not committed
                # (without it the kill often landed just after a commit: nothing in flight).
                env["KUBEVENTS_FAULTS"] = "sink.written=delay:0.5"
            args = ["--config", str(self.config), "worker", "--pipeline", name]
            self.started[name] = self.committed(name)
        proc = Proc(args, env, f"e2e-{name}")
        self.procs[name] = proc
        return proc

    def ready(self, name: str, timeout: float = 120) -> None:
        wait_http(f"http://127.0.0.1:{self.ports[name]}/readyz", timeout=timeout)

    def start_all(self) -> None:
        for name in self.ports:
            self.start(name)
        for name in self.ports:
            self.ready(name) if not name.startswith("producer-") else wait_http(
                f"http://127.0.0.1:{self.ports[name]}/healthz", timeout=60
            )

    def revive(self) -> list[str]:
        """Start again any process that exited, as Kubernetes would restart its container."""
        revived = []
        for name, proc in list(self.procs.items()):
            if proc.proc.poll() is not None:
                self.start(name)
                revived.append(name)
        return revived

    def end_offsets(self, name: str) -> int:
        """Records on the topic the process reads (all partitions)."""
        import asyncio

        from bench.common import topic_size

        return asyncio.run(topic_size(self.brokers, self.names[self.topics[name]]))

    def leader(self) -> str:
        lease = k8s.CoordinationV1Api(self.api).read_namespaced_lease(
            self.names["KUBEVENTS_PRODUCER_LEASE_NAME"], "default"
        )
        return str(filled(lease.spec).holder_identity)

    def handled(self, name: str) -> float:
        """Records the process has finished with since it started (its own metrics)."""
        values = metrics(self.ports[name])
        if name == "core":
            return metric_sum(values, "kubevents_core_records_total")
        return sum(
            metric_sum(values, m)
            for m in (
                "kubevents_sink_written_total",
                "kubevents_sink_filtered_total",
                "kubevents_sink_dead_lettered_total",
            )
        )

    def stop(self) -> None:
        self.load.close()
        for proc in self.procs.values():
            proc.kill()

    def cleanup(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        from app.sinks.elasticsearch_indices import template_name

        async def delete_topics() -> None:  # a node restarted later recovers fewer logs
            admin = AIOKafkaAdminClient(bootstrap_servers=self.brokers)
            await admin.start()
            try:
                tag = f"t{self.names['tag']}"
                if gone := [t for t in await admin.list_topics() if t.startswith(tag)]:
                    await admin.delete_topics(gone)
            finally:
                await admin.close()

        import asyncio

        with contextlib.suppress(Exception):
            asyncio.run(delete_topics())

        with contextlib.suppress(Exception):
            k8s.CoreV1Api(self.api).delete_namespace(self.ns)
        with contextlib.suppress(Exception):
            for name in self.es.indices.get(index=f"{self.index}-*", ignore_unavailable=True).body:
                self.es.options(ignore_status=404).indices.delete(index=name)
            self.es.options(ignore_status=404).indices.delete_index_template(
                name=template_name(self.index)
            )
        self.es.close()
        self.mysql.dispose()
        with contextlib.suppress(Exception):
            drop_databases(self.server_url, [self.database])

    # -- what each side holds ----------------------------------------------------------------

    def api_events(self) -> dict[str, tuple[int, str, int]]:
        """uid -> (count, resourceVersion, lastTimestamp in µs): the truth."""
        listed = k8s.CoreV1Api(self.api).list_namespaced_event(self.ns, _request_timeout=30)
        return {
            filled(e.metadata.uid): (
                int(e.count or 1),
                filled(e.metadata.resource_version),
                micros(e.last_timestamp),
            )
            for e in listed.items
        }

    def es_events(self) -> list[tuple[str, int, str, int]]:
        self.es.indices.refresh(index=self.index)
        hits = self.es.search(
            index=self.index,
            size=10_000,
            source_includes=["uid", "count", "resource_version", "last_seen"],
            query={"term": {"namespace": self.ns}},
        )["hits"]["hits"]
        return [
            (
                h["_source"]["uid"],
                h["_source"]["count"],
                h["_source"]["resource_version"],
                micros(h["_source"]["last_seen"]),
            )
            for h in hits
        ]

    def mysql_events(self) -> list[tuple[str, int, str, int]]:
        with self.mysql.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT uid, count, resource_version, last_seen FROM k8s_events"
                    " WHERE namespace = :ns"
                ),
                {"ns": self.ns},
            ).all()
        return [(r[0], int(r[1]), r[2], micros(r[3])) for r in rows]

    def counted(self) -> int:
        answer = get_json(
            f"http://127.0.0.1:{self.ports['core']}/counts/"
            f"?dim=reason&window=hopping&namespace={self.ns}&top=1000"
        )
        return int(sum(r["count"] for r in answer["rows"]))

    def in_mysql(self, uid: str) -> bool:
        with contextlib.suppress(sa.exc.SQLAlchemyError), self.mysql.connect() as conn:
            found = conn.execute(sa.text("SELECT 1 FROM k8s_events WHERE uid = :u"), {"u": uid})
            return found.first() is not None
        return False

    def in_elasticsearch(self, uid: str) -> bool:
        with contextlib.suppress(Exception):
            self.es.indices.refresh(index=self.index)
            hits = self.es.search(index=self.index, query={"ids": {"values": [uid]}})
            return bool(hits["hits"]["hits"])
        return False

    def check(self) -> Check:
        truth = self.api_events()
        result = Check(api=len(truth), occurrences=sum(c for c, _, _ in truth.values()))
        for side, held in (("elasticsearch", self.es_events()), ("mysql", self.mysql_events())):
            ids = Counter(uid for uid, _, _, _ in held)
            result.duplicated[side] = sum(n - 1 for n in ids.values())
            missing = set(truth) - set(ids)
            result.lost[side] = len(missing)
            wrong = [
                uid
                for uid, count, rv, last in held
                if uid in truth and truth[uid] != (count, rv, last)
            ]
            result.wrong[side] = len(wrong)
            result.examples += [f"{side} lacks {uid}" for uid in sorted(missing)[:2]]
            result.examples += [
                f"{side} {uid}: {next(h[1:] for h in held if h[0] == uid)} != {truth[uid]}"
                for uid in wrong[:2]
            ]
        with contextlib.suppress(OSError, KeyError, ValueError):
            result.counted = self.counted()
        return result

    def settle(self, timeout: float = 150, stuck_s: float = 30) -> tuple[Check, float]:
        """Poll the three-way comparison until it holds: (last check, seconds). It gives up
        after ``timeout``, or sooner once the comparison has not moved for ``stuck_s`` while
        every worker has committed the end of its topic: nothing is left in flight that could
        still change it (the load is paused), so a loss is reported in ~30 s, not 150."""
        started = time.monotonic()
        state: tuple[Any, ...] | None = None
        since = started
        while True:
            try:
                result = self.check()
            except Exception as exc:
                result = Check(api=0, examples=[f"check failed: {exc}"])
                result.lost = {"elasticsearch": -1, "mysql": -1}
            now = time.monotonic()
            if result.ok or now - started > timeout:
                return result, now - started
            seen = (
                result.api,
                result.occurrences,
                result.counted,
                *map(repr, (result.lost, result.duplicated, result.wrong)),
            )
            if seen != state:
                state, since = seen, now
            elif now - since >= stuck_s and self.caught_up():
                result.examples.append(f"unchanged for {now - since:.0f}s with nothing in flight")
                return result, now - started
            time.sleep(1.0)

    def caught_up(self) -> bool:
        """Every worker alive and committed up to the end of the topic it reads."""
        try:
            return all(
                self.procs[name].proc.poll() is None
                and self.committed(name) >= self.end_offsets(name)
                for name in self.topics
            )
        except Exception:  # a broker away: not known to be caught up
            return False
