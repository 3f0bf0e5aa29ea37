"""The Elasticsearch sink's pure parts: actions, index days, versions, outcomes, the template.
tests/integration/test_sink_elasticsearch.py proves them against the real servers."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from elastic_transport import ApiResponseMeta, ConnectionError, HttpHeaders, NodeConfig, TlsError
from elasticsearch import AuthenticationException, AuthorizationException, UnsupportedProductError

from app.errors import TransientError, UserError
from app.settings import ElasticsearchSinkSettings
from app.sinks.base import MAX_VERSION
from app.sinks.elasticsearch import (
    BadEvent,
    ElasticsearchSink,
    build_action,
    classify,
    encode,
    external_version,
    fallback_version,
    index_day,
    split,
    start_error,
    version_problem,
)
from app.sinks.elasticsearch_indices import daily_index_day, index_template
from tests.fixtures.enriched import core_v1, enriched, events_v1

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((ROOT / "app" / "schemas" / "k8s-event.v1.json").read_text())
NOW = datetime(2024, 5, 2, 8, 0, tzinfo=UTC)


def event(**changes: Any) -> dict[str, Any]:
    obj = events_v1(
        "e-1",
        "1300",
        event_time="2024-05-01T12:00:00.123456Z",
        count=7,
        last_observed="2024-05-01T12:30:00.654321Z",
    )
    return {**enriched(obj), **changes}


def test_the_factory_builds_records_of_the_public_schema() -> None:
    core = core_v1("c-1", "10", count=3, first="2024-05-01T12:00:00Z", last="2024-05-01T12:05:00Z")
    for record in (event(), enriched(core, labels={"app.kubernetes.io/name": "a.b"})):
        jsonschema.validate(record, SCHEMA)


def test_action_is_a_full_document_index_with_id_external_gte_version_and_source() -> None:
    ev = event()
    action = build_action(ev, "k8s-events", "prod-eu", NOW)
    assert action == {
        "_op_type": "index",
        "_index": "k8s-events-2024.05.01",
        "_id": "e-1",
        "version": 1300,
        "version_type": "external_gte",
        "_source": {**ev, "cluster": "prod-eu"},
    }
    assert ev["cluster"] == "cluster-a", "the event handed in is not changed"
    header, body = encode(action).splitlines()
    assert orjson.loads(header) == {
        "index": {
            "_index": "k8s-events-2024.05.01",
            "_id": "e-1",
            "version": 1300,
            "version_type": "external_gte",
        }
    }
    assert orjson.loads(body) == {**ev, "cluster": "prod-eu"}


def test_document_fields_named_like_bulk_metadata_stay_in_the_document() -> None:
    # The _source trap: without _source the helpers would pop these into the action line.
    ev = event(version="v2", pipeline="p", routing="r", _id="x")
    header, body = encode(build_action(ev, "k8s-events", "c", NOW)).splitlines()
    assert orjson.loads(body) == {**ev, "cluster": "c"}
    assert orjson.loads(header)["index"]["version"] == 1300
    assert "pipeline" not in orjson.loads(header)["index"]


def test_records_that_no_retry_can_write_are_bad_events() -> None:
    with pytest.raises(BadEvent, match="uid"):
        build_action(event(uid=""), "i", "c", NOW)
    with pytest.raises(BadEvent, match="JSON"):
        encode(build_action(event(extra=2**70), "i", "c", NOW))


def stamp(first: str, *, created: str | None, last: str | None = None) -> dict[str, Any]:
    ev = event(first_seen=first, last_seen=last or first, observed_at=None)
    ev["raw"] = {"metadata": {"creationTimestamp": created}} if created else {}
    return ev


@pytest.mark.parametrize(
    ("first", "created", "last", "day"),
    [
        # first occurrence, in UTC, to the last microsecond of the day
        ("2024-04-30T23:59:59.999999Z", "2024-05-01T00:00:00Z", None, date(2024, 4, 30)),
        # Go's zero time (never set): the API server's creationTimestamp
        ("0001-01-01T00:00:00.000000Z", "2024-05-01T10:00:00Z", None, date(2024, 5, 1)),
        # a node clock years ahead: the creationTimestamp
        ("2999-01-01T00:00:00.000000Z", "2024-05-01T10:00:00Z", None, date(2024, 5, 1)),
        # up to a day of clock skew is believed
        ("2024-05-02T09:00:00.000000Z", "2024-05-01T10:00:00Z", None, date(2024, 5, 2)),
        ("2024-05-02T10:00:01.000000Z", "2024-05-01T10:00:00Z", None, date(2024, 5, 1)),
        # without a creationTimestamp: last_seen, bounded by the clock
        ("0001-01-01T00:00:00.000000Z", None, "2024-04-29T10:00:00.000000Z", date(2024, 4, 29)),
        ("2024-05-03T07:00:00.000000Z", None, None, date(2024, 5, 3)),
    ],
)
def test_index_day_is_the_first_occurrence_unless_absurd(
    first: str, created: str | None, last: str | None, day: date
) -> None:
    assert index_day(stamp(first, created=created, last=last), NOW) == day


def test_one_uid_keeps_its_index_day_across_versions_and_time() -> None:
    """A bad first_seen falls back to a field that does not move: later versions (other
    last_seen) and redeliveries a year later land in the same index."""
    versions = [
        stamp("0001-01-01T00:00:00.000000Z", created="2024-05-01T10:00:00Z", last=last)
        for last in ("2024-05-01T10:00:00.000000Z", "2024-05-09T10:00:00.000000Z")
    ]
    later = datetime(2025, 5, 1, tzinfo=UTC)
    assert {index_day(v, now) for v in versions for now in (NOW, later)} == {date(2024, 5, 1)}


def test_an_event_without_any_plausible_time_is_a_bad_event() -> None:
    ev = stamp("0001-01-01T00:00:00.000000Z", created=None, last="1999-01-01T00:00:00.000000Z")
    with pytest.raises(BadEvent, match="plausible"):
        index_day(ev, NOW)
    ev["observed_at"] = "2024-05-01T12:00:00.000000Z"
    assert index_day(ev, NOW) == date(2024, 5, 1)


def test_daily_index_names_are_matched_exactly() -> None:
    assert daily_index_day("k8s-events", "k8s-events-2024.05.01") == date(2024, 5, 1)
    for other in (
        "k8s-events-prod-2024.05.01",  # another pipeline's
        "k8s-events-2024.05.01-restored",
        "k8s-events-2024.13.01",
        "k8s-events",
        "k8s-eventsx-2024.05.01",
    ):
        assert daily_index_day("k8s-events", other) is None, other


def test_numeric_resource_versions_are_the_external_version() -> None:
    assert external_version(event(resource_version="42")) == 42
    assert external_version(event(resource_version=str(MAX_VERSION))) == MAX_VERSION


def test_fallback_versions_grow_with_every_newer_version_of_an_event() -> None:
    """The sequence a non-numeric resourceVersion event goes through: repeats in the same
    second (core/v1 timestamps), then later; each newer version gets a higher number."""
    versions = [
        ("2024-05-01T12:00:00.000000Z", 1),
        ("2024-05-01T12:00:00.000000Z", 2),
        ("2024-05-01T12:00:00.000000Z", 3),
        ("2024-05-01T12:00:00.000001Z", 3),
        ("2024-05-01T12:00:05.000000Z", 4),
        ("2024-05-01T12:00:05.000000Z", 5000),  # past the count slots: still not lower
        ("2024-05-02T00:00:00.000000Z", 5001),
    ]
    numbers = [
        external_version(event(resource_version="opaque-token", last_seen=t, count=c))
        for t, c in versions
    ]
    assert all(a < b for a, b in pairwise(numbers)), numbers
    # A redelivery of the same version gets the same number: external_gte accepts it.
    assert external_version(event(resource_version="x", count=3)) == external_version(
        event(resource_version="x", count=3)
    )
    # Too large for a long: the fallback too.
    big = event(resource_version=str(MAX_VERSION + 1))
    assert external_version(big) == fallback_version(big)


@pytest.mark.parametrize(
    "last", ["0001-01-01T00:00:00.000000Z", "9999-12-31T23:59:59.999999Z", "garbage"]
)
def test_fallback_versions_stay_within_what_elasticsearch_takes(last: str) -> None:
    assert 0 <= fallback_version(event(last_seen=last, count="not-a-number")) <= MAX_VERSION


def error(kind: str, reason: str = "why") -> dict[str, Any]:
    return {"type": kind, "reason": reason}


@pytest.mark.parametrize(
    ("item", "outcome"),
    [
        ({"status": 201}, "written"),
        ({"status": 200}, "written"),
        ({"status": 409, "error": error("version_conflict_engine_exception")}, "stale"),
        ({"status": 429, "error": error("es_rejected_execution_exception")}, "retry"),
        ({"status": 500}, "retry"),
        ({"status": 503, "error": error("unavailable_shards_exception")}, "retry"),
        ({"status": 400, "error": error("document_parsing_exception")}, "rejected"),
        ({"status": 400, "error": error("mapper_parsing_exception")}, "rejected"),
        ({"status": 400, "error": error("strict_dynamic_mapping_exception")}, "rejected"),
        ({"status": 400, "error": error("illegal_argument_exception")}, "rejected"),
        ({"status": 400, "error": error("action_request_validation_exception")}, "rejected"),
        ({"status": 400, "error": error("invalid_alias_name_exception")}, "retry"),
        ({"status": 403, "error": error("cluster_block_exception")}, "retry"),
        ({"status": 404, "error": error("index_not_found_exception")}, "retry"),
        ({"status": 401, "error": error("security_exception")}, "retry"),
    ],
)
def test_item_outcomes(item: dict[str, Any], outcome: str) -> None:
    assert classify(item)[0] == outcome


def test_a_rejection_carries_elasticsearchs_own_words() -> None:
    item = {
        "status": 400,
        "error": {
            "type": "document_parsing_exception",
            "reason": "failed to parse field [count] of type [long]",
            "caused_by": {"type": "illegal_argument_exception", "reason": "For input string"},
        },
    }
    assert classify(item) == (
        "rejected",
        "400 document_parsing_exception: failed to parse field [count] of type [long]"
        " (caused by illegal_argument_exception: For input string)",
    )


@pytest.mark.parametrize(
    ("number", "ok"),
    [
        ("8.0.0", True),
        ("8.19.21", True),
        ("9.1.5", True),
        ("7.17.29", False),
        ("6.8.23", False),
        ("10.0.0", False),
        ("2.11.0-SNAPSHOT", False),
        ("unknown", False),
    ],
)
def test_server_versions(number: str, ok: bool) -> None:
    problem = version_problem(number)
    assert (problem is None) == ok
    if problem is not None:
        assert "\n" not in problem
        assert "Elasticsearch 8 or 9" in problem


def api_error(cls: type[Exception], status: int, body: Any) -> Exception:
    meta = ApiResponseMeta(status, "1.1", HttpHeaders(), 0.01, NodeConfig("http", "h", 9200))
    return cls(message=str(status), meta=meta, body=body)  # type: ignore[call-arg]


def test_start_errors_say_what_to_fix() -> None:
    denied = {"error": {"type": "security_exception", "reason": "action [x] is unauthorized"}}
    cases: list[tuple[Exception, type[Exception], str]] = [
        (api_error(AuthenticationException, 401, {}), UserError, "KUBEVENTS_ELASTICSEARCH_PASS"),
        (api_error(AuthorizationException, 403, denied), UserError, "is unauthorized"),
        (api_error(UnsupportedProductError, 200, {}), UserError, "OpenSearch"),
        (TlsError("self-signed"), UserError, "KUBEVENTS_ELASTICSEARCH_CA_FILE"),
        (ConnectionError("refused"), TransientError, "unreachable"),
    ]
    for exc, kind, words in cases:
        out = start_error(exc)
        assert isinstance(out, kind), (exc, out)
        assert words in str(out) and "\n" not in str(out)


def test_template_maps_every_field_of_the_schema() -> None:
    template = index_template("k8s-events")
    mappings = template["template"]["mappings"]
    assert template["index_patterns"] == ["k8s-events-*"]
    assert template["template"]["aliases"] == {"k8s-events": {}}
    assert mappings["dynamic"] is False
    assert set(mappings["properties"]) == set(SCHEMA["properties"])
    props = mappings["properties"]
    assert props["labels"]["type"] == "flattened"
    assert props["raw"] == {"type": "object", "enabled": False}
    assert props["message"]["type"] == "text"
    assert props["message"]["fields"]["keyword"]["type"] == "keyword"
    assert {props[f]["type"] for f in ("count", "count_delta")} == {"long"}
    for field in ("first_seen", "last_seen", "observed_at"):
        assert props[field] == {"type": "date_nanos", "ignore_malformed": True}
    for field in ("uid", "namespace", "reason", "type", "severity", "watch_type"):
        assert props[field]["type"] == "keyword"
    assert template["template"]["settings"]["number_of_shards"] == 1


def test_overlapping_index_names_get_different_priorities() -> None:
    assert index_template("k8s-events-prod")["priority"] > index_template("k8s-events")["priority"]


def test_split_shares_a_batch_between_workers_and_caps_request_bytes() -> None:
    actions = [(i, b"x" * 10) for i in range(7)]
    assert [[i for i, _ in r] for r in split(actions, 3, 1000)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [[i for i, _ in r] for r in split(actions, 1, 25)] == [[0, 1], [2, 3], [4, 5], [6]]
    assert split([], 2, 1000) == []


def test_cluster_name_overrides_the_events_cluster() -> None:
    plain = ElasticsearchSink(ElasticsearchSinkSettings(url="http://x:9200"), "default")
    named = ElasticsearchSink(
        ElasticsearchSinkSettings(url="http://x:9200", cluster_name="prod-eu"), "default"
    )
    assert plain._cluster(event()) == "cluster-a"
    assert plain._cluster(event(cluster="")) == "default"
    assert named._cluster(event()) == "prod-eu"


@pytest.mark.parametrize("sniff", [False, True])
def test_sniffing_is_off_unless_asked_for(sniff: bool) -> None:
    """Sniffed publish addresses bypass a load balancer or Service in front of the cluster (and
    the client turns periodic sniffing on by itself whenever a sniffing delay is passed)."""
    options = ElasticsearchSinkSettings(
        url="http://es.example:9200", index="k8s-events", sniff=sniff
    )
    transport = ElasticsearchSink(options, "c")._connect().transport
    assert transport._sniff_on_start is sniff
    assert transport._sniff_before_requests is sniff
    assert transport._sniff_on_node_failure is sniff
