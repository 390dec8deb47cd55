"""OpenAPI documentation for routes that read the raw request themselves.

Such a route has no body parameter, so FastAPI documents no body; `request_body_schema`
describes it from the pydantic model (tools such as schemathesis generate requests from it).
The model's nested definitions are inlined, so the schema needs no entries in `components`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_PREFIX = "#/$defs/"


def request_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_PREFIX + "{model}")
    defs = schema.pop("$defs", {})
    resolved = _inline(schema, defs)
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": resolved}},
        }
    }


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace `$ref`s to `defs` by their content (the models here are not recursive)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_PREFIX):
            target = _inline(defs[ref[len(_PREFIX) :]], defs)
            return target | {k: _inline(v, defs) for k, v in node.items() if k != "$ref"}
        # A discriminator's mapping names definitions that are gone; `oneOf` alone suffices.
        return {key: _inline(value, defs) for key, value in node.items() if key != "discriminator"}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node
