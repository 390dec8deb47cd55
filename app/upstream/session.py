"""The upstream's HTTP client, built once, and the one place its exceptions become ours.

The client is aiohttp: a well-kept HTTP/1.1 client whose C parser costs per relayed chunk
about what the hand-written transport it replaced cost (bench/results/proxy.md), and which
gets the hard parts right: interim 1xx answers skipped, every framing (chunked,
Content-Length, close-delimited) checked, a connection reused only after its last response
was read to its end, egress proxies (CONNECT for https), TLS verification, gzip decoded in
bounded pieces.

    session = build_session(ssl_context=ssl_context(TlsOptions()), max_connections=256, ...)
    proxy = egress_proxy("https://api.example.com/v1", override="")   # from the environment
    error = translate(exc)                      # aiohttp's exception -> our ProxyError
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import certifi
from yarl import URL

from app.errors import (
    ProxyError,
    UpstreamBadResponse,
    UpstreamStreamTruncated,
    UpstreamTimeout,
    UpstreamTlsError,
    UpstreamUnreachable,
)


@dataclass(frozen=True)
class TlsOptions:
    """Whom the upstream's certificate must chain to, and our own for mTLS."""

    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


def ssl_context(tls: TlsOptions) -> ssl.SSLContext:
    """Verification always on. The CAs: UPSTREAM_CA_FILE, else SSL_CERT_FILE / SSL_CERT_DIR
    (as httpx and the `openai` SDK read them), else certifi's public bundle."""
    if tls.ca_file is not None:
        context = ssl.create_default_context(cafile=str(tls.ca_file))
    else:
        cert_file = os.environ.get("SSL_CERT_FILE") or None
        cert_dir = os.environ.get("SSL_CERT_DIR") or None
        if cert_file is None and cert_dir is None:
            cert_file = certifi.where()
        context = ssl.create_default_context(cafile=cert_file, capath=cert_dir)
    if tls.client_cert is not None:
        key = str(tls.client_key) if tls.client_key is not None else None
        context.load_cert_chain(str(tls.client_cert), key)
    return context


@dataclass(frozen=True)
class EgressProxy:
    """An HTTP(S) proxy every upstream request goes through (CONNECT for https targets).

    Credentials in its URL travel as a Proxy-Authorization header, never in logs: `str()`
    shows the URL without them."""

    url: URL
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return str(self.url)


def parse_proxy(value: str, *, name: str) -> EgressProxy:
    """`http://user:pass@host:port` (or `host:port`, read as http://) as an EgressProxy.
    `name` is the setting or variable it came from, for the error message, which never
    quotes the value (it may carry a password)."""
    if "://" not in value:
        value = "http://" + value  # what httpx and urllib do with a bare host:port
    url = URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(
            f"{name}: only http:// and https:// egress proxies are supported "
            f"(got a {url.scheme}:// URL)"
        )
    headers = {}
    if url.user is not None:
        password = url.password or ""
        headers["Proxy-Authorization"] = aiohttp.encode_basic_auth(url.user, password)
    return EgressProxy(url.with_user(None).with_password(None), headers)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def egress_proxy(target: str, override: str) -> EgressProxy | None:
    """The proxy toward `target`: `override` (CLIP_PROXY_UPSTREAM_PROXY) when set, else the
    environment as httpx reads it: HTTPS_PROXY / HTTP_PROXY by the target's scheme, ALL_PROXY
    for any scheme, either case; NO_PROXY (host names, domain suffixes, `*`) bypasses."""
    parts = urlsplit(target)
    if is_loopback_host(parts.hostname):
        # A loopback upstream (the embedded echo, a model server beside the proxy) is this
        # machine: an egress proxy would reach its own loopback, or leak the request.
        return None
    if override:
        return parse_proxy(override, name="CLIP_PROXY_UPSTREAM_PROXY")
    proxies = urllib.request.getproxies_environment()
    if "*" in (host.strip() for host in proxies.get("no", "").split(",")):
        return None  # httpx reads `*` anywhere in the list as "no proxy at all"
    # proxy_bypass reads NO_PROXY (urllib's proxy_bypass_environment on Linux).
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    scheme = parts.scheme or "https"
    value = proxies.get(scheme) or proxies.get("all")
    if not value:
        return None
    return parse_proxy(value, name=f"{scheme.upper()}_PROXY / ALL_PROXY")


def build_session(
    *,
    max_connections: int,
    keepalive_expiry_s: float,
    connect_timeout_s: float,
    ssl_context: ssl.SSLContext,
    headers: dict[str, str],
) -> aiohttp.ClientSession:
    """The one pooled client toward the upstream. Must be called inside the event loop."""
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        limit_per_host=0,
        keepalive_timeout=keepalive_expiry_s,
        ssl=ssl_context,
    )
    # Which attempt reused a pooled connection: a drop before any response byte on one of
    # those is a connection the upstream closed while it idled (see `is_stale`).
    trace = aiohttp.TraceConfig()
    trace.on_connection_reuseconn.append(_note_reuse)
    return aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        # sock_connect: opening one connection (the TLS handshake included). No total: a
        # stream lasts as long as the model writes. No sock_read: it moves a timer on every
        # read from the socket; the read timeout is the client's (headers) and the
        # response's (body, app/upstream/response.py SilenceWatch), at no cost per chunk.
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s),
        trust_env=False,  # the proxy is resolved once, by `egress_proxy`
        trace_configs=[trace],
        # No cookies between users' requests, ever.
        cookie_jar=aiohttp.DummyCookieJar(),
    )


