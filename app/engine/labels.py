"""Zero-shot labels: which words of a vocabulary CLIP finds closest to an image.

Each label becomes one or more prompts ("a photo of a dog.", "a picture of a dog.", ...),
encoded once at start by the text tower; with several, the label's vector is the normalised
mean of its prompts' (CLIP's prompt ensembling).
An image's scores are CLIP's own: softmax over the vocabulary of
`logit_scale * cosine(image, label)`, with the checkpoint's trained logit scale. The top k
are written for the prompt as `dog 0.62, frisbee 0.21`; a minimum score leaves out the weak
ones.

    labeler = Labeler(labels=vocabulary, vectors=label_vectors, logit_scale=100.0, top_k=3)
    labeler.describe(vector)   # "dog 0.62, frisbee 0.21, person 0.05"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

DEFAULT_VOCABULARY = Path(__file__).parent.parent / "data" / "labels.txt"


def read_vocabulary(path: Path | None = None) -> list[str]:
    """One label per line; blank lines and `#` comments skipped; duplicates dropped."""
    lines = (path or DEFAULT_VOCABULARY).read_text(encoding="utf-8").splitlines()
    labels = [line.strip() for line in lines]
    unique = dict.fromkeys(label for label in labels if label and not label.startswith("#"))
    if not unique:
        raise ValueError(f"the label vocabulary {path} holds no labels")
    return list(unique)


def label_prompts(labels: list[str], template: str) -> list[str]:
    return [template.format(label=label) for label in labels]


def ensemble(per_template: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    """One unit vector per label from its prompts' vectors (each (n labels, dim))."""
    if len(per_template) == 1:
        return per_template[0]  # one prompt: its vectors exactly, nothing to average
    mean = np.mean(np.stack(per_template), axis=0)
    vectors: npt.NDArray[np.float32] = (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(
        np.float32
    )
    return vectors


@dataclass(frozen=True)
class Labeler:
    labels: list[str]
    vectors: npt.NDArray[np.float32]  # (n labels, dim), unit rows
    logit_scale: float
    top_k: int

    def scores(self, vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """The softmax over the vocabulary of logit_scale x cosine, in vocabulary order."""
        logits = self.logit_scale * (self.vectors.astype(np.float64) @ vector.astype(np.float64))
        logits -= logits.max()
        weights = np.exp(logits)
        probabilities: npt.NDArray[np.float64] = weights / weights.sum()
        return probabilities

    min_score: float = 0.0

    def top(
        self,
        vector: npt.NDArray[np.float32],
        top_k: int | None = None,
        min_score: float | None = None,
    ) -> list[tuple[str, float]]:
        scores = self.scores(vector)
        # A stable sort: equal scores keep vocabulary order, so the answer is deterministic.
        order = np.argsort(-scores, kind="stable")[: self.top_k if top_k is None else top_k]
        floor = self.min_score if min_score is None else min_score
        return [(self.labels[i], float(scores[i])) for i in order if scores[i] >= floor]

    def describe(
        self,
        vector: npt.NDArray[np.float32],
        top_k: int | None = None,
        min_score: float | None = None,
    ) -> str:
        return format_labels(self.top(vector, top_k, min_score))


def format_labels(pairs: list[tuple[str, float]]) -> str:
    return ", ".join(f"{label} {score:.2f}" for label, score in pairs)
