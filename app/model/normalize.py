"""core/v1 and events.k8s.io/v1 Events become one typed record (DESIGN decision 4).

The two APIs name the same facts differently (involvedObject/regarding, message/note, count/
series.count, firstTimestamp/eventTime ...). Everything downstream sees ``NormalizedEvent`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.model.envelope import DecodeError, RawEvent, api_of
from app.model.timeutil import format_time, parse_time

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class InvolvedObject:
    kind: str
    name: str
    namespace: str
    uid: str
    api_version: str
    field_path: str

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "api_version": self.api_version,
            "field_path": self.field_path,
        }


@dataclass(frozen=True, slots=True)
class NormalizedEvent:
    uid: str
    cluster: str
    namespace: str
    name: str
    resource_version: str
    api_version: str
    watch_type: str
    involved: InvolvedObject
    type: str
    reason: str
    message: str
    action: str
    reporting_component: str
    reporting_instance: str
    count: int
    first_seen: datetime
    last_seen: datetime
    observed_at: str | None
    producer: str | None
    raw: dict[str, Any]


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def normalize(raw: RawEvent, *, default_cluster: str) -> NormalizedEvent:
    """Build the normalised event or raise DecodeError with the reason."""
    obj = raw.obj
    kind = obj.get("kind")
    if kind not in (None, "Event"):
        raise DecodeError(f"not an Event: kind is {kind!r}")
    api = api_of(obj)
    new_api = api == "events.k8s.io/v1"
    involved_raw = obj.get("regarding" if new_api else "involvedObject")
    if not isinstance(involved_raw, dict):
        raise DecodeError("not an Event: no involvedObject/regarding")
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not _str(meta.get("uid")):
        raise DecodeError("event without metadata.uid")

    series: dict[str, Any] = obj["series"] if isinstance(obj.get("series"), dict) else {}
    source: dict[str, Any]
    if new_api:
        source = obj.get("deprecatedSource") or {}
        message = _str(obj.get("note"))
        legacy_count = _int(obj.get("deprecatedCount"))
        first = parse_time(obj.get("deprecatedFirstTimestamp"))
        last = parse_time(obj.get("deprecatedLastTimestamp"))
        component = _str(obj.get("reportingController")) or _str(source.get("component"))
    else:
        source = obj.get("source") or {}
        message = _str(obj.get("message"))
        legacy_count = _int(obj.get("count"))
        first = parse_time(obj.get("firstTimestamp"))
        last = parse_time(obj.get("lastTimestamp"))
        component = _str(obj.get("reportingComponent")) or _str(source.get("component"))
    instance = _str(obj.get("reportingInstance")) or _str(source.get("host"))

    event_time = parse_time(obj.get("eventTime"))
    created = parse_time(meta.get("creationTimestamp"))
    series_count = _int(series.get("count"))
    series_last = parse_time(series.get("lastObservedTime"))

    first_seen = first or event_time or created or last or series_last
    last_seen = series_last or last or event_time or first_seen
    if first_seen is None or last_seen is None:
        raise DecodeError("event without any timestamp")
    count = max(series_count or 0, legacy_count or 0, 1)

    namespace = _str(meta.get("namespace"))
    return NormalizedEvent(
        uid=meta["uid"],
        cluster=raw.cluster or default_cluster,
        namespace=namespace,
        name=_str(meta.get("name")),
        resource_version=_str(meta.get("resourceVersion")),
        api_version="events.k8s.io/v1" if new_api else "v1",
        watch_type=raw.watch_type,
        involved=InvolvedObject(
            kind=_str(involved_raw.get("kind")),
            name=_str(involved_raw.get("name")),
            namespace=_str(involved_raw.get("namespace")) or namespace,
            uid=_str(involved_raw.get("uid")),
            api_version=_str(involved_raw.get("apiVersion")),
            field_path=_str(involved_raw.get("fieldPath")),
        ),
        type=_str(obj.get("type")) or "Normal",
        reason=_str(obj.get("reason")),
        message=message,
        action=_str(obj.get("action")),
        reporting_component=component,
        reporting_instance=instance,
        count=count,
        first_seen=min(first_seen, last_seen),
        last_seen=last_seen,
        observed_at=raw.observed_at,
        producer=raw.producer,
        raw=obj,
    )


# Reasons whose Warning means something is broken now, not merely noteworthy.
CRITICAL_REASONS = frozenset(
    {"OOMKilling", "OOMKilled", "SystemOOM", "Evicted", "NodeNotReady", "FailedKillPod", "Rebooted"}
)


def severity(event: NormalizedEvent) -> str:
    if event.type == "Warning":
        return "critical" if event.reason in CRITICAL_REASONS else "warning"
    return "info"


def safe_label_key(key: str) -> str:
    """Label keys as Elasticsearch field names: dots would build object paths that collide
    (``app`` keyword vs ``app.kubernetes.io/name`` object), slashes are awkward in queries."""
    return key.replace(".", "_").replace("/", "_")


def to_record(
    event: NormalizedEvent,
    *,
    count_delta: int,
    labels: dict[str, str],
    owners: list[dict[str, str]],
    enrichment_status: str,
    enrichment_error: str | None,
) -> dict[str, Any]:
    """The enriched record published on the public topic (schemas/k8s-event.v1.json)."""
    root = owners[-1] if owners else None
    return {
        "schema_version": SCHEMA_VERSION,
        "uid": event.uid,
        "cluster": event.cluster,
        "namespace": event.namespace,
        "name": event.name,
        "resource_version": event.resource_version,
        "api_version": event.api_version,
        "watch_type": event.watch_type,
        "involved_object": event.involved.as_dict(),
        "type": event.type,
        "reason": event.reason,
        "message": event.message,
        "action": event.action,
        "reporting_component": event.reporting_component,
        "reporting_instance": event.reporting_instance,
        "count": event.count,
        "count_delta": count_delta,
        "first_seen": format_time(event.first_seen),
        "last_seen": format_time(event.last_seen),
        "observed_at": event.observed_at,
        "producer": event.producer,
        "severity": severity(event),
        "labels": {safe_label_key(k): v for k, v in labels.items()},
        "owners": owners,
        "root_owner": {"kind": root["kind"], "name": root["name"]} if root else None,
        "enrichment": {"status": enrichment_status, "error": enrichment_error},
        "raw": event.raw,
    }
