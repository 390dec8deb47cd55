"""A real OpenAI-compatible vision server on loopback, scripted: it records what it was
asked (the prompt, the image, the headers), answers after a set delay, and can fail in each
way a describer fails: 500, 429, a timeout (it never answers), a cut body, an answer that
quotes the key it was sent. "Refused" is a port nobody listens on (`refused_url`).

    with VisionServer(answer="A red bicycle.", delay_s=0.2) as server:
        ... CLIP_PROXY_DESCRIBERS=[{"base_url": server.base_url, "model": "vlm"}] ...
        server.requests[-1].prompt
"""

from __future__ import annotations

import asyncio
import base64
import threading
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.helpers import free_port

MODES = ("ok", "500", "429", "hang", "cut", "quote_key")


@dataclass(frozen=True)
class Asked:
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def prompt(self) -> str:
        return str(self.body["messages"][0]["content"][0]["text"])

    @property
    def image_url(self) -> str:
        return str(self.body["messages"][0]["content"][1]["image_url"]["url"])

    @property
    def image_bytes(self) -> bytes:
        return base64.b64decode(self.image_url.split(",", 1)[1])


def refused_url() -> str:
    """A describer address where nothing listens: the connection is refused."""
    return f"http://127.0.0.1:{free_port()}/v1"


class VisionServer:
    def __init__(self, *, answer: str = "A red bicycle.", delay_s: float = 0.0) -> None:
        self.answer = answer
        self.delay_s = delay_s
        self.mode = "ok"
        self.requests: list[Asked] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        self.requests.clear()
        self.max_in_flight = 0
        self.mode = "ok"

    def __enter__(self) -> VisionServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/stats", self._stats)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"requests": len(self.requests), "max_in_flight": self.max_in_flight}
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Asked(body, dict(request.headers)))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            mode = self.mode
            if mode == "hang":
                await asyncio.sleep(3600)
            if mode in ("500", "429"):
                error = {"error": {"message": "scripted failure", "type": "server_error"}}
                return web.json_response(error, status=int(mode))
            if mode == "cut":
                response = web.StreamResponse(headers={"Content-Type": "application/json"})
                response.content_length = 4096
                await response.prepare(request)
                await response.write(b'{"choices": [{"message": {"content": "A red')
                assert request.transport is not None
                request.transport.close()
                return response
            text = self.answer
            if mode == "quote_key":
                text = f"{text} (I was called with {request.headers.get('Authorization')})"
            return web.json_response(
                {
                    "id": "chatcmpl-vision",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 300, "completion_tokens": 20, "total_tokens": 320},
                }
            )
        finally:
            self.in_flight -= 1


def main() -> None:
    """Serve in a process of its own (bench/describe.py): `--port`, `--delay-s`, `--mode`."""
    import argparse
    import time

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-s", type=float, default=0.2)
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--answer", default="A grey tabby cat lying on a sofa.")
    args = parser.parse_args()
    server = VisionServer(answer=args.answer, delay_s=args.delay_s)
    server.port = args.port
    server.mode = args.mode
    with server:
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
