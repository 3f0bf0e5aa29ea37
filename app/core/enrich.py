"""Enrichment of a normalised event: labels and owner chain from the API server, never blocking.

Lookups run in one worker thread with a time budget; a slow or failing API server opens a short
circuit breaker, and the event flows on with ``enrichment.status`` saying why it is not enriched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from app.core.owners import OwnerResolver, Resolution, TTLCache, object_path
from app.kube.client import ApiError, KubeClient
from app.model.normalize import NormalizedEvent
from app.settings import CoreSettings

log = logging.getLogger("kubevents.enrich")

ENRICHED = Counter("kubevents_core_enrichment_total", "Enrichment outcomes.", ["status"])
_by_status: dict[str, Any] = {}
BREAKER_S = 30.0


@dataclass(slots=True)
class Enrichment:
    status: str  # ok | not_found | failed | skipped
    labels: dict[str, str] = field(default_factory=dict)
    owners: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None


def kube_fetcher(client: KubeClient) -> Any:
    def fetch(api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = client.get_json(object_path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        meta: dict[str, Any] = obj.get("metadata") or {}
        # Keep only what enrichment reads: the cache holds metadata, not whole objects.
        return {k: meta[k] for k in ("uid", "labels", "ownerReferences") if k in meta}

    return fetch


class Enricher:
    def __init__(self, settings: CoreSettings, client: KubeClient | None):
        self.settings = settings
        self.resolver = (
            OwnerResolver(
                kube_fetcher(client),
                TTLCache(settings.owner_cache_size, settings.owner_cache_ttl_s),
                settings.label_keys,
            )
            if client is not None and settings.owner_lookup
            else None
        )
        # Final answers per involved object, read on the event loop without a thread hop.
        self._answers = TTLCache(settings.owner_cache_size, settings.owner_cache_ttl_s)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enrich")
        self._open_until = 0.0

    async def enrich(self, event: NormalizedEvent) -> Enrichment:
        result = await self._enrich(event)
        counter = _by_status.get(result.status)
        if counter is None:  # labels() once per status: it is a lookup under a lock
            counter = _by_status[result.status] = ENRICHED.labels(result.status)
        counter.inc()
        return result

    async def _enrich(self, event: NormalizedEvent) -> Enrichment:
        io = event.involved
        if self.resolver is None or not io.kind or not io.name:
            return Enrichment("skipped", error="owner lookup disabled" if io.kind else "no kind")
        key = (io.api_version, io.kind, io.namespace, io.name)
        hit, answer = self._answers.get(key)
        if hit:
            return self._to_enrichment(answer)
        if time.monotonic() < self._open_until:
            return Enrichment("skipped", error="API server slow or failing; lookups paused")
        loop = asyncio.get_running_loop()
        resolver = self.resolver
        try:
            answer = await asyncio.wait_for(
                loop.run_in_executor(self._pool, resolver.resolve, *key),
                timeout=self.settings.enrich_timeout_s,
            )
        except (TimeoutError, ApiError, ConnectionError, OSError, ValueError) as exc:
            self._open_until = time.monotonic() + BREAKER_S
            log.warning("owner lookup failed (%s); pausing lookups for %.0fs", exc, BREAKER_S)
            reason = "timeout" if isinstance(exc, TimeoutError) else str(exc)[:200]
            return Enrichment("failed", error=reason)
        self._answers.put(key, answer)
        return self._to_enrichment(answer)

    @staticmethod
    def _to_enrichment(answer: Resolution) -> Enrichment:
        if not answer.found:
            return Enrichment("not_found", error="involved object no longer exists")
        return Enrichment("ok", labels=answer.labels, owners=answer.owners)
