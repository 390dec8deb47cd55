"""The OCR models come from inside the installed rapidocr wheel: no path outside it, no
download (RapidOCR 3.x fetches models from a hub unless told where they are)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from app.engine.ocr_models import RapidOcrEngine, bundled_models


def package_dir() -> Path:
    spec = importlib.util.find_spec("rapidocr")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


def test_the_model_files_are_inside_the_installed_package() -> None:
    models = bundled_models()
    for path in (models.detector, models.recogniser):
        assert path.is_file(), path
        assert path.resolve().is_relative_to(package_dir().resolve())
        assert path.stat().st_size > 1_000_000  # a real model, not a placeholder


def test_the_engine_is_configured_with_those_files(tmp_path: Path) -> None:
    engine = RapidOcrEngine.load(threads=1)
    config = engine._engine.cfg
    models = bundled_models()
    assert config.Det.model_path == str(models.detector)
    assert config.Rec.model_path == str(models.recogniser)
    assert config.Global.use_cls is False  # the classifier (and its model) is never loaded
    assert engine._engine.text_cls is None
