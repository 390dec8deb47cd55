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
  On CUDA it compiles with static shapes over fixed batch buckets (1, 2, 4, ... max batch;
  a batch is padded up to its bucket, warm-up compiles each), and with `cuda_graphs=True`
  in mode "reduce-overhead": one CUDA graph per bucket, no per-kernel launch cost.

Pixels may arrive as uint8 (the server's path): they cross to the device at a quarter of
float32's bytes and are normalised there. On CUDA the encoder also works in three steps
the pool pipelines (`stage` / `launch` / `collect`): the next batch is pinned and copied on
a stream of its own while this one runs, and the vectors come back asynchronously.

GPU decode (optional, `gpu_jpeg_decoder`): nvJPEG through torchvision, imported only when
asked for; the CPU set-up never installs torchvision.
bitsandbytes 4-bit is not offered: it dequantises on every matmul and is slower for ViTs
(bitsandbytes issue #604), whatever the seed claims.
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection
from transformers.utils import logging as transformers_logging

from app.engine.nvml import normalise_uuid, nvml_memory_by_uuid
from app.engine.preprocess import BytePixels, Pixels, PreprocessSpec, resized_size, stack
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
    # Batch sizes compiled for (CUDA + compile): a batch is padded up to the next one.
    buckets: tuple[int, ...] = ()
    _copy_stream: Any = field(default=None, repr=False)
    _normaliser: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False
    )

    @classmethod
    def load(
        cls,
        source: str,
        device: str,
        dtype_setting: str,
        *,
        quantize: str = "none",
        compile: bool = False,
        cuda_graphs: bool = False,
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
            cuda_graphs=cuda_graphs,
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
        cuda_graphs: bool = False,
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
        on_cuda = device.startswith("cuda")
        buckets: tuple[int, ...] = ()
        if compile and on_cuda:
            # Static shapes: one compiled graph (a CUDA graph with cuda_graphs) per bucket.
            buckets = batch_buckets(warm_batch)
            mode = "reduce-overhead" if cuda_graphs else "default"
            module = torch.compile(module, mode=mode, dynamic=False)  # type: ignore[assignment]
        elif compile:
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
            warm_batch=warm_batch if on_cuda else 1,
            buckets=buckets,
        )

    @property
    def dim(self) -> int:
        return self.projection_dim

    @property
    def name(self) -> str:
        return str(self.device)

    @property
    def pipelined(self) -> bool:
        """Whether the pool should overlap this encoder's copies with its compute."""
        return self.device.type == "cuda"

    def encode(self, pixels: Pixels) -> Vectors:
        """A batch of preprocessed images, (n, 3, H, W), to unit vectors, (n, dim).

        float32 pixels are taken as normalised; uint8 pixels are normalised here.
        """
        return self.collect(self.launch(self.stage(pixels)))

    def stage(self, pixels: Pixels) -> StagedBatch:
        """Put a batch on the device: on CUDA, pinned and copied on the copy stream."""
        count = len(pixels)
        host = torch.from_numpy(np.ascontiguousarray(pad_to_bucket(pixels, self.buckets)))
        if self.device.type != "cuda":
            return StagedBatch(batch=host, count=count)
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        pinned = host.pin_memory()
        with torch.cuda.stream(self._copy_stream):
            batch = pinned.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        return StagedBatch(batch=batch, count=count, ready=ready, host=pinned)

    def launch(self, staged: StagedBatch) -> LaunchedBatch:
        """Queue the model on the batch; on CUDA this returns before the GPU is done."""
        with torch.inference_mode():
            batch = staged.batch
            if staged.ready is not None and self.device.type == "cuda":
                compute = torch.cuda.current_stream(self.device)
                compute.wait_event(staged.ready)
                # The copy stream allocated it: keep the allocator from reusing it early.
                batch.record_stream(compute)
            elif staged.ready is not None:  # staged on the GPU, the model since moved off it
                staged.ready.synchronize()
            if batch.device != self.device:  # the model fell back to the CPU meanwhile
                batch = batch.to(self.device)
            embeds = self.model(pixel_values=self._model_input(batch)).image_embeds.float()
            embeds = torch.nn.functional.normalize(embeds[: staged.count], dim=-1)
            if self.device.type != "cuda":
                return LaunchedBatch(vectors=embeds, staged=staged)
            host = torch.empty(embeds.shape, dtype=embeds.dtype, pin_memory=True)
            host.copy_(embeds, non_blocking=True)
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))
            return LaunchedBatch(vectors=host, staged=staged, done=done)

    def collect(self, launched: LaunchedBatch) -> Vectors:
        """Wait for a launched batch and hand back its vectors."""
        if launched.done is not None:
            launched.done.synchronize()
        vectors: Vectors = launched.vectors.numpy().copy()
        return vectors

    def _model_input(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dtype != torch.uint8:
            return batch.to(self.dtype)
        key = str(batch.device)
        if key not in self._normaliser:
            self._normaliser[key] = (
                torch.tensor(self.spec.mean, device=batch.device).view(1, 3, 1, 1),
                torch.tensor(self.spec.std, device=batch.device).view(1, 3, 1, 1),
            )
        mean, std = self._normaliser[key]
        # The same arithmetic as preprocess.normalise, in float32, then the model's dtype.
        return ((batch.float() * (1 / 255) - mean) / std).to(self.dtype)

    def warm_up(self) -> None:
        """Batches through the model, so the first request does not pay for lazy init.

        With buckets, every bucket once (each compiles its own graph), the largest first so
        it reserves the memory the others reuse.
        """
        side = self.spec.crop
        for size in sorted(set(self.buckets) | {self.warm_batch}, reverse=True):
            self.encode(np.zeros((size, 3, side, side), dtype=np.uint8))

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
        self.buckets = ()
        torch.cuda.empty_cache()  # hand the freed VRAM back to the driver
        return True


@dataclass
class StagedBatch:
    """A batch on its way to (or on) the device; `ready` fires when its copy is done."""

    batch: torch.Tensor
    count: int  # real images; the rest is bucket padding
    ready: Any = None  # torch.cuda.Event on CUDA
    host: torch.Tensor | None = None  # the pinned source, alive until the copy is done


@dataclass
class LaunchedBatch:
    """A batch whose model run is queued; `done` fires when its vectors are on the host."""

    vectors: torch.Tensor
    staged: StagedBatch
    done: Any = None  # torch.cuda.Event on CUDA


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
    cuda_graphs: bool = False,
    warm_batch: int = 1,
) -> list[ClipImageEncoder]:
    """One model copy per device (`auto` expanded); the pool warms each in its worker."""
    # Loading a vision tower from a full CLIP checkpoint makes transformers print a table of
    # the (expected) unused text weights and progress bars; a server log wants neither.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    return [
        ClipImageEncoder.load(
            source,
            device,
            dtype_setting,
            quantize=quantize,
            compile=compile,
            cuda_graphs=cuda_graphs,
            warm_batch=warm_batch,
        )
        for device in resolve_devices(devices)
    ]
