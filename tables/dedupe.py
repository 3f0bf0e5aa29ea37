"""Dedupe state: event uid -> newest version seen (rv, count, last_seen), expiring."""

from __future__ import annotations

from app.core_app import app, settings
from tables.expiring import ExpiringMap

seen = ExpiringMap(
    app,
    "dedupe",
    settings.core.dedupe_ttl_s,
    help="Event uid -> newest version seen; entries expire after dedupe_ttl_s..2x.",
)
