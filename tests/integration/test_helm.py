"""deploy/helm/kubevents with the real helm ($KUBEVENTS_HELM, built by stack/helm.sh) and the
stack's real API server: ``helm lint --strict`` passes, ``helm template | kubectl apply
--dry-run=server`` is accepted, the rendered objects have the shape of deploy/kubernetes (one
Deployment per declared pipeline, probes, resources, Secrets referenced and never inlined), and
the pipelines file the chart renders is read by kubevents itself with exactly the values'
pipelines. Bad values fail with the schema's message."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from pydantic import BaseModel, SecretStr

from app import __version__
from app.cli import build_parser
from app.settings import (
    ElasticsearchSinkSettings,
    KafkaSinkSettings,
    MySQLSinkSettings,
    PipelineSettings,
    Settings,
    load_settings,
)
from app.sinks.kafka import destination
from tests.integration.conftest import ROOT, need_env
from tests.integration.kube_helpers import create_namespace, delete_namespace
from tests.integration.test_deploy import find_kubectl

CHART = ROOT / "deploy" / "helm" / "kubevents"
MANIFESTS = ROOT / "deploy" / "kubernetes"
EXAMPLE_VALUES = ROOT / "examples" / "helm-values.yaml"
WORKLOADS = {"Deployment", "StatefulSet"}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}
# Read straight from os.environ, not through Settings.
ENV_OUTSIDE_SETTINGS = {"KUBEVENTS_CONFIG", "KUBEVENTS_LOG_LEVEL", "KUBEVENTS_LOG_FORMAT"}

# Unique per run: the secrets must be found nowhere but in the chart's Secret.
TAG = uuid.uuid4().hex[:8]
KAFKA_PASSWORD = f"kafka-pw-{TAG}"
ES_PASSWORD = f"es-pw-{TAG}"
MYSQL_URL = f"mysql+pymysql://kubevents:mysql-pw-{TAG}@mysql.db.svc:3306/kubevents"

# Several pipelines of every kind, Kafka over SASL_SSL (SCRAM, a CA, mutual TLS), Elasticsearch
# with basic auth and a CA, secrets given inline (so the chart's own Secret holds them).
MANY: dict[str, Any] = {
    "cluster": {"name": "prod-eu-1"},
    "kafka": {
        "brokers": "kafka-0.kafka:9093,kafka-1.kafka:9093",
        "compression": "zstd",
        "securityProtocol": "SASL_SSL",
        "sasl": {"mechanism": "SCRAM-SHA-512", "username": "kubevents", "password": KAFKA_PASSWORD},
        "tls": {"caSecret": "kafka-ca", "clientCertSecret": "kafka-client"},
    },
    "topics": {"raw": f"raw-{TAG}", "enriched": f"events-{TAG}", "dlq": f"dlq-{TAG}"},
    "elasticsearch": {
        "url": "https://es-0.es:9200,https://es-1.es:9200",
        "username": "elastic",
        "password": ES_PASSWORD,
        "tls": {"caSecret": "es-ca"},
    },
    "mysql": {"url": MYSQL_URL},
    "pipelines": [
        {"id": "elasticsearch", "sink": "elasticsearch", "batch_size": 500},
        {"id": "mysql", "sink": "mysql", "replicas": 3, "mysql": {"table": "events"}},
        {
            "id": "warnings",
            "sink": "elasticsearch",
            "replicas": 1,
            "elasticsearch": {"index": "k8s-warnings"},
            "filters": {"types": ["Warning"], "exclude_namespaces": ["kube-system"]},
            "resources": {
                "requests": {"cpu": "50m", "memory": "128Mi"},
                "limits": {"memory": "256Mi"},
            },
        },
        {
            "id": "archive-eu",
            "sink": "elasticsearch",
            "elasticsearch": {"url": "http://archive.es:9200", "index": "archive"},
            "filters": {"kinds": ["Pod", "Node"], "min_severity": "warning"},
        },
        {"id": "copy", "sink": "kafka", "kafka": {"topic": f"copy-{TAG}"}},
    ],
}


# Pipelines that bring their own Secret (a second Elasticsearch cluster with its own user,
# another MySQL database, a kafka pipeline to another cluster over SASL) beside one that takes
# the chart's elasticsearch section.
AUDIT_PASSWORD = f"audit-pw-{TAG}"
REPORTS_URL = f"mysql+pymysql://reports:reports-pw-{TAG}@reports.db.svc:3306/reports"
PARTNER_PASSWORD = f"partner-pw-{TAG}"
OWN: dict[str, Any] = {
    "elasticsearch": {"username": "elastic", "password": ES_PASSWORD},
    "pipelines": [
        {"id": "elasticsearch", "sink": "elasticsearch"},
        {
            "id": "audit",
            "sink": "elasticsearch",
            "elasticsearch": {"url": "https://audit-es:9200", "username": "kubevents"},
            "existingSecret": "audit-es",
        },
        {
            "id": "reports",
            "sink": "mysql",
            "existingSecret": "reports-db",
            "existingSecretKeys": {"url": "dsn"},
        },
        {
            "id": "partner",
            "sink": "kafka",
            "kafka": {
                "topic": "k8s-events",
                "brokers": "partner-0.partner:9093",
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "kubevents",
            },
            "existingSecret": "partner-kafka",
        },
    ],
}
# The user's Secrets those pipelines name, as the cluster would hold them (audit-es has no
# api-key: that optional key is left out, as the kubelet does).
OWN_SECRETS: list[dict[str, Any]] = [
    {"kind": "Secret", "metadata": {"name": name}, "stringData": data}
    for name, data in [
        ("audit-es", {"password": AUDIT_PASSWORD}),
        ("reports-db", {"dsn": REPORTS_URL}),
        ("partner-kafka", {"sasl-password": PARTNER_PASSWORD}),
    ]
]


# --------------------------------------------------------------------------------------------
# helpers


def helm_binary() -> str:
    path = need_env("KUBEVENTS_HELM")
    assert os.access(path, os.X_OK), f"$KUBEVENTS_HELM={path} is not executable: run 'make stack'"
    return path


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, timeout=120, check=False
    )


def values_file(tmp: Path, values: dict[str, Any]) -> Path:
    path = tmp / f"values-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def render(values: Path | None, release: str = "kubevents", namespace: str = "kubevents") -> str:
    args = ["template", release, str(CHART), "--namespace", namespace]
    if values is not None:
        args += ["-f", str(values)]
    result = helm(*args)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return result.stdout


def objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def by_name(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(c)


def sink_deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """pipeline id -> its Deployment, found by what the container runs."""
    found = {}
    for d in of_kind(docs, "Deployment"):
        args = container(d)["args"]
        if args[:2] == ["worker", "--pipeline"]:
            found[args[2]] = d
    return found


def pipelines_file(docs: list[dict[str, Any]], tmp: Path) -> Path:
    (configmap,) = of_kind(docs, "ConfigMap")
    path = tmp / f"pipelines-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(configmap["data"]["pipelines.yaml"])
    return path


def container_env(docs: list[dict[str, Any]], c: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: Secret keys from the rendered
    Secrets (a reference to one not rendered, or to a missing key, fails), example values for
    the downward API, $(VAR) of earlier variables."""
    secrets = {d["metadata"]["name"]: d.get("stringData", {}) for d in of_kind(docs, "Secret")}
    downward = {"metadata.name": "kubevents-core-0", "metadata.namespace": "kubevents"}
    env: dict[str, str] = {}
    for item in c.get("env", []):
        if "value" in item:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), item["value"])
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] in secrets, f"{item['name']}: Secret {ref['name']} not rendered"
            if ref.get("optional") and ref["key"] not in secrets[ref["name"]]:
                continue  # the kubelet leaves the variable unset
            assert ref["key"] in secrets[ref["name"]], f"{item['name']}: no key {ref['key']}"
            value = secrets[ref["name"]][ref["key"]]
        else:
            value = downward[item["valueFrom"]["fieldRef"]["fieldPath"]]
        assert isinstance(value, str), f"{item['name']}: {value!r} is not a string"
        assert "$(" not in value, f"{item['name']}={value}: refers to an unset variable"
        env[item["name"]] = value
    return env


