"""Markdown table, target verdicts and PNG plot for `bench/proxy.py`'s results."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Cells = dict[str, dict[str, dict[str, Any]]]


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def cache_line(cache: dict[str, float | None]) -> str:
    hits, before = cache.get("hits_after"), cache.get("hits_before") or 0
    if not hits or hits <= before:
        return (
            "no feature-cache hit in clip-proxy (clip_proxy_cache_hits_total did not grow): "
            "every image request was decoded and encoded again (test CLIP model, CPU)."
        )
    return f"clip-proxy served {hits - before:.0f} image vectors from its feature cache."


def targets(results: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """(target, met, measured) for each target of issue #8."""
    cells: Cells = results["cells"]
    verdicts: list[tuple[str, bool | None, str]] = []
    top = max(results.get("concurrency_levels", [200]))
    c200 = cells.get(f"text c={top}", {}).get("clip-proxy")
    if c200:
        rel = c200["vs_direct"]
        p50, p99, ratio = (
            rel["added_ttfc_ms_p50"],
            rel["added_ttfc_ms_p99"],
            rel["chunks_per_s_vs_direct"],
        )
        verdicts.append(
            (
                f"clip-proxy adds <= 2 ms p50 to time to first chunk, text, c={top}",
                p50 is not None and p50 <= 2,
                f"{fmt(p50)} ms",
            )
        )
        verdicts.append(
            (
                f"clip-proxy adds <= 10 ms p99 to time to first chunk, text, c={top}",
                p99 is not None and p99 <= 10,
                f"{fmt(p99)} ms",
            )
        )
        verdicts.append(
            (
                f"clip-proxy delivers >= 95% of direct chunks/s, text, c={top}",
                ratio is not None and ratio >= 0.95,
                f"{fmt(100 * ratio if ratio else None, 1)}%",
            )
        )
    if "litellm" in results["paths"]:
        for key, paths in cells.items():
            if "litellm" not in paths:
                continue
            ours = paths["clip-proxy"]["vs_direct"]["added_ttfc_ms_p50"]
            theirs = paths["litellm"]["vs_direct"]["added_ttfc_ms_p50"]
            met = ours is not None and theirs is not None and ours <= max(theirs, 0) / 3
            verdicts.append(
                (
                    f"clip-proxy added p50 TTFC <= 1/3 of LiteLLM's, {key}",
                    met,
                    f"{fmt(ours)} ms vs {fmt(theirs)} ms",
                )
            )
    else:
        verdicts.append(("clip-proxy added latency <= 1/3 of LiteLLM's", None, "LiteLLM not run"))
    verdicts += baseline_targets(results)
    c50 = cells.get("text c=50", {}).get("clip-proxy")
    if c50:
        gap = c50["gap_ms"]["p99"]
        verdicts.append(
            (
                "no chunk held back: upstream send -> client receive < 2 ms p99, text, c=50",
                gap is not None and gap < 2,
                f"{fmt(gap)} ms (direct: {fmt(cells['text c=50']['direct']['gap_ms']['p99'])} ms)",
            )
        )
    return verdicts


