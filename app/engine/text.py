"""CLIP's text tower: strings in, L2-normalised float32 vectors in the image vectors' space.

Loaded beside the vision tower from the same checkpoint (`CLIPTextModelWithProjection`,
whose `text_embeds` is `CLIPModel.get_text_features`), with its tokenizer. Also reads the
checkpoint's trained `logit_scale`, which zero-shot labels need.

    text = ClipTextEncoder.load("openai/clip-vit-large-patch14", "cuda:0", "auto")
    vectors, tokens = text.encode(["a photo of a dog"])
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import CLIPTextModelWithProjection, CLIPTokenizer
from transformers.utils.hub import cached_file

from app.engine.clip import Vectors
from app.engine.clip_options import resolve_dtype

logger = logging.getLogger(__name__)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class ClipTextEncoder:
    """One copy of the CLIP text tower. Not thread-safe: one caller at a time."""

    model: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    device: torch.device
    dtype: torch.dtype
    max_tokens: int

    @classmethod
    def load(cls, source: str, device: str, dtype_setting: str) -> ClipTextEncoder:
        dtype = resolve_dtype(dtype_setting, device)
        model = CLIPTextModelWithProjection.from_pretrained(
            source, dtype=dtype, attn_implementation="sdpa"
        )
        model.eval()  # type: ignore[no-untyped-call]  # transformers ships no annotation here
        model.to(device)  # type: ignore[arg-type]  # transformers' wrapper hides the signature
        tokenizer = CLIPTokenizer.from_pretrained(source)
        logger.info("loaded CLIP text tower", extra={"device": device, "dtype": str(dtype)})
        return cls(
            model=model,
            tokenizer=tokenizer,
            device=torch.device(device),
            dtype=dtype,
            max_tokens=int(model.config.max_position_embeddings or 77),
        )

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim or 0)

    def encode(self, texts: Sequence[str]) -> tuple[Vectors, list[int]]:
        """Unit vectors, (n, dim), and each text's token count (after CLIP's 77-token cut)."""
        tokens = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        counts = [int(count) for count in tokens["attention_mask"].sum(dim=1).tolist()]
        with torch.inference_mode():
            embeds = self.model(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
            ).text_embeds.float()
            embeds = torch.nn.functional.normalize(embeds, dim=-1)
            vectors: Vectors = embeds.cpu().numpy()
        return vectors, counts


def load_logit_scale(source: str) -> float:
    """The trained temperature, exp(`logit_scale`), from the full CLIP checkpoint's weights
    (the config holds only its initial value)."""
    weights = _weights_file(source)
    if weights.suffix == ".safetensors":
        with safe_open(str(weights), "pt") as tensors:
            raw = float(tensors.get_tensor("logit_scale").item())
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        raw = float(state["logit_scale"].item())
    return math.exp(raw)


def model_identity(source: str) -> str:
    """The model's name and the identity of its weights: the Hub revision when the
    checkpoint came from the Hub cache, else the SHA-256 of the local weights file."""
    weights = _weights_file(source)
    parts = weights.parts
    if "snapshots" in parts:
        revision = parts[parts.index("snapshots") + 1]
        return f"{source}@{revision}"
    with weights.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return f"{source}@sha256:{digest}"


def _weights_file(source: str) -> Path:
    for name in _WEIGHT_FILES:
        found = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
        if found is not None:
            return Path(found)
    raise FileNotFoundError(f"no {' or '.join(_WEIGHT_FILES)} in {source}")
