"""The Elasticsearch sink against the stack's real servers, Elasticsearch 8 and 9.

Every test has its own index prefix (t-<8 hex>) and deletes its indices and template at the end:
other engineers' tests run on the same servers at the same time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from elasticsearch import Elasticsearch

from app.errors import TransientError, UserError
from app.settings import ElasticsearchSinkSettings
from app.sinks.base import Failure
from app.sinks.elasticsearch import ElasticsearchSink, fallback_version
from app.sinks.elasticsearch_indices import template_name
from tests.fixtures.enriched import core_v1, enriched, events_v1
from tests.integration.conftest import free_port, need_env

pytestmark = pytest.mark.integration

T = TypeVar("T")
ES9 = "KUBEVENTS_TEST_ELASTICSEARCH9_URL"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(params=["es8", "es9"])
def es_url(request: pytest.FixtureRequest) -> str:
    if request.param == "es8":
        return need_env("KUBEVENTS_ELASTICSEARCH_URL")
    return need_env(ES9)  # make stack runs Elasticsearch 9 beside 8: a missing one fails


@pytest.fixture()
def es(es_url: str) -> Iterator[Elasticsearch]:
    client = Elasticsearch(es_url, request_timeout=30)
    yield client
    client.close()


@pytest.fixture()
def index(es: Elasticsearch) -> Iterator[str]:
    """A prefix of this test's own; its daily indices, any plain index of that name and its
    template are deleted afterwards (by name: wildcard deletes are refused by default)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    yield name
    found = es.indices.get(
        index=f"{name},{name}-*", expand_wildcards="all", ignore_unavailable=True
    )
    for concrete in found.body:
        es.options(ignore_status=404).indices.delete(index=concrete)
    es.options(ignore_status=404).indices.delete_index_template(name=template_name(name))


def sink(url: str, index: str, **options: Any) -> ElasticsearchSink:
    settings = ElasticsearchSinkSettings(url=url, index=index, startup_timeout_s=30, **options)
    return ElasticsearchSink(settings, cluster="default")


def read_back(es: Elasticsearch, alias: str) -> list[dict[str, Any]]:
    es.indices.refresh(index=alias)
    resp = es.search(index=alias, size=1000, version=True, query={"match_all": {}})
    assert resp["hits"]["total"] == {"value": len(resp["hits"]["hits"]), "relation": "eq"}
    return list(resp["hits"]["hits"])


# --- The known stream --------------------------------------------------------------------------

EMOJI = "Back-off restarting failed container 🔥💥 in pod web-7d4b9c-abcde — 容器重启 ✅"
LONG = ("Error: failed to pull image registry.example/app@sha256:" + "ab" * 32 + " → ") * 300
LABELS = {"app.kubernetes.io/name": "shop.web.v2", "app": "web"}


Events = list[dict[str, Any]]


