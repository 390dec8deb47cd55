"""The OCR pool's shape from the cores the process may use (app/runtime/cores.py): the
affinity, a cgroup v2 quota, explicit settings winning, and `clip-proxy config` naming
where each value came from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import Settings
from app.runtime.cores import cgroup_quota, ocr_shape, usable_cores


@pytest.mark.parametrize(
    ("text", "quota"),
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("400000 100000", 4.0), ("junk", None)],
)
def test_a_cgroup_quota_is_read_in_cpus(tmp_path: Path, text: str, quota: float | None) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(text)

    assert cgroup_quota(cpu_max) == quota


def test_usable_cores_are_the_affinity_capped_by_the_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"

    assert usable_cores(tmp_path / "absent") == affinity
    cpu_max.write_text("50000 100000")  # half a CPU: still one
    assert usable_cores(cpu_max) == 1
    cpu_max.write_text(f"{(affinity + 8) * 100000} 100000")  # more than the affinity
    assert usable_cores(cpu_max) == affinity


@pytest.mark.parametrize(
    ("cores", "shape"), [(1, (1, 1)), (2, (1, 1)), (3, (1, 1)), (4, (2, 1)), (16, (8, 1))]
)
def test_the_ocr_shape_by_cores(cores: int, shape: tuple[int, int]) -> None:
    assert ocr_shape(cores) == shape


def test_explicit_settings_win_over_the_chosen_ones() -> None:
    chosen = Settings()
    explicit = Settings(ocr_workers=3, ocr_threads=1)

    assert (chosen.ocr_workers, chosen.ocr_threads) == ocr_shape(usable_cores())
    assert set(chosen.auto_chosen) == {"ocr_workers", "ocr_threads"}
    assert (explicit.ocr_workers, explicit.ocr_threads) == (3, 1)
    assert explicit.auto_chosen == {}


def test_clip_proxy_config_shows_the_chosen_values_and_why() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIP_PROXY_")}
    env["CLIP_PROXY_OCR_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", "from app.cli import main; raise SystemExit(main())", "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    workers = ocr_shape(usable_cores())[0]

    assert f"default (auto: {usable_cores()} usable cores)" in rows["CLIP_PROXY_OCR_WORKERS"]
    assert rows["CLIP_PROXY_OCR_WORKERS"].split()[-1] == str(workers)
    assert rows["CLIP_PROXY_OCR_THREADS"].split()[1:] == ["environment", "1"]
