"""make demo: the whole job on the local stack, end to end, in about a minute.

1. Two producer replicas (leader election on a Lease) list+watch Events into k8s-events-raw.
2. A core worker dedupes, enriches (owner chain, labels) and counts them into k8s-events.
3. A Deployment of 3 pods on the fake kwok nodes, and one pod that cannot be scheduled,
   make the real controllers and scheduler emit Events (some of them Warnings that repeat).
4. It prints what arrived on the public topic and the windowed counts the worker serves.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from kubernetes import client as k8s
from kubernetes import config as k8s_config

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / ".stack" / "logs"


def start(args: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    log = (LOGS / f"demo-{name}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=ROOT,
                            env={**os.environ, "KUBEVENTS_LOG_FORMAT": "text", **env},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def workload(ns: str) -> None:
    core, apps = k8s.CoreV1Api(), k8s.AppsV1Api()
    core.create_namespace({"metadata": {"name": ns}})
    labels = {"app": "shop", "app.kubernetes.io/name": "shop-web"}
    apps.create_namespaced_deployment(ns, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shop-web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "shop"}},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}})
    core.create_namespaced_pod(ns, {  # no node matches: FailedScheduling Warnings, repeated
        "metadata": {"name": "stuck", "labels": {"app": "stuck"}},
        "spec": {"nodeSelector": {"disk": "none-such"},
                 "containers": [{"name": "c", "image": "busybox"}]}})


async def read_topic(brokers: str, topic: str, seconds: float) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=brokers, auto_offset_reset="earliest")
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(json.loads(m.value) for m in msgs)
    finally:
        await consumer.stop()
    return out


def main() -> int:
    brokers = os.environ["KUBEVENTS_KAFKA_BROKERS"]
    k8s_config.load_kube_config()
    tag = uuid.uuid4().hex[:6]
    ns = f"demo-{tag}"
    env = {"KUBEVENTS_TOPICS_RAW": f"demo-{tag}-raw", "KUBEVENTS_TOPICS_ENRICHED": f"demo-{tag}",
           "KUBEVENTS_TOPICS_DLQ": f"demo-{tag}-dlq", "KUBEVENTS_CORE_APP_ID": f"demo-{tag}",
           "KUBEVENTS_PRODUCER_NAMESPACES": ns, "KUBEVENTS_PRODUCER_LEASE_NAME": f"demo-{tag}",
           "KUBEVENTS_CLUSTER_NAME": "local", "KUBEVENTS_WORKER_WEB_PORT": "6066",
           "KUBEVENTS_WORKER_WEB_HOST": "127.0.0.1"}
    procs = [
        start(["produce", "--http-port", "8081"], {**env, "KUBEVENTS_PRODUCER_IDENTITY": "a"}, "a"),
        start(["produce", "--http-port", "8082"], {**env, "KUBEVENTS_PRODUCER_IDENTITY": "b"}, "b"),
        start(["worker", "--pipeline", "core"], env, "worker"),
    ]
    try:
        print(f"[demo] producers (2 replicas, one leader) and a core worker started; logs: {LOGS}")
        time.sleep(8)
        workload(ns)
        print(f"[demo] created Deployment shop-web (3 pods) and an unschedulable pod in {ns}")
        records = asyncio.run(read_topic(brokers, env["KUBEVENTS_TOPICS_ENRICHED"], 40))
        print(f"[demo] {len(records)} enriched events on topic {env['KUBEVENTS_TOPICS_ENRICHED']}:")
        print(f"  {'type':8} {'reason':18} {'object':28} {'root owner':22} count  enrichment")
        for r in records[:15]:
            io, root = r["involved_object"], r["root_owner"] or {}
            print(f"  {r['type']:8} {r['reason']:18} {io['kind'] + '/' + io['name']:28} "
                  f"{root.get('kind', '-') + '/' + root.get('name', '-'):22} {r['count']:5}  "
                  f"{r['enrichment']['status']}")
        url = "http://127.0.0.1:6066/counts/?window=hopping&top=5"
        with urllib.request.urlopen(url, timeout=10) as resp:
            counts = json.loads(resp.read())
        print(f"[demo] top reasons over the last hour ({url}):")
        for row in counts["rows"]:
            print(f"  {row['count']:4}  {row['namespace']}/{row['reason']} ({row['type']})")
        print("[demo] read the public topic yourself, e.g.:")
        print(f"  kafka-console-consumer --bootstrap-server {brokers} "
              f"--topic {env['KUBEVENTS_TOPICS_ENRICHED']} --from-beginning")
        ok = any(r["root_owner"] == {"kind": "Deployment", "name": "shop-web"} for r in records)
        return 0 if records and ok and counts["rows"] else 1
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        k8s.CoreV1Api().delete_namespace(ns)


if __name__ == "__main__":
    sys.exit(main())
