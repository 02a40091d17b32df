"""The service's request limits, read from its OpenAPI document (generated with the limits in force)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import NotAClipService


@dataclass(frozen=True)
class Limits:
    """Items per request and characters per item the service accepts; None where it sets no limit."""

    max_texts: int
    max_urls: int
    max_text_chars: int | None = None
    max_url_chars: int | None = None
    max_classify_inputs: int | None = None  # None also when the service has no /classify
    paths: frozenset[str] = frozenset()
    encodings: frozenset[str] = frozenset()  # the vector formats /embed/* answer in; none: floats only (older)

    @classmethod
    def from_openapi(cls, doc: Any) -> "Limits":
        """Read the limits from ``/openapi.json``; NotAClipService when the document lacks them."""
        if not isinstance(doc, dict) or not isinstance(doc.get("paths"), dict):
            raise NotAClipService("its /openapi.json is not an OpenAPI document")
        texts = _property(doc, "/embed/text", "texts")
        urls = _property(doc, "/embed/image", "urls")
        if texts is None or urls is None or _max_items(doc, texts) is None or _max_items(doc, urls) is None:
            raise NotAClipService("its /openapi.json does not describe /embed/text and /embed/image with limits")
        classify = _property(doc, "/classify", "inputs")
        return cls(max_texts=_max_items(doc, texts), max_urls=_max_items(doc, urls),
                   max_text_chars=_item_max_length(doc, texts), max_url_chars=_item_max_length(doc, urls),
                   max_classify_inputs=_max_items(doc, classify) if classify is not None else None,
                   paths=frozenset(doc["paths"]), encodings=_offered_encodings(doc))


def _offered_encodings(doc: dict) -> frozenset[str]:
    """The ``encoding`` values both /embed/text and /embed/image take (the enum the service documents)."""
    offered = []
    for path in ("/embed/text", "/embed/image"):
        schema = _property(doc, path, "encoding")
        values = schema.get("enum") if isinstance(schema, dict) else None
        offered.append(frozenset(v for v in values if isinstance(v, str)) if isinstance(values, list) else frozenset())
    return offered[0] & offered[1]


def _resolve(doc: dict, schema: Any) -> Any:
    # Local references only ("#/components/schemas/X"), as flask-smorest writes them.
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#/"):
        node: Any = doc
        for part in schema["$ref"][2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        schema = node
    return schema


def _property(doc: dict, path: str, name: str) -> dict | None:
    """The JSON schema of body field ``name`` of ``POST path``, or None."""
    try:
        schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    except (KeyError, TypeError):
        return None
    prop = (_resolve(doc, schema).get("properties") or {}).get(name)
    return _resolve(doc, prop) if isinstance(prop, dict) else None


def _alternatives(doc: dict, schema: dict) -> list[dict]:
    """``schema`` itself and, for a oneOf/anyOf (one item or a list), each branch."""
    branches = [schema]
    for key in ("oneOf", "anyOf"):
        branches += [_resolve(doc, s) for s in schema.get(key) or [] if isinstance(s, dict)]
    return [b for b in branches if isinstance(b, dict)]


def _max_items(doc: dict, schema: dict) -> int | None:
    # A oneOf of "one item or a list" keeps maxItems on its array branch.
    values = [b["maxItems"] for b in _alternatives(doc, schema) if isinstance(b.get("maxItems"), int)]
    return max(values) if values else None


def _item_max_length(doc: dict, schema: dict) -> int | None:
    values = []
    for branch in _alternatives(doc, schema):
        items = _resolve(doc, branch.get("items"))
        if isinstance(items, dict) and isinstance(items.get("maxLength"), int):
            values.append(items["maxLength"])
    return max(values) if values else None
