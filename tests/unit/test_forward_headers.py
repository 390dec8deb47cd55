"""Which client headers go upstream: the trace context and the operator's list, never
credentials or hop-by-hop headers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.upstream.forward_headers import forwarded_headers


def raw(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in pairs]


def test_trace_context_always_and_listed_headers_only() -> None:
    incoming = raw(
        ("traceparent", "00-abc-def-01"),
        ("tracestate", "a=1"),
        ("X-Tenant", "acme"),
        ("X-Other", "no"),
        ("Authorization", "Bearer client"),
        ("Cookie", "s=1"),
    )
    assert forwarded_headers(incoming) == {"traceparent": "00-abc-def-01", "tracestate": "a=1"}
    assert forwarded_headers(incoming, ["X-TENANT"])["x-tenant"] == "acme"


def test_credentials_and_hop_by_hop_never_go_even_when_listed() -> None:
    incoming = raw(("Authorization", "Bearer c"), ("Cookie", "s"), ("Upgrade", "h2c"), ("TE", "x"))
    assert forwarded_headers(incoming, ["authorization", "cookie", "upgrade", "te"]) == {}


def test_headers_named_in_connection_are_hop_by_hop() -> None:
    incoming = raw(("X-Tenant", "acme"), ("Connection", "keep-alive, X-Tenant"))
    assert forwarded_headers(incoming, ["x-tenant"]) == {}


def test_a_repeated_header_is_joined() -> None:
    incoming = raw(("tracestate", "a=1"), ("tracestate", "b=2"))
    assert forwarded_headers(incoming) == {"tracestate": "a=1, b=2"}


def test_the_setting_refuses_credentials_and_lowers_names() -> None:
    assert Settings(forward_headers="X-Tenant, Baggage").forward_headers == ["x-tenant", "baggage"]
    with pytest.raises(ValidationError, match="CLIP_PROXY_FORWARD_HEADERS: authorization"):
        Settings(forward_headers="Authorization")


def test_echo_is_an_upstream_base_url() -> None:
    assert Settings(upstream_base_url="echo").echo_upstream
    assert not Settings().echo_upstream
    with pytest.raises(ValidationError, match="or be 'echo'"):
        Settings(upstream_base_url="ftp://x")
