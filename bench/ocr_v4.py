"""The OCR models before issue 27, for side-by-side benchmarks: PP-OCRv4 (mobile detection
and recognition) in `rapidocr-onnxruntime` 1.4, driven by the same steps as the proxy's
engine (`app/engine/ocr_steps.py`).

The package is no dependency of the proxy any more; a benchmark installs it beside rapidocr
3.x without its own dependencies (it would pull opencv-python over rapidocr's headless
OpenCV; everything else it needs rapidocr brings):

    pip install --no-deps "rapidocr-onnxruntime==1.4.4"

    model = OcrModel(V4Engine.load(threads=1), decode, layout="plain")   # today's reading
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import numpy as np

from app.engine.ocr_models import MAX_SIDE, UNCLIP_RATIO
from app.engine.ocr_steps import run_session


def v4_identity() -> str:
    return f"rapidocr-onnxruntime@{metadata.version('rapidocr-onnxruntime')} (PP-OCRv4 mobile)"


class V4Engine:
    def __init__(self, engine: Any) -> None:
        self._engine = engine

    @classmethod
    def load(cls, *, threads: int) -> V4Engine:
        from rapidocr_onnxruntime import RapidOCR

        engine = RapidOCR(
            use_cls=False,
            det_limit_type="max",
            det_limit_side_len=MAX_SIDE,
            det_unclip_ratio=UNCLIP_RATIO,
            intra_op_num_threads=threads,
            inter_op_num_threads=1,
        )
        return cls(engine)

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        image, _, _ = self._engine.preprocess(pixels)
        image, _ = self._engine.maybe_add_letterbox(image, {})
        return image  # type: ignore[no-any-return]

    def detect(self, image: np.ndarray, options: Any) -> list[np.ndarray]:
        detector = self._engine.text_det
        shape = image.shape[:2]
        prepared = detector.get_preprocess(max(shape))(image)
        if prepared is None:
            return []
        predictions = run_session(detector.infer, prepared, options)[0]
        boxes, _ = detector.postprocess_op(predictions, shape)
        boxes = detector.filter_tag_det_res(boxes, shape)
        if boxes is None or len(boxes) < 1:
            return []
        return list(self._engine.sorted_boxes(boxes))

    def crops(self, image: np.ndarray, boxes: list[np.ndarray]) -> list[np.ndarray]:
        return list(self._engine.get_crop_img_list(image, boxes))

    def recognise(self, crops: list[np.ndarray], options: Any) -> list[tuple[str, float]]:
        recogniser = self._engine.text_rec
        _, height, width = recogniser.rec_image_shape[:3]
        ratios = [crop.shape[1] / float(crop.shape[0]) for crop in crops]
        widest = max([width / height, *ratios])
        batch = np.concatenate(
            [recogniser.resize_norm_img(crop, widest)[np.newaxis, :] for crop in crops]
        ).astype(np.float32)
        predictions = run_session(recogniser.session, batch, options)[0]
        decoded = recogniser.postprocess_op(
            predictions, False, wh_ratio_list=ratios, max_wh_ratio=widest
        )
        return [(str(result[0]), float(result[1])) for result in decoded]

    def warm_up(self) -> None:
        self._engine(np.full((32, 96, 3), 255, dtype=np.uint8))