class Attempt(SimpleNamespace):
    """Per-request facts the session's trace fills in."""

    reused: bool = False


async def _note_reuse(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: Any
) -> None:
    attempt = context.trace_request_ctx
    if isinstance(attempt, Attempt):
        attempt.reused = True


def is_retryable(exc: BaseException) -> bool:
    """A failure that means the request never reached a working upstream: worth another
    try on a new connection. Never TLS (it would fail the same way), never a read timeout
    (an upstream that stalls would stall again, and the client has waited enough)."""
    if is_tls_failure(exc) or isinstance(exc, aiohttp.ClientHttpProxyError):
        return False
    if isinstance(exc, aiohttp.SocketTimeoutError) or answer_began(exc):
        return False
    return isinstance(
        exc,
        aiohttp.ClientConnectorError
        | aiohttp.ConnectionTimeoutError
        | aiohttp.ServerDisconnectedError
        | aiohttp.ClientOSError,
    )


def is_stale(exc: BaseException, attempt: Attempt) -> bool:
    """A pooled connection the upstream had closed: it failed before any response byte."""
    return (
        attempt.reused
        and isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
        and not is_tls_failure(exc)
        and not answer_began(exc)
    )


def answer_began(exc: BaseException) -> bool:
    """The upstream had begun its answer (aiohttp hands over the part of the head it got):
    the request reached it, so it is never sent again."""
    return isinstance(exc, aiohttp.ServerDisconnectedError) and not isinstance(exc.message, str)


def is_tls_failure(exc: BaseException) -> bool:
    """A certificate or handshake failure, wherever aiohttp surfaced it (with TLS 1.3 a
    server refusing our client certificate says so only on the first read)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError | ssl.CertificateError | aiohttp.ClientSSLError):
            return True
        seen = seen.__cause__ or seen.__context__
        if seen is exc:
            break
    return False


def tls_problem(exc: BaseException) -> str:
    """The certificate problem in OpenSSL's words (`certificate verify failed: unable to
    get local issuer certificate`), never the certificate itself."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        message = getattr(cert_error, "verify_message", None)
        if message:
            return f"certificate verify failed: {message}"
        return str(cert_error)
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return str(seen.reason or seen).lower()
        seen = seen.__cause__ or seen.__context__
    return "the TLS handshake failed"


def translate(exc: BaseException, *, in_stream: bool = False, host: str = "") -> ProxyError:
    """aiohttp's exceptions to ours, at this one edge. `in_stream`: the failure cut a
    relayed stream, after its headers. `host` ("api.example.com:443") is named in the
    message, with the cause: refused, DNS, TLS, timeout."""
    at = f" {host}" if host else ""
    if is_tls_failure(exc):
        return UpstreamTlsError(f"TLS with the upstream{at} failed: {tls_problem(exc)}")
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return UpstreamUnreachable(
            f"the egress proxy refused the connection to the upstream: {exc.status}"
        )
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return UpstreamUnreachable("cannot reach the egress proxy")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout(f"connecting to the upstream{at} timed out")
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return UpstreamTimeout(f"the upstream{at} did not answer in time")
    if in_stream and isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientConnectionError):
        return truncated()
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return UpstreamUnreachable(
            f"cannot reach the upstream{at}: its name does not resolve (DNS); "
            "check CLIP_PROXY_UPSTREAM_BASE_URL"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return UpstreamUnreachable(
                f"cannot reach the upstream{at}: connection refused (is it running on that "
                "port? check CLIP_PROXY_UPSTREAM_BASE_URL)"
            )
        return UpstreamUnreachable(f"cannot reach the upstream{at}: {exc.os_error.strerror}")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        # With TLS 1.3 a server that refuses our client certificate (or wants one) says so
        # after the handshake, and asyncio reports its alert as a plain close: say so.
        return UpstreamUnreachable(
            "the upstream closed the connection before it answered (an https upstream that "
            "requires a client certificate, CLIP_PROXY_UPSTREAM_CLIENT_CERT, does this)"
        )
    if isinstance(exc, aiohttp.ClientResponseError):
        return UpstreamBadResponse("the upstream's answer is not valid HTTP")
    return UpstreamUnreachable(f"cannot reach the upstream{at}")


def truncated() -> UpstreamStreamTruncated:
    return UpstreamStreamTruncated(
        "the upstream closed the connection before the stream's end (no `data: [DONE]`): "
        "the answer is incomplete"
    )


UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ssl.SSLError)
