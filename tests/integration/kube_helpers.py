"""Creating and repeating real Events through the API server, for producer and core tests."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes import client as k8s

T = TypeVar("T")


def filled(value: T | None) -> T:
    """``value``, a field the API server always fills in that the client's model allows to be
    None (a None fails the test as the attribute access on it did)."""
    assert value is not None
    return value


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_namespace(api: k8s.ApiClient, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    # A dict body (ignored arg-type): the client validates it into the annotated model.
    k8s.CoreV1Api(api).create_namespace(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}  # type: ignore[arg-type]
    )
    return name


def delete_namespace(api: k8s.ApiClient, name: str) -> None:
    with contextlib.suppress(k8s.ApiException):
        k8s.CoreV1Api(api).delete_namespace(name)


def create_event(
    api: k8s.ApiClient,
    ns: str,
    *,
    reason: str = "Tested",
    type_: str = "Normal",
    involved_uid: str | None = None,
    kind: str = "Pod",
    name: str | None = None,
) -> dict[str, Any]:
    """A core/v1 Event as a controller would write it; returns {name, uid, rv, involved_uid}."""
    obj_name = name or f"obj-{uuid.uuid4().hex[:6]}"
    iuid = involved_uid or str(uuid.uuid4())
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{obj_name}.{uuid.uuid4().hex[:10]}", "namespace": ns},
        "involvedObject": {
            "kind": kind,
            "name": obj_name,
            "namespace": ns,
            "uid": iuid,
            "apiVersion": "v1",
        },
        "reason": reason,
        "message": f"{reason} happened to {obj_name}",
        "type": type_,
        "count": 1,
        "firstTimestamp": now(),
        "lastTimestamp": now(),
        "source": {"component": "kubevents-tests", "host": "test-host"},
    }
    # A dict body (ignored arg-type): the client validates it into the annotated model.
    created = k8s.CoreV1Api(api).create_namespaced_event(ns, body)  # type: ignore[arg-type]
    return {
        "name": created.metadata.name,
        "uid": created.metadata.uid,
        "rv": created.metadata.resource_version,
        "involved_uid": iuid,
        "count": 1,
        "ns": ns,
    }


def repeat_event(api: k8s.ApiClient, event: dict[str, Any]) -> dict[str, Any]:
    """The event happened again: count + 1 and a new lastTimestamp (a MODIFIED watch event)."""
    count = event["count"] + 1
    patched = k8s.CoreV1Api(api).patch_namespaced_event(
        event["name"], event["ns"], {"count": count, "lastTimestamp": now()}
    )
    return {**event, "rv": patched.metadata.resource_version, "count": count}
