from __future__ import annotations

from typing import Any

import pytest

from app.model.envelope import DecodeError, RawEvent
from app.model.normalize import normalize, safe_label_key, severity, to_record
from app.model.timeutil import format_time
from tests.fixtures.events import EVENTS_V1, core_event


def raw(obj: dict[str, Any], watch_type: str = "ADDED", cluster: str | None = "c1") -> RawEvent:
    return RawEvent(watch_type, "watch", "2024-05-01T12:05:01.000000Z", cluster, "p1", obj)


def test_core_v1_fields() -> None:
    ev = normalize(raw(core_event()), default_cluster="dflt")
    assert (ev.uid, ev.cluster, ev.namespace, ev.api_version) == ("e-1111", "c1", "shop", "v1")
    assert ev.involved.kind == "Pod" and ev.involved.uid == "pod-uid-1"
    assert ev.involved.field_path == "spec.containers{web}"
    assert (ev.type, ev.reason, ev.count) == ("Warning", "BackOff", 3)
    assert ev.message.startswith("Back-off")
    assert (ev.reporting_component, ev.reporting_instance) == ("kubelet", "node-1")
    assert format_time(ev.first_seen) == "2024-05-01T12:00:00.000000Z"
    assert format_time(ev.last_seen) == "2024-05-01T12:05:00.000000Z"


def test_events_k8s_io_v1_fields() -> None:
    ev = normalize(raw(EVENTS_V1, cluster=None), default_cluster="dflt")
    assert ev.api_version == "events.k8s.io/v1" and ev.cluster == "dflt"
    assert ev.involved.name == "web-2" and ev.message == "Pulling image nginx"
    assert ev.count == 7, "series.count wins"
    assert format_time(ev.first_seen) == "2024-05-01T12:00:00.123456Z"
    assert format_time(ev.last_seen) == "2024-05-01T12:30:00.654321Z"
    assert ev.reporting_component == "k8s.io/kubelet" and ev.action == "Pulling"


def test_core_series_count_beats_legacy_count() -> None:
    obj = core_event(series={"count": 9, "lastObservedTime": "2024-05-01T13:00:00.000001Z"})
    ev = normalize(raw(obj), default_cluster="c")
    assert ev.count == 9
    assert format_time(ev.last_seen) == "2024-05-01T13:00:00.000001Z"


def test_missing_count_is_one_and_missing_times_fall_back_to_creation() -> None:
    obj = core_event(count=None, firstTimestamp=None, lastTimestamp=None)
    ev = normalize(raw(obj), default_cluster="c")
    assert ev.count == 1
    assert format_time(ev.first_seen) == format_time(ev.last_seen) == "2024-05-01T12:00:00.000000Z"


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"kind": "Pod", "metadata": {"uid": "x"}}, "not an Event"),
        ({"metadata": {"uid": "x"}}, "no involvedObject"),
        (core_event(meta_uid=""), "without metadata.uid"),
        (
            core_event(firstTimestamp=None, lastTimestamp=None, meta_creationTimestamp=None),
            "without any timestamp",
        ),
    ],
)
def test_bad_events_raise_with_reason(obj: dict[str, Any], reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        normalize(raw(obj), default_cluster="c")


def test_severity_and_label_keys() -> None:
    assert severity(normalize(raw(core_event()), default_cluster="c")) == "warning"
    assert severity(normalize(raw(core_event(reason="Evicted")), default_cluster="c")) == "critical"
    assert severity(normalize(raw(EVENTS_V1), default_cluster="c")) == "info"
    assert safe_label_key("app.kubernetes.io/name") == "app_kubernetes_io_name"


def test_record_carries_root_owner_and_raw() -> None:
    ev = normalize(raw(core_event()), default_cluster="c")
    owners = [
        {"kind": "ReplicaSet", "name": "web-7d4b9c", "uid": "rs", "api_version": "apps/v1"},
        {"kind": "Deployment", "name": "web", "uid": "d", "api_version": "apps/v1"},
    ]
    rec = to_record(
        ev,
        count_delta=2,
        labels={"app.kubernetes.io/name": "web"},
        owners=owners,
        enrichment_status="ok",
        enrichment_error=None,
    )
    assert rec["root_owner"] == {"kind": "Deployment", "name": "web"}
    assert rec["labels"] == {"app_kubernetes_io_name": "web"}
    assert rec["raw"]["metadata"]["uid"] == "e-1111" and rec["count_delta"] == 2


def test_go_zero_time_keeps_a_four_digit_year() -> None:
    from datetime import UTC, datetime

    assert format_time(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000000Z"
    assert (
        format_time(datetime(999, 5, 6, 7, 8, 9, 10, tzinfo=UTC)) == "0999-05-06T07:08:09.000010Z"
    )
