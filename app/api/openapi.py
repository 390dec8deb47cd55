"""The proxy's own OpenAPI description: request bodies for routes that read the raw request
themselves, the statuses each route really returns, and no FastAPI phantoms.

Such a route has no body parameter, so FastAPI documents no body; `request_body_schema`
describes it from the pydantic model (tools such as schemathesis generate requests from it),
as JSON and, for chat, as the multipart form too. The model's nested definitions are
inlined, so the schema needs no entries in `components`. `error_responses(400, 413, ...)`
documents error statuses in OpenAI's error shape; `install_openapi(app)` drops the 422
FastAPI adds to every route with a parameter (the proxy answers 400 for what it refuses).

    @router.post("/v1/embeddings", openapi_extra=request_body_schema(EmbeddingRequest),
                 responses=error_responses(400, 401, 413))
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

_PREFIX = "#/$defs/"

# The multipart form of a chat request (app/api/request_body.py reads it).
CHAT_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "prompt": {"type": "string", "description": "the user's text (or send `messages`)"},
        "messages": {"type": "string", "description": "the messages as a JSON array"},
        "stream": {"type": "boolean"},
        "image": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "images, joined to the last user message after its text",
        },
    },
    "additionalProperties": {"type": "string", "description": "any request field, as JSON"},
}

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        },
        "request_id": {"type": "string"},
    },
}

_STATUS_MEANINGS = {
    400: "Invalid request or image",
    401: "Missing or wrong client key (when CLIP_PROXY_API_KEYS is set)",
    404: "Not found",
    408: "The body did not arrive in time",
    413: "Body or image over its byte limit",
    429: "Rate limited (Retry-After)",
    500: "The proxy or one of its models failed",
    502: "The upstream is unreachable or answered garbage",
    503: "Overloaded, draining or not ready (Retry-After)",
    504: "The upstream or a model timed out",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for error statuses, each in OpenAI's error shape."""
    return {
        status: {
            "description": _STATUS_MEANINGS[status],
            "content": {"application/json": {"schema": _ERROR_SCHEMA}},
        }
        for status in statuses
    }


def request_body_schema(model: type[BaseModel], *, form: bool = False) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_PREFIX + "{model}")
    defs = schema.pop("$defs", {})
    content: dict[str, Any] = {"application/json": {"schema": _inline(schema, defs)}}
    if form:
        content["multipart/form-data"] = {"schema": CHAT_FORM_SCHEMA}
    return {"requestBody": {"required": True, "content": content}}


def install_openapi(app: FastAPI) -> None:
    """`/openapi.json` as FastAPI writes it, less the 422s no route returns."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            if "components" in schema and not schemas:
                schema["components"].pop("schemas", None)
                if not schema["components"]:
                    del schema["components"]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace `$ref`s to `defs` by their content (the models here are not recursive)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_PREFIX):
            target = _inline(defs[ref[len(_PREFIX) :]], defs)
            return target | {k: _inline(v, defs) for k, v in node.items() if k != "$ref"}
        # A discriminator's mapping names definitions that are gone, and without it `oneOf`
        # is too strict (a text part is also an `OtherPart`): `anyOf` says what is accepted.
        return {
            "anyOf" if key == "oneOf" else key: _inline(value, defs)
            for key, value in node.items()
            if key != "discriminator"
        }
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node
