"""Owner chains (Pod -> ReplicaSet -> Deployment, Job -> CronJob ...), bounded expiring cache.

``OwnerResolver`` is pure logic around an injected ``fetch`` (apiVersion, kind, namespace, name)
-> object metadata or None, so it is tested without an API server; ``kube_fetcher`` is the real one.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Fetch = Callable[[str, str, str, str], dict[str, Any] | None]

MAX_DEPTH = 6  # Pod -> ReplicaSet -> Deployment is 3; anything deeper is a cycle or an oddity.
CLUSTER_SCOPED = frozenset(
    {"Node", "Namespace", "PersistentVolume", "ClusterRole", "StorageClass", "CSINode"}
)


@dataclass(slots=True)
class Resolution:
    labels: dict[str, str] = field(default_factory=dict)
    owners: list[dict[str, str]] = field(default_factory=list)
    found: bool = True


class TTLCache:
    """LRU with a time-to-live per entry; both bounds keep memory flat on a busy cluster."""

    def __init__(self, size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self._data: OrderedDict[tuple[str, ...], tuple[float, Any]] = OrderedDict()
        self._size, self._ttl, self._clock = size, ttl_s, clock

    def get(self, key: tuple[str, ...]) -> tuple[bool, Any]:
        item = self._data.get(key)
        if item is None:
            return False, None
        expires, value = item
        if expires < self._clock():
            del self._data[key]
            return False, None
        self._data.move_to_end(key)
        return True, value

    def put(self, key: tuple[str, ...], value: Any) -> None:
        self._data[key] = (self._clock() + self._ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def controller_ref(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The owner reference marked controller, else the first one."""
    refs = [r for r in meta.get("ownerReferences") or [] if isinstance(r, dict)]
    for ref in refs:
        if ref.get("controller"):
            return ref
    return refs[0] if refs else None


class OwnerResolver:
    def __init__(self, fetch: Fetch, cache: TTLCache, label_keys: list[str]):
        self._fetch, self._cache, self._label_keys = fetch, cache, label_keys

    def _metadata(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        ns = "" if kind in CLUSTER_SCOPED else namespace
        key = (api_version, kind, ns, name)
        hit, value = self._cache.get(key)
        if not hit:
            value = self._fetch(api_version, kind, ns, name)  # None: not found (cached too)
            self._cache.put(key, value)
        return value

    def resolve(self, api_version: str, kind: str, namespace: str, name: str) -> Resolution:
        """Labels of the object and its owner chain, nearest owner first."""
        meta = self._metadata(api_version, kind, namespace, name) if kind and name else None
        if meta is None:
            return Resolution(found=False)
        labels = meta.get("labels") or {}
        result = Resolution(labels={k: str(labels[k]) for k in self._label_keys if k in labels})
        seen = {meta.get("uid")}
        current = meta
        for _ in range(MAX_DEPTH):
            ref = controller_ref(current)
            if ref is None or ref.get("uid") in seen:
                break
            seen.add(ref.get("uid"))
            result.owners.append(
                {
                    "kind": str(ref.get("kind", "")),
                    "name": str(ref.get("name", "")),
                    "uid": str(ref.get("uid", "")),
                    "api_version": str(ref.get("apiVersion", "")),
                }
            )
            parent = self._metadata(
                str(ref.get("apiVersion", "")),
                str(ref.get("kind", "")),
                namespace,
                str(ref.get("name", "")),
            )
            if parent is None:
                break
            current = parent
        return result


def plural(kind: str) -> str:
    """Resource name of a kind, good for the built-in kinds that own things."""
    lower = kind.lower()
    if lower.endswith("s"):
        return lower + "es"
    if lower.endswith("y"):
        return lower[:-1] + "ies"
    return lower + "s"


def object_path(api_version: str, kind: str, namespace: str, name: str) -> str:
    base = "/api/v1" if api_version in ("v1", "") else f"/apis/{api_version}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{scope}/{plural(kind)}/{name}"
