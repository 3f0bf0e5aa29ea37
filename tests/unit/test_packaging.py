"""The packaging (docker-compose.yml, deploy/kubernetes, Dockerfile) agrees with the code.

Every command a container runs is parsed by the real CLI parser, every KUBEVENTS_* variable it
sets is a real setting and loads, and the ClusterRole grants exactly what kubevents needs.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from app import __version__
from app.cli import CORE, build_parser
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
NAMESPACE = "kubevents"
IMAGE = f"ghcr.io/kubevents/kubevents:{__version__}"
# Read straight from os.environ, not through Settings.
ENV_OUTSIDE_SETTINGS = {"KUBEVENTS_CONFIG", "KUBEVENTS_LOG_LEVEL", "KUBEVENTS_LOG_FORMAT"}

# What the ClusterRole must grant, and all it may grant: (apiGroup, resource) -> verbs.
# The producer lists and watches Events; the core workers get the owners of involved objects.
CLUSTER_GRANTS: dict[tuple[str, str], set[str]] = {
    ("", "events"): {"get", "list", "watch"},
    ("events.k8s.io", "events"): {"get", "list", "watch"},
    ("", "pods"): {"get"},
    ("", "replicationcontrollers"): {"get"},
    ("", "nodes"): {"get"},
    ("apps", "replicasets"): {"get"},
    ("apps", "deployments"): {"get"},
    ("apps", "statefulsets"): {"get"},
    ("apps", "daemonsets"): {"get"},
    ("batch", "jobs"): {"get"},
    ("batch", "cronjobs"): {"get"},
}
LEASE_GRANTS: dict[tuple[str, str], set[str]] = {
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
}


# --------------------------------------------------------------------------------------------
# helpers


def parse_cli(argv: list[str]) -> Any:
    """The real parser; a rejected command line is a test failure, not a SystemExit."""
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(
            f"'kubevents {' '.join(argv)}' is rejected by the CLI parser (exit {exc.code})"
        ) from None
    if args.command == "worker":
        # core, or a sink pipeline id (the default ones, when a manifest runs those)
        known = {CORE, "elasticsearch", "mysql"}
        assert args.pipeline in known, f"unknown pipeline in 'kubevents {' '.join(argv)}'"
    return args


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), COMPOSE
    return doc


def built_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items() if "build" in svc}


def interpolate(value: Any) -> str:
    """Compose's interpolation, using the defaults (not this machine's environment)."""
    text = str(value)
    text = re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", text)
    return text.replace("$$", "$")


def compose_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): interpolate(v) for k, v in env.items()}


def manifest_files() -> list[Path]:
    files = sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    assert files, f"no manifests in {DEPLOY}"
    return files


def manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests() if doc.get("kind") == kind]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "Pod":
        return dict(doc["spec"])
    if doc["kind"] == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(doc["spec"]["template"]["spec"])


def containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(id, workload, container) for every container and init container of every workload."""
    found = []
    for filename, doc in manifests():
        if doc.get("kind") not in WORKLOAD_KINDS:
            continue
        spec = pod_spec(doc)
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            found.append((f"{filename}:{doc['metadata']['name']}/{c['name']}", doc, c))
    return found


