"""The sink pipeline around any sink (app/sinks/pipeline.py), on the in-memory sink: filters,
retry in place, dead letters with the reason, bisection of a batch refused as a whole."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY

from app.errors import UserError
from app.settings import PipelineSettings
from app.sinks.memory import MemorySink, PreparingMemorySink
from app.sinks.pipeline import SinkPipeline


def event(uid: str, rv: int = 10, **fields: Any) -> dict[str, Any]:
    doc = {
        "uid": uid,
        "resource_version": str(rv),
        "namespace": "default",
        "type": "Normal",
        "reason": "Scheduled",
        "severity": "info",
        "count": 1,
        "involved_object": {"kind": "Pod", "name": "p", "uid": f"pod-{uid}"},
    }
    doc.update(fields)
    return doc


def messages(values: Sequence[Any], published: float | None = None) -> list[Any]:
    """Records as Faust hands them over; ``published``: their Kafka timestamp (s), now if None."""
    out = []
    for offset, value in enumerate(values):
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        uid = value["uid"] if isinstance(value, dict) else "x"
        out.append(
            SimpleNamespace(
                topic="k8s-events",
                partition=0,
                offset=offset,
                key=uid.encode(),
                value=raw,
                timestamp=time.time() if published is None else published,
            )
        )
    return out


class Letters:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes]] = []

    async def write(self, records: Sequence[tuple[str, bytes, bytes]]) -> None:
        self.records.extend(records)

    def docs(self) -> list[dict[str, Any]]:
        return [json.loads(value) for _, _, value in self.records]


class Clock:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture(params=[MemorySink, PreparingMemorySink], ids=["write", "prepare"])
def make_sink(request: pytest.FixtureRequest) -> type[MemorySink]:
    """A plain sink, and one whose ready forms the pipeline makes ahead (PreparingSink)."""
    cls: type[MemorySink] = request.param
    return cls


def pipeline(sink: MemorySink, **config: Any) -> tuple[SinkPipeline, Letters, Clock]:
    letters, clock = Letters(), Clock()

    async def open_letters() -> Letters:
        return letters

    settings = PipelineSettings.model_validate({"id": "test", "sink": "elasticsearch", **config})
    p = SinkPipeline(settings, sink, open_letters, "k8s-events-dlq", sleep=clock.sleep)
    asyncio.run(p.start())
    return p, letters, clock


def test_everything_written_and_not_blocked(make_sink: type[MemorySink]) -> None:
    sink = make_sink()
    p, letters, _ = pipeline(sink)
    asyncio.run(p.handle(messages([event("a"), event("b")])))
    assert sorted(sink.docs) == ["a", "b"] and not letters.records
    assert p.check() == (True, "test: writing")


def histogram(name: str, pipeline_id: str) -> tuple[float, float]:
    """(count, sum) of a pipeline's histogram."""
    labels = {"pipeline": pipeline_id}
    count = REGISTRY.get_sample_value(f"{name}_count", labels) or 0.0
    return count, REGISTRY.get_sample_value(f"{name}_sum", labels) or 0.0


def test_each_write_is_timed_and_each_batch_says_how_late_it_was_written() -> None:
    sink = MemorySink()
    p, _, _ = pipeline(sink, id="timed")
    writes, delays = (
        histogram("kubevents_sink_write_seconds", "timed"),
        histogram("kubevents_sink_delay_seconds", "timed"),
    )
    published = time.time() - 42  # the core published the oldest record 42 s ago
    batch = messages([event("a"), event("b")], published) + messages([event("c")])
    asyncio.run(p.handle(batch))
    count, total = histogram("kubevents_sink_write_seconds", "timed")
    assert count == writes[0] + 1 and 0 <= total - writes[1] < 5
    count, total = histogram("kubevents_sink_delay_seconds", "timed")
    assert count == delays[0] + 1, "once per batch"
    assert 42 <= total - delays[1] < 47, "the batch's oldest record"


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"types": ["Warning"]}, {"w1", "w2"}),
        ({"namespaces": ["kube-system"]}, {"w2"}),
        ({"exclude_namespaces": ["kube-system"]}, {"n1", "w1"}),
        ({"kinds": ["Node"]}, {"w1"}),
        ({"reason": "^Back"}, {"w1"}),
        ({"min_severity": "warning"}, {"w1", "w2"}),
        ({"min_severity": "critical"}, set()),
        ({"types": ["Warning"], "namespaces": ["default"]}, {"w1"}),
        ({}, {"n1", "w1", "w2"}),
    ],
)
def test_filters_route_exactly_what_they_say(filters: dict[str, Any], expected: set[str]) -> None:
    sink = MemorySink()
    p, letters, _ = pipeline(sink, filters=filters)
    stream = [
        event("n1"),
        event(
            "w1",
            type="Warning",
            reason="BackOff",
            severity="warning",
            involved_object={"kind": "Node", "name": "n", "uid": "n"},
        ),
        event(
            "w2", type="Warning", reason="FailedMount", severity="warning", namespace="kube-system"
        ),
    ]
    asyncio.run(p.handle(messages(stream)))
    assert set(sink.docs) == expected and not letters.records


