"""The engine: the models behind the proxy and everything that feeds them.

`engine.py` holds the one object services talk to (`Engine`); the rest are its parts:
`image_pipeline.py` / `text_pipeline.py` (front doors), `cache.py` (content-addressed cache,
single flight), `labels.py` (zero-shot tags), `pool.py` (batching worker pool),
`preprocess.py`, `clip.py` / `text.py` (the only torch importers), `ocr.py` (OCR; its
models in `ocr_models.py`, the page's layout in `ocr_layout.py`), `caption.py` (a
transformers captioner), `workers.py` (their pools), `nvml.py` (the driver's VRAM view),
`test_model.py` (`clip-proxy make-test-model`).
"""
