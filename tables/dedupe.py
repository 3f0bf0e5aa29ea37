"""Dedupe state: event uid -> newest version seen (rv, count, last_seen), expiring."""

from __future__ import annotations

from typing import Any

from app.settings import CoreSettings
from tables.expiring import ExpiringMap


def create(app: Any, core: CoreSettings) -> ExpiringMap:
    """The dedupe table, defined on ``app``."""
    return ExpiringMap(
        app,
        "dedupe",
        core.dedupe_ttl_s,
        help="Event uid -> newest version seen; entries expire after dedupe_ttl_s..2x.",
    )
