"""Which of a client's request headers travel on to the upstream.

Always the W3C trace context (`traceparent`, `tracestate`), so a trace spans the proxy
and the model server; besides those, the names an operator lists in
`CLIP_PROXY_FORWARD_HEADERS`. Never credentials (`Authorization`: the upstream gets the
proxy's own key; `Cookie`; `Proxy-Authorization`) nor hop-by-hop headers, which describe
one connection and mean nothing on the next (RFC 9110 section 7.6.1). `X-Request-ID` is
sent by the upstream client itself.

    forwarded_headers([(b"traceparent", b"00-...")], extra=["x-tenant"])
    # {"traceparent": "00-..."}
"""

from __future__ import annotations

from collections.abc import Iterable

TRACE_CONTEXT = ("traceparent", "tracestate")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Also never: credentials, and what the upstream client sets itself for its own request.
NEVER_FORWARDED = HOP_BY_HOP | {
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "content-type",
    "accept-encoding",
}


def forwarded_headers(
    incoming: Iterable[tuple[bytes, bytes]], extra: Iterable[str] = ()
) -> dict[str, str]:
    """The headers to send upstream, from the client's raw ASGI headers (names lower-case).

    A header the client repeated is joined with ", " (RFC 9110 section 5.3); a value
    that is not latin-1 text is dropped."""
    wanted = (set(TRACE_CONTEXT) | {name.lower() for name in extra}) - NEVER_FORWARDED
    # Names listed on the client's own `Connection` header are hop-by-hop too.
    found: dict[str, list[str]] = {}
    for raw_name, raw_value in incoming:
        name = raw_name.decode("latin-1").lower()
        if name == "connection":
            wanted -= {token.strip().lower() for token in raw_value.decode("latin-1").split(",")}
        if name in wanted:
            found.setdefault(name, []).append(raw_value.decode("latin-1"))
    return {name: ", ".join(values) for name, values in found.items() if name in wanted}
