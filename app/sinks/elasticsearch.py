"""Elasticsearch sink: the last step of an Elasticsearch pipeline (k8s-events -> filters -> here).

One document per event ``uid``, in the daily index of the event's first occurrence
(``<index>-YYYY.MM.DD``), read through the alias ``<index>`` that the index template adds to every
daily index. Each write is a full-document ``index`` with the event's resourceVersion as an
external version (``external_gte``), so a redelivery changes nothing and a late older version is
refused by Elasticsearch itself (409, counted as done). Nothing here ever deletes a document; only
``retention_days``, when set, deletes whole daily indices older than that. The template, the
mappings and the retention of the daily indices: app/sinks/elasticsearch_indices.py.

Facts this relies on, checked against the stack's server and the client: /work/shared/SINKS.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from elastic_transport import TlsError
from elasticsearch import (
    ApiError,
    AsyncElasticsearch,
    AuthenticationException,
    AuthorizationException,
    NotFoundError,
    TransportError,
    UnsupportedProductError,
)
from elasticsearch.serializer import OrjsonSerializer
from prometheus_client import Counter

from app.errors import Rejected, TransientError, UserError
from app.model.timeutil import parse_time
from app.settings import ElasticsearchSinkSettings
from app.sinks.base import MAX_VERSION, Event, Failure, Unwritable, numeric_version, write_events
from app.sinks.elasticsearch_indices import (
    RETENTION_EVERY_S,
    delete_older_indices,
    index_name,
    index_template,
)

LOG = logging.getLogger(__name__)
DOCUMENTS = Counter(
    "kubevents_sink_elasticsearch_documents_total",
    "Documents by outcome: written, stale (a newer version was there), retry, rejected.",
    ["outcome"],
)

# A bulk request stays well under http.max_content_length (100 MB by default): one batch of
# large events (raw objects, 30 KB messages) is cut into several requests.
MAX_REQUEST_BYTES = 8 << 20

# ---------------------------------------------------------------------------------------------
# Documents and actions

EARLIEST = datetime(2014, 6, 1, tzinfo=UTC)  # Kubernetes' first commit: no event is older
SLACK = timedelta(days=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BadEvent(Unwritable):
    """A record no retry can write (no uid, no plausible timestamp, not JSON-serialisable)."""


def index_day(event: Event, now: datetime) -> date:
    """The day (UTC) of the daily index an event goes to.

    One uid must always land in one index (an index per version would leave older versions
    behind as duplicates), so the rule reads the fields that never change for a uid first:
    - ``first_seen``, the first occurrence, when plausible: not before 2014-06-01 (0001-01-01 is
      Go's zero time, a field never set) and not more than a day after the Event object was
      created (``raw.metadata.creationTimestamp``, the API server's clock; a node clock far
      ahead), or than ``now`` for a record without it;
    - else ``raw.metadata.creationTimestamp`` itself;
    - only for a record without a plausible creationTimestamp (hand-made, not from an API
      server): ``last_seen``, then ``observed_at``, which may move between versions.
    None of them plausible: BadEvent (the record is dead-lettered, never dropped).
    """
    raw = event.get("raw")
    meta = raw.get("metadata") if isinstance(raw, Mapping) else None
    created = parse_time(meta.get("creationTimestamp")) if isinstance(meta, Mapping) else None
    if created is not None and not EARLIEST <= created <= now + SLACK:
        created = None
    ceiling = (created or now) + SLACK
    for candidate in (event.get("first_seen"), created, event.get("last_seen")):
        when = candidate if isinstance(candidate, datetime) else parse_time(candidate)
        if when is not None and EARLIEST <= when <= ceiling:
            return when.date()
    when = parse_time(event.get("observed_at"))
    if when is not None and EARLIEST <= when <= now + SLACK:
        return when.date()
    raise BadEvent("no plausible first_seen, creationTimestamp, last_seen or observed_at")


COUNT_SLOTS = 1000  # µs since 1970 x 1000 stays below 2^63 until the year 2262


def fallback_version(event: Event) -> int:
    """The external version of an event whose resourceVersion is not a number (or > 2^63-1).

    ``last_seen`` in microseconds, then ``count`` (capped at 999) as the low digits. Both only
    grow from one version of an event to the next (a repeat moves last_seen and raises count),
    and count breaks ties when last_seen does not move (core/v1 timestamps have whole seconds:
    3 repeats in one second). So an older version never gets a higher number than a newer one;
    the same version (a redelivery) gets the same number. Its values (~1.7e18 today) are far
    above etcd revisions: kept for a uid whose versions are all non-numeric, which is the case
    when an API server's storage does not give numbers.
    """
    last = parse_time(event.get("last_seen"))
    micros = (last - _EPOCH) // timedelta(microseconds=1) if last is not None else 0
    micros = min(max(micros, 0), MAX_VERSION // COUNT_SLOTS - 1)
    count = event.get("count")
    slot = count if isinstance(count, int) and not isinstance(count, bool) else 0
    return micros * COUNT_SLOTS + min(max(slot, 0), COUNT_SLOTS - 1)


def external_version(event: Event) -> int:
    version = numeric_version(event)
    return version if version is not None else fallback_version(event)


def split(
    actions: list[tuple[int, bytes]], parts: int, max_bytes: int
) -> list[list[tuple[int, bytes]]]:
    """The bulk requests of one batch: ``parts`` shares (sent concurrently), each cut again
    where it would pass ``max_bytes``."""
    per_request = max(-(-len(actions) // parts), 1)
    requests: list[list[tuple[int, bytes]]] = []
    size = 0
    for action in actions:
        if not requests or len(requests[-1]) >= per_request or size + len(action[1]) > max_bytes:
            requests.append([])
            size = 0
        requests[-1].append(action)
        size += len(action[1])
    return requests


def build_action(event: Event, index: str, cluster: str, now: datetime) -> dict[str, Any]:
    """The bulk action of one event, in the helpers' action form."""
    uid = event.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadEvent("no uid")
    doc = {**event, "cluster": cluster}
    return {
        "_op_type": "index",  # full document: a versioned update is refused by Elasticsearch
        "_index": index_name(index, index_day(event, now)),
        "_id": uid,
        "version": external_version(event),
        "version_type": "external_gte",  # the same version again (a redelivery): 200, not 409
        # Always under _source: the helpers pop top-level keys named version, pipeline,
        # routing ... into the metadata, so a document field of that name would vanish.
        "_source": doc,
    }


def encode(action: dict[str, Any]) -> bytes:
    """The two NDJSON lines of an action of ``build_action`` (the header as the helpers'
    ``expand_action`` writes it, built directly: this runs once per event)."""
    header = {
        action["_op_type"]: {
            "_id": action["_id"],
            "_index": action["_index"],
            "version": action["version"],
            "version_type": action["version_type"],
        }
    }
    try:
        return orjson.dumps(header) + b"\n" + orjson.dumps(action["_source"]) + b"\n"
    except TypeError as exc:  # orjson.JSONEncodeError: an int beyond 64 bits, a non-str key
        raise BadEvent(f"not serialisable as JSON: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Outcomes

# The record's own fault: its content does not fit the mapping, retrying cannot help.
REJECTIONS = frozenset(
    {
        "document_parsing_exception",
        "mapper_parsing_exception",
        "strict_dynamic_mapping_exception",
        "illegal_argument_exception",
        "action_request_validation_exception",
    }
)


def error_text(error: Any) -> str:
    """Elasticsearch's error as one line: type: reason (caused by type: reason)."""
    if not isinstance(error, Mapping):
        return str(error)
    text = f"{error.get('type')}: {error.get('reason')}"
    cause = error.get("caused_by")
    if isinstance(cause, Mapping):
        text += f" (caused by {cause.get('type')}: {cause.get('reason')})"
    return text


def classify(item: Mapping[str, Any]) -> tuple[str, str]:
    """(outcome, reason) of one item of a bulk response: written, stale, retry or rejected.

    409 on an externally versioned write means a newer version is already there: done. 400 of
    the parsing kinds is the record's fault; every other failure (429, 5xx, 403 index block,
    404 missing index or alias, an unknown 4xx) is the cluster's, retried until it is fixed:
    a stuck pipeline is visible, a record sent to the dead-letter topic by mistake is not.
    """
    status = int(item.get("status", 500))
    if 200 <= status < 300:
        return "written", ""
    if status == 409:
        return "stale", ""
    error = item.get("error")
    reason = f"{status} {error_text(error)}"
    if status == 400 and isinstance(error, Mapping) and error.get("type") in REJECTIONS:
        return "rejected", reason
    return "retry", reason


def version_problem(number: str) -> str | None:
    """None when kubevents can write to an Elasticsearch of this version, else why not (one
    line saying what to use instead)."""
    major = number.split(".", 1)[0]
    if not major.isdigit():
        return f"Elasticsearch reports version {number!r}: kubevents needs Elasticsearch 8 or 9"
    if int(major) < 8:
        return (
            f"Elasticsearch {number} is too old: kubevents needs Elasticsearch 8 or 9 (upgrade"
            " the cluster, or write to another one with KUBEVENTS_ELASTICSEARCH_URL)"
        )
    if int(major) > 9:
        return (
            f"Elasticsearch {number} is newer than kubevents' client (8.19) speaks: use"
            " Elasticsearch 8 or 9"
        )
    return None


def start_error(exc: Exception) -> Exception:
    """What start() raises for an error of the client: UserError for what the user must fix,
    TransientError for what retrying start can fix."""
    if isinstance(exc, AuthenticationException):
        return UserError(
            "Elasticsearch refused the credentials (401): fix KUBEVENTS_ELASTICSEARCH_USERNAME /"
            " KUBEVENTS_ELASTICSEARCH_PASSWORD or KUBEVENTS_ELASTICSEARCH_API_KEY"
        )
    if isinstance(exc, AuthorizationException):
        return UserError(
            f"Elasticsearch denied kubevents' user ({_api_reason(exc)}): give the user of"
            " KUBEVENTS_ELASTICSEARCH_USERNAME or KUBEVENTS_ELASTICSEARCH_API_KEY the cluster"
            " privileges monitor and manage_index_templates and all privileges on the indices"
            " <index>-* and <index>"
        )
    if isinstance(exc, UnsupportedProductError):
        return UserError(
            "the server is not Elasticsearch (OpenSearch, or Elasticsearch older than 7.14):"
            " kubevents needs Elasticsearch 8 or 9"
        )
    if isinstance(exc, TlsError):
        return UserError(
            f"TLS with Elasticsearch failed ({exc}): set KUBEVENTS_ELASTICSEARCH_CA_FILE to the"
            " CA that signed the nodes' certificates (or VERIFY_CERTS=false, for tests only)"
        )
    if isinstance(exc, ApiError) and (
        exc.status_code == 406 or exc.message == "media_type_header_exception"
    ):
        # Client 8 asks for "compatible-with=8", which Elasticsearch 7 cannot answer.
        return UserError(
            f"Elasticsearch refused kubevents' client ({_api_reason(exc)}): an Elasticsearch 7"
            " or older; kubevents needs Elasticsearch 8 or 9"
        )
    if isinstance(exc, ApiError) and exc.status_code == 400:
        return UserError(f"Elasticsearch refused kubevents' set-up: {_api_reason(exc)}")
    if isinstance(exc, ApiError):
        return TransientError(f"Elasticsearch answered {exc.status_code}: {_api_reason(exc)}")
    return TransientError(f"Elasticsearch unreachable: {exc}")


def _api_reason(exc: ApiError) -> str:
    body = exc.body
    if isinstance(body, Mapping) and "error" in body:
        return error_text(body["error"])
    return str(exc.message)


# ---------------------------------------------------------------------------------------------
# The sink


class ElasticsearchSink:
    """See the module's docstring; the Sink contract is in app/sinks/base.py."""

    def __init__(self, options: ElasticsearchSinkSettings, cluster: str):
        self.options = options
        self.cluster = cluster
        self.client: AsyncElasticsearch | None = None
        self._next_retention = 0.0

    def _connect(self) -> AsyncElasticsearch:
        o = self.options
        if not o.urls:
            raise UserError("no Elasticsearch URL: set KUBEVENTS_ELASTICSEARCH_URL")
        if o.api_key and (o.username or o.password):
            raise UserError(
                "set KUBEVENTS_ELASTICSEARCH_API_KEY or KUBEVENTS_ELASTICSEARCH_USERNAME/PASSWORD,"
                " not both"
            )
        if bool(o.username) != bool(o.password):
            raise UserError(
                "KUBEVENTS_ELASTICSEARCH_USERNAME and KUBEVENTS_ELASTICSEARCH_PASSWORD go together"
            )
        auth: dict[str, Any] = {}
        if o.api_key:
            auth["api_key"] = o.api_key.get_secret_value()
        elif o.username and o.password:
            auth["basic_auth"] = (o.username, o.password.get_secret_value())
        if o.ca_file:
            auth["ca_certs"] = str(o.ca_file)
        # Sniffing replaces the configured URLs by the nodes' publish addresses, which are
        # unreachable behind a load balancer, a Kubernetes Service or Elastic Cloud: opt-in.
        # (The client turns on sniffing before requests whenever min_delay_between_sniffing is
        # given at all, so it is given only with sniff on.)
        sniffing: dict[str, Any] = (
            {
                "sniff_on_start": True,
                "sniff_on_node_failure": True,
                "sniff_before_requests": True,  # kube-eventer's periodic sniffing
                "min_delay_between_sniffing": 60.0,  # the default 10 s re-sniffs often
            }
            if o.sniff
            else {}
        )
        return AsyncElasticsearch(
            o.urls,
            **auth,
            verify_certs=o.verify_certs,
            request_timeout=o.request_timeout_s,
            max_retries=o.max_retries,
            # max_retries covers connection errors and 429/502/503/504 (the client's default),
            # not a timeout: a timed-out bulk may still be running on the cluster, and sending it
            # again at once only adds load; the pipeline retries it later, with backoff.
            retry_on_timeout=False,
            # orjson, not the standard library's json: parsing the bulk responses took ~7 % of
            # the worker's CPU (py-spy).
            serializer=OrjsonSerializer(),
            **sniffing,
        )

    async def start(self) -> None:
        if self.client is None:
            self.client = self._connect()
        try:
            if self.options.health_check:
                await self._wait_ready(self.client)
            nodes = await self.client.nodes.info(node_id="_local", filter_path="nodes.*.version")
            versions = [n.get("version", "?") for n in nodes.body.get("nodes", {}).values()]
            problems = [p for v in versions or ["unknown"] if (p := version_problem(v))]
            if problems:
                raise UserError(problems[0])
            await self._check_names(self.client)
            # Every start: installs, upgrades, or rewrites the same template (idempotent).
            await self.client.indices.put_index_template(**index_template(self.options.index))
            if self.options.retention_days:
                await self._expire(self.client)
            LOG.info("elasticsearch %s ready, index %s", versions[0], self.options.index)
        except (UserError, TransientError):
            await self.stop()
            raise
        except (ApiError, TransportError) as exc:
            await self.stop()
            raise start_error(exc) from exc

    async def _wait_ready(self, client: AsyncElasticsearch) -> None:
        """Until the cluster is at least yellow, for startup_timeout_s at most; still not ready
        -> TransientError (the pipeline retries start)."""
        timeout = self.options.startup_timeout_s
        deadline = time.monotonic() + timeout
        while True:
            # Short probes, each bounded by the time left: the server holds one for up to
            # ``wait`` s (then 408); our loop, not the transport's retries, does the waiting.
            wait = max(1, min(int(deadline - time.monotonic()), 10))
            probe = client.options(request_timeout=wait + 2.0, max_retries=0)
            try:
                await probe.cluster.health(wait_for_status="yellow", timeout=f"{wait}s")
                return
            except (TlsError, UnsupportedProductError):
                raise
            except ApiError as exc:
                # 408: not yellow in time; 5xx: no master elected yet. Others are answers.
                if exc.status_code != 408 and exc.status_code < 500:
                    raise
                last = start_error(exc)
            except TransportError as exc:
                last = start_error(exc)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransientError(
                    f"Elasticsearch at {', '.join(self.options.urls)} not ready after"
                    f" {timeout:g}s: {last}"
                )
            await asyncio.sleep(min(1.0, left))

    async def _check_names(self, client: AsyncElasticsearch) -> None:
        """What would make every write fail: an index named like the read alias (then no daily
        index can be created), a missing ingest pipeline (then every item is a 400)."""
        index = self.options.index
        if await client.indices.exists(index=index) and not await client.indices.exists_alias(
            name=index
        ):
            raise UserError(
                f"an index named {index!r} exists, and kubevents' read alias needs that name: set"
                " KUBEVENTS_ELASTICSEARCH_INDEX to another name, or move that index away"
            )
        if self.options.pipeline:
            try:
                await client.ingest.get_pipeline(id=self.options.pipeline)
            except NotFoundError:
                raise UserError(
                    f"the ingest pipeline {self.options.pipeline!r} does not exist in"
                    " Elasticsearch: create it, or unset KUBEVENTS_ELASTICSEARCH_PIPELINE"
                ) from None

    async def _expire(self, client: AsyncElasticsearch) -> None:
        assert self.options.retention_days is not None
        self._next_retention = time.monotonic() + RETENTION_EVERY_S
        await delete_older_indices(client, self.options.index, self.options.retention_days)

    async def write(self, events: Sequence[Event]) -> list[Failure]:
        return await write_events(self, events)

    def prepare(self, event: Event) -> bytes:
        """The event's bulk action, encoded (the pipeline builds the next batch's while this
        one is written); BadEvent when it cannot be a document."""
        try:
            return encode(
                build_action(event, self.options.index, self._cluster(event), datetime.now(UTC))
            )
        except BadEvent:
            DOCUMENTS.labels("rejected").inc()
            raise

    async def write_prepared(self, ready: Sequence[bytes]) -> list[Failure]:
        if self.client is None:
            raise TransientError("the Elasticsearch sink is not started")
        client = self.client
        if self.options.retention_days and time.monotonic() >= self._next_retention:
            try:
                await self._expire(client)
            except (ApiError, TransportError) as exc:  # next hour; the writes matter more
                LOG.warning("retention failed: %s", exc)

        gate = asyncio.Semaphore(self.options.bulk_workers)
        results = await asyncio.gather(
            *(
                self._bulk(client, gate, chunk)
                for chunk in split(
                    list(enumerate(ready)), self.options.bulk_workers, MAX_REQUEST_BYTES
                )
            ),
            return_exceptions=True,
        )
        # A request that failed as a whole fails the batch: writing the rest again is harmless
        # (external versions), and a transient cause wins over a rejection (bisecting a batch
        # the cluster cannot take now would dead-letter good records).
        errors = [r for r in results if isinstance(r, BaseException)]
        for error in errors:
            if not isinstance(error, Exception):
                raise error  # cancelled
        if errors:
            raise next((e for e in errors if isinstance(e, TransientError)), errors[0])

        failures: list[Failure] = []
        for result in results:
            assert not isinstance(result, BaseException)
            for i, (outcome, reason) in result:
                DOCUMENTS.labels(outcome).inc()
                if outcome in ("retry", "rejected"):
                    failures.append(Failure(i, reason, retry=outcome == "retry"))
        return sorted(failures, key=lambda f: f.index)

    def _cluster(self, event: Event) -> str:
        # cluster_name overrides; else the cluster the core stamped on the event.
        if self.options.cluster_name:
            return self.options.cluster_name
        stamped = event.get("cluster")
        return stamped if isinstance(stamped, str) and stamped else self.cluster

    async def _bulk(
        self, client: AsyncElasticsearch, gate: asyncio.Semaphore, chunk: list[tuple[int, bytes]]
    ) -> list[tuple[int, tuple[str, str]]]:
        async with gate:
            try:
                # The raw API, not the helpers: they send one request at a time and their
                # retries are not ours to count (the pipeline retries, with backoff).
                resp = await client.bulk(
                    operations=[line for _, line in chunk],  # type: ignore[misc]
                    pipeline=self.options.pipeline,
                    # Only what classify reads: the full items (index, id, version, shards,
                    # seq_no ...) are ~5x longer, for Elasticsearch to write and us to parse.
                    filter_path="items.*.status,items.*.error",
                )
            except ApiError as exc:
                reason = f"bulk request failed: {exc.status_code} {_api_reason(exc)}"
                if exc.status_code in (400, 413):  # the request itself: bisect to the record
                    raise Rejected(reason) from exc
                raise TransientError(reason) from exc
            except TransportError as exc:
                raise TransientError(f"Elasticsearch unreachable: {exc}") from exc
        items = resp.body.get("items", [])
        if len(items) != len(chunk):
            raise TransientError(f"bulk answered {len(items)} items for {len(chunk)} actions")
        # Items answer in the order of the actions; each is {"index": {...}}.
        return [
            (i, classify(next(iter(item.values()))))
            for (i, _), item in zip(chunk, items, strict=True)
        ]

    async def stop(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()
