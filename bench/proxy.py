"""Proxy overhead: direct to the upstream vs through clip-proxy vs through the LiteLLM proxy.

One run, one machine, the same upstream and the same load for all three paths:

- `bench/sse_upstream.py` (own process): a scripted OpenAI-compatible upstream; each stream
  is `--chunks` content deltas `--delay-ms` apart, each stamped with its send time.
- clip-proxy (own process): `python -m app.cli serve`, one uvicorn worker, as deployed.
- LiteLLM (own process): `litellm[proxy]` from PyPI in its own virtual environment
  (bench/.venv-litellm, made on first use), one worker, `openai/deepseek-r1` at the upstream.
- `bench/loadgen.py` (own process per cell): closed-loop clients at each concurrency.

Cells: text-only streams and streams with one image (sent once before the cell so a
feature cache, when the build has one, holds it; the results say whether it hit) at
concurrency 1, 50 and 200, plus non-streamed text at concurrency 50. For each path it
reports time to first chunk, chunks/s per request, the upstream-send -> client-receive gap
per chunk, and the proxy's CPU time; added latency and throughput are relative to direct.

    python -m bench.proxy                      # writes bench/results/proxy.{json,md,png}
    python -m bench.proxy --skip-litellm --duration-s 3

`--responses` adds the Responses dialect beside Chat Completions, on the same clip-proxy
process in the same run: at each `--concurrency`, a streamed text cell on
/v1/chat/completions and the same request on /v1/responses (translated into typed events),
alternated `--responses-rounds` times; it reports the proxy's CPU per relayed chunk of each
and their ratio (target <= 2.5x), and the added time to the first content event at c=1
(target <= 1 ms over Chat Completions), in bench/results/responses.{json,md}:

    python -m bench.proxy --skip-litellm --kinds text --concurrency 1 50 --responses

`--messages` does the same for Anthropic's Messages dialect (/v1/messages, translated into
Anthropic's events; same targets), in bench/results/messages.{json,md}:

    python -m bench.proxy --skip-litellm --kinds text --concurrency 1 50 --messages \
        --out-dir bench/results/messages

`--baseline DIR` adds a fourth path, `clip-proxy-baseline`: the same proxy run from another
checkout (say a git worktree at the previous release), in the same run, so a change's cost
is measured side by side (`--kinds text` keeps the run short):

    git worktree add --detach ../clip-proxy-old main
    python -m bench.proxy --skip-litellm --baseline ../clip-proxy-old --kinds text
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from bench.proxy_report import write_markdown, write_plot

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
LITELLM_VENV = BENCH / ".venv-litellm"
IMAGE = ROOT / "tests" / "data" / "rocket.jpg"
PATHS = ("direct", "clip-proxy", "litellm")
# The dialects beside Chat Completions: route, body, and the events that carry content.
DIALECTS = {
    "responses": ("/v1/responses", "event: response.output_text.delta"),
    "messages": ("/v1/messages", "event: content_block_delta"),
}
# LiteLLM refuses to start without a strong master key; every path gets the same header.
API_KEY = "sk-bench-" + "5f0c" * 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout_s: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:.0f} s")


def git_commit(checkout: Path) -> str | None:
    try:
        found = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return found.stdout.strip()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loaded_libraries(pid: int) -> list[str]:
    """Which of uvloop and httptools the process has loaded (its memory map says)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name in ("uvloop", "httptools") if f"/{name}/" in maps]


def metric_total(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
    return sum(values) if values else None


def post(port: int, body: bytes) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=120) as reply:
        reply.read()
        return int(reply.status)


# --- the processes ---------------------------------------------------------------------
def start(
    command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )


