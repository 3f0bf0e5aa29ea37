"""The core pipeline's decisions end to end without a broker; records checked against the schema."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema

from app.enrich import Enricher
from app.envelope import build_raw
from app.pipeline import Origin, Output, process
from app.settings import CoreSettings
from tests.fixtures.events import EVENTS_V1, core_event

SCHEMA = json.loads(Path("schemas/k8s-event.v1.json").read_text())


class Run:
    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.enricher = Enricher(CoreSettings(), None)
        self.offset = 0

    def __call__(self, value: bytes | None) -> list[Output]:
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
    assert [o.topic for o in first] == ["enriched", "counts", "counts"]
    assert again == [] and late == []
    record = json.loads(grown[0].value)
    assert record["count"] == 5 and record["count_delta"] == 2
    counts = [json.loads(o.value) for o in grown if o.topic == "counts"]
    assert {c["key"] for c in counts} == {
        "reason|shop|BackOff|Warning",
        "object|shop|Pod|web-7d4b9c-abcde|pod-uid-1",
    }
    assert all(c["delta"] == 2 for c in counts)
    assert grown[1].timestamp == 1714565100.0, "windowed by occurrence time (lastTimestamp)"


def test_records_validate_against_the_published_schema() -> None:
    run = Run()
    for obj in (core_event(), EVENTS_V1):
        out = run(raw(obj))
        record = json.loads(out[0].value)
        jsonschema.validate(record, SCHEMA)
        assert record["enrichment"]["status"] == "skipped"
        assert out[0].key == obj.get("involvedObject", obj.get("regarding"))["uid"].encode()


def test_normal_events_count_by_reason_only() -> None:
    out = Run()(raw(EVENTS_V1))
    assert [json.loads(o.value)["key"] for o in out if o.topic == "counts"] == [
        "reason|shop|Pulling|Normal"
    ]


def test_bad_input_goes_to_dlq_with_reason_bytes_and_origin() -> None:
    run = Run()
    out = run(b"\x00garbage")
    assert [o.topic for o in out] == ["dlq"]
    doc = json.loads(out[0].value)
    assert doc["reason"].startswith("not JSON")
    assert doc["source"] == {"topic": "k8s-events-raw", "partition": 0, "offset": 1}
    import base64

    assert base64.b64decode(doc["value_base64"]) == b"\x00garbage"
    no_uid = run(raw(core_event(meta_uid=None)))
    assert json.loads(no_uid[0].value)["reason"] == "event without metadata.uid"
