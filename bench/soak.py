"""Soak: 5,000 mixed requests at concurrency 50 against a real proxy process and the test
upstream on loopback; checks that memory, file descriptors and upstream connections settle.

Mix: text and image requests, streamed and not, and about 5% cancelled by the client
(closed after the first chunk of a stream, or given up on before the answer; the share is
SOAK_CANCEL_SHARE, default 0.05). RSS and open
FDs are read from /proc for the proxy process; upstream connections are counted by the
test upstream. The warm-up (first 1,000) sets the baseline; RSS may grow at most 10% after
it, and FDs and upstream connections must come back to the baseline once the load stops.

    python -m bench.soak [--requests 5000] [--concurrency 50] [--out bench/results/soak.md]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from app.engine.test_model import make_test_model
from tests.helpers import DATA, PHOTOS, free_port
from tests.upstream_server import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def image_urls() -> list[str]:
    urls = []
    for name in PHOTOS:
        image = Image.open(DATA / name).convert("RGB")
        image.thumbnail((256, 256))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG")
        urls.append("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode())
    for seed in range(20):
        buffer = io.BytesIO()
        Image.effect_noise((96, 96), 20 + seed).convert("RGB").save(buffer, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return urls


def body(kind: str, stream: bool, urls: list[str], rng: random.Random) -> dict[str, Any]:
    content: Any = "hello"
    if kind == "image":
        parts: list[dict[str, Any]] = [{"type": "text", "text": "what is this?"}]
        for url in rng.sample(urls, rng.choice([1, 1, 2])):
            parts.append({"type": "image_url", "image_url": {"url": url}})
        content = parts
    return {
        "model": "deepseek-r1",
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
    }


async def one(client: httpx.AsyncClient, index: int, urls: list[str], tally: Counter[str]) -> None:
    rng = random.Random(index)
    kind = "image" if rng.random() < 0.4 else "text"
    stream = rng.random() < 0.4
    cancel = rng.random() < CANCEL_SHARE
    payload = body(kind, stream, urls, rng)
    label = f"{kind}-{'stream' if stream else 'json'}{'-cancelled' if cancel else ''}"
    try:
        if stream:
            async with client.stream("POST", "/v1/chat/completions", json=payload) as response:
                async for _ in response.aiter_lines():
                    if cancel:
                        break  # leaving the block closes the connection mid-stream
                status = response.status_code
        elif cancel:
            try:
                await client.post("/v1/chat/completions", json=payload, timeout=0.005)
                status = 200
            except httpx.TimeoutException:
                status = 0  # given up on by the client
        else:
            status = (await client.post("/v1/chat/completions", json=payload)).status_code
    except httpx.HTTPError as exc:
        tally[f"{label}: {type(exc).__name__}"] += 1
        return
    tally[f"{label}: {status}"] += 1


async def load(
    url: str, start: int, count: int, concurrency: int, urls: list[str], tally: Counter[str]
) -> None:
    queue = iter(range(start, start + count))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            for index in queue:
                await one(client, index, urls, tally)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


KEEPALIVE_S = 2.0
CANCEL_SHARE = float(os.environ.get("SOAK_CANCEL_SHARE", "0.05"))


def quiesce(url: str, pid: int, upstream: FakeUpstream) -> tuple[int, int, int]:
    """(RSS, FDs, upstream connections) once idle connections have expired: one request
    after the expiry makes the pool close them (httpx expires connections lazily)."""
    time.sleep(KEEPALIVE_S + 1)
    httpx.get(url + "/v1/models", timeout=10)
    time.sleep(0.5)
    return rss_bytes(pid), open_fds(pid), upstream.open_connections


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    # The warm-up must see the full mix at full concurrency: the allocator's arenas and the
    # pools grow to their working size in the first thousand requests or so.
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/soak.md")
    args = parser.parse_args()
    warmup = args.warmup
    urls = image_urls()
    with tempfile.TemporaryDirectory() as tmp, FakeUpstream() as upstream:
        model = make_test_model(Path(tmp) / "model")
        port = free_port()
        env = os.environ | {
            "CLIP_PROXY_UPSTREAM_BASE_URL": upstream.base_url,
            "CLIP_PROXY_CLIP_MODEL": str(model),
            "CLIP_PROXY_DEVICE": "cpu",
            # Idle upstream connections expire quickly, so "back to the baseline" can be
            # checked: what stays open after the load is only what is still in use.
            "CLIP_PROXY_UPSTREAM_KEEPALIVE_EXPIRY_S": str(KEEPALIVE_S),
        }
        proxy = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            pid = proxy.pid
            cold = (rss_bytes(pid), open_fds(pid), upstream.open_connections)
            tally: Counter[str] = Counter()
            started = time.monotonic()
            asyncio.run(load(url, 0, warmup, args.concurrency, urls, tally))
            base = quiesce(url, pid, upstream)
            peak_rss = base[0]
            samples = []
            done = warmup
            step = max(1, (args.requests - warmup) // 9)
            while done < args.requests:
                count = min(step, args.requests - done)
                asyncio.run(load(url, done, count, args.concurrency, urls, tally))
                done += count
                rss = rss_bytes(pid)
                peak_rss = max(peak_rss, rss)
                samples.append((done, rss, open_fds(pid), upstream.open_connections))
                print(f"{done} requests", flush=True)
            elapsed = time.monotonic() - started
            rss_end, fds_end, conns_end = quiesce(url, pid, upstream)
            if os.environ.get("SOAK_DEBUG"):  # which upstream connections stayed open
                still = set(range(1, upstream.connections_opened + 1))
                for connection in sorted(still - set(upstream.closed_connections)):
                    served = [r for r in upstream.requests if r.connection == connection]
                    print(
                        "open upstream connection",
                        connection,
                        "last request:",
                        served[-1].path if served else None,
                        served[-1].body[:80] if served else b"",
                    )
        finally:
            proxy.terminate()
            proxy.wait(timeout=60)
    growth = (rss_end - base[0]) / base[0]
    five_xx = sum(
        n for key, n in tally.items() if key.endswith(tuple(f": 5{d}" for d in "0123456789"))
    )
    ok = growth <= 0.10 and fds_end <= base[1] and conns_end <= base[2] and five_xx == 0
    mib = 1024 * 1024
    lines = [
        f"# Soak: {args.requests:,} mixed requests at concurrency {args.concurrency}",
        "",
        "Command: `python -m bench.soak "
        f"--requests {args.requests} --concurrency {args.concurrency}`",
        "(proxy: `python -m app.cli serve` with the test CLIP model on CPU; upstream: the test",
        "upstream, both on loopback; 2-core shared machine).",
        "",
        f"Warm-up: the first {warmup:,} requests. "
        f"Result: **{'PASS' if ok else 'FAIL'}** in {elapsed:.0f} s "
        f"({args.requests / elapsed:.0f} requests/s).",
        "",
        "Cold: proxy ready, no request yet. After warm-up and end: measured once idle",
        f"upstream connections have expired ({KEEPALIVE_S:.0f} s) and one request has gone",
        "through; peak: the highest reading after each ninth of the rest, under load.",
        "",
        "| measure | cold | after warm-up | peak | end |",
        "| --- | --- | --- | --- | --- |",
        f"| RSS (MiB) | {cold[0] / mib:.1f} | {base[0] / mib:.1f} | {peak_rss / mib:.1f} | "
        f"{rss_end / mib:.1f} ({growth:+.1%} vs warm-up; limit +10%) |",
        f"| open FDs | {cold[1]} | {base[1]} | {max(s[2] for s in samples)} | {fds_end} |",
        f"| upstream connections | {cold[2]} | {base[2]} | {max(s[3] for s in samples)} | "
        f"{conns_end} |",
        "",
        "Samples under load (requests done, RSS MiB, FDs, upstream connections):",
        "",
        *[f"- {d}: {r / mib:.1f} MiB, {f} FDs, {c} connections" for d, r, f, c in samples],
        "",
        "Outcomes (kind: status; 0 = the client gave up before the answer):",
        "",
        *[f"- {key}: {n}" for key, n in sorted(tally.items())],
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
