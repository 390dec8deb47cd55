"""Zero-shot labels: CLIP's own scores over a vocabulary, carried in the prompt."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from app.config import Settings
from app.engine.labels import read_vocabulary
from tests.helpers import DATA, DRY_RUN, PHOTOS, ProxyServer, data_url, image_message
from tests.processes import scaled

VOCABULARY = ["cat", "dog", "astronaut", "cup of coffee", "rocket", "camera", "frisbee"]
PROMPT = "a photo of a {label}"
TEMPLATE = '<image labels="{labels}">{vector}</image>'
TAG = re.compile(r'<image labels="([^"]*)">')


@pytest.fixture(scope="session")
def reference_scores(
    test_model_dir: Path, reference_vectors: dict[str, np.ndarray]
) -> dict[str, list[tuple[str, float]]]:
    """Computed directly: softmax over the vocabulary of logit_scale x cosine, with the
    CLIPModel's own text features and trained logit scale."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(test_model_dir)
    processor = CLIPProcessor.from_pretrained(test_model_dir)
    prompts = [PROMPT.format(label=label) for label in VOCABULARY]
    inputs = processor(text=prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        features = model.get_text_features(**inputs)
        scale = float(model.logit_scale.exp())
    features = getattr(features, "pooler_output", features)
    texts = (features / features.norm(dim=-1, keepdim=True)).numpy().astype(np.float64)
    ranked = {}
    for name, image in reference_vectors.items():
        logits = scale * texts @ image.astype(np.float64)
        scores = np.exp(logits - logits.max())
        scores /= scores.sum()
        order = np.argsort(-scores, kind="stable")[:3]
        ranked[name] = [(VOCABULARY[index], float(scores[index])) for index in order]
    return ranked


@pytest.fixture
def vocabulary_file(tmp_path: Path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("# test vocabulary\n" + "\n".join(VOCABULARY) + "\n\ncat\n", encoding="utf-8")
    return path


def parse_labels(text: str) -> list[tuple[str, float]]:
    pairs = []
    for item in text.split(", "):
        label, score = item.rsplit(" ", 1)
        pairs.append((label, float(score)))
    return pairs


def test_top_k_labels_match_the_reference_and_are_deterministic(
    start_proxy: Callable[..., ProxyServer],
    vocabulary_file: Path,
    reference_scores: dict[str, list[tuple[str, float]]],
) -> None:
    proxy = start_proxy(
        labels_top_k=3,
        labels_vocabulary=str(vocabulary_file),
        labels_prompt=PROMPT,
        image_template=TEMPLATE,
    )
    body = {"messages": [image_message(data_url(DATA / name)) for name in PHOTOS]}
    body["messages"].append({"role": "user", "content": "compare them"})
    seen = []
    for _ in range(2):
        reply = httpx.post(
            proxy.url + "/v1/chat/completions", json=body, headers=DRY_RUN, timeout=30
        )
        assert reply.status_code == 200
        seen.append([message["content"] for message in reply.json()["messages"]])
    assert seen[0] == seen[1]  # deterministic
    # The earlier images use the default retained template: no labels there.
    assert all("labels=" not in content for content in seen[0])

    # Labels show on the current turn's images: put each photo last in turn.
    for name in PHOTOS:
        one = {"messages": [image_message(data_url(DATA / name))]}
        reply = httpx.post(proxy.url + "/v1/chat/completions", json=one, headers=DRY_RUN)
        match = TAG.search(reply.json()["messages"][0]["content"])
        assert match is not None
        got = parse_labels(match.group(1))
        expected = reference_scores[name]
        assert [label for label, _ in got] == [label for label, _ in expected]
        for (_, score), (_, reference) in zip(got, expected, strict=True):
            assert abs(score - reference) <= 0.005 + 1e-9  # two decimals


def test_labels_in_content_part_format(
    start_proxy: Callable[..., ProxyServer],
    vocabulary_file: Path,
    reference_scores: dict[str, list[tuple[str, float]]],
) -> None:
    proxy = start_proxy(
        labels_top_k=2,
        labels_vocabulary=str(vocabulary_file),
        labels_prompt=PROMPT,
        prompt_format="content_part",
    )
    body = {"messages": [image_message(data_url(DATA / "astronaut.png"))]}
    reply = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=DRY_RUN)
    part = reply.json()["messages"][0]["content"][1]
    assert part["type"] == "image_embedding"
    assert part["image_embedding"]["format"] == "clip_vector_v1"
    labels = parse_labels(part["image_embedding"]["labels"])
    assert [label for label, _ in labels] == [
        name for name, _ in reference_scores["astronaut.png"][:2]
    ]


def test_the_shipped_vocabulary_has_coco_and_scenes() -> None:
    labels = read_vocabulary()
    assert len(labels) == len(set(labels)) >= 100
    assert {"person", "frisbee", "toothbrush", "beach", "kitchen"} <= set(labels)
    assert not any(label.startswith("#") for label in labels)


def test_a_labels_template_without_labels_on_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="CLIP_PROXY_LABELS_TOP_K"):
        Settings(image_template=TEMPLATE)
    with pytest.raises(ValidationError, match="unknown placeholder"):
        Settings(retained_image_template="<retain_image_emb>{vectors}</retain_image_emb>")
    with pytest.raises(ValidationError, match="CLIP_PROXY_LABELS_PROMPT"):
        Settings(labels_prompt="a {style} photo of a {label}")
    with pytest.raises(ValidationError, match="CLIP_PROXY_LABELS_VOCABULARY: no file"):
        Settings(labels_top_k=3, labels_vocabulary="/no/such/labels.txt")
    with pytest.raises(ValidationError, match="CLIP_PROXY_API_KEYS_FILE: no file"):
        Settings(api_keys_file="/no/such/keys.txt")


def test_an_empty_vocabulary_is_logged_and_keeps_the_proxy_unready(
    start_proxy: Callable[..., ProxyServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "empty-vocabulary.txt"
    empty.write_text("# nothing but a comment\n")
    caplog.set_level("ERROR", logger="app.engine.engine")
    proxy = start_proxy(wait_ready=False, labels_top_k=3, labels_vocabulary=str(empty))
    deadline = time.monotonic() + scaled(30)
    failures: list[logging.LogRecord] = []
    while time.monotonic() < deadline and not failures:
        time.sleep(0.05)
        failures = [record for record in caplog.records if record.name == "app.engine.engine"]
    assert failures, "the start-up failure was never logged"
    assert failures[0].exc_info is not None and "holds no labels" in str(failures[0].exc_info[1])
    ready = httpx.get(proxy.url + "/readyz")
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
