"""A simulated kubelet's Warnings, for the demo and the end-to-end tests.

kwok's fake nodes run no kubelet, so nothing on the local cluster ever reports BackOff,
FailedMount or Unhealthy, the Warnings users most often look for. ``record`` writes them as the
kubelet does: a core/v1 Event about the pod, ``source.component=kubelet`` and ``source.host`` = the
pod's node, ``reportingComponent=kubelet``; and when the same pod reports the same reason and
message again, it repeats it as the kubelet's event correlator does, by patching the existing
Event's ``count`` (+1) and ``lastTimestamp`` (watchers see a MODIFIED Event of the same uid), not
by creating another. Every Event written here carries the annotation ``kubevents.io/simulated:
"true"``, so no one mistakes it for a real kubelet's.

The existing Event is found on the API server (field selector on the involved object's uid, the
reason and the source), not in a cache of this process: any process may repeat an Event another
one created. The patch names the resourceVersion it read, so two concurrent repeats never count
one occurrence (a 409 Conflict reads and patches again); two first reports at the very same
moment may still create two Events (a kubelet, one process with one correlator, never races).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s

SIMULATED = "kubevents.io/simulated"
COMPONENT = "kubelet"
CONFLICT = 409

# What a kubelet says for each of these reasons (kubelet's pkg/kubelet/events and the prober).
MESSAGES = {
    "BackOff": "Back-off restarting failed container {container} in pod {pod}_{namespace}({uid})",
    "FailedMount": 'MountVolume.SetUp failed for volume "config" : configmap "{pod}-config" not'
    " found",
    "Unhealthy": "Readiness probe failed: HTTP probe failed with statuscode: 503",
}


@dataclass(frozen=True)
class PodRef:
    """The pod a Warning is about: what the kubelet puts in involvedObject and source."""

    namespace: str
    name: str
    uid: str
    node: str
    container: str = ""

    @classmethod
    def of(cls, pod: Any) -> PodRef:
        """From a ``V1Pod`` as the kubernetes client returns it (scheduled: it has a node)."""
        return cls(
            namespace=pod.metadata.namespace,
            name=pod.metadata.name,
            uid=pod.metadata.uid,
            node=pod.spec.node_name or "",
            container=pod.spec.containers[0].name if pod.spec.containers else "",
        )


@dataclass(frozen=True)
class Recorded:
    """One Event as written: its name and uid, the count it now has and its resourceVersion."""

    namespace: str
    name: str
    uid: str
    reason: str
    count: int
    resource_version: str


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def message_for(pod: PodRef, reason: str) -> str:
    """The kubelet's message for ``reason`` (BackOff, FailedMount, Unhealthy)."""
    return MESSAGES[reason].format(
        container=pod.container, pod=pod.name, namespace=pod.namespace, uid=pod.uid
    )


def _field_path(pod: PodRef, reason: str) -> str:
    # A container's Warnings name the container; a volume's name the pod itself.
    return (
        f"spec.containers{{{pod.container}}}" if reason != "FailedMount" and pod.container else ""
    )


def find(api: k8s.ApiClient, pod: PodRef, reason: str, message: str) -> Any | None:
    """The kubelet Event already reporting ``reason`` with ``message`` about ``pod``, if any."""
    selector = f"involvedObject.uid={pod.uid},reason={reason},source={COMPONENT}"
    core: Any = k8s.CoreV1Api(api)
    found = core.list_namespaced_event(pod.namespace, field_selector=selector)
    same = [e for e in found.items if e.message == message]
    return same[0] if same else None


def record(
    api: k8s.ApiClient,
    pod: PodRef,
    reason: str,
    message: str | None = None,
    *,
    type_: str = "Warning",
) -> Recorded:
    """Report ``reason`` about ``pod`` as its kubelet would: create the Event the first time,
    repeat it (count + 1, a new lastTimestamp) every later time."""
    text = message if message is not None else message_for(pod, reason)
    core: Any = k8s.CoreV1Api(api)  # Any: it takes plain dicts as bodies
    while True:
        existing = find(api, pod, reason, text)
        if existing is None:
            created = core.create_namespaced_event(pod.namespace, _body(pod, reason, text, type_))
            return _recorded(created)
        patch = {
            "metadata": {"resourceVersion": existing.metadata.resource_version},
            "count": (existing.count or 1) + 1,
            "lastTimestamp": now(),
        }
        try:
            patched = core.patch_namespaced_event(existing.metadata.name, pod.namespace, patch)
        except k8s.ApiException as exc:
            if exc.status == CONFLICT:  # repeated by someone else meanwhile: count from theirs
                continue
            raise
        return _recorded(patched)


def _body(pod: PodRef, reason: str, message: str, type_: str) -> dict[str, Any]:
    stamp = now()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            # The kubelet names an Event <object>.<unique suffix>.
            "name": f"{pod.name}.{uuid.uuid4().hex[:16]}",
            "namespace": pod.namespace,
            "annotations": {SIMULATED: "true"},
        },
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": pod.uid,
            "fieldPath": _field_path(pod, reason),
        },
        "reason": reason,
        "message": message,
        "type": type_,
        "count": 1,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "source": {"component": COMPONENT, "host": pod.node},
        "reportingComponent": COMPONENT,
        "reportingInstance": pod.node,
    }


def _recorded(event: Any) -> Recorded:
    return Recorded(
        namespace=event.metadata.namespace,
        name=event.metadata.name,
        uid=event.metadata.uid,
        reason=event.reason,
        count=int(event.count or 1),
        resource_version=event.metadata.resource_version,
    )
