"""Observability for every process: structured logs; the /healthz, /readyz, /metrics server."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={...}`` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(level: str | None = None, fmt: str | None = None) -> None:
    level = (level or os.environ.get("KUBEVENTS_LOG_LEVEL") or "INFO").upper()
    fmt = fmt or os.environ.get("KUBEVENTS_LOG_FORMAT") or "json"
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "kafka", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


Check = Callable[[], tuple[bool, str]]  # () -> (ready?, why)


class HttpServer:
    """The one HTTP server of every kubevents process: /healthz (alive), /readyz (every check
    says ready, else 503 with the reasons of those that do not) and Prometheus /metrics. A
    pipeline adds its checks (tables recovered, destination blocked) and routes (the counts API)
    before ``start``."""

    def __init__(self, bind: str, port: int):
        self.bind, self.port = bind, port
        self.routes: list[web.RouteDef] = []
        self._checks: list[Check] = []
        self._runner: web.AppRunner | None = None

    def add_check(self, check: Check) -> None:
        self._checks.append(check)

    def ready(self) -> tuple[bool, str]:
        results = [check() for check in self._checks]
        failing = [why for ok, why in results if not ok]
        return not failing, "; ".join(failing or [why for _, why in results]) or "ready"

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        ok, why = self.ready()
        return web.json_response({"ready": ok, "reason": why}, status=200 if ok else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_routes(self.routes)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.bind, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
