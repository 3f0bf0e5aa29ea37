from __future__ import annotations

from typing import Any

from app.core.owners import OwnerResolver, TTLCache, object_path, plural

OBJECTS: dict[tuple[str, str, str, str], dict[str, Any]] = {
    ("v1", "Pod", "shop", "web-abc"): {
        "uid": "pod",
        "labels": {"app.kubernetes.io/name": "web", "pod-template-hash": "abc"},
        "ownerReferences": [
            {
                "kind": "ReplicaSet",
                "name": "web-7d",
                "uid": "rs",
                "apiVersion": "apps/v1",
                "controller": True,
            }
        ],
    },
    ("apps/v1", "ReplicaSet", "shop", "web-7d"): {
        "uid": "rs",
        "ownerReferences": [
            {
                "kind": "Deployment",
                "name": "web",
                "uid": "dep",
                "apiVersion": "apps/v1",
                "controller": True,
            }
        ],
    },
    ("apps/v1", "Deployment", "shop", "web"): {"uid": "dep"},
    ("v1", "Pod", "jobs", "nightly-1-x"): {
        "uid": "p2",
        "ownerReferences": [
            {
                "kind": "Job",
                "name": "nightly-1",
                "uid": "job",
                "apiVersion": "batch/v1",
                "controller": True,
            }
        ],
    },
    ("batch/v1", "Job", "jobs", "nightly-1"): {
        "uid": "job",
        "ownerReferences": [
            {
                "kind": "CronJob",
                "name": "nightly",
                "uid": "cj",
                "apiVersion": "batch/v1",
                "controller": True,
            }
        ],
    },
    ("batch/v1", "CronJob", "jobs", "nightly"): {"uid": "cj"},
    ("v1", "Pod", "loop", "a"): {
        "uid": "a",
        "ownerReferences": [{"kind": "Pod", "name": "a", "uid": "a", "apiVersion": "v1"}],
    },
}


class Fetcher:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str]] = []

    def __call__(self, api_version: str, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        self.calls.append((api_version, kind, ns, name))
        return OBJECTS.get((api_version, kind, ns, name))


def resolver(fetch: Fetcher, size: int = 100) -> OwnerResolver:
    return OwnerResolver(fetch, TTLCache(size, 60), ["app.kubernetes.io/name", "missing"])


def test_pod_replicaset_deployment_chain_and_labels() -> None:
    res = resolver(Fetcher()).resolve("v1", "Pod", "shop", "web-abc")
    assert [o["kind"] for o in res.owners] == ["ReplicaSet", "Deployment"]
    assert res.owners[1]["name"] == "web" and res.owners[1]["uid"] == "dep"
    assert res.labels == {"app.kubernetes.io/name": "web"}, "only selected label keys"


def test_job_cronjob_chain() -> None:
    res = resolver(Fetcher()).resolve("v1", "Pod", "jobs", "nightly-1-x")
    assert [(o["kind"], o["name"]) for o in res.owners] == [
        ("Job", "nightly-1"),
        ("CronJob", "nightly"),
    ]


def test_cache_avoids_second_lookup_and_remembers_not_found() -> None:
    fetch = Fetcher()
    r = resolver(fetch)
    r.resolve("v1", "Pod", "shop", "web-abc")
    r.resolve("v1", "Pod", "shop", "web-abc")
    assert len(fetch.calls) == 3
    assert not r.resolve("v1", "Pod", "shop", "gone").found
    assert not r.resolve("v1", "Pod", "shop", "gone").found
    assert len(fetch.calls) == 4


def test_self_owning_cycle_stops() -> None:
    res = resolver(Fetcher()).resolve("v1", "Pod", "loop", "a")
    assert res.owners == []


def test_ttl_cache_bounds_size_and_expires() -> None:
    now = [0.0]
    cache = TTLCache(2, 10, clock=lambda: now[0])
    cache.put(("a",), 1)
    cache.put(("b",), 2)
    cache.put(("c",), 3)
    assert len(cache) == 2 and cache.get(("a",)) == (False, None)
    now[0] = 11
    assert cache.get(("b",)) == (False, None)


def test_paths() -> None:
    assert plural("ReplicaSet") == "replicasets" and plural("NetworkPolicy") == "networkpolicies"
    assert object_path("apps/v1", "Deployment", "shop", "web") == (
        "/apis/apps/v1/namespaces/shop/deployments/web"
    )
    assert object_path("v1", "Node", "", "n1") == "/api/v1/nodes/n1"