def clean_environ(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without the stack's KUBEVENTS_* (its Elasticsearch and MySQL
    URLs would add default pipelines), plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("KUBEVENTS_")}
    return {**base, **env}


def settings_in(
    env: dict[str, str], config: Path | None, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    for name in list(os.environ):
        if name.startswith("KUBEVENTS_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(str(config) if config else None)


def assert_real_settings(env: dict[str, str], where: str) -> None:
    """Every KUBEVENTS_ variable names a section and a field of Settings (Settings silently
    ignores unknown ones, so a typo would be lost)."""
    for name in env:
        if not name.startswith("KUBEVENTS_") or name in ENV_OUTSIDE_SETTINGS:
            continue
        section, _, field = name.removeprefix("KUBEVENTS_").lower().partition("_")
        assert section in Settings.model_fields, f"{where}: {name}: no settings section {section}"
        model = Settings.model_fields[section].annotation
        assert field in model.model_fields, f"{where}: {name}: no field {field} in {section}"  # type: ignore[union-attr]


def kubectl_dry_run(kubeconfig: str, manifest: str, namespace: str) -> set[tuple[str, str]]:
    # --namespace too: an object naming another namespace is then refused.
    apply = [find_kubectl(), "--kubeconfig", kubeconfig, "apply", "--dry-run=server"]
    result = subprocess.run(
        [*apply, "--namespace", namespace, "-f", "-"],
        input=manifest,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl apply --dry-run=server failed:\n{result.stderr}"
    # One line per object: "deployment.apps/kv-1234-kubevents-producer created (server dry run)".
    applied = set()
    for line in result.stdout.splitlines():
        assert line.endswith("(server dry run)"), line
        resource, _, name = line.split()[0].partition("/")
        applied.add((resource.split(".")[0], name))
    return applied


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def many_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return values_file(tmp_path_factory.mktemp("helm"), MANY)


@pytest.fixture(scope="module")
def own_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return values_file(tmp_path_factory.mktemp("helm"), OWN)


@pytest.fixture(scope="module")
def many(many_file: Path) -> list[dict[str, Any]]:
    return objects(render(many_file))


@pytest.fixture(scope="module")
def defaults() -> list[dict[str, Any]]:
    return objects(render(None))


@pytest.fixture(scope="module")
def namespace(api: k8s.ApiClient) -> Iterator[str]:
    """A namespace of this module's own (a server-side dry run needs it to exist)."""
    name = create_namespace(api, "helm")
    deadline = time.monotonic() + 60
    while getattr(k8s.CoreV1Api(api).read_namespace(name).status, "phase", None) != "Active":
        assert time.monotonic() < deadline, f"namespace {name} never became Active"
        time.sleep(0.5)
    yield name
    delete_namespace(api, name)


# --------------------------------------------------------------------------------------------
# helm itself


def test_helm_is_the_version_the_stack_builds() -> None:
    text = (ROOT / "stack" / "helm.sh").read_text()
    match = re.search(r'^HELM_VERSION="\$\{KUBEVENTS_HELM_VERSION:-([^}]+)\}"', text, flags=re.M)
    assert match, "no default HELM_VERSION in stack/helm.sh"
    result = helm("version", "--template", "{{ .Version }}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == match.group(1)


def test_chart_app_version_is_kubevents_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    assert chart["apiVersion"] == "v2"


# --------------------------------------------------------------------------------------------
# lint and server-side dry run


@pytest.mark.parametrize(
    "which",
    ["defaults", "many pipelines, SASL_SSL", "examples/helm-values", "pipelines' own secrets"],
)
def test_helm_lint_strict_passes(which: str, many_file: Path, own_file: Path) -> None:
    extra = {
        "defaults": [],
        "examples/helm-values": ["-f", str(EXAMPLE_VALUES)],
        "pipelines' own secrets": ["-f", str(own_file)],
    }.get(which, ["-f", str(many_file)])
    result = helm("lint", "--strict", str(CHART), *extra)
    assert result.returncode == 0, f"helm lint --strict failed:\n{result.stdout}{result.stderr}"
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout, result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def readme_values() -> list[str]:
    """The values examples of the README's Helm section (its yaml blocks)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("- Helm: `deploy/helm/kubevents`") :]
    section = section[: section.index("\n- Docker:")]
    return [textwrap.dedent(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S)]


def test_readme_values_examples_lint_and_render(tmp_path: Path) -> None:
    blocks = readme_values()
    assert len(blocks) == 2 and all("pipelines:" in b for b in blocks)
    for block in blocks:
        values = tmp_path / f"readme-{uuid.uuid4().hex[:6]}.yaml"
        values.write_text(block)
        lint = helm("lint", "--strict", str(CHART), "-f", str(values))
        assert lint.returncode == 0, f"{block}\n{lint.stdout}{lint.stderr}"
        declared = {p["id"] for p in yaml.safe_load(block)["pipelines"]}
        assert set(sink_deployments(objects(render(values)))) == declared


@pytest.mark.parametrize(
    "which",
    ["defaults", "many pipelines, SASL_SSL", "examples/helm-values", "pipelines' own secrets"],
)
def test_template_passes_a_server_side_dry_run(
    which: str, many_file: Path, own_file: Path, kubeconfig: str, namespace: str
) -> None:
    values = {
        "defaults": None,
        "examples/helm-values": EXAMPLE_VALUES,
        "pipelines' own secrets": own_file,
    }.get(which, many_file)
    # A release name of its own: the ClusterRole and its binding are cluster-wide.
    release = f"kv-{uuid.uuid4().hex[:6]}"
    manifest = render(values, release=release, namespace=namespace)
    docs = objects(manifest)
    for doc in docs:
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], doc["metadata"]
        else:
            assert doc["metadata"]["namespace"] == namespace, (doc["kind"], doc["metadata"])
    applied = kubectl_dry_run(kubeconfig, manifest, namespace)
    assert applied == {(d["kind"].lower(), d["metadata"]["name"]) for d in docs}
    deployments = {name for kind, name in applied if kind == "deployment"}
    pipelines = (yaml.safe_load(values.read_text()) if values else {}).get("pipelines") or [
        {"id": "elasticsearch"},
        {"id": "mysql"},
    ]
    expected = {f"{release}-kubevents-sink-{p['id']}" for p in pipelines}
    assert deployments == expected | {f"{release}-kubevents-producer"}


def test_install_upgrade_and_uninstall_follow_the_pipelines(
    api: k8s.ApiClient, kubeconfig: str, namespace: str, tmp_path: Path
) -> None:
    """A real release on the stack's API server: installed, upgraded with one pipeline dropped
    and one added (its Deployment goes, the new one comes), uninstalled (nothing left, the
    cluster-wide RBAC included). Pods are not waited for: kwok's nodes run no containers."""
    release = f"kv-{uuid.uuid4().hex[:6]}"
    small = {"producer": {"replicas": 1}, "core": {"replicas": 1}, "sinkDefaults": {"replicas": 1}}
    before = {
        **small,
        "pipelines": [{"id": "a", "sink": "elasticsearch"}, {"id": "b", "sink": "mysql"}],
    }
    after = {**small, "pipelines": [{"id": "b", "sink": "mysql"}, {"id": "c", "sink": "kafka"}]}
    base = ["--kubeconfig", kubeconfig, "--namespace", namespace]
    apps, rbac = k8s.AppsV1Api(api), k8s.RbacAuthorizationV1Api(api)

    def deployments() -> set[str]:
        listed = apps.list_namespaced_deployment(
            namespace, label_selector=f"app.kubernetes.io/instance={release}"
        )
        return {str(getattr(d.metadata, "name", "")) for d in listed.items}

    prefix = f"{release}-kubevents"
    try:
        result = helm(
            "install", release, str(CHART), *base, "-f", str(values_file(tmp_path, before))
        )
        assert result.returncode == 0, result.stderr
        assert "consumer group kubevents-sink-a" in result.stdout  # NOTES.txt
        assert deployments() == {f"{prefix}-producer", f"{prefix}-sink-a", f"{prefix}-sink-b"}
        assert apps.read_namespaced_stateful_set(f"{prefix}-core", namespace).spec.replicas == 1
        assert rbac.read_cluster_role(prefix).rules

        result = helm(
            "upgrade", release, str(CHART), *base, "-f", str(values_file(tmp_path, after))
        )
        assert result.returncode == 0, result.stderr
        assert deployments() == {f"{prefix}-producer", f"{prefix}-sink-b", f"{prefix}-sink-c"}
        configmap = k8s.CoreV1Api(api).read_namespaced_config_map(f"{prefix}-pipelines", namespace)
        ids = [
            p["id"] for p in yaml.safe_load((configmap.data or {})["pipelines.yaml"])["pipelines"]
        ]
        assert ids == ["b", "c"]
    finally:
        result = helm("uninstall", release, *base, "--wait", "--timeout", "60s")
    assert result.returncode == 0, result.stderr
    assert deployments() == set()
    with pytest.raises(k8s.ApiException) as gone:
        rbac.read_cluster_role(prefix)
    assert gone.value.status == 404


# --------------------------------------------------------------------------------------------
# the rendered objects


def test_one_deployment_per_pipeline_running_it(many: list[dict[str, Any]]) -> None:
    sinks = sink_deployments(many)
    assert list(sinks) == [p["id"] for p in MANY["pipelines"]]
    for p in MANY["pipelines"]:
        d = sinks[p["id"]]
        assert d["metadata"]["name"] == f"kubevents-sink-{p['id']}"
        assert d["spec"]["replicas"] == p.get("replicas", 2)
        c = container(d)
        assert "command" not in c, "'command' would replace the image's kubevents entrypoint"
        assert c["args"] == [
            "worker",
            "--pipeline",
            p["id"],
            "--config",
            "/etc/kubevents/pipelines/pipelines.yaml",
        ]
        args = build_parser().parse_args(c["args"])
        assert (args.command, args.pipeline) == ("worker", p["id"])
        # The file --config names is the pipelines ConfigMap, mounted.
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
        assert volumes[mounts["/etc/kubevents/pipelines"]]["configMap"]["name"] == (
            "kubevents-pipelines"
        )
        pod = d["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False  # a sink never calls the API server
        selector = d["spec"]["selector"]["matchLabels"]
        assert selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    # Selectors never overlap: each Deployment owns its own pods.
    selectors = [
        tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) for d in sinks.values()
    ]
    assert len(set(selectors)) == len(selectors)


def test_every_container_has_probes_and_resources(many: list[dict[str, Any]]) -> None:
    workloads = [d for d in many if d["kind"] in WORKLOADS]
    assert len(workloads) == 2 + len(MANY["pipelines"])
    for w in workloads:
        c = container(w)
        where = f"{w['kind']}/{w['metadata']['name']}"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe, path in [
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ]:
            assert c[probe]["httpGet"]["path"] == path, f"{where}: {probe}"
            assert c[probe]["httpGet"]["port"] in ports, f"{where}: {probe} port"
        env = container_env(many, c)
        port = env.get("KUBEVENTS_PRODUCER_HTTP_PORT") or env["KUBEVENTS_WORKER_WEB_PORT"]
        assert ports["http"] == int(port), where
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], where
        assert c["resources"]["limits"]["memory"], where
    warnings = sink_deployments(many)["warnings"]
    assert container(warnings)["resources"] == MANY["pipelines"][2]["resources"]


def test_defaults_have_the_shape_of_deploy_kubernetes(defaults: list[dict[str, Any]]) -> None:
    """Release kubevents in namespace kubevents renders the workloads of deploy/kubernetes with
    their replicas, commands, resources (from measured peak RSS), probes, security contexts and
    volumes, and the same RBAC rules."""
    manifests = [
        d
        for path in sorted(MANIFESTS.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for d in yaml.safe_load_all(path.read_text())
        if d
    ]
    expected = {(d["kind"], d["metadata"]["name"]) for d in manifests if d["kind"] in WORKLOADS}
    rendered = {(d["kind"], d["metadata"]["name"]) for d in defaults if d["kind"] in WORKLOADS}
    assert rendered == expected
    for kind, name in expected:
        want, got = by_name(manifests, kind, name), by_name(defaults, kind, name)
        assert got["spec"]["replicas"] == want["spec"]["replicas"], name
        wc, gc = container(want), container(got)
        # The chart's sink workers also read the pipelines file.
        assert gc["args"][: len(wc["args"])] == wc["args"], name
        for key in ("resources", "securityContext", "image"):
            assert gc[key] == wc[key], f"{name}: {key}"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert gc[probe]["httpGet"]["path"] == wc[probe]["httpGet"]["path"], name
            for key in ("periodSeconds", "failureThreshold"):
                assert gc[probe].get(key) == wc[probe].get(key), f"{name}: {probe}.{key}"
        wpod, gpod = want["spec"]["template"]["spec"], got["spec"]["template"]["spec"]
        for key in (
            "securityContext",
            "serviceAccountName",
            "enableServiceLinks",
            "terminationGracePeriodSeconds",
        ):
            assert gpod.get(key, wpod.get(key)) == wpod.get(key), f"{name}: {key}"
        assert gpod.get("automountServiceAccountToken") == wpod.get("automountServiceAccountToken")
        wmounts = {m["mountPath"] for m in wc["volumeMounts"]}
        assert wmounts <= {m["mountPath"] for m in gc["volumeMounts"]}, name
        # Every setting the manifest gives, the chart gives the same (names and values).
        wenv = {e["name"]: e.get("value") for e in wc["env"] if "value" in e}
        genv = {e["name"]: e.get("value") for e in gc["env"]}
        for var, value in wenv.items():
            assert genv.get(var) == value, f"{name}: {var}"
        assert {e["name"] for e in wc["env"]} <= set(genv), name
        if kind == "StatefulSet":
            (wclaim,) = want["spec"]["volumeClaimTemplates"]
            (gclaim,) = got["spec"]["volumeClaimTemplates"]
            assert gclaim["spec"] == wclaim["spec"]
            assert got["spec"]["serviceName"] == want["spec"]["serviceName"]
            service = by_name(defaults, "Service", got["spec"]["serviceName"])
            assert service["spec"]["clusterIP"] == "None"
            assert service["spec"]["publishNotReadyAddresses"] is True
    for kind in ("ClusterRole", "Role"):
        (want_role,) = of_kind(manifests, kind)
        (got_role,) = of_kind(defaults, kind)
        assert got_role["rules"] == want_role["rules"], kind
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        (binding,) = of_kind(defaults, kind)
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "kubevents", "namespace": "kubevents"}
        ]


def test_secrets_are_referenced_never_inlined(many: list[dict[str, Any]]) -> None:
    (secret,) = of_kind(many, "Secret")
    assert sorted(secret["stringData"].values()) == sorted([KAFKA_PASSWORD, ES_PASSWORD, MYSQL_URL])
    others = yaml.safe_dump([d for d in many if d["kind"] != "Secret"])
    for value in (KAFKA_PASSWORD, ES_PASSWORD, f"mysql-pw-{TAG}"):
        assert value not in others, f"a secret is written outside the Secret: {value}"
    secret_vars = {
        "KUBEVENTS_KAFKA_SASL_PASSWORD",
        "KUBEVENTS_ELASTICSEARCH_PASSWORD",
        "KUBEVENTS_MYSQL_URL",
    }
    seen: dict[str, set[str]] = {}
    for w in (d for d in many if d["kind"] in WORKLOADS):
        for item in container(w)["env"]:
            if item["name"] in secret_vars:
                assert "value" not in item, f"{w['metadata']['name']}: {item['name']} inlined"
                assert item["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
                seen.setdefault(item["name"], set()).add(w["metadata"]["name"])
    # Each secret only where it is needed: Kafka's everywhere, a sink's in its own kind's pods.
    assert len(seen["KUBEVENTS_KAFKA_SASL_PASSWORD"]) == 2 + len(MANY["pipelines"])
    assert seen["KUBEVENTS_ELASTICSEARCH_PASSWORD"] == {
        f"kubevents-sink-{p['id']}" for p in MANY["pipelines"] if p["sink"] == "elasticsearch"
    }
    assert seen["KUBEVENTS_MYSQL_URL"] == {"kubevents-sink-mysql"}


def test_existing_secrets_are_referenced_and_none_is_rendered(tmp_path: Path) -> None:
    docs = objects(render(EXAMPLE_VALUES))
    assert not of_kind(docs, "Secret")
    refs = {
        (
            item["name"],
            item["valueFrom"]["secretKeyRef"]["name"],
            item["valueFrom"]["secretKeyRef"]["key"],
        )
        for w in docs
        if w["kind"] in WORKLOADS
        for item in container(w)["env"]
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert refs == {
        ("KUBEVENTS_KAFKA_SASL_PASSWORD", "kafka-credentials", "password"),
        ("KUBEVENTS_MYSQL_URL", "mysql-credentials", "url"),
    }


def test_a_pipeline_with_its_own_secret_takes_its_credentials_from_it(
    own_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worker, in the environment its pod would get (with the user's Secrets), loads its
    own pipeline with its own credentials; the chart's Secret holds only what the pipelines
    without a Secret of their own need, and no secret is written anywhere else."""
    docs = objects(render(own_file))
    (secret,) = of_kind(docs, "Secret")
    assert secret["stringData"] == {"elasticsearch-password": ES_PASSWORD}  # no mysql-url
    others = yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])
    for value in (ES_PASSWORD, AUDIT_PASSWORD, f"reports-pw-{TAG}", PARTNER_PASSWORD):
        assert value not in others, f"a secret is written outside a Secret: {value}"
    config = pipelines_file(docs, tmp_path)
    assert "existingSecret" not in config.read_text()  # the chart's keys, not kubevents'
    deployments = sink_deployments(docs)
    assert set(deployments) == {p["id"] for p in OWN["pipelines"]}
    for pipeline_id, d in deployments.items():
        env = container_env([*docs, *OWN_SECRETS], container(d))
        assert_real_settings(env, pipeline_id)
        settings = settings_in(env, config, monkeypatch)
        mine = settings.pipeline(pipeline_id)
        if pipeline_id == "elasticsearch":
            assert mine.elasticsearch is not None and mine.elasticsearch.password is not None
            assert mine.elasticsearch.username == "elastic"
            assert mine.elasticsearch.password.get_secret_value() == ES_PASSWORD
        elif pipeline_id == "audit":
            es = mine.elasticsearch
            assert es is not None and es.password is not None and es.api_key is None
            assert (es.url, es.username) == ("https://audit-es:9200", "kubevents")
            assert es.password.get_secret_value() == AUDIT_PASSWORD
        elif pipeline_id == "reports":
            assert mine.mysql is not None and mine.mysql.url is not None
            assert mine.mysql.url.get_secret_value() == REPORTS_URL
        else:
            assert mine.kafka is not None
            client = destination(mine.kafka, settings.kafka)
            assert client.brokers == "partner-0.partner:9093"
            assert (client.security_protocol, client.sasl_username) == ("SASL_SSL", "kubevents")
            assert client.sasl_password is not None
            assert client.sasl_password.get_secret_value() == PARTNER_PASSWORD


def test_every_environment_variable_is_a_real_setting(
    many: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment each container gets loads into Settings with the values' meaning."""
    config = pipelines_file(many, tmp_path)
    for w in (d for d in many if d["kind"] in WORKLOADS):
        c = container(w)
        env = container_env(many, c)
        assert_real_settings(env, w["metadata"]["name"])
        settings = settings_in(env, config if "--config" in c["args"] else None, monkeypatch)
        assert settings.cluster.name == MANY["cluster"]["name"]
        kafka = settings.kafka
        assert kafka.brokers == MANY["kafka"]["brokers"]
        assert kafka.compression == "zstd"
        assert (kafka.security_protocol, kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
        assert kafka.sasl_username == "kubevents"
        assert kafka.sasl_password is not None
        assert kafka.sasl_password.get_secret_value() == KAFKA_PASSWORD
        assert (settings.topics.raw, settings.topics.enriched) == (f"raw-{TAG}", f"events-{TAG}")
        # The TLS files it names are mounted, from the Secrets the values name.
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in w["spec"]["template"]["spec"]["volumes"]}
        for path, secret in [
            (kafka.ssl_cafile, "kafka-ca"),
            (kafka.ssl_certfile, "kafka-client"),
            (kafka.ssl_keyfile, "kafka-client"),
        ]:
            assert path is not None
            volume = volumes[mounts[str(path.parent)]]
            assert volume["secret"]["secretName"] == secret
            assert path.name in [i["path"] for i in volume["secret"]["items"]]
        if c["args"][0] == "produce":
            assert settings.producer.leader_election is True
            assert settings.producer.lease_namespace == "kubevents"
        elif c["args"][2] == "core":
            assert settings.worker.store == "rocksdb://"
            assert settings.worker.canonical_url == (
                "http://kubevents-core-0.kubevents-core.kubevents.svc:6066"
            )


def test_kubevents_reads_the_rendered_pipelines_file(
    many: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kubevents pipelines --config <the ConfigMap's file>`, in each sink worker's environment,
    lists exactly the values' pipelines; each worker's own pipeline has the values' options."""
    config = pipelines_file(many, tmp_path)
    want = [p["id"] for p in MANY["pipelines"]]
    for pipeline_id, d in sink_deployments(many).items():
        env = container_env(many, container(d))
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", "pipelines", "--config", str(config)],
            env=clean_environ(env),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"{pipeline_id}: {result.stderr}"
        lines = [line.split("\t") for line in result.stdout.splitlines()]
        assert [line[0] for line in lines] == ["core", *want], result.stdout
        groups = [line[1] for line in lines[1:]]
        kinds = [p["sink"] for p in MANY["pipelines"]]
        assert groups == [
            f"consumer group kubevents-sink-{i}: events-{TAG} -> {k}"
            for i, k in zip(want, kinds, strict=True)
        ]

        settings = settings_in(env, config, monkeypatch)
        mine = settings.pipeline(pipeline_id)
        declared = next(p for p in MANY["pipelines"] if p["id"] == pipeline_id)
        assert mine.sink == declared["sink"]
        assert mine.batch_size == declared.get("batch_size", 1000)
        for key, value in declared.get("filters", {}).items():
            assert getattr(mine.filters, key) == value, (pipeline_id, key)
        if mine.sink == "elasticsearch":
            assert mine.elasticsearch is not None
            own = declared.get("elasticsearch", {})
            assert mine.elasticsearch.url == own.get("url", MANY["elasticsearch"]["url"])
            assert mine.elasticsearch.index == own.get("index", "k8s-events")
            assert mine.elasticsearch.username == "elastic"
            assert mine.elasticsearch.password is not None
            assert mine.elasticsearch.password.get_secret_value() == ES_PASSWORD
            assert mine.elasticsearch.ca_file is not None
            assert str(mine.elasticsearch.ca_file.parent) in {
                m["mountPath"] for m in container(d)["volumeMounts"]
            }
        elif mine.sink == "mysql":
            assert mine.mysql is not None and mine.mysql.url is not None
            assert mine.mysql.url.get_secret_value() == MYSQL_URL
            assert mine.mysql.table == "events"
        else:
            assert mine.kafka is not None and mine.kafka.topic == f"copy-{TAG}"


def test_schema_allows_only_real_non_secret_pipeline_options() -> None:
    """values.schema.json's pipeline keys are PipelineSettings' (plus the chart's resources),
    and each sink's options are its settings' fields except the secrets: the pipelines file is
    a ConfigMap."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    item = schema["properties"]["pipelines"]["items"]
    assert item["additionalProperties"] is False
    chart_only = {"resources", "existingSecret", "existingSecretKeys"}
    assert set(item["properties"]) - chart_only == set(PipelineSettings.model_fields)
    models: list[tuple[str, type[BaseModel]]] = [
        ("elasticsearch", ElasticsearchSinkSettings),
        ("mysql", MySQLSinkSettings),
        ("kafka", KafkaSinkSettings),
    ]
    for kind, model in models:
        options = item["properties"][kind]
        assert options["additionalProperties"] is False, kind
        secret = {
            name
            for name, field in model.model_fields.items()
            if SecretStr in getattr(field.annotation, "__args__", (field.annotation,))
        }
        assert secret, kind
        assert set(options["properties"]) == set(model.model_fields) - secret, kind


# --------------------------------------------------------------------------------------------
# bad values are refused, saying why


@pytest.mark.parametrize(
    ("pipelines", "message"),
    [
        ([{"sink": "elasticsearch"}], "at '/pipelines/0': missing property 'id'"),
        ([{"id": "pg", "sink": "postgres"}], "at '/pipelines/0/sink': value must be one of"),
        ([{"id": "Bad_Id", "sink": "mysql"}], "at '/pipelines/0/id'"),
        ([{"id": "core", "sink": "mysql"}], "at '/pipelines/0/id'"),
        (
            [{"id": "m", "sink": "mysql", "mysql": {"url": "mysql+pymysql://u:p@h/d"}}],
            "at '/pipelines/0/mysql': additional properties 'url' not allowed",
        ),
        (
            [{"id": "e", "sink": "elasticsearch", "filters": {"type": ["Warning"]}}],
            "at '/pipelines/0/filters': additional properties 'type' not allowed",
        ),
    ],
)
def test_bad_values_fail_lint_and_template_with_a_clear_message(
    pipelines: list[dict[str, Any]], message: str, tmp_path: Path
) -> None:
    values = values_file(tmp_path, {"pipelines": pipelines})
    lint = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert lint.returncode != 0, lint.stdout
    assert message in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    template = helm("template", "kubevents", str(CHART), "-f", str(values))
    assert template.returncode != 0, template.stdout
    assert message in template.stderr, template.stderr


def test_repeated_pipeline_ids_fail_template_saying_which(tmp_path: Path) -> None:
    """A JSON schema cannot say "ids unique", so the template fails; helm lint renders in its
    lint mode, where fail only logs (as it does `required`): what refuses it is helm template
    and helm install."""
    pipelines = [{"id": "e", "sink": "elasticsearch"}, {"id": "e", "sink": "mysql"}]
    values = values_file(tmp_path, {"pipelines": pipelines})
    result = helm("template", "kubevents", str(CHART), "-f", str(values))
    assert result.returncode != 0, result.stdout
    assert 'pipelines: id "e" is repeated' in result.stderr, result.stderr


def test_sasl_without_a_password_fails_lint_and_template(tmp_path: Path) -> None:
    values = values_file(
        tmp_path, {"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"username": "kubevents"}}}
    )
    lint = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert lint.returncode != 0, lint.stdout
    assert "at '/kafka/sasl/password': minLength" in lint.stdout, lint.stdout
    template = helm("template", "kubevents", str(CHART), "-f", str(values))
    assert template.returncode != 0, template.stdout
    assert "at '/kafka/sasl/password': minLength" in template.stderr, template.stderr
    # With the password in a Secret of one's own instead, it renders.
    values = values_file(
        tmp_path,
        {
            "kafka": {
                "securityProtocol": "SASL_SSL",
                "sasl": {"username": "kubevents", "existingSecret": "mine"},
            }
        },
    )
    assert helm("lint", "--strict", str(CHART), "-f", str(values)).returncode == 0
