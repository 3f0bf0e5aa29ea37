"""The dead-letter record: what could not be decoded or written, with the reason, on k8s-events-dlq.

One JSON object per record that a stage gave up on: the core (undecodable raw input) or a sink
pipeline (a record its destination refused for good). It carries where the record came from
(topic, partition, offset), who gave up (``pipeline``: "core" or the sink pipeline's id), the
reason in the words of whoever refused it, and the record itself (as text when it is UTF-8 and
not huge, always as base64) so that it can be fixed and replayed.
"""

from __future__ import annotations

import base64

import orjson

from app.model.timeutil import now_iso

TEXT_LIMIT = 65536


def dead_letter(
    reason: str,
    value: bytes | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    pipeline: str = "core",
) -> bytes:
    text: str | None
    try:
        text = value.decode() if value is not None else None
    except UnicodeDecodeError:
        text = None
    doc = {
        "reason": reason,
        "pipeline": pipeline,
        "failed_at": now_iso(),
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "key": key.decode(errors="replace") if key else None,
        "value_base64": base64.b64encode(value).decode() if value is not None else None,
        "value_text": text if text is not None and len(text) <= TEXT_LIMIT else None,
    }
    return orjson.dumps(doc)
