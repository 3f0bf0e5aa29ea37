"""A sink pipeline's filters: which enriched events it writes. Every condition set must hold.

Evaluated on the enriched record (app/schemas/k8s-event.v1.json) before the sink sees it; an event
filtered out is acknowledged like a written one (it is not for this pipeline, now or later).
``reason`` is a regular expression searched in the reason (as kubernetes-event-exporter's rules
match: ``BackOff`` matches ``BackOff``; anchor it, ``^Failed``, to mean a prefix).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from app.errors import UserError
from app.settings import FilterSettings

SEVERITY = {"info": 0, "warning": 1, "critical": 2}


class Filter:
    def __init__(self, settings: FilterSettings, pipeline: str = ""):
        self.types = set(settings.types)
        self.namespaces = set(settings.namespaces)
        self.excluded = set(settings.exclude_namespaces)
        self.kinds = set(settings.kinds)
        self.min_severity = SEVERITY[settings.min_severity]
        try:
            self.reason = re.compile(settings.reason) if settings.reason else None
        except re.error as exc:
            raise UserError(
                f"pipeline {pipeline}: filters.reason {settings.reason!r} is not a regular"
                f" expression ({exc})"
            ) from None
        unknown = self.types - {"Normal", "Warning"}
        if unknown:
            raise UserError(
                f"pipeline {pipeline}: filters.types takes Normal and Warning, not"
                f" {', '.join(sorted(unknown))}"
            )

    @property
    def everything(self) -> bool:
        return not (
            self.types or self.namespaces or self.excluded or self.kinds or self.reason
        ) and (self.min_severity == 0)

    def matches(self, event: Mapping[str, Any]) -> bool:
        if self.types and event.get("type") not in self.types:
            return False
        namespace = event.get("namespace", "")
        if self.namespaces and namespace not in self.namespaces:
            return False
        if namespace in self.excluded:
            return False
        if self.kinds and (event.get("involved_object") or {}).get("kind") not in self.kinds:
            return False
        if self.reason is not None and not self.reason.search(event.get("reason") or ""):
            return False
        return SEVERITY.get(event.get("severity", "info"), 0) >= self.min_severity
