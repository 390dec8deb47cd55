"""The engine: the models behind the proxy and everything that feeds them.

`engine.py` holds the one object services talk to (`Engine`); the rest are its parts:
`image_pipeline.py` / `text_pipeline.py` (front doors), `cache.py` (content-addressed cache,
single flight; its backends in `cache_backends.py`), `labels.py` (zero-shot tags),
`pool.py` (the CLIP encoder pool; its loops in `cpu_loop.py` / `cuda_loop.py`, what they
share in `pool_jobs.py`), `supervisor.py` (the threads of both pools), `preprocess.py`,
`clip.py` (with `clip_options.py` and `gpu_decode.py`) / `text.py` (the only torch
importers), `ocr.py` (OCR; its models in `ocr_models.py`, the page's layout in
`ocr_layout.py`), `caption.py` (a transformers captioner), `workers.py` (their pools),
`nvml.py` (the driver's VRAM view), `test_model.py` (`clip-proxy make-test-model`).
"""