def start_clip_proxy(
    port: int, upstream_port: int, checkout: Path = ROOT, name: str = "clip-proxy"
) -> subprocess.Popen[bytes]:
    model = WORK / "model"
    if not (model / "config.json").exists():
        subprocess.run(
            [sys.executable, "-m", "app.cli", "make-test-model", str(model)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    env = {
        "CLIP_PROXY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "CLIP_PROXY_UPSTREAM_API_KEY": "sk-upstream",
        "CLIP_PROXY_CLIP_MODEL": str(model),
        "CLIP_PROXY_DEVICE": "cpu",
        # `app` from `checkout`, whatever PYTHONPATH the bench itself runs with.
        "PYTHONPATH": str(checkout),
    }
    command = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = start(command, WORK / f"{name}.log", env, cwd=checkout)
    wait_http(f"http://127.0.0.1:{port}/readyz", 120, process)
    return process


def ensure_litellm() -> Path:
    executable = LITELLM_VENV / "bin" / "litellm"
    if not executable.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True
        )
    return executable


def start_litellm(port: int, upstream_port: int) -> subprocess.Popen[bytes]:
    executable = ensure_litellm()
    config = WORK / "litellm.yaml"
    # JSON is YAML: no YAML library needed here.
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": "deepseek-r1",
                        "litellm_params": {
                            "model": "openai/deepseek-r1",
                            "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                            "api_key": "sk-upstream",
                        },
                    }
                ],
                "litellm_settings": {"telemetry": False, "set_verbose": False},
            }
        )
    )
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network fetch at start
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_MASTER_KEY": API_KEY,
    }
    command = [
        str(executable),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    process = start(command, WORK / "litellm.log", env)
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", 180, process)
    return process


# --- one cell --------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run_cell(
    port: int,
    body_file: Path,
    concurrency: int,
    duration_s: float,
    pid: int | None,
    path: str = "/v1/chat/completions",
) -> dict[str, Any]:
    out = WORK / "cell.json"
    command = [
        sys.executable,
        str(BENCH / "loadgen.py"),
        "--port",
        str(port),
        "--path",
        path,
        *next((["--count-events", ev] for route, ev in DIALECTS.values() if route == path), []),
        "--body-file",
        str(body_file),
        "--concurrency",
        str(concurrency),
        "--duration-s",
        str(duration_s),
        "--stagger-s",
        "1",
        "--out",
        str(out),
        "--api-key",
        API_KEY,
    ]
    cpu_before = cpu_seconds(pid) if pid else 0.0
    load_before = os.getloadavg()[0]
    subprocess.run(command, check=True)
    cpu_s = cpu_seconds(pid) - cpu_before if pid else None
    raw = orjson.loads(out.read_bytes())
    requests = raw["requests"]
    ok = [r for r in requests if r["status"] == 200 and not r["error"] and r["chunks"] > 0]
    ttfc_ms = [r["ttfc_us"] / 1000 for r in ok]
    total_ms = [r["total_us"] / 1000 for r in ok]
    rates = [r["chunks"] / (r["total_us"] / 1e6) for r in ok if r["total_us"] > 0]
    gaps_ms = [gap / 1000 for gap in raw["gaps_us"]]
    chunks = sum(r["chunks"] for r in ok)
    return {
        "concurrency": concurrency,
        "requests": len(requests),
        "errors": len(requests) - len(ok),
        "first_errors": sorted({r["error"][:120] or str(r["status"]) for r in requests} - {""})[:3]
        if len(ok) < len(requests)
        else [],
        "ttfc_ms": {"p50": percentile(ttfc_ms, 50), "p99": percentile(ttfc_ms, 99)},
        "total_ms": {"p50": percentile(total_ms, 50), "p99": percentile(total_ms, 99)},
        "chunks_per_s_per_request": {"p50": percentile(rates, 50), "mean": sum(rates) / len(rates)}
        if rates
        else {"p50": None, "mean": None},
        "chunks": chunks,
        "gap_ms": {
            "p50": percentile(gaps_ms, 50),
            "p99": percentile(gaps_ms, 99),
            "max": max(gaps_ms) if gaps_ms else None,
        },
        "proxy_cpu_s": cpu_s,
        "proxy_cpu_us_per_chunk": cpu_s / chunks * 1e6 if cpu_s is not None and chunks else None,
        "load_1min_before": load_before,
        "wall_s": raw["wall_s"],
    }


