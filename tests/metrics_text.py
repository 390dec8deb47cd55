"""Reading a Prometheus text exposition in tests: sample values and the names it defines."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


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
