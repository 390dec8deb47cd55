"""JPEG decode on the GPU (optional): nvJPEG through torchvision, CLIP's resize and crop there.

torchvision is imported only when asked for; the CPU set-up never installs it. An image
nvJPEG refuses is decoded on the CPU instead (`image_pipeline.py`).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable

import torch

from app.engine.preprocess import BytePixels, PreprocessSpec, resized_size

logger = logging.getLogger(__name__)

JpegDecoder = Callable[[bytes, int, int], BytePixels]


def gpu_jpeg_decoder(device: str, spec: PreprocessSpec) -> JpegDecoder | None:
    """A JPEG decoder on `device` (nvJPEG via torchvision) giving CHW uint8 crops, or None.

    None, with a warning, where it cannot run: no CUDA device, or no torchvision. The
    decoder raises on anything nvJPEG refuses (CMYK, odd subsampling...); the caller
    decodes that image on the CPU instead. Arguments: the bytes and the upright full size
    the header announced, checked against what nvJPEG produced.
    """
    if not device.startswith("cuda") or not torch.cuda.is_available():
        logger.warning("GPU decode needs a CUDA device; images are decoded on the CPU")
        return None
    try:
        # Optional and GPU-only: the CPU image does not install torchvision.
        vision_io = importlib.import_module("torchvision.io")
    except ImportError:
        logger.warning("GPU decode needs torchvision; images are decoded on the CPU")
        return None
    decode_jpeg = vision_io.decode_jpeg
    rgb = vision_io.ImageReadMode.RGB
    target = torch.device(device)
    # A stream per preprocessing thread: decodes neither wait for the model's stream nor
    # for each other.
    streams = threading.local()

    def decode(data: bytes, width: int, height: int) -> BytePixels:
        if not hasattr(streams, "stream"):
            streams.stream = torch.cuda.Stream(target)
        # bytearray: torch.frombuffer wants a writable buffer (it warns on bytes).
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        with torch.inference_mode(), torch.cuda.stream(streams.stream):
            image = decode_jpeg(encoded, mode=rgb, device=target, apply_exif_orientation=True)
            if tuple(image.shape[-2:]) != (height, width):
                raise ValueError(f"nvJPEG gave {tuple(image.shape)}, the header {width}x{height}")
            pixels: BytePixels = resize_and_crop_tensor(image, spec).cpu().numpy()
            return pixels

    return decode


def resize_and_crop_tensor(image: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """CLIP's resize and centre crop on a (3, H, W) uint8 tensor, on its own device.

    Bicubic with antialiasing, which torch implements to match PIL's resampling; the
    result stays within cosine 0.9999 of `preprocess_uint8` (tests/unit).
    """
    if spec.crop > spec.size:
        raise ValueError("a crop larger than the resize would need padding")
    height, width = int(image.shape[-2]), int(image.shape[-1])
    resized_width, resized_height = resized_size(width, height, spec.size)
    resized = torch.nn.functional.interpolate(
        image[None].float(),
        size=(resized_height, resized_width),
        mode="bicubic",
        antialias=True,
        align_corners=False,
    )
    top = (resized_height - spec.crop) // 2
    left = (resized_width - spec.crop) // 2
    cropped = resized[0, :, top : top + spec.crop, left : left + spec.crop]
    return cropped.round().clamp(0, 255).to(torch.uint8)
