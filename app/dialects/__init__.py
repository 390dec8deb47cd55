"""Wire dialects: one module per wire API, each translating its requests into the one internal
Chat Completions request and the upstream's Chat Completions answers back into its own format.

    chat.py        Chat Completions: the identity (relayed byte for byte)
    responses.py   OpenAI Responses: requests into the internal chat request;
                   responses_output.py the `response` object; responses_stream.py its events
    anthropic.py   Anthropic Messages: requests into the internal chat request;
                   anthropic_output.py the `message` object and errors; anthropic_stream.py
                   its events

Pure translation: nothing here does I/O or knows the services, the engine or the upstream.
"""

from __future__ import annotations

# The `dialect` label of the request and stream metrics.
CHAT = "chat"
RESPONSES = "responses"
ANTHROPIC = "anthropic"
NONE = "none"  # a route that is no dialect's (models, health, metrics)

_ROUTE_DIALECTS = {
    "/v1/chat/completions": CHAT,
    "/v1/responses": RESPONSES,
    "/v1/responses/{response_id}": RESPONSES,
    "/v1/messages": ANTHROPIC,
    "/v1/messages/count_tokens": ANTHROPIC,
}


def dialect_of_route(route: str) -> str:
    """The dialect a route template speaks (`none` for routes that are no dialect's)."""
    return _ROUTE_DIALECTS.get(route, NONE)
