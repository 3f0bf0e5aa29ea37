"""The Kafka security options against the stack's real secured listeners (stack/kafka.sh):
SASL_SSL with PLAIN and both SCRAMs, mutual TLS, skip-verify, and one clear line for each way
of getting them wrong. What was published is read back over the plaintext listener."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from kubernetes import client as k8s

from tests.integration.conftest import (
    ROOT,
    Proc,
    consume,
    free_port,
    json_values,
    need_env,
    wait_http,
)
from tests.integration.kube_helpers import create_event, create_namespace, delete_namespace
from tests.integration.test_producer import (
    producer_env,
    start_producer,
    wait_for_versions,
    wait_watching,
)

DUMP = ROOT / "examples" / "events.json"
DUMP_UIDS = {item["metadata"]["uid"] for item in json.loads(DUMP.read_text())["items"]}


@dataclass(frozen=True)
class Secured:
    sasl_ssl: str
    mtls: str
    ca: str
    client_cert: str
    client_key: str
    username: str
    password: str

    def sasl(self, mechanism: str, **override: str) -> dict[str, str]:
        return {
            "KUBEVENTS_KAFKA_BROKERS": self.sasl_ssl,
            "KUBEVENTS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KUBEVENTS_KAFKA_SASL_MECHANISM": mechanism,
            "KUBEVENTS_KAFKA_SASL_USERNAME": self.username,
            "KUBEVENTS_KAFKA_SASL_PASSWORD": self.password,
            "KUBEVENTS_KAFKA_SSL_CAFILE": self.ca,
            **override,
        }

    def mutual_tls(self, **override: str) -> dict[str, str]:
        return {
            "KUBEVENTS_KAFKA_BROKERS": self.mtls,
            "KUBEVENTS_KAFKA_SECURITY_PROTOCOL": "SSL",
            "KUBEVENTS_KAFKA_SSL_CAFILE": self.ca,
            "KUBEVENTS_KAFKA_SSL_CERTFILE": self.client_cert,
            "KUBEVENTS_KAFKA_SSL_KEYFILE": self.client_key,
            **override,
        }


@pytest.fixture(scope="module")
def secured() -> Secured:
    """Written to .stack/env by stack/kafka.sh; missing means the stack is not the current one."""
    return Secured(
        *(
            need_env(f"KUBEVENTS_TEST_KAFKA_{name}")
            for name in (
                "SASL_SSL",
                "MTLS",
                "CA",
                "CLIENT_CERT",
                "CLIENT_KEY",
                "SASL_USERNAME",
                "SASL_PASSWORD",
            )
        )
    )


def topic_env(names: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in names.items() if k.startswith("KUBEVENTS_")}


def kubevents(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Only the test's Kafka settings: none inherited from the shell (e.g. the plaintext brokers).
    base = {k: v for k, v in os.environ.items() if not k.startswith("KUBEVENTS_KAFKA_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def replay_and_check(brokers: str, names: dict[str, str], kafka_env: dict[str, str]) -> None:
    result = kubevents("replay", "-q", str(DUMP), env={**topic_env(names), **kafka_env})
    assert result.returncode == 0, result.stdout + result.stderr
    raw = names["KUBEVENTS_TOPICS_RAW"]
    assert f"published 3 events to {raw}" in result.stdout
    records = json_values(consume(brokers, raw, until=3, timeout_s=60))
    assert {r["object"]["metadata"]["uid"] for r in records} == DUMP_UIDS
    assert len(records) == 3 and {r["via"] for r in records} == {"replay"}


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The CLI's contract for a user error: exit 2, one line on stderr, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kubevents: error: ") and "Traceback" not in result.stderr
    return lines[0]


def topic_exists(brokers: str, topic: str) -> bool:
    async def run() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
        await admin.start()
        try:
            return topic in set(await admin.list_topics())
        finally:
            await admin.close()

    return asyncio.run(run())


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_replay_over_sasl_ssl(
    brokers: str, names: dict[str, str], secured: Secured, mechanism: str
) -> None:
    replay_and_check(brokers, names, secured.sasl(mechanism))


def test_replay_over_mutual_tls(brokers: str, names: dict[str, str], secured: Secured) -> None:
    replay_and_check(brokers, names, secured.mutual_tls())


def test_skip_verify_works_without_the_ca(
    brokers: str, names: dict[str, str], secured: Secured
) -> None:
    env = secured.sasl("SCRAM-SHA-512", KUBEVENTS_KAFKA_SSL_INSECURE_SKIP_VERIFY="true")
    del env["KUBEVENTS_KAFKA_SSL_CAFILE"]
    replay_and_check(brokers, names, env)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_a_wrong_password_is_one_clear_line(
    brokers: str, names: dict[str, str], secured: Secured, mechanism: str
) -> None:
    env = secured.sasl(mechanism, KUBEVENTS_KAFKA_SASL_PASSWORD="not-the-password")
    line = one_error_line(kubevents("replay", str(DUMP), env={**topic_env(names), **env}))
    assert f"rejected user '{secured.username}' with SASL mechanism {mechanism}" in line
    assert "KUBEVENTS_KAFKA_SASL_PASSWORD" in line and "not-the-password" not in line
    assert not topic_exists(brokers, names["KUBEVENTS_TOPICS_RAW"]), "nothing was created"


def test_a_missing_ca_is_one_clear_line(names: dict[str, str], secured: Secured) -> None:
    env = secured.sasl("SCRAM-SHA-512")
    del env["KUBEVENTS_KAFKA_SSL_CAFILE"]
    line = one_error_line(kubevents("replay", str(DUMP), env={**topic_env(names), **env}))
    assert f"TLS certificate of Kafka at {secured.sasl_ssl} failed verification" in line
    assert "KUBEVENTS_KAFKA_SSL_CAFILE is not set" in line
    assert "set KUBEVENTS_KAFKA_SSL_CAFILE to the CA" in line


def test_a_wrong_ca_is_one_clear_line(
    names: dict[str, str], secured: Secured, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    key = tmp_path / "other-ca.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(other_ca), "-subj", "/CN=some other CA"),
            *("-addext", "basicConstraints=critical,CA:TRUE"),
        ],
        check=True,
        capture_output=True,
    )
    env = secured.mutual_tls(KUBEVENTS_KAFKA_SSL_CAFILE=str(other_ca))
    line = one_error_line(kubevents("replay", str(DUMP), env={**topic_env(names), **env}))
    assert f"failed verification against KUBEVENTS_KAFKA_SSL_CAFILE='{other_ca}'" in line
    assert "set KUBEVENTS_KAFKA_SSL_CAFILE to the CA" in line


def test_a_ca_file_that_does_not_exist_is_named(names: dict[str, str], secured: Secured) -> None:
    env = secured.sasl("PLAIN", KUBEVENTS_KAFKA_SSL_CAFILE="/nonexistent/ca.pem")
    line = one_error_line(kubevents("replay", str(DUMP), env={**topic_env(names), **env}))
    assert "KUBEVENTS_KAFKA_SSL_CAFILE='/nonexistent/ca.pem' is not a readable file" in line
    assert "cannot read" not in line, "the dump is fine: it must not be blamed"


def test_mutual_tls_without_a_client_certificate_says_so(
    names: dict[str, str], secured: Secured
) -> None:
    env = secured.mutual_tls()
    del env["KUBEVENTS_KAFKA_SSL_CERTFILE"], env["KUBEVENTS_KAFKA_SSL_KEYFILE"]
    line = one_error_line(kubevents("replay", str(DUMP), env={**topic_env(names), **env}))
    assert f"Kafka at {secured.mtls} closed the TLS connection" in line
    assert "set KUBEVENTS_KAFKA_SSL_CERTFILE and KUBEVENTS_KAFKA_SSL_KEYFILE" in line


def test_producer_publishes_over_sasl_ssl_scram(
    api: k8s.ApiClient, brokers: str, names: dict[str, str], secured: Secured, procs: list[Proc]
) -> None:
    ns = create_namespace(api, "sec")
    try:
        listed = [create_event(api, ns) for _ in range(3)]
        env = producer_env(names, [ns], **secured.sasl("SCRAM-SHA-256"))
        _, port = start_producer(procs, env)
        wait_watching(port)
        watched = [create_event(api, ns, type_="Warning", reason="BackOff") for _ in range(3)]
        wanted = {(e["uid"], e["rv"]) for e in listed + watched}
        records = wait_for_versions(brokers, names["KUBEVENTS_TOPICS_RAW"], wanted)
        assert {r["via"] for r in records} == {"list", "watch"}
    finally:
        delete_namespace(api, ns)


def test_core_worker_consumes_and_publishes_over_sasl_ssl(
    brokers: str, names: dict[str, str], secured: Secured, procs: list[Proc]
) -> None:
    env = {
        **topic_env(names),
        **secured.sasl("SCRAM-SHA-512"),
        "KUBEVENTS_TOPICS_PARTITIONS": "2",
        "KUBEVENTS_CORE_OWNER_LOOKUP": "false",
        "KUBEVENTS_WORKER_WEB_HOST": "127.0.0.1",
    }
    result = kubevents("replay", "-q", str(DUMP), env=env)
    assert result.returncode == 0, result.stderr
    port = free_port()
    procs.append(
        Proc(
            ["worker", "--pipeline", "core"], {**env, "KUBEVENTS_WORKER_WEB_PORT": str(port)}, "sec"
        )
    )
    wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120)
    enriched = json_values(consume(brokers, names["KUBEVENTS_TOPICS_ENRICHED"], until=3))
    assert {e["uid"] for e in enriched} == DUMP_UIDS, procs[-1].output()[-3000:]


def test_a_kafka_sink_writes_to_a_secured_listener_with_its_own_settings_from_kube_eventer_flags(
    secured: Secured, brokers: str, names: dict[str, str], procs: list[Proc]
) -> None:
    """The source is the plaintext listener; the Kafka sink's destination is the SASL_SSL one,
    with SASL PLAIN and the stack's CA, all given as kube-eventer's own kafka: options."""
    import urllib.parse

    from tests.fixtures.records import key_of, record
    from tests.integration.conftest import produce

    copy = f"t{names['tag']}-secured-copy"
    options = {
        "brokers": secured.sasl_ssl,
        "eventstopic": copy,
        "user": secured.username,
        "password": secured.password,
        "cacert": secured.ca,
    }
    flag = "kafka:?" + urllib.parse.urlencode(options)
    events = [record(f"s{i}", rv=100 + i) for i in range(5)]
    produce(
        brokers,
        names["KUBEVENTS_TOPICS_ENRICHED"],
        [(key_of(e), json.dumps(e).encode()) for e in events],
    )
    port = free_port()
    env = {**topic_env(names), "KUBEVENTS_WORKER_WEB_PORT": str(port)}
    procs.append(Proc(["worker", "--pipeline", "kafka", "--sink", flag], env, "sink-secured"))
    wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120)
    copied = json_values(consume(brokers, copy, until=len(events), idle_s=2))
    assert sorted(d["uid"] for d in copied) == [e["uid"] for e in events]
    assert secured.password not in procs[-1].output()  # never logged
