"""What the tests share: images and data URLs, a real proxy under uvicorn, reading vectors
and /metrics. Fixtures that build on these live in conftest.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import re
import socket
import socketserver
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.main import create_app
from tests.processes import scaled

DATA = Path(__file__).parent / "data"
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png"]


def data_url(path_or_bytes: Path | bytes, mime: str = "image/png") -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    if isinstance(path_or_bytes, Path) and path_or_bytes.suffix == ".jpg":
        mime = "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def unique_png(size: tuple[int, int] = (64, 48)) -> bytes:
    """A PNG no test has sent before: a guaranteed miss in the feature cache."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProxyServer:
    """A clip-proxy app under a real uvicorn server in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.app = create_app(settings)  # its `state.clip_proxy` exists once started
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait_ready: bool = True) -> ProxyServer:
        self.thread.start()
        deadline = time.monotonic() + scaled(60)
        path = "/readyz" if wait_ready else "/healthz"
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"proxy did not answer {path} in time")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def proxy_settings(model_dir: Path, upstream_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "upstream_base_url": upstream_url,
        "upstream_api_key": "sk-upstream-secret",
        "clip_model": str(model_dir),
        "device": "cpu",
        # OCR and the describe preset's tags load models at start: only the tests of
        # describe (tests/proxy/test_describe.py) turn them on, to keep CI quick.
        "ocr_enabled": False,
        "describe_tags_top_k": 0,
    }
    values.update(overrides)
    return Settings(**values)


DRY_RUN = {"X-Clip-Proxy-Dry-Run": "true"}


def image_message(url: str, text: str = "What is this?") -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": url}},
        ],
    }


def fresh_png(seed: int) -> bytes:
    """A PNG no other test sends: the photo with one extra chunk that changes its hash."""
    data = (DATA / "coffee.png").read_bytes()
    tag = b"Comment\0" + f"seed {seed}".encode()
    chunk = (
        len(tag).to_bytes(4, "big") + b"tEXt" + tag + zlib.crc32(b"tEXt" + tag).to_bytes(4, "big")
    )
    return data[:33] + chunk + data[33:]  # after the 8-byte signature and the IHDR chunk


def text_png(lines: list[str], size: int = 28, margin: int = 16) -> bytes:
    """Black text on white, one line per entry, in Pillow's own scalable font (no system
    fonts needed): a small screenshot for OCR tests."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    widths = [int(font.getlength(line)) for line in lines]
    image = Image.new("RGB", (max(widths) + 2 * margin, len(lines) * size * 3 // 2 + 2 * margin))
    image.paste("white", (0, 0, *image.size))
    draw = ImageDraw.Draw(image)
    for number, line in enumerate(lines):
        draw.text((margin, margin + number * size * 3 // 2), line, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    """Poll `condition` on the event loop (bounded): for states other threads change."""
    deadline = time.monotonic() + scaled(timeout_s)
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def parse_vector(text: str) -> np.ndarray:
    return np.array([float(value) for value in text.split(",")], dtype=np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def metric_value(proxy_url: str, name: str, **labels: str) -> float:
    """One sample from the proxy's /metrics (0 when absent), e.g.
    `metric_value(url, "clip_proxy_cache_hits_total", backend="memory")`. An unlabelled
    series always exists, so its absence is a failure, not a zero."""
    text = scrape(proxy_url)
    if not labels:
        assert re.search(rf"^{re.escape(name)} ", text, re.M), f"{name} not in /metrics"
    return sample(text, name, **labels)


def images_encoded(proxy_url: str) -> float:
    """How many images the proxy's encoder has run (the sum of clip_proxy_batch_size)."""
    return metric_value(proxy_url, "clip_proxy_batch_size_sum")


# Reading a Prometheus text exposition.


def scrape(base_url: str) -> str:
    response = httpx.get(base_url + "/metrics", timeout=5)
    response.raise_for_status()
    return response.text


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when absent: a labelled series appears on first use)."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


def grew(before: str, after: str, name: str, **labels: str) -> float:
    """How much one sample rose between two scrapes."""
    return sample(after, name, **labels) - sample(before, name, **labels)


def exported_names(text: str) -> set[str]:
    """Every series name the exposition defines, observed or not: `# TYPE` lines expanded
    into the names PromQL can query (`_bucket`, `_sum`, `_count` for a histogram)."""
    suffixes = {
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("_sum", "_count", ""),
        "counter": ("",),
        "gauge": ("",),
        "info": ("",),
        "untyped": ("",),
    }
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.update(name + suffix for suffix in suffixes.get(kind.strip(), ("",)))
    return names


DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def dense_page(size: int = 1400, px: int = 12) -> bytes:
    """A 1400 x 1400 PNG page of 12 px DejaVu lines edge to edge (about 90 long lines): an
    image that took RapidOCR over a minute to read whole (tests/proxy/test_ocr_bounded.py)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(DEJAVU), px)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    words = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "elit", "0123456789"]
    for number, top in enumerate(range(4, size - px, px + 3)):
        line = " ".join(words[(number * 7 + i) % len(words)] for i in range(40))
        draw.text((4, top), line, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


Server = TypeVar("Server", bound=socketserver.BaseServer)


@contextlib.contextmanager
def serving(server: Server) -> Iterator[Server]:
    """Serve `server` (bound to loopback) in a daemon thread until the block ends, then shut
    it down and close its socket."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
