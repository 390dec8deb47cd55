"""`clip-proxy make-test-model DIR`: a tiny CLIP checkpoint with random weights, built offline.

It has the layout of `openai/clip-vit-large-patch14` (vision tower, text tower, image
processor config, a byte-level tokenizer) and the same 224x224 input and projection size,
so every code path runs; its vectors mean nothing. Seeded, so two builds are identical.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    GPT2Config,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
    ViTImageProcessorPil,
)

_SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def _byte_level_vocab() -> dict[str, int]:
    """Every byte, alone and as a word end: any text tokenizes, one token per byte."""
    symbols = sorted(ByteLevel.alphabet())
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + list(_SPECIALS)
    return {token: index for index, token in enumerate(tokens)}


TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 224,
    "patch_size": 14,
}
# The vision tower of openai/clip-vit-large-patch14: random weights in this shape run at the
# real model's speed, for benchmarks on machines that cannot download the weights.
VIT_L14_VISION = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
}


def make_test_model(
    directory: Path,
    projection_dim: int = 768,
    seed: int = 0,
    vision: dict[str, int] | None = None,
) -> Path:
    """Write the checkpoint; `vision` replaces the tiny vision tower's shape (VIT_L14_VISION)."""
    vocab = _byte_level_vocab()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "projection_dim": projection_dim,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        # The vision-only model reads projection_dim from here, not from the top level.
        vision_config={**(vision or TINY_VISION), "projection_dim": projection_dim},
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tokenizer)
    processor.save_pretrained(directory)
    return directory


def make_test_captioner(directory: Path, seed: int = 0) -> Path:
    """A tiny image-to-text checkpoint with random weights (a ViT encoder and a GPT-2
    decoder in a `VisionEncoderDecoderModel`, the byte-level tokenizer above), which
    `CLIP_PROXY_CAPTION_MODEL=DIR` loads offline. Its captions are random bytes; it exists
    to run the caption plumbing in tests."""
    vocab = _byte_level_vocab()
    start, end = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    encoder = ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
    )
    decoder = GPT2Config(
        vocab_size=len(vocab),
        n_embd=32,
        n_layer=1,
        n_head=2,
        n_positions=64,
        bos_token_id=start,
        eos_token_id=end,
        add_cross_attention=True,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = start
    config.pad_token_id = end
    config.eos_token_id = end
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(config=config)
    model.generation_config.decoder_start_token_id = start
    model.generation_config.pad_token_id = end
    model.generation_config.eos_token_id = end
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    ViTImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(directory)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(directory)
    return directory
