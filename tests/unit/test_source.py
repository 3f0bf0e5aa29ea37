"""The LIST's continue token read from a page's bytes, before the page is parsed."""

from __future__ import annotations

import orjson

from app.source import continue_token


def page(cont: str | None, messages: list[str]) -> bytes:
    # The API server's field order: kind, apiVersion, metadata, items.
    meta = {"resourceVersion": "42", **({"continue": cont} if cont else {})}
    items = [{"metadata": {"name": f"e{i}"}, "message": m} for i, m in enumerate(messages)]
    doc = {"kind": "EventList", "apiVersion": "v1", "metadata": meta, "items": items}
    return orjson.dumps(doc)


def test_the_token_is_read_from_the_metadata_before_the_items() -> None:
    token = "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6NDIsInN0YXJ0IjoiYmVuY2gvZTQ5OVx1MDAwMCJ9"
    body = page(token, ["a", "b"])
    assert continue_token(body) == token == orjson.loads(body)["metadata"]["continue"]


def test_the_last_page_has_no_token_whatever_its_items_say() -> None:
    # An item's text holding the same characters is escaped in JSON, and lies after "items".
    assert continue_token(page(None, ['"continue":"fake"', "x"])) is None
    assert continue_token(page(None, [])) is None


def test_a_token_written_after_the_items_is_not_taken_early() -> None:
    # Not what the API server writes; the page's parsed token then decides (app/source.py).
    body = b'{"items":[],"metadata":{"continue":"abc"}}'
    assert continue_token(body) is None