def test_a_bad_filter_is_a_one_line_user_error() -> None:
    with pytest.raises(UserError, match=r"filters\.reason"):
        pipeline(MemorySink(), filters={"reason": "("})
    with pytest.raises(UserError, match="Normal and Warning"):
        pipeline(MemorySink(), filters={"types": ["Error"]})


def test_a_destination_away_is_retried_in_place_with_growing_capped_backoff() -> None:
    sink = MemorySink()
    p, _, clock = pipeline(sink, retry_initial_ms=100, retry_max_ms=1000)
    sink.away = 8
    seen: list[tuple[bool, str]] = []
    original = sink.write

    async def write(events: Any) -> Any:
        seen.append(p.check())
        return await original(events)

    sink.write = write  # type: ignore[method-assign]
    asyncio.run(p.handle(messages([event("a")])))
    assert "a" in sink.docs and len(sink.writes) == 9
    assert len(clock.slept) == 8
    assert all(0.05 <= s <= 1.0 for s in clock.slept) and max(clock.slept) > 0.5
    assert not seen[-1][0] and "connection refused" in seen[-1][1]  # /readyz said why
    assert p.check()[0]


def test_a_record_refused_for_good_is_dead_lettered_and_the_rest_written(
    make_sink: type[MemorySink],
) -> None:
    sink = make_sink()
    sink.refuse = {"bad"}
    p, letters, _ = pipeline(sink)
    asyncio.run(p.handle(messages([event("a"), event("bad"), event("c")])))
    assert sorted(sink.docs) == ["a", "c"]
    [letter] = letters.docs()
    assert letter["pipeline"] == "test" and "mapper_parsing_exception" in letter["reason"]
    assert letter["source"] == {"topic": "k8s-events", "partition": 0, "offset": 1}
    assert json.loads(letter["value_text"])["uid"] == "bad"
    assert letters.records[0][0] == "k8s-events-dlq" and letters.records[0][1] == b"bad"


def test_a_batch_refused_as_a_whole_is_bisected_down_to_the_poison_records(
    make_sink: type[MemorySink],
) -> None:
    sink = make_sink()
    sink.refuse_atomically = {"p3", "p11"}
    p, letters, _ = pipeline(sink)
    stream = [event(f"p{i}") for i in range(16)]
    asyncio.run(p.handle(messages(stream)))
    assert sorted(sink.docs) == sorted(f"p{i}" for i in range(16) if i not in (3, 11))
    assert sorted(
        d["value_text"] and json.loads(d["value_text"])["uid"] for d in letters.docs()
    ) == ["p11", "p3"]
    assert len(sink.writes) <= 2 * 2 * 4 + 1  # a bisection, not one write per record


def test_an_item_answered_busy_is_retried_alone(make_sink: type[MemorySink]) -> None:
    sink = make_sink()
    sink.busy_once = {"b"}
    p, letters, clock = pipeline(sink)
    asyncio.run(p.handle(messages([event("a"), event("b")])))
    assert sorted(sink.docs) == ["a", "b"] and not letters.records
    assert sink.writes == [["a", "b"], ["b"]] and len(clock.slept) == 1


def test_records_that_are_not_json_objects_are_dead_lettered(make_sink: type[MemorySink]) -> None:
    sink = make_sink()
    p, letters, _ = pipeline(sink)
    asyncio.run(p.handle(messages([b"{not json", b"[1, 2]", event("a")])))
    assert list(sink.docs) == ["a"]
    reasons = [d["reason"] for d in letters.docs()]
    assert reasons[0].startswith("not JSON") and reasons[1] == "not a JSON object"


def test_concurrency_keeps_the_versions_of_one_event_in_order(make_sink: type[MemorySink]) -> None:
    sink = make_sink()
    p, _, _ = pipeline(sink, concurrency=4)
    stream = [event(f"u{i % 5}", rv=100 + i, count=i) for i in range(40)]
    asyncio.run(p.handle(messages(stream)))
    assert {uid: doc["count"] for uid, doc in sink.docs.items()} == {
        f"u{i}": 35 + i for i in range(5)
    }
    assert len(sink.writes) > 1


def test_a_record_the_sink_can_make_nothing_of_is_dead_lettered_before_the_write() -> None:
    sink = PreparingMemorySink()
    sink.unwritable = {"bad"}
    p, letters, _ = pipeline(sink)
    asyncio.run(p.handle(messages([event("a"), event("bad"), event("c")])))
    assert sorted(sink.docs) == ["a", "c"] and sink.writes == [["a", "c"]]
    [letter] = letters.docs()
    assert letter["reason"] == "no row can hold bad" and letter["pipeline"] == "test"
    assert letter["source"] == {"topic": "k8s-events", "partition": 0, "offset": 1}
    assert sink.prepared == 2, "each ready form made once"
