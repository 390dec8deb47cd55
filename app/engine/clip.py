"""The CLIP model on one device: pixels in, L2-normalised float32 vectors out.

The only module (with `test_model.py`) that imports torch and transformers. It loads the
vision tower alone (`CLIPVisionModelWithProjection`: about 580 MiB in fp16 for ViT-L/14,
against 816 MiB for the whole CLIP), whose `image_embeds` is the vector
`CLIPModel.get_image_features` gives.

    encoder = ClipImageEncoder.load("openai/clip-vit-large-patch14", "cuda:0", "auto")
    vectors = encoder.encode(np.stack([preprocess(image, encoder.spec)]))

Speed options (each measured in `bench/encoder.py`, see bench/results/):
- dtype `auto`: fp16 on CUDA (SDPA attention); bf16 on a CPU with native bf16
  (AVX512-BF16/AMX), else fp32 (the exact reference path; `float32` forces it).
- `quantize="int8"`: dynamic int8 quantisation of the Linear layers, CPU only.
- `compile=True`: `torch.compile` the vision tower (slow first batch; warm-up pays it).
bitsandbytes 4-bit is not offered: it dequantises on every matmul and is slower for ViTs
(bitsandbytes issue #604), whatever the seed claims.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection
from transformers.utils import logging as transformers_logging

from app.engine.nvml import normalise_uuid, nvml_memory_by_uuid
from app.engine.preprocess import Pixels, PreprocessSpec
from app.metrics import DeviceMemory, MemoryReading

logger = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_devices(requested: list[str]) -> list[str]:
    """`auto` means every visible GPU, else the CPU; anything else is taken as given."""
    if requested != ["auto"]:
        return ["cuda:0" if device == "cuda" else device for device in requested]
    if torch.cuda.is_available():
        return [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    return ["cpu"]


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


def load_preprocess_spec(source: str) -> PreprocessSpec:
    processor = CLIPImageProcessorPil.from_pretrained(source)
    return PreprocessSpec.from_processor_config(processor.to_dict())


@dataclass
class ClipImageEncoder:
    """One copy of the CLIP vision tower on one device."""

    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    spec: PreprocessSpec
    projection_dim: int = 768
    # Images in the warm-up batch: a full batch on a GPU reserves its memory up front.
    warm_batch: int = 1

    @classmethod
    def load(
        cls,
        source: str,
        device: str,
        dtype_setting: str,
        *,
        quantize: str = "none",
        compile: bool = False,
        warm_batch: int = 1,
    ) -> ClipImageEncoder:
        dtype = resolve_dtype(dtype_setting, device)
        model = CLIPVisionModelWithProjection.from_pretrained(
            source, dtype=dtype, attn_implementation="sdpa"
        )
        return cls.from_model(
            model,
            device,
            load_preprocess_spec(source),
            quantize=quantize,
            compile=compile,
            warm_batch=warm_batch,
        )

    @classmethod
    def from_model(
        cls,
        model: CLIPVisionModelWithProjection,
        device: str,
        spec: PreprocessSpec,
        *,
        quantize: str = "none",
        compile: bool = False,
        warm_batch: int = 1,
    ) -> ClipImageEncoder:
        """Wrap a loaded vision tower (the benchmark builds ViT-L/14 from its config)."""
        if quantize == "int8" and not device.startswith("cpu"):
            raise ValueError("int8 dynamic quantisation runs on the CPU only")
        model.eval()
        model.to(device)  # type: ignore[arg-type]  # transformers' wrapper hides the signature
        dtype = next(model.parameters()).dtype
        projection_dim = int(model.config.projection_dim)
        module: torch.nn.Module = model
        if quantize == "int8":
            module = quantize_int8(module, device)
        if compile:
            module = torch.compile(module)  # type: ignore[assignment]  # returns a callable
        logger.info(
            "loaded CLIP vision tower",
            extra={"device": device, "dtype": str(dtype), "quantize": quantize},
        )
        return cls(
            model=module,
            device=torch.device(device),
            dtype=dtype,
            spec=spec,
            projection_dim=projection_dim,
            warm_batch=warm_batch if device.startswith("cuda") else 1,
        )

    @property
    def dim(self) -> int:
        return self.projection_dim

    @property
    def name(self) -> str:
        return str(self.device)

    def encode(self, pixels: Pixels) -> Vectors:
        """A batch of preprocessed images, (n, 3, H, W), to unit vectors, (n, dim)."""
        with torch.inference_mode():
            batch = torch.from_numpy(pixels)
            if self.device.type == "cuda":
                # Pinned host memory lets the copy run asynchronously on the stream; the
                # cast to fp16 then happens on the GPU, not on the CPU.
                batch = batch.pin_memory().to(self.device, non_blocking=True)
            embeds = self.model(pixel_values=batch.to(self.dtype)).image_embeds.float()
            embeds = torch.nn.functional.normalize(embeds, dim=-1)
            vectors: Vectors = embeds.cpu().numpy()
            return vectors

    def warm_up(self) -> None:
        """One batch through the model, so the first request does not pay for lazy init."""
        side = self.spec.crop
        self.encode(np.zeros((self.warm_batch, 3, side, side), dtype=np.float32))

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, torch.OutOfMemoryError)

    def release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def fall_back_to_cpu(self) -> bool:
        """Move this model copy to the CPU in fp32 (the seed's advice on CUDA OOM)."""
        if self.device.type == "cpu":
            return False
        self.model.to("cpu", torch.float32)
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.warm_batch = 1
        torch.cuda.empty_cache()  # hand the freed VRAM back to the driver
        return True


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


def gpu_memory() -> MemoryReading:
    """Memory of each CUDA device this process uses, read at scrape time.

    Used and total come from NVML (the driver's view, matched to torch's device index by
    UUID, so CUDA_VISIBLE_DEVICES cannot mislabel them), allocated and reserved from torch's
    caching allocator. A process that never touched CUDA (CPU encoder) reports nothing:
    reading a device through torch would create a CUDA context, hundreds of MiB, per GPU.
    """
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    driver = nvml_memory_by_uuid()
    reading = {}
    for index in range(torch.cuda.device_count()):
        reserved = int(torch.cuda.memory_reserved(index))
        allocated = int(torch.cuda.memory_allocated(index))
        uuid = normalise_uuid(str(torch.cuda.get_device_properties(index).uuid))
        if uuid in driver:
            used, total = driver[uuid]
        elif reserved > 0:  # no NVML: ask CUDA, but only on a device that has a context
            free, total = torch.cuda.mem_get_info(index)
            used = total - free
        else:
            continue
        reading[f"cuda:{index}"] = DeviceMemory(
            used=used, total=total, allocated=allocated, reserved=reserved
        )
    return reading


def load_encoders(
    source: str,
    devices: list[str],
    dtype_setting: str,
    *,
    quantize: str = "none",
    compile: bool = False,
    warm_batch: int = 1,
) -> list[ClipImageEncoder]:
    """One model copy per device (`auto` expanded); the pool warms each in its worker."""
    # Loading a vision tower from a full CLIP checkpoint makes transformers print a table of
    # the (expected) unused text weights and progress bars; a server log wants neither.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    return [
        ClipImageEncoder.load(
            source, device, dtype_setting, quantize=quantize, compile=compile, warm_batch=warm_batch
        )
        for device in resolve_devices(devices)
    ]