def stream() -> tuple[list[Events], Events, dict[str, tuple[dict[str, Any], str, int]]]:
    """Batches as a sink pipeline would hand them, the older versions that come late, and per
    uid what must be in Elasticsearch: (the newest version, its index's day, its version)."""
    day = "2024-05-01T"
    a = [  # a core/v1 event repeated: count 1 -> 3 -> 5
        enriched(core_v1("a", rv, count=c, first=f"{day}12:00:00Z", last=last), count_delta=d)
        for rv, c, d, last in (
            ("100", 1, 1, f"{day}12:00:00Z"),
            ("105", 3, 2, f"{day}12:01:00Z"),
            ("110", 5, 2, f"{day}12:02:00Z"),
        )
    ]
    b = [  # events.k8s.io/v1, microsecond times, a series from the second occurrence
        enriched(events_v1("b", "200", event_time=f"{day}12:00:00.123456Z")),
        enriched(
            events_v1(
                "b", "230", event_time=f"{day}12:00:00.123456Z", count=3,
                last_observed=f"{day}12:30:00.654321Z",
            ),
            count_delta=2,
        ),
    ]  # fmt: skip
    c = [  # the newer version is written first; the older one arrives late
        enriched(core_v1("c", "310", count=4, first=f"{day}13:00:00Z", last=f"{day}13:09:00Z")),
        enriched(core_v1("c", "300", count=2, first=f"{day}13:00:00Z", last=f"{day}13:05:00Z")),
    ]
    d = [  # labels whose keys had dots, a value with dots: flattened
        enriched(events_v1("d", "400", event_time=f"{day}14:00:00.000001Z"), labels=LABELS)
    ]
    e = [enriched(core_v1("e", "500", count=1, first=f"{day}15:00:00Z", last=f"{day}15:00:00Z",
                          message=EMOJI))]  # fmt: skip
    f = [enriched(events_v1("f", "600", event_time=f"{day}16:00:00.5Z", note=LONG))]
    g = [  # a DELETED watch record is one more version, never a delete
        enriched(events_v1("g", "700", event_time=f"{day}17:00:00Z"), watch_type="ADDED"),
        enriched(events_v1("g", "701", event_time=f"{day}17:00:00Z"), watch_type="DELETED"),
    ]
    h = [  # first occurrence at the last microsecond of April 30th, a repeat on May 1st
        enriched(events_v1("h", "800", event_time="2024-04-30T23:59:59.999999Z")),
        enriched(
            events_v1(
                "h", "820", event_time="2024-04-30T23:59:59.999999Z", count=2,
                last_observed=f"{day}00:10:00.000001Z",
            ),
            count_delta=1,
        ),
    ]  # fmt: skip
    # firstTimestamp at Go's zero time (never set): the index of the API server's
    # creationTimestamp. i as the schema spells it; j as the core formats year 1 today
    # ("1-01-01T...": strftime does not pad the year), which no date parser takes.
    zero = core_v1(
        "i", "900", count=1, first="0001-01-01T00:00:00Z", last=f"{day}18:00:00Z",
        created="2024-05-02T18:00:00Z",
    )  # fmt: skip
    i = [{**enriched(zero), "first_seen": "0001-01-01T00:00:00.000000Z"}]
    j = [enriched({**zero, "metadata": {**zero["metadata"], "uid": "j"}})]
    n = [  # resourceVersion not a number: the fallback version orders them
        enriched(core_v1("n", f"opaque-{k}", count=k, first=f"{day}19:00:00Z", last=last))
        for k, last in ((1, f"{day}19:00:00Z"), (2, f"{day}19:00:00Z"), (3, f"{day}19:00:07Z"))
    ]
    late = [c[1], n[1], n[0]]
    batches = [
        [a[0], b[0], c[0], d[0], g[0], h[0], n[2], n[0]],
        [a[1], b[1], e[0], f[0], g[1], h[1], i[0], j[0]],
        [a[2], c[1], n[1]],  # c[1] and n[1]: late older versions
    ]
    expected = {
        "a": (a[2], "2024.05.01", 110),
        "b": (b[1], "2024.05.01", 230),
        "c": (c[0], "2024.05.01", 310),
        "d": (d[0], "2024.05.01", 400),
        "e": (e[0], "2024.05.01", 500),
        "f": (f[0], "2024.05.01", 600),
        "g": (g[1], "2024.05.01", 701),
        "h": (h[1], "2024.04.30", 820),
        "i": (i[0], "2024.05.02", 900),
        "j": (j[0], "2024.05.02", 900),
        "n": (n[2], "2024.05.01", fallback_version(n[2])),
    }
    return batches, late, expected


def test_stream_reads_back_exactly_newest_version_once_per_uid(
    es_url: str, es: Elasticsearch, index: str
) -> None:
    batches, late, expected = stream()
    everything = [event for batch in batches for event in batch]

    async def write_all() -> list[list[Failure]]:
        s = sink(es_url, index, bulk_workers=3, cluster_name="prod-eu")
        await s.start()
        try:
            results = [await s.write(batch) for batch in batches]
            # Redelivery: the whole stream again in one batch, then the late ones once more,
            # last (so that whichever is written last is an older version).
            results.append(await s.write(everything))
            results.append(await s.write(late))
            return results
        finally:
            await s.stop()

    assert run(write_all()) == [[]] * 5, "409s of late older versions are not failures"

    hits = read_back(es, index)
    assert sorted(h["_id"] for h in hits) == sorted(expected), "each uid exactly once"
    for hit in hits:
        newest, day, version = expected[hit["_id"]]
        assert hit["_source"] == {**newest, "cluster": "prod-eu"}, hit["_id"]
        assert hit["_index"] == f"{index}-{day}", hit["_id"]
        assert hit["_version"] == version, hit["_id"]
    by_id = {h["_id"]: h["_source"] for h in hits}
    assert by_id["a"]["count"] == 5 and by_id["b"]["count"] == 3
    assert by_id["b"]["first_seen"] == "2024-05-01T12:00:00.123456Z"
    assert by_id["b"]["last_seen"] == "2024-05-01T12:30:00.654321Z"
    assert by_id["e"]["message"] == EMOJI and by_id["f"]["message"] == LONG
    assert len(LONG.encode()) > 30_000
    assert by_id["g"]["watch_type"] == "DELETED"

    # The mappings work: labels as flattened, times to the microsecond.
    label = {"term": {"labels.app_kubernetes_io_name": "shop.web.v2"}}
    assert [h["_id"] for h in es.search(index=index, query=label)["hits"]["hits"]] == ["d"]
    at = "2024-05-01T12:30:00.654321Z"
    exact = {"range": {"last_seen": {"gte": at, "lte": at}}}
    assert [h["_id"] for h in es.search(index=index, query=exact)["hits"]["hits"]] == ["b"]
    assert es.count(index=index, query={"match": {"message": "容器重启"}})["count"] == 1


