"""The front door: what bounding request heads costs the relay, and memory under large images.

Two measurements, each on real server processes on loopback (issue #13):

`relay`: the relay's CPU per chunk with each way of bounding request heads, side by side in
one run: uvicorn's stock httptools protocol (no bounds: the baseline), clip-proxy's
`BoundedHttpToolsProtocol` (app/runtime/server.py), and uvicorn's h11 protocol with
`h11_max_incomplete_event_size`. Each runs as its own process (`front_door.py serve --http
X`), all against one `sse_upstream.py`, loaded in turn by `loadgen.py` with streams of
`--chunks` chunks at `--concurrency`, for `--rounds` interleaved rounds; CPU time is read
from /proc and divided by the chunks relayed.

`memory`: peak RSS growth of a real `clip-proxy serve` (VmHWM from /proc, reset before each
burst) while `--clients` concurrent requests each carry one large JPEG of noise (~19 MB by
default), as a base64 data URL or as a multipart upload, against the default body budget
and against a 256 MiB one. `--baseline-root DIR` runs the same against another checkout
(the code before) in the same run, for a before/after.

    python -m bench.front_door relay                      # bench/results/front_door_relay.*
    python -m bench.front_door memory --baseline-root ../main   # bench/results/front_door_memory.*
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.proxy import BENCH, ROOT, WORK, cpu_seconds, free_port, run_cell, start, wait_http

MiB = 1024 * 1024
RESULTS = BENCH / "results"
VARIANTS = ("httptools", "bounded", "h11")


def test_model() -> Path:
    model = WORK / "model"
    if not (model / "config.json").exists():
        subprocess.run(
            [sys.executable, "-m", "app.cli", "make-test-model", str(model)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    return model


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "shared": "a 2-core machine shared with other engineers' builds and tests",
    }


# --- serve with a chosen protocol (the relay measurement's servers) ---------------------


def serve(http: str, port: int) -> None:
    from app.config import Settings
    from app.main import create_app
    from app.runtime.server import DrainingServer, return_large_buffers_to_the_os, server_config

    return_large_buffers_to_the_os()  # as `clip-proxy serve` does
    settings = Settings()
    app = create_app(settings)
    choice = None if http == "bounded" else http
    config = server_config(app, settings, host="127.0.0.1", port=port, http=choice)
    DrainingServer(config, app.state.admission).run()


# --- relay CPU per chunk ----------------------------------------------------------------


def relay(args: argparse.Namespace) -> None:
    WORK.mkdir(exist_ok=True)
    model = test_model()
    body = WORK / "front-door-text.json"
    messages = [{"role": "user", "content": "Say something long."}]
    body.write_text(json.dumps({"model": "deepseek-r1", "messages": messages, "stream": True}))
    upstream_port = free_port()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    ports = {variant: free_port() for variant in VARIANTS}
    env = {
        "CLIP_PROXY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "CLIP_PROXY_CLIP_MODEL": str(model),
        "CLIP_PROXY_DEVICE": "cpu",
        "CLIP_PROXY_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
    }
    cells: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
    load_start = os.getloadavg()
    try:
        upstream = [sys.executable, str(BENCH / "sse_upstream.py"), "--port", str(upstream_port)]
        stream_shape = ["--chunks", str(args.chunks), "--delay-ms", str(args.delay_ms)]
        processes["upstream"] = start([*upstream, *stream_shape], WORK / "front-door-upstream.log")
        for variant in VARIANTS:
            command = [sys.executable, str(Path(__file__)), "serve", "--http", variant]
            processes[variant] = start(
                [*command, "--port", str(ports[variant])], WORK / f"front-door-{variant}.log", env
            )
        for variant in VARIANTS:
            wait_http(f"http://127.0.0.1:{ports[variant]}/readyz", 120, processes[variant])
            run_cell(ports[variant], body, 5, 1, processes[variant].pid)  # warm
        for round_index in range(args.rounds):
            order = VARIANTS if round_index % 2 == 0 else tuple(reversed(VARIANTS))
            for variant in order:
                cell = run_cell(
                    ports[variant], body, args.concurrency, args.duration_s, processes[variant].pid
                )
                cells[variant].append(cell)
                print(
                    f"round {round_index} {variant:9} {cell['proxy_cpu_us_per_chunk']:.1f} us/chunk"
                    f" ({cell['chunks']} chunks, {cell['errors']} errors)",
                    flush=True,
                )
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(timeout=15)
    summary: dict[str, Any] = {}
    for variant in VARIANTS:
        per_chunk = [cell["proxy_cpu_us_per_chunk"] for cell in cells[variant]]
        summary[variant] = {
            "cpu_us_per_chunk_median": statistics.median(per_chunk),
            "cpu_us_per_chunk_each_round": per_chunk,
            "chunks": sum(cell["chunks"] for cell in cells[variant]),
            "errors": sum(cell["errors"] for cell in cells[variant]),
            "gap_ms_p99_median": statistics.median(
                cell["gap_ms"]["p99"] for cell in cells[variant]
            ),
        }
    base = summary["httptools"]["cpu_us_per_chunk_median"]
    for variant in VARIANTS:
        summary[variant]["vs_httptools"] = summary[variant]["cpu_us_per_chunk_median"] / base
    results = {
        "command": "python " + " ".join(shlex.quote(arg) for arg in sys.argv),
        "machine": machine() | {"load_avg_at_start": load_start},
        "load": {
            "concurrency": args.concurrency,
            "duration_s": args.duration_s,
            "rounds": args.rounds,
            "chunks_per_stream": args.chunks,
            "delay_ms": args.delay_ms,
        },
        "summary": summary,
        "cells": cells,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "front_door_relay.json").write_text(json.dumps(results, indent=2))
    lines = [
        "# Relay CPU per chunk by way of bounding request heads",
        "",
        f"`{results['command']}`; {args.rounds} interleaved rounds of {args.duration_s:g} s,"
        f" {args.concurrency} concurrent text streams of {args.chunks} chunks"
        f" {args.delay_ms:g} ms apart; {machine()['shared']}. Medians over the rounds.",
        "",
        "| protocol | CPU µs per chunk | vs stock httptools | p99 chunk gap ms | errors |",
        "| --- | --- | --- | --- | --- |",
    ]
    for variant in VARIANTS:
        row = summary[variant]
        lines.append(
            f"| {variant} | {row['cpu_us_per_chunk_median']:.1f} | {row['vs_httptools']:.3f} |"
            f" {row['gap_ms_p99_median']:.2f} | {row['errors']} |"
        )
    (RESULTS / "front_door_relay.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# --- memory under large images ----------------------------------------------------------


def noise_jpeg(side: int) -> bytes:
    pixels = np.random.default_rng(13).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def variant_of(jpeg: bytes, index: int) -> bytes:
    """The same picture with a comment segment naming `index`: a different SHA-256 (no
    cache hit, no shared flight), the same decoding work."""
    comment = f"clip-proxy bench {index}".encode()
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    return jpeg[:2] + segment + jpeg[2:]


def request_of(kind: str, image: bytes) -> dict[str, Any]:
    """httpx keyword arguments for one request, built ahead so that the burst's clients
    only send (building a 27 MB JSON body in each thread would hold the GIL and stagger
    them)."""
    if kind == "upload":
        files = {"image": ("photo.jpg", image, "image/jpeg")}
        return {"data": {"prompt": "what?"}, "files": files}
    data_url = "data:image/jpeg;base64," + base64.b64encode(image).decode()
    part = {"type": "image_url", "image_url": {"url": data_url}}
    body = json.dumps({"messages": [{"role": "user", "content": [part]}]}).encode()
    return {"content": body, "headers": {"content-type": "application/json"}}


def send(port: int, request: dict[str, Any]) -> int:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    return httpx.post(url, timeout=600, **request).status_code


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def body_bytes(kind: str, image: bytes) -> int:
    """About what the request body weighs (base64 is 4/3 of the image)."""
    return len(image) if kind == "upload" else (len(image) + 2) // 3 * 4


def memory_cell(
    root: Path, upstream_port: int, kind: str, clients: int, budget: int | None, jpeg: bytes
) -> dict[str, Any]:
    port = free_port()
    env = {
        "CLIP_PROXY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "CLIP_PROXY_CLIP_MODEL": str(test_model()),
        "CLIP_PROXY_DEVICE": "cpu",
        "CLIP_PROXY_LOG_LEVEL": "warning",
        "PYTHONPATH": str(root),
    }
    if budget is not None:
        env["CLIP_PROXY_MAX_INFLIGHT_BODY_BYTES"] = str(budget)
    command = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1"]
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave a baseline checkout as it is
    with (WORK / "front-door-memory.log").open("ab") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=root,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", 120, process)
        warm = [request_of(kind, variant_of(jpeg, 10_000 + i)) for i in range(4)]
        with ThreadPoolExecutor(4) as pool:  # every preprocess thread and arena warm
            list(pool.map(lambda request: send(port, request), warm))
        del warm
        burst = [request_of(kind, variant_of(jpeg, i)) for i in range(clients)]
        rss_before = proc_status(process.pid, "VmRSS")
        Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        cpu_before = cpu_seconds(process.pid)
        started = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            codes = list(pool.map(lambda request: send(port, request), burst))
        wall_s = time.monotonic() - started
        growth = proc_status(process.pid, "VmHWM") - rss_before
        cpu_s = cpu_seconds(process.pid) - cpu_before
    finally:
        process.terminate()
        process.wait(timeout=30)
    each = body_bytes(kind, jpeg)
    in_flight = each * clients if budget is None or budget == 0 else min(each * clients, budget)
    return {
        "kind": kind,
        "clients": clients,
        "budget_bytes": budget,
        "image_bytes": len(jpeg),
        "body_bytes_each": each,
        "bytes_in_flight_max": in_flight,
        "peak_rss_growth_bytes": growth,
        "growth_vs_bytes_in_flight": growth / in_flight,
        "ok": codes.count(200),
        "refused_503": codes.count(503),
        "other": sorted(code for code in codes if code not in (200, 503)),
        "wall_s": wall_s,
        "server_cpu_s": cpu_s,
    }


def memory(args: argparse.Namespace) -> None:
    from tests.upstream_server import FakeUpstream

    WORK.mkdir(exist_ok=True)
    jpeg = noise_jpeg(args.side)
    print(f"image: {args.side}x{args.side} noise JPEG, {len(jpeg) / 1e6:.1f} MB", flush=True)
    roots = {"this checkout": ROOT}
    if args.baseline_root:
        roots = {"baseline": args.baseline_root.resolve()} | roots
    default_budget = 1024 * MiB
    scenarios: list[tuple[str, int, int | None]] = []
    for kind in ("data_url", "upload"):
        scenarios.append((kind, args.clients, None))  # the default budget (1 GiB)
    for clients in args.budget_clients:
        scenarios.append(("data_url", clients, 256 * MiB))
    rows: list[dict[str, Any]] = []
    with FakeUpstream() as upstream:
        port = int(upstream.base_url.rsplit(":", 1)[1].split("/")[0])
        for name, root in roots.items():
            for kind, clients, budget in scenarios:
                if name == "baseline" and budget is not None:
                    continue  # the baseline has no budget to set
                cell = memory_cell(root, port, kind, clients, budget, jpeg)
                cell["code"] = name
                cell["budget_bytes"] = budget if budget is not None else default_budget
                if name == "baseline":
                    cell["budget_bytes"] = None
                    cell["bytes_in_flight_max"] = cell["body_bytes_each"] * clients
                    cell["growth_vs_bytes_in_flight"] = (
                        cell["peak_rss_growth_bytes"] / cell["bytes_in_flight_max"]
                    )
                rows.append(cell)
                print(
                    f"{name:13} {kind:8} clients {clients:3} budget "
                    f"{(cell['budget_bytes'] or 0) / MiB:6.0f} MiB: growth "
                    f"{cell['peak_rss_growth_bytes'] / MiB:7.0f} MiB = "
                    f"{cell['growth_vs_bytes_in_flight']:.2f}x in flight; "
                    f"{cell['ok']} ok, {cell['refused_503']} x 503, {cell['wall_s']:.0f} s",
                    flush=True,
                )
    results = {
        "command": "python " + " ".join(shlex.quote(arg) for arg in sys.argv),
        "machine": machine(),
        "image": {"side": args.side, "bytes": len(jpeg)},
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "front_door_memory.json").write_text(json.dumps(results, indent=2))
    lines = [
        "# Peak RSS growth under concurrent large images",
        "",
        f"`{results['command']}`: a {args.side}x{args.side} noise JPEG of"
        f" {len(jpeg) / 1e6:.1f} MB, made distinct per request; `clip-proxy serve` processes;"
        " peak = VmHWM after a reset, minus VmRSS before the burst (after 4 warm-up requests)."
        f" {machine()['shared']}.",
        "",
        "| code | source | clients | body budget | bytes in flight (max) | peak RSS growth |"
        " growth / in flight | 200 | 503 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        budget_text = f"{row['budget_bytes'] / MiB:.0f} MiB" if row["budget_bytes"] else "none"
        lines.append(
            f"| {row['code']} | {row['kind']} | {row['clients']} | {budget_text} |"
            f" {row['bytes_in_flight_max'] / MiB:.0f} MiB |"
            f" {row['peak_rss_growth_bytes'] / MiB:.0f} MiB |"
            f" {row['growth_vs_bytes_in_flight']:.2f}x | {row['ok']} | {row['refused_503']} |"
        )
    (RESULTS / "front_door_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="(internal) one server for `relay`")
    serve_parser.add_argument("--http", choices=VARIANTS, required=True)
    serve_parser.add_argument("--port", type=int, required=True)
    relay_parser = commands.add_parser("relay", help="relay CPU per chunk by protocol")
    relay_parser.add_argument("--concurrency", type=int, default=50)
    relay_parser.add_argument("--duration-s", type=float, default=5.0)
    relay_parser.add_argument("--rounds", type=int, default=4)
    relay_parser.add_argument("--chunks", type=int, default=200)
    relay_parser.add_argument("--delay-ms", type=float, default=5.0)
    memory_parser = commands.add_parser("memory", help="peak RSS under large images")
    memory_parser.add_argument("--side", type=int, default=4150, help="~19 MB of noise JPEG")
    memory_parser.add_argument("--clients", type=int, default=32)
    memory_parser.add_argument("--budget-clients", type=int, nargs="*", default=[32, 64])
    memory_parser.add_argument("--baseline-root", type=Path)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.http, args.port)
    elif args.command == "relay":
        relay(args)
    else:
        memory(args)


if __name__ == "__main__":
    main()
