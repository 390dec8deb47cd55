"""The embedded upstream for a first run: `CLIP_PROXY_UPSTREAM_BASE_URL=echo`.

A small OpenAI-compatible server on an ephemeral loopback port inside the proxy's own
process. It answers like DeepSeek-R1 (an SSE stream of `reasoning_content` deltas, then
`content` deltas, a usage chunk when `stream_options.include_usage` asks for one, and
`[DONE]`; one JSON completion when not streamed), in OpenAI's shapes (`logprobs: null`,
`message.refusal: null`), and
what it says is an account of the request it received: how many images, per image its
size, the words (labels, recognised text) around its vector, and how many characters the
vector took. With it the Quick start works with no key and no network, and the proxy's
real upstream client (connection pool, retries, relay) is exercised unchanged, because
the proxy reaches it over HTTP like any other upstream.

    echo = EchoUpstream(model="deepseek-r1")
    base_url = echo.start()          # "http://127.0.0.1:41234/v1"
    ...
    echo.stop()

Token counts in its usage are estimates (about four characters per token): there is no
tokenizer behind it.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.echo.documents import DOCUMENT, received_documents
from app.prompt.protocol import IMAGE_SIZES_HEADER

PREFIX = "clip-proxy echo:"
OWNER = "clip-proxy-echo"
# Headers any HTTP client sends; the account names only the others (what was forwarded).
_ORDINARY_HEADERS = frozenset(
    {
        "host",
        "content-type",
        "content-length",
        "accept",
        "accept-encoding",
        "connection",
        "user-agent",
        "authorization",
        IMAGE_SIZES_HEADER.lower(),
    }
)

# An image the proxy wrote inline: `<image ...>...</image>`, `<retain_image_emb ...>...`,
# or a short reference `<retain_image_emb ref="..."/>`.
_INLINE_IMAGE = re.compile(
    r"<(?P<tag>image|retain_image_emb)\b(?P<attrs>[^>]*?)(?:/>|>(?P<body>.*?)</(?P=tag)>)",
    re.S,
)
_VECTOR = re.compile(r"-?\d+\.\d+(?:\s*,\s*-?\d+\.\d+)+")
_ATTRIBUTE = re.compile(r'(\w+)="([^"]*)"')
_DESCRIPTION = re.compile(r"^Description: (.*)$", re.M)


@dataclass(frozen=True)
class ReceivedImage:
    """What the upstream body says about one image."""

    retained: bool
    vector_values: int
    vector_chars: int
    words: str  # labels, recognised text, caption: whatever text came with the image
    reference: str = ""  # a retained image sent as a short reference instead of its vector
    description: str = ""  # a describer's `Description: ...` line, as received
    passed_through: int = 0  # bytes of an image sent itself (an image_url data URL)


def received_images(messages: Iterable[Any]) -> list[ReceivedImage]:
    """Every image in the messages, in order, whichever prompt format carried it."""
    found: list[ReceivedImage] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            found.extend(_inline_images(content))
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "image_url":
                    url = str((part.get("image_url") or {}).get("url", ""))
                    found.append(ReceivedImage(False, 0, 0, "", passed_through=len(url)))
                elif part.get("type") == "image_embedding":
                    found.append(_content_part_image(part.get("image_embedding")))
                elif part.get("type") == "text":
                    found.extend(_inline_images(str(part.get("text", ""))))
    return found


def _inline_images(text: str) -> list[ReceivedImage]:
    images = []
    for match in _INLINE_IMAGE.finditer(text):
        attributes = dict(_ATTRIBUTE.findall(match["attrs"]))
        body = match["body"] or ""
        vector = _VECTOR.search(body)
        words = [f"{key}: {value}" for key, value in attributes.items() if key != "ref"]
        rest = (body[: vector.start()] + body[vector.end() :]) if vector else body
        if rest.strip():
            words.append(" ".join(rest.split()))
        images.append(
            ReceivedImage(
                retained=match["tag"] == "retain_image_emb",
                vector_values=len(vector[0].split(",")) if vector else 0,
                vector_chars=len(vector[0]) if vector else 0,
                words="; ".join(words),
                reference=attributes.get("ref", ""),
                description=described[1] if (described := _DESCRIPTION.search(body)) else "",
            )
        )
    return images


def _content_part_image(embedding: Any) -> ReceivedImage:
    embedding = embedding if isinstance(embedding, dict) else {}
    vector = str(embedding.get("embedding", ""))
    words = [
        f"{key}: {value}" for key, value in embedding.items() if key not in ("embedding", "format")
    ]
    return ReceivedImage(
        retained=False,
        vector_values=len(vector.split(",")) if vector else 0,
        vector_chars=len(vector),
        words="; ".join(words),
    )


def account(body: dict[str, Any], sizes: list[str], forwarded: list[str]) -> tuple[str, str]:
    """The reasoning and the answer: what the echo received, in words."""
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    images = received_images(messages)
    count = f"{len(images)} image{'' if len(images) == 1 else 's'}"
    lines = [f"{PREFIX} {count}."]
    for index, image in enumerate(images):
        facts = []
        if index < len(sizes) and sizes[index]:
            facts.append(f"{sizes[index]} px")
        if image.description:
            facts.append(f"described as {_cut(image.description, 300)!r}")
        elif image.words:
            facts.append(_cut(image.words, 300))
        if image.passed_through:
            facts.append(f"the image itself, a {image.passed_through:,}-character data URL")
        if image.passed_through:
            pass
        elif image.reference:
            facts.append(f"a reference ({image.reference}) instead of its vector")
        elif image.vector_values:
            facts.append(
                f"a {image.vector_values}-value vector in {image.vector_chars:,} characters"
            )
        else:
            facts.append("no vector")
        when = "an earlier turn" if image.retained else "this turn"
        lines.append(f"image {index + 1} ({when}): {', '.join(facts)}.")
    for number, document in enumerate(received_documents(messages), start=1):
        lines.append(document.line(number))
    question = _last_user_text(messages)
    if question:
        lines.append(f"The question: {_cut(question, 300)!r}.")
    if forwarded:
        lines.append(f"Headers beyond the usual: {', '.join(forwarded)}.")
    size = len(orjson.dumps(body))
    lines.append(f"The request body was {size:,} characters, for model {body.get('model')!r}.")
    reasoning = (
        f"The proxy sent me {count} as text. "
        "I count what arrived instead of looking at it: I am clip-proxy's echo upstream, "
        "not a model."
    )
    return reasoning, "\n".join(lines)


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            text = content if isinstance(content, str) else ""
            if isinstance(content, list):
                text = "\n".join(
                    str(part.get("text", ""))
                    for part in content
                    if isinstance(part, dict) and part.get("type") == "text"
                )
            return " ".join(_INLINE_IMAGE.sub(" ", DOCUMENT.sub(" ", text)).split())
    return ""


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def _pieces(text: str, size: int = 24) -> list[str]:
    """Text in small deltas, on word boundaries, as a model streams it."""
    pieces: list[str] = []
    current = ""
    for word in re.findall(r"\S+\s*|\s+", text):
        current += word
        if len(current) >= size:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces


def echo_app(model: str) -> Starlette:
    """The ASGI app: /chat/completions, /models and /models/{id}."""

    async def chat_completions(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "the request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object")
        sizes = request.headers.get(IMAGE_SIZES_HEADER, "")
        forwarded = sorted(
            {name for name in request.headers if name.lower() not in _ORDINARY_HEADERS}
        )
        reasoning, answer = account(body, sizes.split(",") if sizes else [], forwarded)
        usage = {
            "prompt_tokens": _tokens(orjson.dumps(body).decode()),
            "completion_tokens": _tokens(reasoning + answer),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        reply_model = str(body.get("model") or model)
        if body.get("stream"):
            options = body.get("stream_options")
            with_usage = isinstance(options, dict) and options.get("include_usage") is True
            events = _stream(reply_model, reasoning, answer, usage if with_usage else None)
            return StreamingResponse(events, media_type="text/event-stream")
        return JSONResponse(
            {
                "id": _completion_id(),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": reply_model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "reasoning_content": reasoning,
                            "content": answer,
                            "refusal": None,
                        },
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [_model_entry(model)]})

    async def retrieve_model(request: Request) -> Response:
        wanted = request.path_params["model_id"]
        if wanted != model:
            return _error(404, f"The model '{wanted}' does not exist", code="model_not_found")
        return JSONResponse(_model_entry(model))

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", retrieve_model, methods=["GET"]),
        ]
    )


async def _stream(
    model: str, reasoning: str, answer: str, usage: dict[str, int] | None
) -> AsyncIterator[bytes]:
    """The answer as OpenAI streams it: with `usage` (include_usage asked), every chunk
    has `"usage": null` and one last chunk with no choices carries the counts."""
    completion_id = _completion_id()
    created = int(time.time())

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
            **({"usage": None} if usage is not None else {}),
            **extra,
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def delta(fields: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": fields, "logprobs": None, "finish_reason": finish}
        return event([choice])

    yield delta({"role": "assistant", "content": None, "reasoning_content": "", "refusal": None})
    for piece in _pieces(reasoning):
        yield delta({"reasoning_content": piece})
    # The answer's first line whole, so `clip-proxy echo: 1 image.` is one delta.
    first, _, rest = answer.partition("\n")
    for piece in [first + ("\n" if rest else ""), *_pieces(rest)]:
        yield delta({"content": piece})
    yield delta({}, "stop")
    if usage is not None:
        yield event([], usage=usage)
    yield b"data: [DONE]\n\n"


def _model_entry(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": OWNER}


def _completion_id() -> str:
    return f"chatcmpl-echo-{uuid.uuid4().hex[:24]}"


def _error(status: int, message: str, code: str | None = None) -> JSONResponse:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return JSONResponse({"error": error}, status)


class EchoUpstream:
    """`echo_app` under its own uvicorn server, in a thread, on a free loopback port.

    A thread with its own event loop, not a task on the proxy's loop: uvicorn's `serve`
    takes over the process's signal handlers when run on the main thread, and the proxy's
    graceful drain owns those.
    """

    def __init__(self, model: str) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        # log_config and log_level None: leave the process's logging (and uvicorn's
        # logger levels, which the proxy's own server uses) as they are.
        config = uvicorn.Config(
            echo_app(model),
            log_config=None,
            log_level=None,
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            daemon=True,
            name=THREAD_NAME,
        )

    @property
    def base_url(self) -> str:
        port = self._socket.getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def start(self, timeout_s: float = 10.0) -> str:
        # Its server shares uvicorn's loggers with the proxy's own: its "Started server
        # process" would read as a second proxy. Warnings and errors still get through.
        logging.getLogger("uvicorn.error").addFilter(_quiet_echo_server)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the embedded echo upstream did not start")
            time.sleep(0.01)
        return self.base_url

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._socket.close()
        logging.getLogger("uvicorn.error").removeFilter(_quiet_echo_server)


THREAD_NAME = "clip-proxy-echo"


def _quiet_echo_server(record: logging.LogRecord) -> bool:
    return record.threadName != THREAD_NAME or record.levelno >= logging.WARNING
