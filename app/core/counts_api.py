"""The counts API of a core worker: windowed counts as JSON, on the worker's HTTP server.

Each worker holds the count rows of the raw-topic partitions it owns (tables/counts.py), so
``/counts/`` and ``/counts/key/?key=...`` ask every worker of the group for its local totals
(``/counts/local/``), add them up per key and answer for the whole group; a worker that does not
answer is listed in ``unreachable_workers``. ``at``/``ago`` pick the instant; default now.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import aiohttp
from aiohttp import web

from app.obs import HttpServer
from app.settings import Settings
from tables.counts import Window

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
        # Object rows count Warnings only (their key has no type): type=Warning keeps them all,
        # any other type none.
        have = "Warning" if field == "type" and row["dim"] == "object" else row.get(field)
        if wanted and have != wanted:
            return False
    return True


def _at(query: Any) -> float:
    """The instant to read windows at: ``at`` (epoch s) or ``ago`` (s before now); default now."""
    if "at" in query:
        return float(query["at"])
    return time.time() - float(query.get("ago", 0))


class Counts:
    """The counts API of one core app: its windows, read here and on every other worker."""

    def __init__(self, app: Any, raw_topic: str, windows: dict[str, Window]):
        self.app, self.raw_topic, self.windows = app, raw_topic, windows

    def active_partitions(self) -> set[int]:
        raw = self.raw_topic
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == raw}

    def local_rows(self, query: Any) -> list[dict[str, Any]]:
        dim = query.get("dim", "reason")
        window = self.windows[query.get("window", "tumbling")]
        only = query.get("key")
        rows = []
        for key, value in window.local_values(self.active_partitions(), _at(query)).items():
            row = parse_key(key)
            if row is None or (only and key != only):
                continue
            if not only and (row["dim"] != dim or not _matches(row, query)):
                continue
            rows.append({**row, "key": key, "count": value})
        return rows

    async def group_rows(
        self, query: dict[str, str]
    ) -> tuple[list[dict[str, Any]], int, list[str]]:
        """Rows of every worker of the group, added up per key; (rows, workers, unreachable)."""
        query = {**query, "at": str(_at(query))}  # one instant for every worker
        me = str(self.app.conf.canonical_url).rstrip("/")
        hosts = sorted({str(h).rstrip("/") for h in self.app.router.tables_metadata()} - {me})
        totals: dict[str, dict[str, Any]] = {}

        def merge(rows: list[dict[str, Any]]) -> None:
            for row in rows:
                seen = totals.get(row["key"])
                if seen is None:
                    totals[row["key"]] = dict(row)
                else:
                    seen["count"] += row["count"]

        merge(self.local_rows(query))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

            async def fetch(host: str) -> list[dict[str, Any]]:
                async with session.get(f"{host}/counts/local/", params=query) as resp:
                    body = await resp.json()
                    return list(body["rows"])

            results = await asyncio.gather(*(fetch(h) for h in hosts), return_exceptions=True)
        missing = []
        for host, result in zip(hosts, results, strict=True):
            if isinstance(result, BaseException):
                missing.append(host)
            else:
                merge(result)
        return list(totals.values()), 1 + len(hosts) - len(missing), missing


def top(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (-r["count"], r.get("namespace", ""), r.get("reason", "")))[
        :n
    ]


def _window_info(window: Window, at: float) -> dict[str, Any]:
    name = window.name
    start, end = window.bounds(at)
    return {"name": name, "size_s": window.size, "step_s": window.step, "start": start, "end": end}


def routes(counts: Counts) -> list[web.RouteDef]:
    """The counts API, served by the worker's one HTTP server (app/obs.py)."""

    async def counts_local(request: web.Request) -> web.Response:
        return web.json_response({"rows": counts.local_rows(request.query)})

    async def counts_all(request: web.Request) -> web.Response:
        """Top-N over every worker of the group; filters: dim, window, namespace, type, reason."""
        query = dict(request.query)
        try:
            n = max(1, min(int(query.get("top", 20)), 1000))
        except ValueError:
            return web.json_response({"error": "top must be an integer"}, status=400)
        if (
            query.get("dim", "reason") not in FIELDS
            or query.get("window", "tumbling") not in counts.windows
        ):
            return web.json_response(
                {"error": "dim is reason|object, window is tumbling|hopping"}, status=400
            )
        rows, workers, missing = await counts.group_rows(query)
        return web.json_response(
            {
                "window": _window_info(counts.windows[query.get("window", "tumbling")], _at(query)),
                "dim": query.get("dim", "reason"),
                "rows": top(rows, n),
                "workers": workers,
                "unreachable_workers": missing,
            }
        )

    async def counts_key(request: web.Request) -> web.Response:
        """One key's counts in both windows, added up over every worker of the group."""
        key = request.query.get("key")
        if not key or parse_key(key) is None:
            return web.json_response(
                {"error": "key=reason|<ns>|<reason>|<type> or object|<ns>|<kind>|<name>|<uid>"},
                status=400,
            )
        answer: dict[str, Any] = {"key": key}
        for name in ("tumbling", "hopping"):
            query = {**request.query, "window": name}
            rows, workers, missing = await counts.group_rows(query)
            answer[name] = sum(r["count"] for r in rows)
            answer["workers"], answer["unreachable_workers"] = workers, missing
        return web.json_response(answer)

    return [
        web.get("/counts/local/", counts_local),
        web.get("/counts/", counts_all),
        web.get("/counts/key/", counts_key),
    ]


def register(app: Any, settings: Settings, windows: dict[str, Window], http: HttpServer) -> None:
    """Serve the counts API on the worker's HTTP server; ready once the tables are recovered."""
    http.routes.extend(routes(Counts(app, settings.topics.raw, windows)))

    def recovered() -> tuple[bool, str]:
        if not cast(Any, app.tables).recovery.completed.is_set():
            return False, "recovering tables"
        return True, "tables recovered"

    http.add_check(recovered)
