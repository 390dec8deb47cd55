"""LiteLLM's proxy (a real third-party OpenAI-compatible server, its answer a
`mock_response`) as a describer: the describer client against a server nobody here wrote.

LiteLLM is not installed in the project's environment (its `[proxy]` extra pins an older
huggingface_hub than the project needs). It lives in a venv of its own:

    python3 -m venv bench/.venv-litellm && bench/.venv-litellm/bin/pip install 'litellm[proxy]'

Without that venv this test is skipped, saying so.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import DRY_RUN, ProxyServer, data_url, free_port, image_message, unique_png

LITELLM = Path(__file__).parents[2] / "bench" / ".venv-litellm" / "bin" / "litellm"
MASTER_KEY = "sk-litellm-master-i26"
ANSWER = "A mocked description from LiteLLM: a red bicycle."


@pytest.fixture(scope="module")
def litellm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not LITELLM.exists():
        pytest.skip(f"LiteLLM is not installed at {LITELLM} (see this module's docstring)")
    config = tmp_path_factory.mktemp("litellm") / "config.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: mock-vlm\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o-mini\n"
        "      api_key: sk-not-used\n"
        f"      mock_response: {ANSWER!r}\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
    )
    log_path = config.with_name("litellm.log")
    port = free_port()
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the price list
        "LITELLM_LOG": "ERROR",
        "NO_PROXY": "*",
    }
    log = log_path.open("wb")
    process = subprocess.Popen(
        [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
         "--telemetry", "False"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health/liveliness", timeout=2).status_code == 200:
                    break
            assert process.poll() is None, log_path.read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "LiteLLM did not start"
            time.sleep(0.2)
        yield base + "/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()


def test_litellm_as_a_describer(
    start_proxy: Callable[..., ProxyServer], litellm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("I26_LITELLM_KEY", MASTER_KEY)
    proxy = start_proxy(
        describers=[
            {
                "name": "litellm",
                "base_url": litellm,
                "model": "mock-vlm",
                "api_key_env": "I26_LITELLM_KEY",
            }
        ]
    )
    reply = httpx.post(
        proxy.url + "/v1/chat/completions",
        json={"messages": [image_message(data_url(unique_png()), "What is it?")]},
        headers={**DRY_RUN, "X-Clip-Proxy-Preset": "describe"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["X-Clip-Proxy-Image-Routes"] == "1=described:litellm"
    assert f"Description: {ANSWER}" in reply.json()["messages"][-1]["content"]
    assert MASTER_KEY not in reply.text
