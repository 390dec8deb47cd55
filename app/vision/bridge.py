"""What the chat service asks for each image: the engine's bridge (CLIP, OCR, tags,
caption), a describer's description beside it, or the image itself for an upstream that
sees (passthrough). Descriptions are cached by (image content, prompt after substitution,
the chain's describer models) in the words cache, memory and Redis: a conversation about
one image asks once per question, and replicas share the answer.

    bridge = VisionBridge(chain, cache, options, metrics)
    seen = await bridge.see(engine, source, question="What is broken?", describe=True,
                            words=True, passthrough=False)
    seen.route          # "bridge", "described:<name>", "fallback" or "passthrough"
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from app.engine.cache import WordsCache
from app.engine.describe import ImageDescription
from app.engine.engine import Engine
from app.engine.image_pipeline import ImageBytes
from app.ingest.sources import ImageLimits, ImageSource, decode_image
from app.metrics import Metrics
from app.observability.request_context import note_stage
from app.vision.chain import AllDescribersFailed, DescriberChain
from app.vision.passthrough import Prepared, as_it_came, prepare
from app.vision.prompt import DEFAULT_PROMPT, prompt_fields, render_prompt


@dataclass(frozen=True)
class VisionOptions:
    prompt: str = DEFAULT_PROMPT
    vision_models: Sequence[str] = ()  # names or fnmatch patterns of upstreams that see
    passthrough_max_side: int = 2048
    limits: ImageLimits = field(
        default_factory=lambda: ImageLimits(max_bytes=20 * 1024 * 1024, max_pixels=40_000_000)
    )


@dataclass(frozen=True)
class Seen:
    """One image as the prompt will carry it."""

    sha256: str
    width: int
    height: int
    route: str
    described: ImageDescription | None = None  # CLIP's vector and the engine's words
    description: str = ""  # a describer's, when one answered
    image_url: str = ""  # passthrough: the data URL sent upstream


class VisionBridge:
    def __init__(
        self,
        chain: DescriberChain | None,
        cache: WordsCache | None,
        options: VisionOptions,
        metrics: Metrics,
    ) -> None:
        self._chain = chain if chain is not None and chain.describers else None
        self._cache = cache
        self._options = options
        self._metrics = metrics
        self._uses_ocr = "ocr" in prompt_fields(options.prompt)

    @property
    def has_describers(self) -> bool:
        return self._chain is not None

    def sees(self, model: str) -> bool:
        """Is `model` an upstream that takes images itself (UPSTREAM_VISION_MODELS)?"""
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self._options.vision_models)

    async def aclose(self) -> None:
        if self._cache is not None:
            await self._cache.aclose()
        if self._chain is not None:
            await self._chain.aclose()

    async def see(
        self,
        engine: Engine,
        source: ImageSource,
        *,
        question: str,
        words: bool,
        describe: bool,
        passthrough: bool,
    ) -> Seen:
        image = await engine.read(source)
        if passthrough:
            prepared = await self._prepare(image)
            return Seen(
                image.sha256,
                prepared.width,
                prepared.height,
                "passthrough",
                image_url=prepared.data_url,
            )
        if not describe or self._chain is None:
            described = await engine.describe_bytes(image, words=words)
            return _seen(described, "bridge")
        # One decode for CLIP, OCR, the captioner and the describer's copy of the image.
        image = engine.share_decode(image)
        try:
            route, text, described = await self._describe_and_see(engine, image, question, words)
        finally:
            if image.shared is not None:
                image.shared.release()
        return _seen(described, route, text)

    async def _describe_and_see(
        self, engine: Engine, image: ImageBytes, question: str, words: bool
    ) -> tuple[str, str, ImageDescription]:
        if self._uses_ocr:  # the prompt quotes the OCR text: read it first
            described = await engine.describe_bytes(image, words=True)
            route, text = await self._describe(image, question, described.ocr or "")
        else:  # the describer and the engine side by side
            # The describer is the long pole: its image is made ready first, and the
            # engine's work (CLIP, OCR) runs while the describer thinks, not before its
            # request has left (on a busy CPU, 32 images' CLIP work would delay it).
            ready = asyncio.Event()

            async def engine_side() -> ImageDescription:
                await ready.wait()
                return await engine.describe_bytes(image, words=words)

            async with asyncio.TaskGroup() as group:
                describer_task = group.create_task(self._describe(image, question, "", ready=ready))
                engine_task = group.create_task(engine_side())
            described = engine_task.result()
            route, text = describer_task.result()
        return route, text, described

    async def _prepare(self, image: ImageBytes) -> Prepared:
        own = functools.partial(decode_image, limits=self._options.limits)

        def decode(data: bytes) -> Image.Image:  # the request's shared decode when it has one
            return image.decode_with(lambda data, param: own(data, param=param))

        return await asyncio.to_thread(
            prepare, image.data, max_side=self._options.passthrough_max_side, decode=decode
        )

    async def _describe(
        self,
        image: ImageBytes,
        question: str,
        ocr: str,
        *,
        ready: asyncio.Event | None = None,
    ) -> tuple[str, str]:
        """(route, description): `described:<name>`, or `fallback` with no description when
        every describer failed; never an error for that alone."""
        chain = self._chain
        assert chain is not None
        prompt = render_prompt(self._options.prompt, question=question, ocr=ocr)
        key = hashlib.sha256(f"{image.sha256}\n{prompt}".encode()).hexdigest()

        async def compute() -> str:
            # A clean image goes as it came (CLIP's side checks and decodes it anyway).
            prepared = await asyncio.to_thread(
                as_it_came, image.data, max_side=self._options.passthrough_max_side
            ) or await self._prepare(image)
            if ready is not None:
                ready.set()  # the image is ready: the engine's side may start
            name, text = await chain.describe(prompt, prepared.data_url)
            return f"{name}\n{text}"

        started = time.perf_counter()
        try:
            if self._cache is None:
                value = await compute()
            else:
                value = await self._cache.get_or_compute(key, compute)
        except AllDescribersFailed:
            self._metrics.describer_fallbacks.inc()
            return "fallback", ""
        finally:
            if ready is not None:
                ready.set()  # a hit, a failure: the engine's side waits no more
            note_stage("describe", time.perf_counter() - started)
        name, _, text = value.partition("\n")
        return f"described:{name}", text


def _seen(described: ImageDescription, route: str, description: str = "") -> Seen:
    embedding = described.embedding
    return Seen(
        embedding.sha256,
        embedding.width,
        embedding.height,
        route,
        described=described,
        description=description,
    )
