"""The CLIP model on one device: pixels in, L2-normalised float32 vectors out.

The only module (with `test_model.py`) that imports torch and transformers. It loads the
vision tower alone (`CLIPVisionModelWithProjection`: about 580 MiB in fp16 for ViT-L/14,
against 816 MiB for the whole CLIP), whose `image_embeds` is the vector
`CLIPModel.get_image_features` gives.

    encoder = ClipImageEncoder.load("openai/clip-vit-large-patch14", "cuda:0", "auto")
    vectors = encoder.encode(np.stack([preprocess(image, encoder.spec)]))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection
from transformers.utils import logging as transformers_logging

from app.encoder.preprocess import Pixels, PreprocessSpec
from app.metrics import DeviceMemory, MemoryReading
from app.nvml import normalise_uuid, nvml_memory_by_uuid

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
    """`auto` is fp16 on CUDA and fp32 on CPU (the exact reference path)."""
    if setting != "auto":
        return _DTYPES[setting]
    return torch.float16 if device.startswith("cuda") else torch.float32


def load_preprocess_spec(source: str) -> PreprocessSpec:
    processor = CLIPImageProcessorPil.from_pretrained(source)
    return PreprocessSpec.from_processor_config(processor.to_dict())


@dataclass
class ClipImageEncoder:
    """One copy of the CLIP vision tower on one device."""

    model: CLIPVisionModelWithProjection
    device: torch.device
    dtype: torch.dtype
    spec: PreprocessSpec

    @classmethod
    def load(cls, source: str, device: str, dtype_setting: str) -> ClipImageEncoder:
        dtype = resolve_dtype(dtype_setting, device)
        model = CLIPVisionModelWithProjection.from_pretrained(
            source, dtype=dtype, attn_implementation="sdpa"
        )
        model.eval()  # type: ignore[no-untyped-call]  # transformers ships no annotation here
        model.to(device)  # type: ignore[arg-type]  # transformers' wrapper hides the signature
        logger.info("loaded CLIP vision tower", extra={"device": device, "dtype": str(dtype)})
        return cls(
            model=model, device=torch.device(device), dtype=dtype, spec=load_preprocess_spec(source)
        )

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def name(self) -> str:
        return str(self.device)

    def encode(self, pixels: Pixels) -> Vectors:
        """A batch of preprocessed images, (n, 3, H, W), to unit vectors, (n, dim)."""
        with torch.inference_mode():
            batch = torch.from_numpy(pixels).to(self.device, self.dtype, non_blocking=True)
            embeds = self.model(pixel_values=batch).image_embeds.float()
            embeds = torch.nn.functional.normalize(embeds, dim=-1)
            return embeds.cpu().numpy()

    def warm_up(self) -> None:
        """One batch through the model, so the first request does not pay for lazy init."""
        side = self.spec.crop
        self.encode(np.zeros((1, 3, side, side), dtype=np.float32))


def gpu_memory() -> MemoryReading:
    """Memory of each CUDA device this process uses, read at scrape time.

    Used and total come from NVML (the driver's view, matched to torch's device index by
    UUID, so CUDA_VISIBLE_DEVICES cannot mislabel them), allocated and reserved from torch's
    caching allocator. A process that never touched CUDA (CPU encoder) reports nothing:
    reading a device through torch would create a CUDA context, hundreds of MiB, per GPU.
    """
    # is_initialized is untyped in torch's stubs
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
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


def load_encoders(source: str, devices: list[str], dtype_setting: str) -> list[ClipImageEncoder]:
    """One warm model copy per device (`auto` expanded)."""
    # Loading a vision tower from a full CLIP checkpoint makes transformers print a table of
    # the (expected) unused text weights and progress bars; a server log wants neither.
    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # untyped upstream
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped upstream
    encoders = [
        ClipImageEncoder.load(source, device, dtype_setting) for device in resolve_devices(devices)
    ]
    for encoder in encoders:
        encoder.warm_up()
    return encoders