def container_env(c: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet would build it: ConfigMap keys from
    configmap.yaml, the downward API with example values, $(VAR) of earlier variables only."""
    config = {doc["metadata"]["name"]: doc.get("data", {}) for doc in of_kind("ConfigMap")}
    secrets = {doc["metadata"]["name"]: doc.get("stringData", {}) for doc in of_kind("Secret")}
    downward = {"metadata.name": "kubevents-core-0", "metadata.namespace": NAMESPACE}
    env: dict[str, str] = {}
    for item in c.get("env", []):
        if "value" in item:
            value = re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), str(item["value"])
            )
        else:
            src = item["valueFrom"]
            if "configMapKeyRef" in src:
                ref = src["configMapKeyRef"]
                assert ref["name"] in config, f"ConfigMap {ref['name']} is not in {DEPLOY}"
                assert ref["key"] in config[ref["name"]], f"no key {ref['key']} in {ref['name']}"
                value = str(config[ref["name"]][ref["key"]])
            elif "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                assert ref["name"] in secrets, f"Secret {ref['name']} is not in {DEPLOY}"
                assert ref["key"] in secrets[ref["name"]], f"no key {ref['key']} in {ref['name']}"
                value = str(secrets[ref["name"]][ref["key"]])
            else:
                value = downward[src["fieldRef"]["fieldPath"]]
        assert "$(" not in value, f"{item['name']}={value}: refers to an unset variable"
        env[item["name"]] = value
    return env


def settings_with(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    import os

    for name in list(os.environ):
        if name.startswith("KUBEVENTS_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def assert_real_settings(env: dict[str, str], where: str) -> None:
    """Every KUBEVENTS_ variable names a section and a field of Settings (a typo would be
    silently ignored by Settings, which ignores unknown variables)."""
    for name in env:
        if not name.startswith("KUBEVENTS_") or name in ENV_OUTSIDE_SETTINGS:
            continue
        section, _, field = name.removeprefix("KUBEVENTS_").lower().partition("_")
        assert section in Settings.model_fields, f"{where}: {name}: no settings section {section}"
        model = Settings.model_fields[section].annotation
        assert field in model.model_fields, f"{where}: {name}: no field {field} in {section}"  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------
# docker-compose.yml


def stack_version(script: str, variable: str) -> str:
    """The default version a stack/ script runs (``VAR="${VAR:-1.2.3}"``)."""
    text = (ROOT / "stack" / script).read_text()
    match = re.search(rf'^{variable}="\$\{{{variable}:-([^}}]+)\}}"', text, flags=re.M)
    assert match, f"no default {variable} in stack/{script}"
    return match.group(1)


def test_compose_has_the_backing_services_with_healthchecks() -> None:
    """The tags are docker-compose.yml's own (not copied here): each is pinned, and Kafka and
    Elasticsearch are the release series (major.minor) the stack tests kubevents against."""
    services = compose()["services"]
    series = {
        "kafka": stack_version("kafka.sh", "KAFKA_VERSION"),
        "elasticsearch": stack_version("elasticsearch.sh", "ES_VERSION"),
    }
    for name, repository in [
        ("kafka", "apache/kafka"),
        ("elasticsearch", "docker.elastic.co/elasticsearch/elasticsearch"),
        ("mysql", "mysql"),
    ]:
        assert name in services, f"no {name} service"
        image, _, tag = str(services[name].get("image")).rpartition(":")
        assert image == repository, services[name].get("image")
        assert re.fullmatch(r"\d+\.\d+(\.\d+)?", tag), f"{name}: tag {tag!r} is not a version"
        if name in series:
            assert tag.split(".")[:2] == series[name].split(".")[:2], (name, tag, series[name])
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    es = compose_env(services["elasticsearch"])
    assert es["discovery.type"] == "single-node"
    assert es["xpack.security.enabled"] == "false"
    assert compose_env(services["mysql"])["MYSQL_DATABASE"] == "kubevents"


def test_compose_builds_the_producer_and_the_core_worker() -> None:
    built = built_services()
    assert {"producer", "worker-core"} <= set(built), sorted(built)
    assert parse_cli(built["producer"]["command"]).command == "produce"
    args = parse_cli(built["worker-core"]["command"])
    assert args.command == "worker" and args.pipeline == "core"


@pytest.mark.parametrize("name", sorted(built_services()))
def test_compose_command_is_accepted_by_the_cli(name: str) -> None:
    svc = built_services()[name]
    assert "command" in svc, f"{name}: no command (the image's default is --help)"
    parse_cli(svc["command"])
    entrypoint = svc.get("entrypoint")
    if entrypoint is not None:  # it must still hand the command to the CLI
        assert 'exec kubevents "$$@"' in " ".join(entrypoint), entrypoint


@pytest.mark.parametrize("name", sorted(built_services()))
def test_compose_environment_is_real_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = compose_env(built_services()[name])
    assert_real_settings(env, f"docker-compose.yml {name}")
    settings = settings_with(env, monkeypatch)
    assert settings.kafka.bootstrap_servers == ["kafka:29092"]
    command = built_services()[name]["command"]
    pipeline = command[command.index("--pipeline") + 1] if "--pipeline" in command else None
    if pipeline in (None, "core"):  # the producer and the core read the API server
        assert settings.kubernetes.kubeconfig == Path("/kubeconfig")
    else:  # a sink worker: its pipeline exists from the URL the service sets
        assert [p.id for p in settings.sink_pipelines()] == [pipeline]


def test_compose_producer_reads_the_host_kubeconfig() -> None:
    producer = built_services()["producer"]
    mounts = [interpolate(v) for v in producer.get("volumes", [])]
    assert "~/.kube/config:/kubeconfig:ro" in mounts, mounts
    assert "${KUBECONFIG:-~/.kube/config}:/kubeconfig:ro" in producer["volumes"]
    assert compose_env(producer)["KUBEVENTS_KUBERNETES_KUBECONFIG"] == "/kubeconfig"
    assert producer["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_compose_worker_core_can_be_scaled() -> None:
    worker = built_services()["worker-core"]
    assert "container_name" not in worker
    assert "hostname" not in worker
    for port in worker.get("ports", []):
        if isinstance(port, dict):
            assert "published" not in port, port
        else:
            parts = str(port).split(":")
            assert len(parts) == 1 or not parts[-2], f"fixed host port {port}"
    assert compose_env(worker)["KUBEVENTS_WORKER_WEB_BIND"] == "0.0.0.0"


# --------------------------------------------------------------------------------------------
# deploy/kubernetes


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]


def test_every_namespaced_object_is_in_the_kubevents_namespace() -> None:
    for filename, doc in manifests():
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], f"{filename}: {doc['kind']}"
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{filename}: {doc['kind']}"
    assert [d["metadata"]["name"] for d in of_kind("Namespace")] == [NAMESPACE]


def test_there_are_the_producer_and_the_core_workers() -> None:
    producers = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "kubevents-producer"]
    assert len(producers) == 1 and producers[0]["spec"]["replicas"] == 2
    cores = [d for d in of_kind("StatefulSet") if d["metadata"]["name"] == "kubevents-core"]
    assert len(cores) == 1 and cores[0]["spec"]["replicas"] == 2
    service = next(s for s in of_kind("Service") if s["metadata"]["name"] == "kubevents-core")
    assert service["spec"]["clusterIP"] == "None"
    assert cores[0]["spec"]["serviceName"] == "kubevents-core"
    assert cores[0]["spec"]["volumeClaimTemplates"]


@pytest.mark.parametrize("cid", [cid for cid, _, _ in containers()])
def test_container_args_are_accepted_by_the_cli(cid: str) -> None:
    _, _, c = next(item for item in containers() if item[0] == cid)
    assert "command" not in c, f"{cid}: 'command' would replace the image's kubevents entrypoint"
    parse_cli(c["args"])


def test_workload_containers_are_found() -> None:
    commands = {tuple(c["args"]) for _, _, c in containers()}
    assert commands == {
        ("produce",),
        ("worker", "--pipeline", "core"),
        ("worker", "--pipeline", "elasticsearch"),
        ("worker", "--pipeline", "mysql"),
    }


@pytest.mark.parametrize("cid", [cid for cid, _, _ in containers()])
def test_container_environment_is_real_settings(cid: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _, doc, c = next(item for item in containers() if item[0] == cid)
    env = container_env(c)
    assert_real_settings(env, cid)
    settings = settings_with(env, monkeypatch)
    configmap = of_kind("ConfigMap")[0]["data"]
    assert settings.kafka.brokers == configmap["kafka-brokers"]
    assert settings.cluster.name == configmap["cluster-name"]
    if c["args"][0] == "produce":
        assert settings.producer.lease_namespace == NAMESPACE
        assert settings.producer.http_bind == "0.0.0.0"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["http"] == settings.producer.http_port
    elif c["args"][2] != "core":  # a sink pipeline: it exists from the URL it is given
        assert settings.worker.web_bind == "0.0.0.0"
        assert [p.id for p in settings.sink_pipelines()] == [c["args"][2]]
        assert pod_spec(doc)["automountServiceAccountToken"] is False  # no API access
        assert {m["mountPath"] for m in c["volumeMounts"]} == {"/data", "/tmp"}
    else:
        assert settings.worker.web_bind == "0.0.0.0"
        assert settings.worker.store == "rocksdb://"
        assert str(settings.worker.data_dir) == "/data"
        service = doc["spec"]["serviceName"]
        assert settings.worker.canonical_url == (
            f"http://kubevents-core-0.{service}.{NAMESPACE}.svc:{settings.worker.web_port}"
        )
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert "/data" in mounts
    for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        assert c[probe]["httpGet"]["path"] == path, f"{cid}: {probe}"


@pytest.mark.parametrize("cid", [cid for cid, _, _ in containers()])
def test_containers_are_locked_down(cid: str) -> None:
    _, doc, c = next(item for item in containers() if item[0] == cid)
    spec = pod_spec(doc)
    assert c["image"] == IMAGE
    assert spec["serviceAccountName"] == "kubevents"
    sc = c["securityContext"]
    assert sc.get("runAsNonRoot", spec.get("securityContext", {}).get("runAsNonRoot")) is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "nonResourceURLs" not in rule, rule
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                found.setdefault((group, resource), set()).update(rule.get("verbs", []))
    return found


def test_cluster_role_is_least_privilege() -> None:
    (role,) = [r for r in of_kind("ClusterRole") if r["metadata"]["name"] == "kubevents"]
    assert "aggregationRule" not in role
    for rule in role["rules"]:
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(key, []), f"wildcard in {key}: {rule}"
            assert not any("*" in item for item in rule.get(key, [])), f"wildcard: {rule}"
    granted = grants(role["rules"])
    verbs = set().union(*granted.values())
    assert verbs <= {"get", "list", "watch"}, f"verbs beyond get/list/watch: {verbs}"
    extra = set(granted) - set(CLUSTER_GRANTS)
    assert not extra, f"resources beyond what kubevents reads: {extra}"
    assert granted == CLUSTER_GRANTS


def test_lease_role_is_namespaced_and_minimal() -> None:
    (role,) = of_kind("Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    for rule in role["rules"]:
        assert not any(
            "*" in item for key in ("apiGroups", "resources", "verbs") for item in rule.get(key, [])
        ), rule
    assert grants(role["rules"]) == LEASE_GRANTS


def test_bindings_give_the_roles_to_the_kubevents_service_account() -> None:
    (account,) = of_kind("ServiceAccount")
    assert (account["metadata"]["name"], account["metadata"]["namespace"]) == (NAMESPACE, NAMESPACE)
    roles = {("ClusterRole", r["metadata"]["name"]) for r in of_kind("ClusterRole")}
    roles |= {("Role", r["metadata"]["name"]) for r in of_kind("Role")}
    bindings = of_kind("ClusterRoleBinding") + of_kind("RoleBinding")
    assert {b["roleRef"]["kind"] for b in bindings} == {"ClusterRole", "Role"}
    for binding in bindings:
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in roles, binding
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "kubevents", "namespace": NAMESPACE}
        ]


# --------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_installs_the_lock_then_the_project_and_runs_kubevents() -> None:
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    assert lines[0].startswith("#") or lines[0].startswith("FROM")
    # The Python the project declares (pyproject.toml's requires-python lower bound).
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f"FROM python:{requires.removeprefix('>=')}-slim" in lines, requires
    lock = text.index("--require-hashes -r requirements.lock")
    project = text.index("pip install --no-deps .")
    assert lock < project
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert lines[[i for i, line in enumerate(lines) if line.startswith("ENTRYPOINT")][-1]] == (
        'ENTRYPOINT ["kubevents"]'
    )
    # Everything the package is made of is copied in (pyproject.toml's packages).
    for package in ("app", "agents", "tables"):
        assert f"COPY {package} ./{package}" in text, package
