"""deploy/kubernetes against the real API server: the manifests are accepted, and the RBAC in
rbac.yaml lets the kubevents ServiceAccount do what the producer and the core workers do, and
nothing else (least privilege), proven with that ServiceAccount's own token."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client import ApiException

from tests.integration.kube_helpers import filled

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
RBAC = [doc for doc in yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()) if doc]
# The ServiceAccount rbac.yaml binds its roles to (tests/unit/test_packaging.py checks the
# bindings): its name and namespace come from there, not from a copy.
(_SERVICE_ACCOUNT,) = [doc["metadata"] for doc in RBAC if doc["kind"] == "ServiceAccount"]
NAMESPACE: str = _SERVICE_ACCOUNT["namespace"]
ACCOUNT: str = _SERVICE_ACCOUNT["name"]


def _version_key(path: Path) -> tuple[int, ...]:
    version = path.parents[1].name.lstrip("v")  # .../kubernetes/v1.37.2/bin/kubectl
    return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))


def find_kubectl() -> str:
    """$KUBEVENTS_KUBECTL, else the kubectl the stack built (same version as its API server),
    else the one on PATH."""
    explicit = os.environ.get("KUBEVENTS_KUBECTL")
    if explicit:
        assert os.access(explicit, os.X_OK), f"$KUBEVENTS_KUBECTL={explicit} is not executable"
        return explicit
    cache = Path(os.environ.get("KUBEVENTS_CACHE_DIR") or Path.home() / ".cache" / "kubevents")
    built = [p for p in cache.glob("kubernetes/*/bin/kubectl") if os.access(p, os.X_OK)]
    if built:
        return str(max(built, key=_version_key))
    on_path = shutil.which("kubectl")
    if on_path:
        return on_path
    pytest.fail("no kubectl: set $KUBEVENTS_KUBECTL, put kubectl on PATH or run 'make stack'")


def kubectl(kubeconfig: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_kubectl(), "--kubeconfig", kubeconfig, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def manifest_objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return objects


@pytest.fixture(scope="module")
def namespace(api: k8s.ApiClient) -> str:
    """Namespace kubevents, really created (idempotent): a dry run needs it to exist."""
    core = k8s.CoreV1Api(api)
    deadline = time.monotonic() + 90
    while True:
        try:
            ns = core.read_namespace(NAMESPACE)
        except ApiException as exc:
            assert exc.status == 404, exc
            try:
                core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))
            except ApiException as exc2:
                assert exc2.status == 409, exc2  # created meanwhile
            continue
        phase = filled(ns.status).phase
        if phase == "Active":
            return NAMESPACE
        assert time.monotonic() < deadline, f"namespace {NAMESPACE} stays {phase}"
        time.sleep(1)


# --------------------------------------------------------------------------------------------
# (a) every manifest is accepted by the API server


def test_every_manifest_passes_a_server_side_dry_run(kubeconfig: str, namespace: str) -> None:
    result = kubectl(kubeconfig, "apply", "--dry-run=server", "-k", str(DEPLOY))
    assert result.returncode == 0, f"kubectl apply --dry-run=server failed:\n{result.stderr}"
    # One line per object: "deployment.apps/kubevents-producer created (server dry run)".
    applied = set()
    for line in result.stdout.splitlines():
        if line.endswith("(server dry run)"):
            resource, _, name = line.split()[0].partition("/")
            applied.add((resource.split(".")[0], name))
    expected = {(obj["kind"].lower(), obj["metadata"]["name"]) for obj in manifest_objects()}
    assert applied == expected, result.stdout


# --------------------------------------------------------------------------------------------
# (b) the ServiceAccount's permissions, with its own token


@pytest.fixture(scope="module")
def rbac_applied(kubeconfig: str, namespace: str) -> None:
    result = kubectl(
        kubeconfig, "apply", "-f", str(DEPLOY / "namespace.yaml"), "-f", str(DEPLOY / "rbac.yaml")
    )
    assert result.returncode == 0, f"kubectl apply failed:\n{result.stderr}"


@pytest.fixture(scope="module")
def sa_api(api: k8s.ApiClient, kubeconfig: str, rbac_applied: None) -> Iterator[k8s.ApiClient]:
    """An API client authenticated as system:serviceaccount:kubevents:kubevents and as nothing
    else: the admin kubeconfig gives only the server's address and CA."""
    request = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    token = filled(
        k8s.CoreV1Api(api)
        .create_namespaced_service_account_token(ACCOUNT, NAMESPACE, request)
        .status
    ).token
    assert token
    admin = k8s.Configuration()
    # load_kube_config and ApiClient.close are unannotated in the client (ignored no-untyped-call).
    k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=admin)  # type: ignore[no-untyped-call]
    cfg = k8s.Configuration()
    cfg.host = admin.host
    cfg.ssl_ca_cert = admin.ssl_ca_cert
    cfg.verify_ssl = admin.verify_ssl
    cfg.tls_server_name = admin.tls_server_name
    cfg.api_key = {"authorization": "Bearer " + token}
    client = k8s.ApiClient(cfg)
    who = k8s.AuthenticationV1Api(client).create_self_subject_review(k8s.V1SelfSubjectReview())
    user = filled(filled(who.status).user_info)
    assert user.username == f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}"
    # RBAC objects just applied reach the authorizer through an informer: wait for them.
    deadline = time.monotonic() + 30
    while not allowed(client, "", "events", "watch") or not allowed(
        client, "coordination.k8s.io", "leases", "update", NAMESPACE
    ):
        assert time.monotonic() < deadline, "rbac.yaml's grants never took effect"
        time.sleep(0.5)
    yield client
    client.close()  # type: ignore[no-untyped-call]  # unannotated


