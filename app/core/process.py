"""What the core pipeline does to one raw record, as plain code the agents call.

decode -> (DLQ on bad input) -> dedupe -> enrich -> enriched record + count increments. The agent
owns Kafka, tables and acks; this module owns the decisions, so it is tested without a broker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import Counter

from app.core.dedupe import Verdict, decide, state_of
from app.core.enrich import Enricher
from app.model.deadletter import dead_letter
from app.model.envelope import DecodeError, parse_raw
from app.model.normalize import NormalizedEvent, normalize, to_record

PROCESSED = Counter("kubevents_core_records_total", "Raw records by outcome.", ["outcome"])
# Looked up once: ``labels()`` per record was a visible share of the worker's CPU.
OUTCOMES = {name: PROCESSED.labels(name) for name in ["dlq", *(v.value for v in Verdict)]}


@dataclass(frozen=True, slots=True)
class Output:
    topic: str  # "enriched" | "dlq"
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Origin:
    topic: str
    partition: int
    offset: int
    key: bytes | None


def dlq_output(reason: str, value: bytes | None, origin: Origin) -> Output:
    record = dead_letter(
        reason,
        value,
        topic=origin.topic,
        partition=origin.partition,
        offset=origin.offset,
        key=origin.key,
    )
    return Output("dlq", origin.key or b"", record)


@dataclass(frozen=True, slots=True)
class Increment:
    """``delta`` more occurrences of count key ``key`` at ``at`` (epoch s: the window it is in)."""

    key: str
    delta: int
    at: float


@dataclass(slots=True)
class Result:
    outputs: list[Output]
    increments: list[Increment]


def count_increments(event: NormalizedEvent, delta: int) -> list[Increment]:
    """One increment per count key; the occurrence time (last_seen) picks the window."""
    if delta <= 0:
        return []
    keys = [f"reason|{event.namespace}|{event.reason}|{event.type}"]
    if event.type == "Warning":
        io = event.involved
        keys.append(f"object|{io.namespace}|{io.kind}|{io.name}|{io.uid or event.uid}")
    at = event.last_seen.timestamp()
    return [Increment(k, delta, at) for k in keys]


async def process(
    value: bytes | None,
    origin: Origin,
    *,
    max_bytes: int,
    default_cluster: str,
    seen_get: Callable[[str], Any],
    seen_set: Callable[[str, Any], None],
    enricher: Enricher,
) -> Result:
    try:
        event = normalize(parse_raw(value, max_bytes=max_bytes), default_cluster=default_cluster)
    except DecodeError as exc:
        OUTCOMES["dlq"].inc()
        return Result([dlq_output(str(exc), value, origin)], [])
    decision = decide(seen_get(event.uid), event)
    if not decision.passes:
        OUTCOMES[decision.verdict.value].inc()
        return Result([], [])
    enrichment = await enricher.enrich(event)
    record = to_record(
        event,
        count_delta=decision.count_delta,
        labels=enrichment.labels,
        owners=enrichment.owners,
        enrichment_status=enrichment.status,
        enrichment_error=enrichment.error,
    )
    # Noted for the rest of the batch; the agent writes the dedupe table only once the outputs
    # are acknowledged, so the table never runs ahead of what was really published.
    seen_set(event.uid, state_of(event))
    OUTCOMES[decision.verdict.value].inc()
    key = (event.involved.uid or event.uid).encode()
    out = [Output("enriched", key, orjson.dumps(record))]
    return Result(out, count_increments(event, decision.count_delta))