def relative(cell: dict[str, Any], direct: dict[str, Any]) -> dict[str, Any]:
    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    rate, base = cell["chunks_per_s_per_request"]["p50"], direct["chunks_per_s_per_request"]["p50"]
    return {
        "added_ttfc_ms_p50": diff(cell["ttfc_ms"]["p50"], direct["ttfc_ms"]["p50"]),
        "added_ttfc_ms_p99": diff(cell["ttfc_ms"]["p99"], direct["ttfc_ms"]["p99"]),
        "chunks_per_s_vs_direct": rate / base if rate and base else None,
        "added_gap_ms_p99": diff(cell["gap_ms"]["p99"], direct["gap_ms"]["p99"]),
    }


# --- the run ---------------------------------------------------------------------------
def write_bodies() -> dict[str, Path]:
    text = [{"role": "user", "content": "Say something long."}]
    image_url = f"data:image/jpeg;base64,{base64.b64encode(IMAGE.read_bytes()).decode()}"
    image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": image_url}},
            ],
        }
    ]
    bodies = {
        "text": {"model": "deepseek-r1", "messages": text, "stream": True},
        "image": {"model": "deepseek-r1", "messages": image, "stream": True},
        "text-json": {"model": "deepseek-r1", "messages": text, "stream": False},
        # The same text stream in the Responses dialect (store: false, as the chat cell keeps
        # nothing either).
        "responses": {
            "model": "deepseek-r1",
            "input": "Say something long.",
            "stream": True,
            "store": False,
        },
        "messages": {
            "model": "deepseek-r1",
            "max_tokens": 4096,
            "messages": text,
            "stream": True,
        },
    }
    files = {}
    for name, body in bodies.items():
        files[name] = WORK / f"body-{name}.json"
        files[name].write_bytes(orjson.dumps(body))
    return files


def compare_dialects(
    port: int,
    pid: int,
    bodies: dict[str, Path],
    levels: list[int],
    duration_s: float,
    rounds: int,
    other: str = "responses",
) -> dict[str, Any]:
    """Chat Completions and `other` dialect's cells on one proxy, alternated `rounds` times
    per concurrency so both see the same machine; CPU per chunk and TTFC p50 averaged. The
    other dialect's figures are under the key "responses" for either dialect (one report)."""
    route = DIALECTS[other][0]
    post_to(port, route, bodies[other].read_bytes())  # warm the route
    compared: dict[str, Any] = {}
    for concurrency in levels:
        runs: dict[str, list[dict[str, Any]]] = {"chat": [], "responses": []}
        duration = duration_s * (2 if concurrency == 1 else 1)
        for _ in range(rounds):
            for dialect, body, path in (
                ("chat", bodies["text"], "/v1/chat/completions"),
                ("responses", bodies[other], route),
            ):
                label = other if dialect != "chat" else dialect
                print(f"dialect {label:9} c={concurrency:<4} ...", end=" ", flush=True)
                cell = run_cell(port, body, concurrency, duration, pid, path)
                runs[dialect].append(cell)
                print(
                    f"ttfc p50 {cell['ttfc_ms']['p50']} ms, "
                    f"CPU {cell['proxy_cpu_us_per_chunk']} us/chunk, errors {cell['errors']}",
                    flush=True,
                )
        summary = {dialect: _mean_cells(cells) for dialect, cells in runs.items()}
        chat, responses = summary["chat"], summary["responses"]
        compared[f"c={concurrency}"] = {
            "runs": runs,
            **summary,
            "cpu_ratio": responses["cpu_us_per_chunk"] / chat["cpu_us_per_chunk"]
            if chat["cpu_us_per_chunk"] and responses["cpu_us_per_chunk"]
            else None,
            "added_ttfc_ms_p50": responses["ttfc_ms_p50"] - chat["ttfc_ms_p50"]
            if chat["ttfc_ms_p50"] is not None and responses["ttfc_ms_p50"] is not None
            else None,
        }
    return compared


