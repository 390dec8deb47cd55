"""The CLIP model on one device: pixels in, L2-normalised float32 vectors out.

The only module (with `test_model.py`) that imports torch and transformers. It loads the
vision tower alone (`CLIPVisionModelWithProjection`: about 580 MiB in fp16 for ViT-L/14,
against 816 MiB for the whole CLIP), whose `image_embeds` is the vector
`CLIPModel.get_image_features` gives.

    encoder = ClipImageEncoder.load("openai/clip-vit-large-patch14", "cuda:0", "auto")
    vectors = encoder.encode(np.stack([preprocess(image, encoder.spec)]))

Speed options (each measured in `bench/encoder.py`, see bench/results/; the dtype, int8
and bucket rules live in `clip_options.py`):
- `compile=True`: `torch.compile` the vision tower (slow first batch; warm-up pays it).
  On CUDA it compiles with static shapes over fixed batch buckets (1, 2, 4, ... max batch;
  a batch is padded up to its bucket, warm-up compiles each), and with `cuda_graphs=True`
  in mode "reduce-overhead": one CUDA graph per bucket, no per-kernel launch cost.

Pixels may arrive as uint8 (the server's path): they cross to the device at a quarter of
float32's bytes and are normalised there. On CUDA the encoder also works in three steps
the pool pipelines (`stage` / `launch` / `collect`): the next batch is pinned and copied on
a stream of its own while this one runs, and the vectors come back asynchronously.

GPU decode (optional) is `gpu_decode.py`'s.
bitsandbytes 4-bit is not offered: it dequantises on every matmul and is slower for ViTs
(bitsandbytes issue #604), whatever the seed claims.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection
from transformers.utils import logging as transformers_logging

from app.engine.clip_options import batch_buckets, pad_to_bucket, quantize_int8, resolve_dtype
from app.engine.nvml import normalise_uuid, nvml_memory_by_uuid
from app.engine.preprocess import Pixels, PreprocessSpec
from app.metrics import DeviceMemory, MemoryReading

logger = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]


def resolve_devices(requested: list[str]) -> list[str]:
    """`auto` means every visible GPU, else the CPU; anything else is taken as given."""
    if requested != ["auto"]:
        return ["cuda:0" if device == "cuda" else device for device in requested]
    if torch.cuda.is_available():
        return [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    return ["cpu"]


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
