"""Where the CLIP checkpoint comes from, checked before transformers is asked to load it.

transformers, asked for a hub id it cannot reach, retries for half a minute and more, and a
wrong directory name looks to it like a hub id. This check answers in seconds instead, and
every failure to load, this one's or transformers', becomes one message that names
`CLIP_PROXY_CLIP_MODEL` and the ways out (`describe_load_failure`).

    check_model_source("openai/clip-vit-large-patch14")   # raises ModelUnavailable
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

# How long the Hub may take to answer at all (DNS included) before it counts as unreachable.
HUB_PROBE_TIMEOUT_S = 10.0


class ModelUnavailable(Exception):
    """The checkpoint cannot be found where CLIP_PROXY_CLIP_MODEL points."""


def check_model_source(name: str) -> None:
    """Raise ModelUnavailable, with the reason, when `name` can plainly not be loaded:
    a path to nothing, or a hub id that is neither cached nor reachable."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelUnavailable(f"the directory {name} holds no config.json")
        return
    if path.exists():
        raise ModelUnavailable(f"{name} is a file; point it at the checkpoint's directory")
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise ModelUnavailable(f"there is no directory {name}")
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # in the local Hugging Face cache
    if constants.HF_HUB_OFFLINE:
        raise ModelUnavailable(
            f"no directory {name} here, and HF_HUB_OFFLINE is set but the model is not in "
            "the Hugging Face cache"
        )
    reachable, why = _probe(constants.ENDPOINT)
    if not reachable:
        raise ModelUnavailable(
            f"no directory {name} here, not in the Hugging Face cache, and the Hub "
            f"({constants.ENDPOINT}) cannot be reached: {why}"
        )


def _probe(endpoint: str) -> tuple[bool, str]:
    """Does the Hub answer at all? In a thread with a deadline: name resolution is not
    covered by httpx's timeouts."""
    outcome: list[tuple[bool, str]] = []

    def probe() -> None:
        try:
            httpx.head(endpoint, timeout=HUB_PROBE_TIMEOUT_S)
        except httpx.HTTPError as exc:
            outcome.append((False, f"{type(exc).__name__}: {exc}"))
        else:
            outcome.append((True, ""))

    thread = threading.Thread(target=probe, daemon=True, name="hub-probe")
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S + 1)
    return outcome[0] if outcome else (False, f"no answer in {HUB_PROBE_TIMEOUT_S:.0f} s")


def describe_load_failure(name: str, reason: str) -> str:
    """The one message an operator reads when the model does not load."""
    reason = " ".join(reason.split())
    if len(reason) > 400:
        reason = reason[:399] + "…"
    return (
        f"cannot load the CLIP model CLIP_PROXY_CLIP_MODEL={name}: {reason}. Ways out: "
        "(1) try the plumbing offline with random weights: `clip-proxy make-test-model "
        "models/test` and CLIP_PROXY_CLIP_MODEL=models/test; "
        "(2) point CLIP_PROXY_CLIP_MODEL at a local directory holding the checkpoint "
        "(config.json, model.safetensors, preprocessor_config.json); "
        "(3) with the model already in the Hugging Face cache, set HF_HUB_OFFLINE=1 "
        "(and HF_HOME if the cache is elsewhere)"
    )
