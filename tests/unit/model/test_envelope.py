from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from app.model.envelope import DecodeError, ListPage, build_raw, parse_raw, partition_key
from tests.fixtures.events import EVENTS_V1, core_event


def test_roundtrip_keeps_object_and_metadata() -> None:
    key, value = build_raw(
        core_event(),
        watch_type="MODIFIED",
        via="watch",
        cluster="c1",
        producer="p1",
        observed_at="2024-05-01T00:00:00.000000Z",
    )
    assert key == b"pod-uid-1"
    raw = parse_raw(value, max_bytes=1 << 20)
    assert (raw.watch_type, raw.via, raw.cluster, raw.producer) == ("MODIFIED", "watch", "c1", "p1")
    assert raw.obj == core_event()
    assert json.loads(value)["api"] == "core/v1"


def test_key_is_regarding_uid_for_new_api_and_event_uid_without_object_uid() -> None:
    assert partition_key(EVENTS_V1) == "pod-uid-2"
    obj = core_event(involvedObject={"kind": "Node", "name": "n1"})
    assert partition_key(obj) == "e-1111"


def test_bare_event_is_accepted() -> None:
    raw = parse_raw(json.dumps(core_event()).encode(), max_bytes=1 << 20)
    assert raw.via == "external" and raw.obj["metadata"]["uid"] == "e-1111"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "tombstone"),
        (b"\xff\xfe not json", "not JSON"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"kind": "kubevents.raw/v1", "type": "ADDED"}', "without an 'object'"),
        (b'{"kind": "kubevents.raw/v1", "type": "BOOKMARK", "object": {}}', "unknown watch type"),
    ],
)
def test_bad_records(data: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        parse_raw(data, max_bytes=1 << 20)


def test_size_limit() -> None:
    with pytest.raises(DecodeError, match="exceeds the 100-byte limit"):
        parse_raw(b"{" + b" " * 200 + b"}", max_bytes=100)


def list_page(items: list[dict[str, Any]], api_version: str = "v1") -> bytes:
    """A LIST response as the API server writes it: items without kind and apiVersion."""
    stripped = [{k: v for k, v in i.items() if k not in ("kind", "apiVersion")} for i in items]
    meta = {"resourceVersion": "77", "continue": "tok"}
    return json.dumps(
        {"kind": "EventList", "apiVersion": api_version, "metadata": meta, "items": stripped}
    ).encode()  # json, not orjson: the API server escapes <, > and & as \u003c etc.


def test_a_list_pages_raw_records_are_build_raw_of_each_item() -> None:
    at = "2024-05-01T00:00:00.000000Z"
    common = {"watch_type": "ADDED", "via": "list", "cluster": 'c"1', "producer": "p\u00e91"}
    tricky = core_event(message='quote " back \\ <b> & \u00e9 \U0001f600 \x01')
    no_uid = core_event(involvedObject={"kind": "Node", "name": "n1"})
    for items, api_version in (
        ([core_event(), tricky, no_uid], "v1"),
        ([EVENTS_V1], "events.k8s.io/v1"),
    ):
        page = ListPage(list_page(items, api_version))
        assert page.meta == {"resourceVersion": "77", "continue": "tok"}
        records = page.raw_records(**common, observed_at=at)
        expected = [build_raw(obj, **common, observed_at=at) for obj in items]
        assert [key for key, _ in records] == [key for key, _ in expected]
        assert [json.loads(v) for _, v in records] == [json.loads(v) for _, v in expected]
        for _, value in records:
            raw = parse_raw(value, max_bytes=1 << 20)
            assert raw.cluster == 'c"1' and raw.via == "list" and raw.obj["kind"] == "Event"
    empty = ListPage(list_page([]))
    assert empty.raw_records(**common) == []
    assert empty.meta == {"resourceVersion": "77", "continue": "tok"}


def test_the_continue_token_is_the_pages_own_whatever_its_items_say() -> None:
    token = "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6NDIsInN0YXJ0IjoiYmVuY2gvZTQ5OVx1MDAwMCJ9"
    body = orjson.dumps(
        {"kind": "EventList", "metadata": {"continue": token}, "items": [core_event()]}
    )
    assert ListPage(body).meta["continue"] == token
    # The last page has none, even with an item's text holding the same characters.
    last = {"kind": "EventList", "metadata": {}, "items": [core_event(message='"continue":"x"')]}
    assert "continue" not in ListPage(orjson.dumps(last)).meta
    # Metadata after the items (not what the API server writes) is read all the same.
    assert ListPage(b'{"items":[],"metadata":{"continue":"abc"}}').meta == {"continue": "abc"}
