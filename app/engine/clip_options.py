"""The CLIP encoder's speed options: dtype, batch buckets for static shapes, int8.

Each is measured in `bench/encoder.py` (bench/results/); `clip.py` loads the model with
them and runs it.
- dtype `auto`: fp16 on CUDA (SDPA attention); bf16 on a CPU with native bf16
  (AVX512-BF16/AMX), else fp32 (the exact reference path; `float32` forces it).
- buckets: with `compile` on CUDA a batch is padded up to a fixed size (1, 2, 4, ... max
  batch), so each size compiles (and captures as a CUDA graph) once.
- `quantize="int8"`: dynamic int8 quantisation of the Linear layers, CPU only.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import torch

from app.engine.preprocess import Pixels, stack

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    """`auto`: fp16 on CUDA; bf16 on a CPU with native bf16 instructions; else fp32.

    bf16 on such a CPU measured about 2x fp32 with cosine >= 0.9999 to the fp32 reference
    (bench/results/encoder-cpu.md); without native support it is emulated and slower.
    """
    if setting != "auto":
        return _DTYPES[setting]
    if device.startswith("cuda"):
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16, read from /proc/cpuinfo (Linux; elsewhere: no)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two up to `max_batch`, and `max_batch` itself: at most 2x padding."""
    sizes = {1 << power for power in range(max_batch.bit_length()) if 1 << power <= max_batch}
    return tuple(sorted(sizes | {max_batch}))


def pad_to_bucket(pixels: Pixels, buckets: tuple[int, ...]) -> Pixels:
    """`pixels` with zero images appended up to the smallest bucket that holds them."""
    count = len(pixels)
    target = next((size for size in buckets if size >= count), count)
    if target == count:
        return pixels
    return stack([*pixels, *np.zeros((target - count, *pixels.shape[1:]), dtype=pixels.dtype)])


def quantize_int8(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """Dynamic int8 quantisation of every Linear layer (weights int8, activations on the fly)."""
    if not device.startswith("cpu"):
        raise ValueError("int8 dynamic quantisation runs on the CPU only")
    model = model.float()
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao (DeprecationWarning, and a
        # UserWarning per quantised tensor); the eager API still works in this torch.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantized: torch.nn.Module = torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear}, dtype=torch.qint8
        )
    return quantized