def test_a_rejected_record_is_a_failure_with_elasticsearchs_reason_and_the_rest_is_written(
    es_url: str, es: Elasticsearch, index: str
) -> None:
    day = "2024-05-01T"
    good = [
        enriched(core_v1(f"ok-{k}", "10", count=1, first=f"{day}10:00:00Z", last=f"{day}10:00:00Z"))
        for k in range(4)
    ]
    bad = {**good[0], "uid": "bad", "count": "not-a-number"}
    batch = [good[0], good[1], good[2], bad, good[3]]  # the bad one opens the second request

    async def write() -> list[Failure]:
        s = sink(es_url, index, bulk_workers=2)
        await s.start()
        try:
            return await s.write(batch)
        finally:
            await s.stop()

    failures = run(write())
    assert [(f.index, f.retry) for f in failures] == [(3, False)]
    reason = failures[0].reason
    assert reason.startswith(("400 document_parsing_exception", "400 mapper_parsing_exception"))
    assert "[count]" in reason and "not-a-number" in reason
    assert sorted(h["_id"] for h in read_back(es, index)) == [f"ok-{k}" for k in range(4)]


def test_the_template_is_installed_again_on_every_start(
    es_url: str, es: Elasticsearch, index: str
) -> None:
    async def start_stop() -> None:
        s = sink(es_url, index)
        await s.start()
        await s.stop()

    def installed() -> dict[str, Any]:
        found = es.indices.get_index_template(name=name)["index_templates"][0]["index_template"]
        # Elasticsearch 9 stamps created_date_millis / modified_date_millis on every put.
        return {k: v for k, v in found.items() if not k.endswith("_date_millis")}

    run(start_stop())
    name = template_name(index)
    ours = installed()
    # Someone (an older kubevents) left another template under the name.
    es.indices.put_index_template(
        name=name,
        index_patterns=[f"{index}-*"],
        priority=ours["priority"],
        version=0,
        template={"mappings": {"properties": {"labels": {"type": "object"}}}},
    )
    run(start_stop())
    run(start_stop())  # and again: the same template, no error
    again = installed()
    assert again == ours
    assert again["template"]["mappings"]["properties"]["labels"]["type"] == "flattened"


def test_retention_deletes_only_this_sinks_daily_indices_older_than_the_limit(
    es_url: str, es: Elasticsearch, index: str
) -> None:
    today = time.strftime("%Y.%m.%d", time.gmtime())
    names = [f"{index}-2001.01.01", f"{index}-{today}", f"{index}-x-2001.01.01", f"{index}-keep"]
    for name in names:
        es.indices.create(index=name)

    async def start_stop() -> None:
        s = sink(es_url, index, retention_days=30)
        await s.start()
        await s.stop()

    run(start_stop())
    left = set(es.indices.get(index=f"{index}-*").body)
    assert left == set(names[1:])


def test_an_index_named_like_the_read_alias_is_a_user_error(
    es_url: str, es: Elasticsearch, index: str
) -> None:
    es.indices.create(index=index)
    with pytest.raises(UserError, match="KUBEVENTS_ELASTICSEARCH_INDEX"):
        run(sink(es_url, index).start())


def test_a_missing_ingest_pipeline_is_a_user_error_an_existing_one_is_used(
    es_url: str, es: Elasticsearch, index: str
) -> None:
    with pytest.raises(UserError, match="KUBEVENTS_ELASTICSEARCH_PIPELINE"):
        run(sink(es_url, index, pipeline=f"{index}-missing").start())
    es.ingest.put_pipeline(id=index, processors=[])  # the stack's zip has no processors
    event = enriched(
        core_v1("p", "1", count=1, first="2024-05-01T10:00:00Z", last="2024-05-01T10:00:00Z")
    )

    async def write() -> list[Failure]:
        s = sink(es_url, index, pipeline=index)
        await s.start()
        try:
            return await s.write([event])
        finally:
            await s.stop()

    try:
        assert run(write()) == []
    finally:
        es.ingest.delete_pipeline(id=index)
    assert [h["_id"] for h in read_back(es, index)] == ["p"]


def test_start_against_a_closed_port_is_transient_within_the_timeout() -> None:
    """No server at all: the same for Elasticsearch 8 and 9, so not parametrized."""
    options = ElasticsearchSinkSettings(
        url=f"http://127.0.0.1:{free_port()}", index="unused", startup_timeout_s=3
    )
    began = time.monotonic()
    with pytest.raises(TransientError, match="not ready after 3s") as raised:
        run(ElasticsearchSink(options, cluster="default").start())
    assert time.monotonic() - began < 3 + 3
    assert "\n" not in str(raised.value)
