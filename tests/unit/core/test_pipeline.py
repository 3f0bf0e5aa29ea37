"""The core pipeline's decisions end to end without a broker; records checked against the schema."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema

from app.core.enrich import Enricher
from app.core.process import Origin, Result, process
from app.model.envelope import build_raw
from app.settings import CoreSettings
from tests.fixtures.events import EVENTS_V1, core_event

SCHEMA = json.loads(Path("schemas/k8s-event.v1.json").read_text())


class Run:
    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.enricher = Enricher(CoreSettings(), None)
        self.offset = 0

    def __call__(self, value: bytes | None) -> Result:
        self.offset += 1
        return asyncio.run(
            process(
                value,
                Origin("k8s-events-raw", 0, self.offset, b"k"),
                max_bytes=1 << 20,
                default_cluster="c",
                seen_get=self.state.get,
                seen_set=self.state.__setitem__,
                enricher=self.enricher,
            )
        )


def raw(obj: dict[str, Any], watch_type: str = "ADDED") -> bytes:
    return build_raw(obj, watch_type=watch_type, via="watch", cluster="c1", producer="p")[1]


def test_stream_with_duplicates_relists_and_growth() -> None:
    run = Run()
    first = run(raw(core_event()))
    again = run(raw(core_event()))  # a re-list
    grown = run(raw(core_event(meta_resourceVersion="1300", count=5), "MODIFIED"))
    late = run(raw(core_event(meta_resourceVersion="1250", count=4), "MODIFIED"))
    assert [o.topic for o in first.outputs] == ["enriched"]
    assert [i.delta for i in first.increments] == [3, 3], "a new event adds its whole count"
    assert again == Result([], []) and late == Result([], [])
    record = json.loads(grown.outputs[0].value)
    assert record["count"] == 5 and record["count_delta"] == 2
    assert {i.key for i in grown.increments} == {
        "reason|shop|BackOff|Warning",
        "object|shop|Pod|web-7d4b9c-abcde|pod-uid-1",
    }
    assert all(i.delta == 2 for i in grown.increments)
    assert all(i.at == 1714565100.0 for i in grown.increments), "windowed by lastTimestamp"


def test_records_validate_against_the_published_schema() -> None:
    run = Run()
    for obj in (core_event(), EVENTS_V1):
        out = run(raw(obj)).outputs
        record = json.loads(out[0].value)
        jsonschema.validate(record, SCHEMA)
        assert record["enrichment"]["status"] == "skipped"
        involved = obj.get("involvedObject", obj.get("regarding"))
        assert involved is not None
        assert out[0].key == involved["uid"].encode()


def test_normal_events_count_by_reason_only() -> None:
    out = Run()(raw(EVENTS_V1))
    assert [i.key for i in out.increments] == ["reason|shop|Pulling|Normal"]


def test_bad_input_goes_to_dlq_with_reason_bytes_and_origin() -> None:
    run = Run()
    out = run(b"\x00garbage").outputs
    assert [o.topic for o in out] == ["dlq"]
    doc = json.loads(out[0].value)
    assert doc["reason"].startswith("not JSON")
    assert doc["source"] == {"topic": "k8s-events-raw", "partition": 0, "offset": 1}
    import base64

    assert base64.b64decode(doc["value_base64"]) == b"\x00garbage"
    no_uid = run(raw(core_event(meta_uid=None))).outputs
    assert json.loads(no_uid[0].value)["reason"] == "event without metadata.uid"
