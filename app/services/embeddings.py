"""One embeddings request: each input string becomes a CLIP vector in one shared space.

A string that is a data URL or an http(s) URL names an image (same limits and fetching
rules as chat, same cache); any other string is text for CLIP's text tower. Both come back
L2-normalised, so `dot(image, text)` is their cosine: the basis of image-text retrieval.

    body = await service.create(EmbeddingRequest(input=["a dog", "data:image/png;base64,..."]))
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from app.engine.engine import Engine
from app.errors import InvalidRequest, TooManyImages, first_proxy_error
from app.ingest.sources import ImageSource
from app.prompt.protocol import EmbeddingRequest

_IMAGE_PREFIXES = ("data:", "http://", "https://")


@dataclass(frozen=True)
class EmbeddingsOptions:
    model_name: str
    max_inputs: int
    max_images: int


def is_image_input(text: str) -> bool:
    return text[:8].lower().startswith(_IMAGE_PREFIXES)


class EmbeddingsService:
    """Answers `POST /v1/embeddings` in OpenAI's shape."""

    def __init__(self, options: EmbeddingsOptions, engine: Engine) -> None:
        self._options = options
        self._engine = engine

    async def create(self, request: EmbeddingRequest) -> dict[str, Any]:
        inputs = text_inputs(request.input)
        single = isinstance(request.input, str)
        self._check(inputs, single)
        self._check_dimensions(request.dimensions, self._engine.dim)
        vectors: list[npt.NDArray[np.float32] | None] = [None] * len(inputs)
        image_indexes = [index for index, text in enumerate(inputs) if is_image_input(text)]
        text_indexes = sorted(set(range(len(inputs))) - set(image_indexes))
        if len(image_indexes) > self._options.max_images:
            raise TooManyImages(
                f"{len(image_indexes)} images in one request; the limit is "
                f"{self._options.max_images}",
                param="input",
            )
        tokens = 0

        async def embed_image(index: int) -> None:
            param = "input" if single else f"input[{index}]"
            source = ImageSource.from_url(inputs[index], param)
            vectors[index] = (await self._engine.embed_image(source)).vector

        async def embed_texts() -> None:
            nonlocal tokens
            text_vectors, counts = await self._engine.embed_texts([inputs[i] for i in text_indexes])
            for index, vector in zip(text_indexes, text_vectors, strict=True):
                vectors[index] = vector
            tokens = sum(counts)

        try:
            async with asyncio.TaskGroup() as group:
                for index in image_indexes:
                    group.create_task(embed_image(index))
                if text_indexes:
                    group.create_task(embed_texts())
        except ExceptionGroup as group_error:
            raise first_proxy_error(group_error) from None
        widths = {len(vector) for vector in vectors if vector is not None}
        self._check_dimensions(request.dimensions, widths.pop() if len(widths) == 1 else None)
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": _encode(vector, request.encoding_format),
            }
            for index, vector in enumerate(vectors)
            if vector is not None
        ]
        return {
            "object": "list",
            "data": data,
            "model": request.model or self._options.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @staticmethod
    def _check_dimensions(asked: int | None, width: int | None) -> None:
        """CLIP's vectors have one width; a shortened one would be another vector."""
        if asked is not None and width is not None and asked != width:
            raise InvalidRequest(
                f"'dimensions' is {asked}, but this model's vectors have {width} dimensions; "
                f"leave it out or set it to {width}",
                param="dimensions",
                code="unsupported_dimensions",
            )

    def _check(self, inputs: list[str], single: bool) -> None:
        if not inputs:
            raise InvalidRequest("'input' must not be an empty list", param="input")
        if len(inputs) > self._options.max_inputs:
            raise InvalidRequest(
                f"{len(inputs)} inputs in one request; the limit is {self._options.max_inputs}",
                param="input",
            )
        for index, text in enumerate(inputs):
            if not text:
                param = "input" if single else f"input[{index}]"
                raise InvalidRequest("an input must not be an empty string", param=param)


def text_inputs(value: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    """The input as strings; token arrays are refused with the way out."""
    if isinstance(value, str):
        return [value]
    strings = [item for item in value if isinstance(item, str)]
    if len(strings) == len(value):
        return strings
    first = next(index for index, item in enumerate(value) if not isinstance(item, str))
    raise InvalidRequest(
        "'input' holds token ids; clip-proxy needs the text itself (CLIP has its own "
        "tokenizer), or data URLs / image URLs. LangChain's OpenAIEmbeddings sends token ids "
        "by default: create it with check_embedding_ctx_length=False",
        param=f"input[{first}]",
        code="token_input_unsupported",
    )


def _encode(vector: npt.NDArray[np.float32], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # OpenAI's base64 format: the little-endian float32 bytes of the vector.
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    values: list[float] = vector.tolist()
    return values