def _mean_cells(cells: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(values: list[float | None]) -> float | None:
        found = [value for value in values if value is not None]
        return sum(found) / len(found) if found else None

    return {
        "cpu_us_per_chunk": mean([cell["proxy_cpu_us_per_chunk"] for cell in cells]),
        "ttfc_ms_p50": mean([cell["ttfc_ms"]["p50"] for cell in cells]),
        "ttfc_ms_p99": mean([cell["ttfc_ms"]["p99"] for cell in cells]),
        "gap_ms_p99": mean([cell["gap_ms"]["p99"] for cell in cells]),
        "chunks": sum(cell["chunks"] for cell in cells),
        "errors": sum(cell["errors"] for cell in cells),
    }


def write_dialects_markdown(results: dict[str, Any], path: Path, other: str = "responses") -> None:
    def fmt(value: float | None, digits: int = 2) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    title = {"responses": "The Responses dialect", "messages": "Anthropic's Messages dialect"}
    first = {
        "responses": "`response.created` and `response.in_progress`",
        "messages": "`message_start` and `content_block_start`",
    }
    lines = [
        f"# {title[other]} beside Chat Completions (one proxy, one run)",
        "",
        f"Command: `{results['command']}` at commit {results['commit']}; "
        f"{results['machine']['cpus']} CPU cores shared with other work (load at start "
        f"{results['machine']['load_avg_at_start'][0]:.2f}); upstream "
        f"{results['upstream']['chunks']} content chunks {results['upstream']['delay_ms']} ms "
        f"apart. Cells alternate chat, {other}, chat, {other}; figures are their means. "
        f"TTFC is the time to the first content event (the {other} stream sends "
        f"{first[other]} before it).",
        "",
        f"| concurrency | chat CPU us/chunk | {other} CPU us/chunk | ratio (target <= 2.5) | "
        f"chat TTFC p50 ms | {other} TTFC p50 ms | added ms (target <= 1 at c=1) | "
        f"gap p99 ms chat / {other} | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, cell in results["cells"].items():
        chat, responses = cell["chat"], cell["responses"]
        lines.append(
            f"| {key} | {fmt(chat['cpu_us_per_chunk'], 1)} | "
            f"{fmt(responses['cpu_us_per_chunk'], 1)} | {fmt(cell['cpu_ratio'])} | "
            f"{fmt(chat['ttfc_ms_p50'])} | {fmt(responses['ttfc_ms_p50'])} | "
            f"{fmt(cell['added_ttfc_ms_p50'])} | {fmt(chat['gap_ms_p99'])} / "
            f"{fmt(responses['gap_ms_p99'])} | {chat['errors'] + responses['errors']} |"
        )
    path.write_text("\n".join(lines) + "\n")


def post_to(port: int, path: str, body: bytes) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=120) as reply:
        reply.read()
        return int(reply.status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50, 200])
    parser.add_argument("--duration-s", type=float, default=6.0, help="per cell (c=1: 2x)")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout, run as the path clip-proxy-baseline"
    )
    parser.add_argument(
        "--kinds", nargs="+", default=["text", "image", "text-json"], help="cells to run"
    )
    parser.add_argument("--out-dir", type=Path, default=BENCH / "results")
    parser.add_argument(
        "--responses", action="store_true", help="the Responses dialect beside chat"
    )
    parser.add_argument("--responses-rounds", type=int, default=2)
    parser.add_argument(
        "--messages", action="store_true", help="Anthropic's Messages dialect beside chat"
    )
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_start = os.getloadavg()
    bodies = write_bodies()

    ports = {path: free_port() for path in ("upstream", *PATHS[1:], "clip-proxy-baseline")}
    ports["direct"] = ports["upstream"]
    processes: dict[str, subprocess.Popen[bytes]] = {}
    notes: list[str] = []
    dialects: dict[str, Any] = {}
    try:
        processes["upstream"] = start(
            [
                sys.executable,
                str(BENCH / "sse_upstream.py"),
                "--port",
                str(ports["upstream"]),
                "--chunks",
                str(args.chunks),
                "--delay-ms",
                str(args.delay_ms),
            ],
            WORK / "upstream.log",
        )
        time.sleep(1)
        processes["clip-proxy"] = start_clip_proxy(ports["clip-proxy"], ports["upstream"])
        paths = ["direct", "clip-proxy"]
        if args.baseline is not None:
            processes["clip-proxy-baseline"] = start_clip_proxy(
                ports["clip-proxy-baseline"],
                ports["upstream"],
                args.baseline.resolve(),
                "clip-proxy-baseline",
            )
            paths.append("clip-proxy-baseline")
        if not args.skip_litellm:
            try:
                processes["litellm"] = start_litellm(ports["litellm"], ports["upstream"])
                paths.append("litellm")
            except (RuntimeError, subprocess.CalledProcessError) as exc:
                notes.append(f"LiteLLM could not be run: {exc} (see bench/.work/litellm.log)")
        pids = {path: processes[path].pid for path in paths if path in processes}
        event_loop = loaded_libraries(pids["clip-proxy"])
        for path in paths:  # one request each, so every path starts warm
            post(ports[path], bodies["text"].read_bytes())

        hits_name, misses_name = "clip_proxy_cache_hits_total", "clip_proxy_cache_misses_total"
        cells: dict[str, dict[str, dict[str, Any]]] = {}
        cache: dict[str, float | None] = {}
        for kind in args.kinds:
            levels = args.concurrency if kind != "text-json" else [50]
            for concurrency in levels:
                key = f"{kind} c={concurrency}"
                cells[key] = {}
                if kind == "image":
                    for path in paths:
                        post(ports[path], bodies["image"].read_bytes())  # fills a cache, if any
                    cache["hits_before"] = cache.get("hits_before") or metric_total(
                        ports["clip-proxy"], hits_name
                    )
                for path in paths:
                    duration = args.duration_s * (2 if concurrency == 1 else 1)
                    print(f"{key:16} {path:10} ...", end=" ", flush=True)
                    cell = run_cell(
                        ports[path],
                        bodies[kind],
                        concurrency,
                        duration,
                        pids.get(path) if path != "direct" else None,
                    )
                    cells[key][path] = cell
                    print(
                        f"ttfc p50 {cell['ttfc_ms']['p50']} ms, "
                        f"chunks/s {cell['chunks_per_s_per_request']['p50']}, "
                        f"errors {cell['errors']}",
                        flush=True,
                    )
                for path in paths:
                    cells[key][path]["vs_direct"] = relative(cells[key][path], cells[key]["direct"])
        for other in ("responses", "messages"):
            if getattr(args, other):
                dialects[other] = compare_dialects(
                    ports["clip-proxy"],
                    pids["clip-proxy"],
                    bodies,
                    args.concurrency,
                    args.duration_s,
                    args.responses_rounds,
                    other,
                )
        cache["hits_after"] = metric_total(ports["clip-proxy"], hits_name)
        cache["misses_after"] = metric_total(ports["clip-proxy"], misses_name)
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()

    results = {
        "command": "python " + " ".join(shlex.quote(arg) for arg in sys.argv),
        "started_unix": started,
        "wall_s": time.time() - started,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_at_start": load_start,
            "load_avg_at_end": os.getloadavg(),
            "shared": "upstream, clip-proxy, LiteLLM and load generator share these cores",
        },
        "upstream": {"chunks": args.chunks, "delay_ms": args.delay_ms},
        "clip_proxy_event_loop": event_loop,
        "image_cache": cache,
        "concurrency_levels": args.concurrency,
        "baseline": str(args.baseline) if args.baseline else None,
        "baseline_commit": git_commit(args.baseline) if args.baseline else None,
        "commit": git_commit(ROOT),
        "paths": paths,
        "notes": notes,
        "cells": cells,
    }
    for other, compared in dialects.items():
        dialect_results = {
            "command": results["command"],
            "commit": results["commit"],
            "machine": results["machine"],
            "upstream": results["upstream"],
            "cells": compared,
        }
        (args.out_dir / f"{other}.json").write_bytes(
            orjson.dumps(dialect_results, option=orjson.OPT_INDENT_2)
        )
        write_dialects_markdown(dialect_results, args.out_dir / f"{other}.md", other)
    (args.out_dir / "proxy.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    write_markdown(results, args.out_dir / "proxy.md")
    write_plot(results, args.out_dir / "proxy.png")
    print(f"wrote {args.out_dir}/proxy.{{json,md,png}}")


if __name__ == "__main__":
    main()
