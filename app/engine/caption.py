"""Captions: one sentence about an image from a transformers image-to-text checkpoint.

Optional (`CLIP_PROXY_CAPTION_MODEL`, empty by default). Any checkpoint that
`AutoModelForImageTextToText` loads with an image processor and a tokenizer beside it and
that captions from pixels alone works: BLIP (`Salesforce/blip-image-captioning-base`, the
recommended one), ViT-GPT2 (`VisionEncoderDecoderModel`), GIT. Images queued together are
captioned in one `generate` batch (`workers.py` gathers them).

Drives transformers without importing torch itself: the processor hands over tensors and
`BatchFeature.to` moves and casts them (the clip modules and text.py stay the only torch importers).

    captioner = Captioner.load("Salesforce/blip-image-captioning-base", "cuda:0", decode)
    [caption] = captioner.run([ImageBytes(data, sha256, param)])    # "a dog running on the beach"
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from PIL import Image

from app.engine.image_pipeline import ImageBytes
from app.engine.ocr import Decode

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 30


class Captioner:
    """One copy of a captioning model on one device. Not thread-safe: one per worker."""

    def __init__(self, model: Any, processor: Any, tokenizer: Any, decode: Decode) -> None:
        self._model = model
        self._processor = processor
        self._tokenizer = tokenizer
        self._decode = decode

    @classmethod
    def load(cls, source: str, device: str, decode: Decode) -> Captioner:
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        dtype = "float16" if device.startswith("cuda") else "float32"
        model: Any = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
        model.eval()
        model.to(device)
        processor = AutoImageProcessor.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
        logger.info("loaded captioner", extra={"model": source, "device": device})
        return cls(model, processor, tokenizer, decode)

    def warm_up(self) -> None:
        self.caption([Image.new("RGB", (64, 64), "white")])

    def run(self, items: Sequence[ImageBytes]) -> list[str | BaseException]:
        results: list[str | BaseException] = []
        images: list[Image.Image] = []
        slots: list[int] = []
        for item in items:
            try:
                images.append(item.decode_with(self._decode))
                slots.append(len(results))
                results.append("")
            except Exception as exc:  # an image that does not decode fails alone
                results.append(exc)
        if images:
            captions: list[str | BaseException] = []
            try:
                captions.extend(self.caption(images))
            except Exception:
                # The batch failed: caption one by one, so only a bad image fails.
                captions.clear()
                for image in images:
                    try:
                        captions.extend(self.caption([image]))
                    except Exception as exc:
                        captions.append(exc)
            for slot, caption in zip(slots, captions, strict=True):
                results[slot] = caption
        return results

    def caption(self, images: list[Image.Image]) -> list[str]:
        inputs = self._processor(images=[image.convert("RGB") for image in images])
        inputs = inputs.convert_to_tensors("pt").to(self._model.device, dtype=self._model.dtype)
        output = self._model.generate(
            pixel_values=inputs["pixel_values"], max_new_tokens=MAX_NEW_TOKENS, do_sample=False
        )
        texts = self._tokenizer.batch_decode(output, skip_special_tokens=True)
        return [" ".join(str(text).split()) for text in texts]