def allowed(
    client: k8s.ApiClient, group: str, resource: str, verb: str, namespace: str | None = None
) -> bool:
    review = k8s.V1SelfSubjectAccessReview(
        spec=k8s.V1SelfSubjectAccessReviewSpec(
            resource_attributes=k8s.V1ResourceAttributes(
                group=group, resource=resource, verb=verb, namespace=namespace
            )
        )
    )
    answer = k8s.AuthorizationV1Api(client).create_self_subject_access_review(review)
    return bool(filled(answer.status).allowed)


def assert_forbidden(what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    with pytest.raises(ApiException) as info:
        call(*args, **kwargs)
    assert info.value.status == 403, f"{what}: {info.value.status} {info.value.reason}"


def test_service_account_can_list_and_watch_events_everywhere(sa_api: k8s.ApiClient) -> None:
    core, events = k8s.CoreV1Api(sa_api), k8s.EventsV1Api(sa_api)
    for list_call in (core.list_event_for_all_namespaces, events.list_event_for_all_namespaces):
        # Raw JSON, as kubevents reads it (the client's models reject events.k8s.io Events
        # converted from core/v1 ones, whose eventTime is null).
        # Without preloading the client returns urllib3's response, not the model it annotates.
        resp = cast(urllib3.BaseHTTPResponse, list_call(limit=1, _preload_content=False))
        assert resp.status == 200
        assert json.loads(resp.data)["kind"] == "EventList"
        resp = cast(
            urllib3.BaseHTTPResponse,
            list_call(watch=True, timeout_seconds=1, _preload_content=False),
        )
        try:
            assert resp.status == 200
            resp.read()  # the server ends the watch after timeout_seconds
        finally:
            resp.release_conn()


def test_service_account_can_get_create_and_update_its_lease(
    api: k8s.ApiClient, sa_api: k8s.ApiClient
) -> None:
    leases = k8s.CoordinationV1Api(sa_api)
    name = f"test-deploy-{uuid.uuid4().hex[:8]}"
    body = k8s.V1Lease(
        metadata=k8s.V1ObjectMeta(name=name),
        spec=k8s.V1LeaseSpec(holder_identity="replica-a", lease_duration_seconds=15),
    )
    try:
        leases.create_namespaced_lease(NAMESPACE, body)
        lease = leases.read_namespaced_lease(name, NAMESPACE)
        assert filled(lease.spec).holder_identity == "replica-a"
        filled(lease.spec).holder_identity = "replica-b"
        updated = leases.replace_namespaced_lease(name, NAMESPACE, lease)
        assert filled(updated.spec).holder_identity == "replica-b"
        again = leases.read_namespaced_lease(name, NAMESPACE)
        assert filled(again.spec).holder_identity == "replica-b"
        assert_forbidden("delete a Lease", leases.delete_namespaced_lease, name, NAMESPACE)
    finally:
        try:
            k8s.CoordinationV1Api(api).delete_namespaced_lease(name, NAMESPACE)
        except ApiException as exc:
            if exc.status != 404:
                raise


def test_service_account_can_get_a_replicaset(api: k8s.ApiClient, sa_api: k8s.ApiClient) -> None:
    name = f"test-deploy-{uuid.uuid4().hex[:8]}"
    labels = {"app": name}
    replicaset = k8s.V1ReplicaSet(
        metadata=k8s.V1ObjectMeta(name=name, labels=labels),
        spec=k8s.V1ReplicaSetSpec(
            replicas=0,
            selector=k8s.V1LabelSelector(match_labels=labels),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels),
                spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="c", image="busybox")]),
            ),
        ),
    )
    admin = k8s.AppsV1Api(api)
    admin.create_namespaced_replica_set(NAMESPACE, replicaset)
    try:
        got = k8s.AppsV1Api(sa_api).read_namespaced_replica_set(name, NAMESPACE)
        assert filled(got.metadata).name == name and filled(got.metadata).labels == labels
        # The owner lookup reads one object; listing is not granted.
        assert_forbidden(
            "list ReplicaSets", k8s.AppsV1Api(sa_api).list_replica_set_for_all_namespaces
        )
    finally:
        admin.delete_namespaced_replica_set(name, NAMESPACE)


