"""What the stream meter adds per relayed chunk, side by side with a bare relay.

Both relay the same DeepSeek-R1 SSE chunks (reasoning deltas, answer deltas, a usage chunk,
[DONE]) from an in-memory source through one async generator layer, as the proxy does;
the metered run also finds the first token, watches for usage and parses it at the end.

    python bench/stream_meter_overhead.py   # writes bench/results/stream_meter_overhead.json
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

from app.metrics import Metrics
from app.upstream.stream_meter import StreamMeter, StreamOutcome

CHUNKS = 20_000
ROUNDS = 7


def r1_chunks(count: int) -> list[bytes]:
    def event(delta: dict[str, object]) -> bytes:
        body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                "model": "deepseek-r1", "choices": [{"index": 0, "delta": delta}]}  # fmt: skip
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    chunks = [event({"role": "assistant", "content": None, "reasoning_content": ""})]
    chunks += [event({"reasoning_content": "think "}) for _ in range(count // 2)]
    chunks += [event({"content": "word "}) for _ in range(count - count // 2 - 3)]
    usage = {"prompt_tokens": 900, "completion_tokens": count, "total_tokens": count + 900}
    chunks.append(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
    chunks.append(b"data: [DONE]\n\n")
    return chunks


async def source(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def bare(chunks: list[bytes]) -> AsyncIterator[bytes]:
    async for chunk in source(chunks):
        yield chunk


async def metered(chunks: AsyncIterator[bytes], meter: StreamMeter) -> AsyncIterator[bytes]:
    """What the relay does per chunk with a meter (app/upstream/response.py)."""
    async for chunk in chunks:
        meter.see(chunk)
        yield chunk
    meter.end(StreamOutcome.complete)


async def drain(stream: AsyncIterator[bytes]) -> float:
    started = time.perf_counter()
    async for _ in stream:
        pass
    return time.perf_counter() - started


async def main() -> None:
    chunks = r1_chunks(CHUNKS)
    metrics = Metrics()
    bare_s, metered_s = [], []
    for _ in range(ROUNDS):  # interleaved, so both see the same machine load
        bare_s.append(await drain(bare(chunks)))
        now = time.perf_counter()
        meter = StreamMeter(metrics, sent_at=now, headers_at=now)
        metered_s.append(await drain(metered(source(chunks), meter)))
    per_chunk_us = {
        "bare": statistics.median(bare_s) / len(chunks) * 1e6,
        "metered": statistics.median(metered_s) / len(chunks) * 1e6,
    }
    result = {
        "chunks": len(chunks),
        "rounds": ROUNDS,
        "median_us_per_chunk": {k: round(v, 3) for k, v in per_chunk_us.items()},
        "overhead_us_per_chunk": round(per_chunk_us["metered"] - per_chunk_us["bare"], 3),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    out = Path(__file__).parent / "results" / "stream_meter_overhead.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
