"""Profile clip-proxy relaying text streams: py-spy samples while one load cell runs.

Starts `bench/sse_upstream.py` and clip-proxy exactly as `bench/proxy.py` does, runs one
closed-loop cell per concurrency with py-spy attached to the proxy, and prints the proxy's
CPU time per relayed chunk and the functions that take the most samples (own time and
inclusive). Raw collapsed stacks go to bench/.work/profile-c<N>.txt (not committed).

    python -m bench.profile_proxy --concurrency 50 200 --duration-s 8
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

from bench.proxy import (
    BENCH,
    WORK,
    free_port,
    post,
    run_cell,
    start,
    start_clip_proxy,
    write_bodies,
)


def summarize(collapsed: str, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [
            frame.split(" (")[0] + " (" + frame.rsplit("/", 1)[-1] for frame in stack.split(";")
        ]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    print(f"  {total} samples")
    print("  own time:")
    for frame, count in own.most_common(top):
        print(f"    {100 * count / total:5.1f}%  {frame}")
    print("  inclusive:")
    for frame, count in inclusive.most_common(top * 2):
        print(f"    {100 * count / total:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    bodies = write_bodies()
    upstream_port, proxy_port = free_port(), free_port()
    command = [sys.executable, str(BENCH / "sse_upstream.py"), "--port", str(upstream_port)]
    processes = [start(command, WORK / "upstream.log")]
    try:
        time.sleep(1)
        proxy = start_clip_proxy(proxy_port, upstream_port)
        processes.append(proxy)
        post(proxy_port, bodies["text"].read_bytes())
        py_spy = str(Path(sys.executable).parent / "py-spy")
        for concurrency in args.concurrency:
            out = WORK / f"profile-c{concurrency}.txt"
            spy = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--nonblocking",
                    "-r",
                    str(args.rate),
                    "-f",
                    "raw",
                    "-o",
                    str(out),
                    "-p",
                    str(proxy.pid),
                    "-d",
                    str(int(args.duration_s + 2)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            cell = run_cell(proxy_port, bodies["text"], concurrency, args.duration_s, proxy.pid)
            spy.wait()
            print(
                f"c={concurrency}: {cell['chunks']} chunks, "
                f"{cell['proxy_cpu_us_per_chunk']:.1f} us CPU/chunk, "
                f"ttfc p50 {cell['ttfc_ms']['p50']:.2f} ms p99 {cell['ttfc_ms']['p99']:.2f} ms, "
                f"gap p99 {cell['gap_ms']['p99']:.2f} ms, "
                f"rate p50 {cell['chunks_per_s_per_request']['p50']:.1f}/s"
            )
            summarize(out.read_text(), args.top)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=15)


if __name__ == "__main__":
    main()