def test_service_account_cannot_do_anything_else(sa_api: k8s.ApiClient) -> None:
    core = k8s.CoreV1Api(sa_api)
    assert_forbidden("list pods", core.list_pod_for_all_namespaces)
    assert_forbidden("list pods in kubevents", core.list_namespaced_pod, NAMESPACE)
    event = k8s.CoreV1Event(
        metadata=k8s.V1ObjectMeta(generate_name="kubevents-test-"),
        involved_object=k8s.V1ObjectReference(kind="Namespace", name=NAMESPACE),
        reason="Test",
        message="kubevents must not be able to write events",
    )
    assert_forbidden("create events", core.create_namespaced_event, NAMESPACE, event)
    assert_forbidden("delete events", core.delete_namespaced_event, "any-event", NAMESPACE)
    assert_forbidden(
        "delete events (events.k8s.io)",
        k8s.EventsV1Api(sa_api).delete_namespaced_event,
        "any-event",
        NAMESPACE,
    )
    assert_forbidden("list secrets", core.list_secret_for_all_namespaces)
    assert_forbidden("list secrets in kubevents", core.list_namespaced_secret, NAMESPACE)
    lease = k8s.V1Lease(
        metadata=k8s.V1ObjectMeta(name=f"test-deploy-{uuid.uuid4().hex[:8]}"),
        spec=k8s.V1LeaseSpec(holder_identity="intruder"),
    )
    assert_forbidden(
        "create a Lease in default",
        k8s.CoordinationV1Api(sa_api).create_namespaced_lease,
        "default",
        lease,
    )


def rbac_grants() -> list[tuple[str, str, str, str | None]]:
    """(apiGroup, resource, verb, namespace) of every grant in rbac.yaml: its ClusterRoles' in
    all namespaces (None), its Roles' in their own namespace. Read from the manifest, the one
    source: tests/unit/test_packaging.py checks that it grants exactly what kubevents needs, and
    this module that the API server enforces exactly what it grants."""
    found = []
    for doc in RBAC:
        if doc["kind"] not in {"ClusterRole", "Role"}:
            continue
        namespace = doc["metadata"].get("namespace") if doc["kind"] == "Role" else None
        for rule in doc["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    found += [(group, resource, verb, namespace) for verb in rule["verbs"]]
    return found


# What rbac.yaml grants, cluster-wide and in kubevents; and what it must not.
GRANTED = rbac_grants()
DENIED = [
    ("", "pods", "list", None),
    ("", "pods", "watch", None),
    ("", "pods", "create", NAMESPACE),
    ("", "pods", "delete", NAMESPACE),
    ("", "events", "create", NAMESPACE),
    ("", "events", "update", NAMESPACE),
    ("", "events", "patch", NAMESPACE),
    ("", "events", "delete", NAMESPACE),
    ("", "events", "deletecollection", NAMESPACE),
    ("events.k8s.io", "events", "create", NAMESPACE),
    ("events.k8s.io", "events", "delete", NAMESPACE),
    ("", "secrets", "get", NAMESPACE),
    ("", "secrets", "list", None),
    ("", "configmaps", "get", NAMESPACE),
    ("", "nodes", "list", None),
    ("", "namespaces", "list", None),
    ("", "serviceaccounts", "create", NAMESPACE),
    ("apps", "replicasets", "list", None),
    ("apps", "deployments", "update", NAMESPACE),
    ("batch", "jobs", "create", NAMESPACE),
    ("coordination.k8s.io", "leases", "get", "default"),
    ("coordination.k8s.io", "leases", "create", "default"),
    ("coordination.k8s.io", "leases", "update", "kube-system"),
    ("coordination.k8s.io", "leases", "list", NAMESPACE),
    ("coordination.k8s.io", "leases", "watch", NAMESPACE),
    ("coordination.k8s.io", "leases", "delete", NAMESPACE),
    ("rbac.authorization.k8s.io", "clusterroles", "escalate", None),
    ("rbac.authorization.k8s.io", "rolebindings", "create", NAMESPACE),
    ("", "serviceaccounts/token", "create", NAMESPACE),
    ("*", "*", "*", None),
]


def test_access_reviews_match_rbac_yaml(sa_api: k8s.ApiClient) -> None:
    assert len(GRANTED) >= 10 and ("", "events", "watch", None) in GRANTED, GRANTED
    assert ("coordination.k8s.io", "leases", "update", NAMESPACE) in GRANTED, GRANTED
    wrong = [
        f"{'denied' if expect else 'allowed'}: {verb} {group or 'core'}/{resource}"
        f" in {ns or 'all namespaces'}"
        for expect, cases in ((True, GRANTED), (False, DENIED))
        for group, resource, verb, ns in cases
        if allowed(sa_api, group, resource, verb, ns) != expect
    ]
    assert not wrong, wrong
