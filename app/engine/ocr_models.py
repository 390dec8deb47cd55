"""The OCR models: PP-OCRv6 small detection and recognition (Chinese, English and 46 more
Latin-script languages), the ONNX files that the `rapidocr` 3.x wheel ships inside itself.

The only module that imports rapidocr. RapidOCR 3.x fetches its models from a model hub by
default; here every model path is given explicitly, inside the installed package, so the
download code is never reached and the proxy works offline (`bundled_models()`, tested).
PP-OCRv6 small was chosen by measurement against PP-OCRv4 (rapidocr-onnxruntime 1.4, the
models before): bench/results/ocr-models.md.

    engine = RapidOcrEngine.load(threads=1)
    image = engine.prepare(bgr_pixels)                # the page as the detector reads it
    boxes = engine.detect(image, run_options)         # four corners each, top to bottom
    texts = engine.recognise(engine.crops(image, boxes), run_options)   # [(text, score)]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path
from typing import Any

import numpy as np

from app.engine.ocr_steps import run_session

# Detection sees the page with its longer side at most this many pixels (PaddleOCR's own
# default; RapidOCR's "shorter side at least 736" upscales a 60-px-high screenshot twelve
# times and took 20 s on it).
MAX_SIDE = 960
# How far a detected text box is grown before the line is cropped for recognition. RapidOCR's
# 1.6 crops English lines so tightly that the recogniser drops the spaces between words
# ("ERROR:connectionrefusedonport5432"); 2.0 keeps them (bench/results/ocr-unclip.md).
UNCLIP_RATIO = 2.0
# The narrowest a line crop is padded to for recognition (width over height).
MIN_RATIO = 2.0
DETECTOR = "PP-OCRv6_det_small.onnx"
RECOGNISER = "PP-OCRv6_rec_small.onnx"


@dataclass(frozen=True)
class BundledModels:
    detector: Path
    recogniser: Path


def bundled_models() -> BundledModels:
    """The model files inside the installed rapidocr package (its `models/` folder)."""
    spec = util.find_spec("rapidocr")
    if spec is None or spec.origin is None:
        raise RuntimeError("OCR needs the rapidocr package (pip install 'rapidocr>=3.10,<4')")
    folder = Path(spec.origin).parent / "models"
    return BundledModels(folder / DETECTOR, folder / RECOGNISER)


def models_identity() -> str:
    return f"rapidocr@{metadata.version('rapidocr')}|{DETECTOR}|{RECOGNISER}"


class RapidOcrEngine:
    """RapidOCR 3.x's detector and recogniser (two ONNX sessions), driven by `OcrSteps`.
    Not thread-safe: one per worker."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._detector = engine._load_det_model()
        self._recogniser = engine._load_rec_model()

    @classmethod
    def load(cls, *, threads: int, use_cuda: bool = False) -> RapidOcrEngine:
        from rapidocr import RapidOCR

        # RapidOCR logs through a coloured handler of its own; its warnings go through the
        # proxy's logging instead (one format, one place).
        own = logging.getLogger("RapidOCR")
        own.handlers.clear()
        own.propagate = True

        models = bundled_models()
        for path in (models.detector, models.recogniser):
            if not path.is_file():  # never let RapidOCR reach for its download
                raise RuntimeError(f"the rapidocr wheel lacks its bundled model {path.name}")
        engine = RapidOCR(
            params={
                "Global.log_level": "warning",
                # The 0/180-degree classifier is off: screenshots and documents arrive
                # upright, and it turned a plain 20 px English line upside down.
                "Global.use_cls": False,
                "Det.model_path": str(models.detector),
                "Rec.model_path": str(models.recogniser),
                "Det.limit_type": "max",
                "Det.limit_side_len": MAX_SIDE,
                "Det.unclip_ratio": UNCLIP_RATIO,
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
                "EngineConfig.onnxruntime.use_cuda": use_cuda,
            }
        )
        return cls(engine)

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        """BGR pixels as the detector and the crops read them: the longer side at most 2000,
        the shorter at least 30, a wide strip padded to a detectable height."""
        from rapidocr.utils.process_img import apply_vertical_padding, resize_image_within_bounds

        cfg = self._engine.cfg.Global
        image, _, _ = resize_image_within_bounds(pixels, cfg.min_side_len, cfg.max_side_len)
        image, _ = apply_vertical_padding(image, {}, cfg.width_height_ratio, cfg.min_height)
        return image

    def detect(self, image: np.ndarray, options: Any) -> list[np.ndarray]:
        detector = self._detector
        shape = image.shape[:2]
        prepared = detector.get_preprocess()(image)
        if prepared is None:
            return []
        predictions = run_session(detector.session, prepared, options)[0]
        boxes, _ = detector.postprocess_op(predictions, shape)
        if boxes is None or len(boxes) < 1:
            return []
        return list(detector.sorted_boxes(np.asarray(boxes)))

    def crops(self, image: np.ndarray, boxes: list[np.ndarray]) -> list[np.ndarray]:
        from rapidocr.utils.process_img import get_rotate_crop_image

        return [get_rotate_crop_image(image, box.astype(np.float32)) for box in boxes]

    def recognise(self, crops: list[np.ndarray], options: Any) -> list[tuple[str, float]]:
        """RapidOCR's `TextRecognizer.__call__` for one batch of line crops, in order, but
        for the padding: RapidOCR pads every crop to at least 320 x 48 (6.7:1), here only to
        `MIN_RATIO`: a short line (a `}`, a table cell) costs what its width does. 12% off
        the corpus's p50 time per image, its CER unchanged (0.29% against 0.27%, one
        character at 12 px)."""
        recogniser = self._recogniser
        ratios = [crop.shape[1] / float(crop.shape[0]) for crop in crops]
        widest = max([MIN_RATIO, *ratios])
        batch = np.concatenate(
            [recogniser.resize_norm_img(crop, widest)[np.newaxis, :] for crop in crops]
        ).astype(np.float32)
        predictions = run_session(recogniser.session, batch, options)[0]
        lines, _ = recogniser.postprocess_op(
            predictions, False, wh_ratio_list=ratios, max_wh_ratio=widest
        )
        return [(str(text), float(score)) for text, score in lines]

    def warm_up(self) -> None:
        """One detection and one recognition on a blank strip (RapidOCR's own `__call__`
        would log a warning that it found no text)."""
        import onnxruntime  # type: ignore[import-untyped]  # loaded with RapidOCR

        blank = np.full((48, 160, 3), 255, dtype=np.uint8)
        options = onnxruntime.RunOptions()
        self.detect(self.prepare(blank), options)
        self.recognise([blank], options)
