"""HTTP on a core worker: windowed counts as JSON, /healthz, /readyz and Prometheus /metrics.

``/counts/`` answers for the whole group: it asks every worker for its local keys
(``/counts/local/``) and merges, since each worker holds only its partitions' rows.
``/counts/key/?key=...`` is forwarded to the worker that owns the key's partition of the counts
topic (the table rows live there). ``at``/``ago`` pick the instant; default now.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import aiohttp
from aiokafka.partitioner import murmur2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.core_app import app
from tables.counts import WINDOWS, tumbling

FIELDS = {"reason": ("namespace", "reason", "type"), "object": ("namespace", "kind", "name", "uid")}


def parse_key(key: str) -> dict[str, str] | None:
    dim, _, rest = key.partition("|")
    names = FIELDS.get(dim)
    if names is None:
        return None
    parts = rest.split("|")
    if len(parts) != len(names):
        return None
    return {"dim": dim, **dict(zip(names, parts, strict=True))}


def _matches(row: dict[str, Any], query: Any) -> bool:
    for field in ("namespace", "type", "reason", "kind"):
        wanted = query.get(field)
        if wanted and row.get(field) != wanted:
            return False
    return True


def _at(query: Any) -> float:
    """The instant to read windows at: ``at`` (epoch s) or ``ago`` (s before now); default now."""
    if "at" in query:
        return float(query["at"])
    return time.time() - float(query.get("ago", 0))


def local_rows(query: Any) -> list[dict[str, Any]]:
    dim = query.get("dim", "reason")
    window = WINDOWS[query.get("window", "tumbling")]
    at = _at(query)
    rows = []
    for key in window.local_keys():
        row = parse_key(key)
        if row is None or row["dim"] != dim or not _matches(row, query):
            continue
        value = window.value(key, at)
        if value:
            rows.append({**row, "count": value})
    return rows


def top(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (-r["count"], r.get("namespace", ""), r.get("reason", "")))[
        :n
    ]


def _window_info(name: str, at: float) -> dict[str, Any]:
    window = WINDOWS[name]
    start, end = window.bounds(at)
    return {"name": name, "size_s": window.size, "step_s": window.step, "start": start, "end": end}


@app.page("/counts/local/")
async def counts_local(web: Any, request: Any) -> Any:
    return web.json({"rows": local_rows(request.query)})


@app.page("/counts/")
async def counts_all(web: Any, request: Any) -> Any:
    """Top-N over every worker of the group; filters: dim, window, namespace, type, reason."""
    query = dict(request.query)
    try:
        n = max(1, min(int(query.get("top", 20)), 1000))
    except ValueError:
        return web.json({"error": "top must be an integer"}, status=400)
    if query.get("dim", "reason") not in FIELDS or query.get("window", "tumbling") not in WINDOWS:
        return web.json({"error": "dim is reason|object, window is tumbling|hopping"}, status=400)
    me = str(app.conf.canonical_url).rstrip("/")
    hosts = {str(h).rstrip("/") for h in app.router.tables_metadata()} - {me}
    rows = local_rows(query)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

        async def fetch(host: str) -> list[dict[str, Any]]:
            async with session.get(f"{host}/counts/local/", params=query) as resp:
                body = await resp.json()
                return list(body["rows"])

        results = await asyncio.gather(*(fetch(h) for h in sorted(hosts)), return_exceptions=True)
    missing = []
    for host, result in zip(sorted(hosts), results, strict=True):
        if isinstance(result, BaseException):
            missing.append(host)
        else:
            rows.extend(result)
    return web.json(
        {
            "window": _window_info(query.get("window", "tumbling"), _at(query)),
            "dim": query.get("dim", "reason"),
            "rows": top(rows, n),
            "workers": 1 + len(hosts) - len(missing),
            "unreachable_workers": missing,
        }
    )


def owner_of(key: str) -> str | None:
    """URL of the worker holding ``key``'s rows: the owner of its counts-topic partition."""
    partitions = app.conf.topic_partitions
    partition = (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
    changelog = tumbling.table.changelog_topic.get_topic_name()
    for host, topics in app.router.tables_metadata().items():
        if partition in topics.get(changelog, []):
            return str(host).rstrip("/")
    return None


@app.page("/counts/key/")
async def counts_key(web: Any, request: Any) -> Any:
    """One key's counts, answered by the worker that owns it (forwarded if not this one)."""
    key = request.query.get("key")
    if not key or parse_key(key) is None:
        return web.json(
            {"error": "key=reason|<ns>|<reason>|<type> or object|<ns>|<kind>|<name>|<uid>"},
            status=400,
        )
    owner = owner_of(key)
    me = str(app.conf.canonical_url).rstrip("/")
    if owner is not None and owner != me and "forwarded" not in request.query:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            params = {**request.query, "forwarded": "1"}
            async with session.get(f"{owner}/counts/key/", params=params) as resp:
                return web.json(await resp.json(), status=resp.status)
    at = _at(request.query)
    return web.json(
        {
            "key": key,
            "worker": me,
            "tumbling": WINDOWS["tumbling"].value(key, at),
            "hopping": WINDOWS["hopping"].value(key, at),
        }
    )


@app.page("/metrics")
async def metrics(web: Any, request: Any) -> Any:
    # aiohttp wants the charset apart from the content type.
    return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])


@app.page("/healthz")
async def healthz(web: Any, request: Any) -> Any:
    return web.json({"status": "ok"})


@app.page("/readyz")
async def readyz(web: Any, request: Any) -> Any:
    recovering = not cast(Any, app.tables).recovery.completed.is_set()
    ready = app.consumer is not None and not recovering
    return web.json(
        {"ready": ready, "reason": "recovering tables" if recovering else "running"},
        status=200 if ready else 503,
    )
