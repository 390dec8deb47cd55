"""One describer: an OpenAI-compatible vision model asked, over the project's one upstream
edge (`UpstreamClient`: its TLS, egress proxy, stale-connection retry and key scrubbing), to
describe one image. It never retries a failure itself: the chain asks the next describer.

    describer = Describer(spec, client, timeout_s=30, concurrency=8)
    text = await describer.describe(prompt, image_url)   # raises DescriberFailed
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from app.errors import (
    Overloaded,
    ProxyError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from app.upstream.client import UpstreamClient

# A description is a few hundred words; an answer past this was not one.
ANSWER_MAX_BYTES = 1024 * 1024
# Characters of a description kept (and cached; DESCRIPTION_MAX_CHARS cuts the prompt's).
DESCRIPTION_MAX_STORED = 50_000
# Tokens the describer may write (an answer is capped again by DESCRIPTION_MAX_CHARS).
MAX_TOKENS = 1024
OUTCOMES = (
    "ok",
    "timeout",
    "rate_limited",
    "server_error",
    "client_error",
    "unreachable",
    "bad_response",
)


class DescriberFailed(Exception):
    """One describer did not describe: `outcome` is one of OUTCOMES, the metric's label."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


class Describer:
    def __init__(
        self,
        name: str,
        model: str,
        client: UpstreamClient,
        *,
        timeout_s: float,
        concurrency: int,
    ) -> None:
        self.name = name
        self.model = model
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._client = client
        self._slots = asyncio.Semaphore(concurrency)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def describe(self, prompt: str, image_url: str) -> str:
        """The model's description of the image; DescriberFailed for anything else. At most
        `concurrency` requests are in flight; the timeout runs once a slot is taken."""
        body = orjson.dumps(
            {
                "model": self.model,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": prompt},
                            {"type": "image_url", "image_url": {"url": image_url}},
                        ],
                    }
                ],
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "stream": False,
            }
        )
        async with self._slots:
            try:
                async with asyncio.timeout(self.timeout_s):
                    answer = await self._ask(body)
            except TimeoutError:
                raise DescriberFailed("timeout", f"no answer in {self.timeout_s:g} s") from None
        return text_of(answer)[:DESCRIPTION_MAX_STORED]

    async def _ask(self, body: bytes) -> bytes:
        try:
            response = await self._client.open("POST", "/chat/completions", body=body)
        except ProxyError as exc:
            raise DescriberFailed(outcome_of(exc), exc.message) from exc
        try:
            return await response.read(max_bytes=ANSWER_MAX_BYTES)  # the key scrubbed
        except ProxyError as exc:  # the answer began and broke off (or ran too long)
            outcome = "timeout" if isinstance(exc, UpstreamTimeout) else "bad_response"
            raise DescriberFailed(outcome, exc.message) from exc
        finally:
            await response.aclose()


def outcome_of(exc: ProxyError) -> str:
    if isinstance(exc, UpstreamStatus):
        if exc.status_code == 429:
            return "rate_limited"
        return "server_error" if exc.status_code >= 500 else "client_error"
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamUnreachable | Overloaded):
        return "unreachable"
    return "bad_response"


def text_of(answer: bytes) -> str:
    """`choices[0].message.content` of a chat completion, as a non-empty string."""
    try:
        parsed: Any = orjson.loads(answer)
        content = parsed["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        raise DescriberFailed("bad_response", "the answer is not a chat completion") from None
    if isinstance(content, list):  # content parts, as some servers write them
        content = "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    if not isinstance(content, str) or not content.strip():
        raise DescriberFailed("bad_response", "the answer holds no description")
    return content.strip()
