"""A real HTTP egress proxy on loopback, as a company network puts in front of the
internet: CONNECT tunnels (for https targets) and absolute-form requests (for http ones),
each recorded, so a test sees what went through it.

    with EgressProxy() as egress:
        ... HTTPS_PROXY=egress.url ...
        assert egress.requests == ["CONNECT upstream.test:8443"]

Names under `.test` (reserved by RFC 6761, never on the internet) are this machine to the
egress proxy: a test names its upstream `upstream.test` so that the proxy under test, which
sends loopback upstreams direct, has a non-loopback name to send through the egress proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from urllib.parse import urlsplit


class EgressProxy:
    def __init__(self) -> None:
        self.requests: list[str] = []  # "CONNECT host:port" or "GET http://host:port/path"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> EgressProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, version = head.split(b"\r\n", 1)[0].decode().split(" ")
            self.requests.append(f"{method} {target}")
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    resolve(host), int(port)
                )
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                url = urlsplit(target)
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    resolve(url.hostname or ""), url.port or 80
                )
                path = (url.path or "/") + (f"?{url.query}" if url.query else "")
                rest = head.split(b"\r\n", 1)[1]
                upstream_writer.write(f"{method} {path} {version}\r\n".encode() + rest)
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()


TEST_DOMAIN = ".test"


def resolve(host: str) -> str:
    """The egress proxy's DNS: `*.test` is loopback, anything else as the system says."""
    return "127.0.0.1" if host.endswith(TEST_DOMAIN) else host


def via_test_name(url: str, name: str = "upstream.test") -> str:
    """`url` with its loopback address replaced by a `.test` name the egress proxy resolves."""
    return url.replace("127.0.0.1", name, 1)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
