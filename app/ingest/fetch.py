"""Fetch an image URL without letting a client reach the proxy's own network (SSRF).

For each hop: resolve the name once, refuse if any address is not globally routable
(loopback, private, link-local and cloud metadata, CGNAT, multicast, reserved, and the
IPv4-mapped, 6to4, Teredo and NAT64 forms of them), then connect to the address that was
checked, so a second DNS answer cannot swap it (DNS rebinding). Redirects are followed by
hand, each hop checked again; the body is capped while it streams.

Through an egress proxy (FetchPolicy.proxy, opt-in with CLIP_PROXY_FETCH_PROXY) the same
rules hold: the name is resolved and checked here, before anything is sent. An http:// image
is asked of the proxy by the checked address (`GET http://203.0.113.7/...`, the name in
Host), so the proxy's DNS never picks it. An https:// image goes through a CONNECT tunnel
to the name (TLS must check the certificate against the name), so the proxy resolves it
again: a DNS answer that changes between the two look-ups is then the proxy's own rules to
refuse. The README says the same.

    fetcher = SafeFetcher(policy)
    data = await fetcher.fetch("https://example.com/cat.jpg", param="messages[0]...")
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urljoin

import httpx

from app.errors import ForbiddenUrl, ImageFetchFailed
from app.ingest.limits import image_too_large

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int
    timeout_s: float = 5.0
    max_redirects: int = 5
    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IPNetwork, ...] = field(default_factory=tuple)
    proxy: str = ""  # an http(s):// egress proxy for image fetching; empty: connect directly


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo, NAT64), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """True only for addresses a public client could reach on the internet."""
    inner = embedded_ipv4(address)
    if inner is not None and not is_public(inner):
        return False
    # is_global already excludes private, loopback, link-local, CGNAT, reserved and
    # unspecified ranges; some multicast ranges count as global, and we never want those.
    return address.is_global and not address.is_multicast


class SafeFetcher:
    """Fetches image bytes from public http(s) URLs, checking every hop."""

    def __init__(self, policy: FetchPolicy) -> None:
        self._policy = policy
        timeout = httpx.Timeout(policy.timeout_s)
        # trust_env=False: a proxy from the environment would connect on our behalf; only
        # the one named in the policy is used, and it is handed checked addresses.
        self._client = httpx.AsyncClient(
            timeout=timeout,
            trust_env=False,
            follow_redirects=False,
            proxy=policy.proxy or None,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str, *, param: str | None) -> bytes:
        # A slow server may not stretch one fetch over many per-read timeouts.
        deadline = self._policy.timeout_s * (self._policy.max_redirects + 2)
        try:
            async with asyncio.timeout(deadline):
                return await self._follow(url, param)
        except TimeoutError as exc:
            raise ImageFetchFailed(f"fetching the image timed out: {url}", param=param) from exc

    async def _follow(self, url: str, param: str | None) -> bytes:
        for _ in range(self._policy.max_redirects + 1):
            request = await self._pinned_request(url, param)
            # httpx errors while connecting or while the body streams in (a reset, a short
            # read) are the image's failure, never the proxy's.
            try:
                response = await self._client.send(request, stream=True)
                try:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise ImageFetchFailed(
                            f"fetching the image answered HTTP {response.status_code}: {url}",
                            param=param,
                        )
                    return await self._read_capped(response, param)
                finally:
                    await response.aclose()
            except httpx.TimeoutException as exc:
                raise ImageFetchFailed(f"fetching the image timed out: {url}", param=param) from exc
            except httpx.HTTPError as exc:
                raise ImageFetchFailed(f"could not fetch the image: {url}", param=param) from exc
        raise ImageFetchFailed(
            f"more than {self._policy.max_redirects} redirects fetching {url}", param=param
        )

    async def _pinned_request(self, url: str, param: str | None) -> httpx.Request:
        """A request for `url` that connects to an address checked against the policy."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ForbiddenUrl(f"not a valid URL: {exc}", param=param) from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ForbiddenUrl("image URLs must be http(s) or data: URLs", param=param)
        host = parsed.host.lower().rstrip(".")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        address = await self._resolve_checked(host, port, param)
        if self._policy.proxy and parsed.scheme == "https":
            # Checked above; the tunnel is to the name, whose certificate TLS verifies.
            return self._client.build_request("GET", parsed, headers={"Accept": "image/*"})
        pinned = parsed.copy_with(host=str(address))
        headers = {"Host": parsed.netloc.decode("ascii"), "Accept": "image/*"}
        extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
        return self._client.build_request("GET", pinned, headers=headers, extensions=extensions)

    async def _resolve_checked(self, host: str, port: int, param: str | None) -> IPAddress:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError) as exc:
            raise ImageFetchFailed(f"cannot resolve image host {host!r}", param=param) from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not addresses:
            raise ImageFetchFailed(f"cannot resolve image host {host!r}", param=param)
        if host not in self._policy.allow_hosts:
            # Every answer must pass: a name with one public and one private address
            # would otherwise be a coin toss away from the private one.
            for address in addresses:
                if not (is_public(address) or self._in_allowed_network(address)):
                    raise ForbiddenUrl(
                        f"image URL host {host!r} resolves to a non-public address; an "
                        "operator allows it with CLIP_PROXY_FETCH_ALLOW_HOSTS (the name) or "
                        "CLIP_PROXY_FETCH_ALLOW_NETWORKS (its network)",
                        param=param,
                    )
        return addresses[0]

    def _in_allowed_network(self, address: IPAddress) -> bool:
        return any(address in network for network in self._policy.allow_networks)

    async def _read_capped(self, response: httpx.Response, param: str | None) -> bytes:
        limit = self._policy.max_bytes
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise image_too_large(limit, param)
        chunks: list[bytes] = []
        received = 0
        async for chunk in response.aiter_bytes():
            received += len(chunk)
            if received > limit:
                raise image_too_large(limit, param)
            chunks.append(chunk)
        return b"".join(chunks)