def baseline_targets(results: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """This checkout against `--baseline`, same run: CPU per relayed chunk at most 15%
    above, and added time to first chunk p50 at c=1 at most 2 ms (the upstream client's
    budget, issue 11)."""
    if "clip-proxy-baseline" not in results["paths"]:
        return []
    cells: Cells = results["cells"]
    verdicts: list[tuple[str, bool | None, str]] = []
    for key, paths in cells.items():
        if not key.startswith("text c=") or key == "text c=1":
            continue
        ours = paths["clip-proxy"]["proxy_cpu_us_per_chunk"]
        theirs = paths["clip-proxy-baseline"]["proxy_cpu_us_per_chunk"]
        ratio = ours / theirs if ours and theirs else None
        percent = fmt(100 * ratio if ratio else None, 0)
        verdicts.append(
            (
                f"CPU per relayed chunk <= 115% of the baseline's, {key}",
                None if ratio is None else ratio <= 1.15,
                f"{fmt(ours, 1)} vs {fmt(theirs, 1)} us ({percent}%)",
            )
        )
    c1 = cells.get("text c=1")
    if c1:
        added = c1["clip-proxy"]["vs_direct"]["added_ttfc_ms_p50"]
        baseline = c1["clip-proxy-baseline"]["vs_direct"]["added_ttfc_ms_p50"]
        verdicts.append(
            (
                "added TTFC p50 <= 2 ms, text, c=1",
                added is not None and added <= 2,
                f"{fmt(added)} ms (baseline: {fmt(baseline)} ms)",
            )
        )
    return verdicts


def write_markdown(results: dict[str, Any], path: Path) -> None:
    machine = results["machine"]
    load_start = tuple(round(x, 2) for x in machine["load_avg_at_start"])
    load_end = tuple(round(x, 2) for x in machine["load_avg_at_end"])
    libraries = ", ".join(results["clip_proxy_event_loop"]) or "none"
    lines = [
        "# Proxy overhead: direct vs clip-proxy vs LiteLLM",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(results['started_unix']))}, "
        f"{results['wall_s']:.0f} s wall, command: `{results['command']}`",
        "",
        f"Machine: {machine['cpus']} CPU cores; {machine['shared']}. "
        f"Load average (1, 5, 15 min) at start {load_start}, "
        f"at end {load_end}.",
        f"Upstream: {results['upstream']['chunks']} content chunks "
        f"{results['upstream']['delay_ms']} ms apart per stream (ideal: "
        f"{1000 / results['upstream']['delay_ms']:.0f} chunks/s per request). "
        f"clip-proxy process has loaded: {libraries}.",
        f"clip-proxy at {results.get('commit')}"
        + (
            f"; clip-proxy-baseline: {results['baseline']} at {results.get('baseline_commit')}."
            if results.get("baseline")
            else "."
        ),
        f"Image cells: {cache_line(results['image_cache'])}",
        "",
    ]
    lines += [f"Note: {note}" for note in results["notes"]]
    lines += ["", "## Targets", "", "| target | met | measured |", "| --- | --- | --- |"]
    for target, met, measured in targets(results):
        lines.append(
            f"| {target} | {'n/a' if met is None else 'yes' if met else 'NO'} | {measured} |"
        )
    lines += [
        "",
        "## All cells",
        "",
        "TTFC = time to first content chunk at the client; gap = upstream send -> client "
        "receive per chunk; added = minus direct in the same cell; rate = content chunks/s "
        "per request (median); CPU = the proxy process's CPU time per chunk relayed.",
        "",
        "| cell | path | n | errors | TTFC p50 ms | TTFC p99 ms | added p50 | added p99 | "
        "rate | vs direct | gap p50 ms | gap p99 ms | CPU us/chunk |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, paths in results["cells"].items():
        for name, cell in paths.items():
            rel = cell["vs_direct"]
            ratio = rel["chunks_per_s_vs_direct"]
            lines.append(
                f"| {key} | {name} | {cell['requests']} | {cell['errors']} | "
                f"{fmt(cell['ttfc_ms']['p50'])} | {fmt(cell['ttfc_ms']['p99'])} | "
                f"{fmt(rel['added_ttfc_ms_p50'])} | {fmt(rel['added_ttfc_ms_p99'])} | "
                f"{fmt(cell['chunks_per_s_per_request']['p50'], 1)} | "
                f"{fmt(100 * ratio if ratio else None, 1)}% | "
                f"{fmt(cell['gap_ms']['p50'])} | {fmt(cell['gap_ms']['p99'])} | "
                f"{fmt(cell['proxy_cpu_us_per_chunk'], 0)} |"
            )
            if cell["first_errors"]:
                lines.append(
                    f"|  | errors: {'; '.join(cell['first_errors'])} | | | | | | | | | | | |"
                )
    path.write_text("\n".join(lines) + "\n")


def write_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells: Cells = results["cells"]
    streams = [key for key in cells if not key.startswith("text-json")]
    paths = [name for name in results["paths"] if name != "direct"]
    Panel = tuple[str, Callable[[dict[str, Any]], float | None], list[str]]
    panels: list[Panel] = [
        ("added TTFC p50 (ms)", lambda c: c["vs_direct"]["added_ttfc_ms_p50"], paths),
        ("added TTFC p99 (ms)", lambda c: c["vs_direct"]["added_ttfc_ms_p99"], paths),
        (
            "chunks/s vs direct (%)",
            lambda c: 100 * (c["vs_direct"]["chunks_per_s_vs_direct"] or 0),
            paths,
        ),
        ("send->receive gap p99 (ms)", lambda c: c["gap_ms"]["p99"], results["paths"]),
    ]
    figure, axes = plt.subplots(2, 2, figsize=(14, 9))
    for axis, (title, value, names) in zip(axes.flat, panels, strict=True):
        width = 0.8 / len(names)
        for offset, name in enumerate(names):
            heights = [value(cells[key][name]) or 0 for key in streams]
            positions = [index + offset * width for index in range(len(streams))]
            axis.bar(positions, heights, width, label=name)
        axis.set_xticks([index + 0.4 - width / 2 for index in range(len(streams))])
        axis.set_xticklabels(streams, rotation=20)
        axis.set_title(title)
        axis.set_yscale("symlog", linthresh=1)
        axis.grid(axis="y", alpha=0.3)
        axis.legend()
    load = results["machine"]["load_avg_at_start"][0]
    figure.suptitle(
        f"Proxy overhead vs direct ({results['machine']['cpus']} shared cores, "
        f"load {load:.1f} at start; {results['upstream']['chunks']} chunks "
        f"{results['upstream']['delay_ms']} ms apart)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
