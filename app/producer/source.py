"""List, then watch, then re-list when needed: every Event version the API server still holds.

Runs in its own thread (the HTTP calls block). A start lists everything (paginated, so 100k
events never sit in memory at once) and publishes it; the watch then resumes from the list's
resourceVersion with bookmarks. ``410 Gone`` (history compacted) means a fresh list; a dropped
connection means a re-watch from the last resourceVersion, with backoff. Re-listed copies are
duplicates by design: the core pipeline drops them.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import Counter, Gauge

from app.kube.client import ApiError, KubeClient
from app.model.envelope import ListPage, build_raw
from app.model.timeutil import now_iso
from app.settings import ProducerSettings
from app.testing import faults

log = logging.getLogger("kubevents.source")

LISTED = Counter("kubevents_producer_listed_total", "Events read by LIST requests.")
WATCHED = Counter("kubevents_producer_watched_total", "Watch notifications, by type.", ["type"])
WATCH_RESTARTS = Counter(
    "kubevents_producer_watch_restarts_total", "Watches started again, by reason.", ["reason"]
)
RELISTS = Counter(
    "kubevents_producer_relists_total",
    "Full LISTs, by reason: start, gone (the watch's resourceVersion expired), continue-expired"
    " (a LIST's continue token expired between two pages: listed again from the start).",
    ["reason"],
)
LAST_RV = Gauge("kubevents_producer_last_resource_version", "Last resourceVersion seen.")

Records = list[tuple[bytes, bytes]]
Sink = Callable[[Records], None]  # blocks while Kafka is not keeping up


class Gone(Exception):
    """The resourceVersion we hold is too old: list again."""


def events_path(api: str, namespace: str | None) -> str:
    base = "/api/v1" if api == "core/v1" else "/apis/events.k8s.io/v1"
    return f"{base}/namespaces/{namespace}/events" if namespace else f"{base}/events"


class EventSource:
    """One list+watch loop over one scope (all namespaces, or one namespace)."""

    def __init__(
        self,
        client: KubeClient,
        settings: ProducerSettings,
        sink: Sink,
        *,
        cluster: str,
        namespace: str | None,
        stop: threading.Event,
    ):
        self.client, self.settings, self.sink = client, settings, sink
        self.cluster, self.namespace, self.stop = cluster, namespace, stop
        self.path = events_path(settings.api, namespace)
        self.resource_version: str | None = None
        self.watching = threading.Event()
        self.fatal: Exception | None = None
        self._selectors = {
            "labelSelector": settings.label_selector,
            "fieldSelector": settings.field_selector,
        }

    def _raw(
        self, obj: dict[str, Any], watch_type: str, via: str, observed_at: str
    ) -> tuple[bytes, bytes]:
        return build_raw(
            obj,
            watch_type=watch_type,
            via=via,
            cluster=self.cluster,
            producer=self.settings.identity,
            observed_at=observed_at,
        )

    def _list_page(self, cont: str | None) -> bytes:
        return self.client.get_bytes(
            self.path,
            {**self._selectors, "limit": self.settings.list_page_size, "continue": cont},
        )

    def list_all(self) -> str:
        """Publish every event, page by page; return the snapshot's resourceVersion.

        One page is read ahead: a helper thread fetches the next page as soon as this page's
        continue token is known, which is before this page's records are built (``ListPage``
        parses lazily), so the API server's time to produce a page and ours to encode and
        publish one overlap: a LIST is a chain of requests, each needing the previous one's
        token. A page becomes records straight from its bytes (``ListPage.raw_records``: no
        Python objects per item, which cost 4x the CPU). Besides the records in flight (bounded
        by the publisher), at most the page being fetched (as bytes), the one being encoded and
        the batch being handed over are held.
        """
        cont: str | None = None
        snapshot_rv = ""
        ahead = ThreadPoolExecutor(1, thread_name_prefix=f"list-{self.namespace or 'all'}")
        try:
            pending = ahead.submit(self._list_page, None)
            while not self.stop.is_set():
                try:
                    body = pending.result()
                except ApiError as exc:
                    if exc.status == 410 and cont:  # continue token expired mid-list: start over
                        log.warning("list continue token expired; listing again from the start")
                        RELISTS.labels("continue-expired").inc()
                        cont, snapshot_rv = None, ""
                        pending = ahead.submit(self._list_page, None)
                        continue
                    raise
                page = ListPage(body)
                del body
                snapshot_rv = snapshot_rv or str(page.meta.get("resourceVersion") or "")
                cont = page.meta.get("continue") or None
                if cont:
                    pending = ahead.submit(self._list_page, cont)
                records = page.raw_records(
                    watch_type="ADDED",
                    via="list",
                    cluster=self.cluster,
                    producer=self.settings.identity,
                )
                del page
                faults.hit("source.list-page", n=len(records))  # tests: slow or kill a LIST
                if records:
                    self.sink(records)
                    LISTED.inc(len(records))
                del records
                if not cont:
                    break
        finally:
            ahead.shutdown(wait=False, cancel_futures=True)
        return snapshot_rv

    def watch_once(self, resource_version: str) -> None:
        """One watch request, until the server ends it; raises Gone on 410."""
        query = {
            **self._selectors,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": self.settings.watch_timeout_s,
        }
        self.watching.set()
        try:
            for batch in self.client.watch_batches(
                self.path, query, timeout_s=self.settings.watch_timeout_s + 30, stop=self.stop
            ):
                records: Records = []
                observed_at = now_iso()  # one chunk read at one instant
                for notification in batch:
                    kind = notification.get("type")
                    obj = notification.get("object") or {}
                    WATCHED.labels(str(kind)).inc()
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone(obj.get("message", "410 Gone"))
                        raise ApiError(
                            int(obj.get("code") or 500),
                            str(obj.get("reason", "")),
                            str(obj.get("message", "")),
                            self.path,
                        )
                    rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if kind in ("ADDED", "MODIFIED") or (
                        kind == "DELETED" and self.settings.include_deleted
                    ):
                        records.append(self._raw(obj, str(kind), "watch", observed_at))
                    if rv:  # BOOKMARKs only move the resourceVersion
                        self.resource_version = str(rv)
                if records:
                    self.sink(records)
                if self.resource_version and self.resource_version.isdigit():
                    LAST_RV.set(int(self.resource_version))
        except ApiError as exc:
            if exc.status == 410:
                raise Gone(str(exc)) from None
            raise
        finally:
            self.watching.clear()

    def run(self) -> None:
        """List, watch, re-list on 410, back off on errors; until ``stop`` is set."""
        failures = 0
        relist_reason = "start"
        while not self.stop.is_set():
            try:
                if self.resource_version is None:
                    RELISTS.labels(relist_reason).inc()
                    self.resource_version = self.list_all()
                    log.info(
                        "listed events",
                        extra={
                            "scope": self.namespace or "*",
                            "resource_version": self.resource_version,
                        },
                    )
                self.watch_once(self.resource_version)
                WATCH_RESTARTS.labels("timeout").inc()
                failures = 0
            except Gone as exc:
                log.info("watch history expired (410 Gone: %s); listing again", exc)
                self.resource_version, relist_reason = None, "gone"
                WATCH_RESTARTS.labels("gone").inc()
            except ApiError as exc:
                if exc.status in (401, 403, 404):
                    self.fatal = exc
                    raise
                failures += 1
                WATCH_RESTARTS.labels("error").inc()
                self._backoff(failures, exc)
            except (ConnectionError, OSError, ValueError) as exc:
                if self.stop.is_set():
                    break
                failures += 1
                WATCH_RESTARTS.labels("connection").inc()
                self._backoff(failures, exc)

    def _backoff(self, failures: int, exc: Exception) -> None:
        delay = min(self.settings.backoff_max_s, 0.5 * 2 ** min(failures, 10))
        delay *= random.uniform(0.8, 1.2)
        log.warning("watch interrupted (%s); retrying in %.1fs", exc, delay)
        self.stop.wait(delay)
