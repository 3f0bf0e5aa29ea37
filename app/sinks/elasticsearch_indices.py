"""The daily indices an Elasticsearch pipeline writes to: their template, mappings and retention.

kubevents owns one composable index template per pipeline index (``kubevents-<index>``), put at
every start of the sink (app/sinks/elasticsearch.py), so an upgraded kubevents upgrades it: explicit
mappings for every field of the k8s-event.v1 schema, and the read alias ``<index>`` added to each
daily index ``<index>-YYYY.MM.DD``. Retention deletes whole daily indices older than N days, chosen
by the day in their name, and only this pipeline's (never ``<index>-prod-YYYY.MM.DD``).
"""

from __future__ import annotations

import functools
import logging
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

from elasticsearch import AsyncElasticsearch

LOG = logging.getLogger(__name__)

TEMPLATE_VERSION = 1
RETENTION_EVERY_S = 3600.0


# ignore_above everywhere: a keyword longer than 32766 bytes would reject the whole document
# ("immense term"); an over-long value stays in _source, only unsearchable as a keyword.
KEYWORD: dict[str, Any] = {"type": "keyword", "ignore_above": 1024}
# date_nanos keeps the microseconds for sorting (date would round to milliseconds), but cannot hold
# dates before 1970: ignore_malformed keeps a document with first_seen 0001-01-01 (Go's zero
# time) instead of rejecting it; the value stays in _source, it is only not indexed.
DATE: dict[str, Any] = {"type": "date_nanos", "ignore_malformed": True}


def _keywords(*names: str) -> dict[str, Any]:
    return {"properties": {name: KEYWORD for name in names}}


MAPPINGS: dict[str, Any] = {
    # A field added to the schema later must not reject documents (strict would) nor grow the
    # mapping by itself (true would): it is stored in _source and mapped by a template upgrade.
    "dynamic": False,
    "properties": {
        "schema_version": {"type": "integer"},
        "uid": KEYWORD,
        "cluster": KEYWORD,
        "namespace": KEYWORD,
        "name": KEYWORD,
        "resource_version": KEYWORD,
        "api_version": KEYWORD,
        "watch_type": KEYWORD,
        "involved_object": _keywords(
            "kind", "name", "namespace", "uid", "api_version", "field_path"
        ),
        "type": KEYWORD,
        "reason": KEYWORD,
        "message": {"type": "text", "fields": {"keyword": KEYWORD}},
        "action": KEYWORD,
        "reporting_component": KEYWORD,
        "reporting_instance": KEYWORD,
        "count": {"type": "long"},
        "count_delta": {"type": "long"},
        "first_seen": DATE,
        "last_seen": DATE,
        "observed_at": DATE,
        "producer": KEYWORD,
        "severity": KEYWORD,
        # Label keys are user data: under object mapping "app" then "app.kubernetes.io/name" is
        # a mapping conflict, and every new key a new field. flattened takes any key as one field.
        "labels": {"type": "flattened", "ignore_above": 1024},
        # object, not nested: root_owner answers "which Deployment"; nested would cost a hidden
        # document per owner for queries that pair kind and name inside one owner.
        "owners": _keywords("kind", "name", "uid", "api_version"),
        "root_owner": _keywords("kind", "name"),
        "enrichment": _keywords("status", "error"),
        # The Event as the API server sent it: unbounded keys, kept in _source, never parsed.
        "raw": {"type": "object", "enabled": False},
    },
}


def template_name(index: str) -> str:
    return f"kubevents-{index}"


def index_template(index: str) -> dict[str, Any]:
    """The composable index template of ``index``'s daily indices (put_index_template's
    arguments)."""
    return {
        "name": template_name(index),
        "index_patterns": [f"{index}-*"],
        # Two kubevents indices where one name prefixes the other (k8s-events, k8s-events-prod)
        # have overlapping patterns, which Elasticsearch refuses at equal priority; the longer,
        # more specific name wins. Above 100, the priority of Elastic's built-in templates.
        "priority": 200 + len(index),
        "version": TEMPLATE_VERSION,
        "meta": {"managed_by": "kubevents", "schema": "k8s-event.v1"},
        "template": {
            "settings": {
                "number_of_shards": 1,
                # One replica once a second data node exists, none before: a fixed replica on a
                # single-node cluster stays unassigned and the cluster yellow forever.
                "auto_expand_replicas": "0-1",
                # Events are kept forever and mostly read rarely: disk over CPU.
                "codec": "best_compression",
            },
            "mappings": MAPPINGS,
            "aliases": {index: {}},
        },
    }


@functools.lru_cache(maxsize=256)  # a few days per index: formatting the date each time cost ~2 us
def index_name(index: str, day: date) -> str:
    return f"{index}-{day:%Y.%m.%d}"


_DAILY = re.compile(r"-(\d{4})\.(\d{2})\.(\d{2})$")


def daily_index_day(index: str, name: str) -> date | None:
    """The day of ``name`` when it is one of ``index``'s daily indices (exactly
    ``<index>-YYYY.MM.DD``: never ``<index>-prod-YYYY.MM.DD``, another pipeline's), else None."""
    if not name.startswith(index + "-"):
        return None
    match = _DAILY.match(name, len(index))
    if match is None or match.end() != len(name):
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


async def delete_older_indices(client: AsyncElasticsearch, index: str, days: int) -> None:
    """Delete ``index``'s daily indices older than ``days``, by their names' day."""
    cutoff = datetime.now(UTC).date() - timedelta(days=days)
    found = await client.indices.get_alias(index=f"{index}-*", expand_wildcards="open,closed")
    old = sorted(
        name
        for name in found.body
        if (day := daily_index_day(index, name)) is not None and day < cutoff
    )
    for start in range(0, len(old), 50):  # a URL of a few KB at most
        names = old[start : start + 50]
        await client.indices.delete(index=",".join(names), ignore_unavailable=True)
        LOG.info("retention: deleted %s", ", ".join(names))
