"""POST /v1/embeddings: CLIP text and image vectors in one space, in OpenAI's shape."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.helpers import DATA, PHOTOS, ProxyServer, cosine, data_url, images_encoded

TEXTS = ["a photo of a cat", "an astronaut", "a cup of coffee on a table"]


@pytest.fixture(scope="session")
def reference_text_vectors(test_model_dir: Path) -> dict[str, np.ndarray]:
    """The seed's path for text: CLIPProcessor + get_text_features + L2 norm."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(test_model_dir)
    processor = CLIPProcessor.from_pretrained(test_model_dir)
    inputs = processor(text=TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        features = model.get_text_features(**inputs)
    features = getattr(features, "pooler_output", features)
    normalized = features / features.norm(dim=-1, keepdim=True)
    return {text: normalized[index].numpy() for index, text in enumerate(TEXTS)}


def post(proxy: ProxyServer, body: object) -> httpx.Response:
    return httpx.post(proxy.url + "/v1/embeddings", json=body, timeout=30)


def test_text_and_image_vectors_match_the_reference(
    proxy: ProxyServer,
    reference_vectors: dict[str, np.ndarray],
    reference_text_vectors: dict[str, np.ndarray],
) -> None:
    inputs = [*TEXTS, *(data_url(DATA / name) for name in PHOTOS)]
    reply = post(proxy, {"model": "clip", "input": inputs, "encoding_format": "float"})
    assert reply.status_code == 200
    body = reply.json()
    assert body["object"] == "list"
    assert body["model"] == "clip"
    assert [item["index"] for item in body["data"]] == list(range(len(inputs)))
    vectors = [np.array(item["embedding"]) for item in body["data"]]
    for text, vector in zip(TEXTS, vectors, strict=False):
        assert cosine(vector, reference_text_vectors[text]) >= 0.999
    for name, vector in zip(PHOTOS, vectors[len(TEXTS) :], strict=True):
        assert cosine(vector, reference_vectors[name]) >= 0.999
    assert all(abs(np.linalg.norm(vector) - 1) < 1e-5 for vector in vectors)
    # Usage counts the text tokens (the test tokenizer: one per non-space byte, plus the
    # start and end tokens).
    assert body["usage"]["prompt_tokens"] == sum(len(text.replace(" ", "")) + 2 for text in TEXTS)


def test_openai_sdk_embeddings_create(
    proxy: ProxyServer,
    reference_vectors: dict[str, np.ndarray],
    reference_text_vectors: dict[str, np.ndarray],
) -> None:
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)
    # The SDK asks for base64 and decodes it itself.
    result = client.embeddings.create(
        model="clip-vit-large-patch14", input=[TEXTS[0], data_url(DATA / "chelsea.png")]
    )
    text, image = (np.array(item.embedding) for item in result.data)
    assert len(text) == len(image) == 768
    assert cosine(text, reference_text_vectors[TEXTS[0]]) >= 0.999
    assert cosine(image, reference_vectors["chelsea.png"]) >= 0.999
    single = client.embeddings.create(model="clip", input=TEXTS[1], encoding_format="float")
    assert cosine(np.array(single.data[0].embedding), reference_text_vectors[TEXTS[1]]) >= 0.999


def test_base64_is_the_float32_bytes_of_the_float_answer(proxy: ProxyServer) -> None:
    body = {"input": [TEXTS[2], data_url(DATA / "coffee.png")]}
    floats = post(proxy, {**body, "encoding_format": "float"}).json()["data"]
    packed = post(proxy, {**body, "encoding_format": "base64"}).json()["data"]
    for as_float, as_base64 in zip(floats, packed, strict=True):
        decoded = np.frombuffer(base64.b64decode(as_base64["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.array(as_float["embedding"], dtype=np.float32))


def test_image_embeddings_use_the_cache(start_proxy: Callable[..., ProxyServer]) -> None:
    proxy = start_proxy()
    photo = data_url(DATA / "rocket.jpg")
    for _ in range(3):
        assert post(proxy, {"input": [photo, photo]}).status_code == 200
    assert images_encoded(proxy.url) == 1


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": []}, 400, "input"),
        ({"input": ["fine", ""]}, 400, "input[1]"),
        ({"input": [[1, 2, 3]]}, 400, "input[0]"),
        ({"input": "a", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"input": ["a cat", "data:image/png;base64,AAAA"]}, 400, "input[1]"),
        ({"input": "https://127.0.0.1/cat.png"}, 400, "input"),  # SSRF rules as chat
        ({"model": "x"}, 400, "input"),
    ],
)
def test_bad_input_is_a_400_in_openai_shape(
    proxy: ProxyServer, body: dict[str, object], status: int, param: str
) -> None:
    reply = post(proxy, body)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert isinstance(error["message"], str) and error["message"]


def test_more_images_than_the_limit_is_refused(start_proxy: Callable[..., ProxyServer]) -> None:
    proxy = start_proxy(max_images_per_request=2)
    photo = data_url(DATA / "camera.png")
    reply = post(proxy, {"input": [photo, photo, photo, "text is not counted"]})
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "too_many_images"
