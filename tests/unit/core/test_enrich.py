"""A slow or failing API server never stalls the stream: timeouts, then a short circuit breaker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from app.core.enrich import Enricher
from app.core.owners import OwnerResolver, TTLCache
from app.kube.client import ApiError
from app.model.envelope import RawEvent
from app.model.normalize import NormalizedEvent, normalize
from app.settings import CoreSettings
from tests.fixtures.events import core_event


def event(name: str) -> NormalizedEvent:
    obj = core_event(
        involvedObject={
            "kind": "Pod",
            "name": name,
            "namespace": "shop",
            "uid": name,
            "apiVersion": "v1",
        }
    )
    return normalize(RawEvent("ADDED", "watch", None, None, None, obj), default_cluster="c")


def enricher(fetch: Any) -> Enricher:
    e = Enricher(CoreSettings(enrich_timeout_s=0.2), None)
    e.resolver = OwnerResolver(fetch, TTLCache(10, 60), ["app"])
    return e


def test_slow_api_times_out_then_lookups_pause() -> None:
    calls: list[str] = []

    def slow(api_version: str, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        calls.append(name)
        time.sleep(1.0)
        return None

    e = enricher(slow)

    async def run() -> tuple[Any, Any, float]:
        started = time.monotonic()
        first = await e.enrich(event("a"))
        second = await e.enrich(event("b"))
        return first, second, time.monotonic() - started

    first, second, elapsed = asyncio.run(run())
    assert first.status == "failed" and first.error == "timeout"
    assert second.status == "skipped" and "paused" in (second.error or "")
    assert elapsed < 0.6, "the stream waited no longer than the timeout"
    assert calls == ["a"]


def test_api_errors_mark_the_event_not_enriched() -> None:
    def failing(api_version: str, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        raise ApiError(500, "boom", "{}", "/api/v1/namespaces/shop/pods/x")

    result = asyncio.run(enricher(failing).enrich(event("x")))
    assert result.status == "failed" and "500" in (result.error or "")


def test_answers_are_cached_per_object() -> None:
    calls: list[str] = []

    def fetch(api_version: str, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        calls.append(name)
        return {"uid": name, "labels": {"app": "web"}}

    e = enricher(fetch)

    async def run() -> list[Any]:
        return [await e.enrich(event("p")) for _ in range(3)]

    results = asyncio.run(run())
    assert [r.status for r in results] == ["ok"] * 3 and results[0].labels == {"app": "web"}
    assert calls == ["p"]
