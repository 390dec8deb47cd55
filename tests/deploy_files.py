"""The shipped deployment files, read the way their tools read them.

    compose = load_yaml(ROOT / "docker-compose.yml")
    conf = nginx_test_config(listen_port=8080, replica_ports=[9001, 9002], prefix=tmp_path)

`nginx_test_config` wraps deploy/nginx/clip-proxy.conf (an http-context file) in a minimal
nginx.conf and swaps only the addresses, so the load-balancer test runs the shipped file.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
NGINX_CONF = DEPLOY / "nginx" / "clip-proxy.conf"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILES = [ROOT / "docker-compose.yml", ROOT / "docker-compose.cpu.yml"]
GRAFANA = DEPLOY / "grafana"


class Reset:
    """Compose's `!reset` tag: the key is removed from the merged file."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _ComposeLoader(yaml.SafeLoader):
    pass


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    if isinstance(node, yaml.SequenceNode):
        return Reset(loader.construct_sequence(node))
    if isinstance(node, yaml.MappingNode):
        return Reset(loader.construct_mapping(node))
    return Reset(loader.construct_scalar(node))  # type: ignore[arg-type]


_ComposeLoader.add_constructor("!reset", _reset)


def load_yaml(path: Path) -> Any:
    with path.open() as handle:
        return yaml.load(handle, Loader=_ComposeLoader)  # a SafeLoader subclass, plus !reset


def load_all_yaml(path: Path) -> list[Any]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def without_tags(value: Any) -> Any:
    """The file as the schema sees it: a `!reset` value stands as written."""
    if isinstance(value, Reset):
        return without_tags(value.value)
    if isinstance(value, dict):
        return {key: without_tags(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_tags(item) for item in value]
    return value


def merge_compose(base: Any, override: Any) -> Any:
    """Compose's merge of `-f base -f override`, for the parts these files use: mappings
    merge key by key, `!reset` removes the key, anything else replaces the base value."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            elif key in merged:
                merged[key] = merge_compose(merged[key], value)
            else:
                merged[key] = without_tags(value)
        return merged
    return without_tags(override)


def kubernetes_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in load_all_yaml(path):
            yield path, document


def env_var_names(text: str) -> set[str]:
    return set(re.findall(r"\bCLIP_PROXY_[A-Z0-9_]+\b", text))


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bclip_proxy_[a-z0-9_]+\b", text))


def find_nginx() -> str | None:
    # Debian puts nginx in /usr/sbin, which is not on an ordinary user's PATH.
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def nginx_test_config(listen_port: int, replica_ports: list[int], prefix: Path) -> Path:
    """nginx.conf for a test: the shipped server and upstream blocks on loopback ports."""
    shipped = NGINX_CONF.read_text()
    servers = "".join(
        f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;\n" for port in replica_ports
    )
    # The first `server host:port ...;` line becomes the loopback replicas, the others go.
    lines = re.compile(r"(?m)^\s*server\s+[^\s;{]+:\d+[^;]*;\n")
    assert lines.search(shipped), "the shipped upstream block lists no `server host:port;`"
    seen: list[str] = []

    def swap(match: re.Match[str]) -> str:
        seen.append(match.group(0))
        return servers if len(seen) == 1 else ""

    body = lines.sub(swap, shipped)
    body, count = re.subn(r"(?m)^(\s*)listen\s+80;", rf"\1listen 127.0.0.1:{listen_port};", body)
    assert count == 1, "the shipped server block does not `listen 80;`"
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / f"{name}_temp").mkdir(parents=True, exist_ok=True)
    # As root, nginx would run its workers as `nobody`, who cannot write the test's temp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    config = prefix / "nginx.conf"
    config.write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {prefix}/access.log;\n"
        + "".join(
            f"    {name}_temp_path {prefix}/{name}_temp;\n"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + body
        + "}\n"
    )
    return config
