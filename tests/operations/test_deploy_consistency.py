"""Every name the deployment files use exists in the app: `CLIP_PROXY_*` variables are
Settings fields, probe and scrape paths answer on a real proxy, ports are the port
`clip-proxy serve` listens on, limits match the proxy's, and every `clip_proxy_*` metric
a dashboard, rule or document names is in a live /metrics."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import httpx

from app.config import Settings
from tests.deploy_files import (
    COMPOSE_FILES,
    DEPLOY,
    DOCKERFILE,
    GRAFANA,
    NGINX_CONF,
    ROOT,
    env_var_names,
    kubernetes_documents,
    load_all_yaml,
    load_yaml,
    metric_names,
    without_tags,
)
from tests.helpers import ProxyServer

ENV_EXAMPLE = ROOT / ".env.example"
README = ROOT / "README.md"


def deploy_texts() -> dict[str, str]:
    """Every file that configures a deployment, by its path from the repository root."""
    paths = [DOCKERFILE, ENV_EXAMPLE, *COMPOSE_FILES]
    paths += [path for path in sorted(DEPLOY.rglob("*")) if path.is_file()]
    texts = {str(path.relative_to(ROOT)): path.read_text() for path in paths}
    readme = README.read_text()
    texts["README.md#Deploy"] = readme[readme.index("## Deploy") :]
    return texts


def serve_default_port() -> int:
    """The `--port` default of `clip-proxy serve`, read from app/cli.py's parser."""
    tree = ast.parse((ROOT / "app" / "cli.py").read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == "--port"
        ):
            for keyword in node.keywords:
                if keyword.arg == "default" and isinstance(keyword.value, ast.Constant):
                    assert isinstance(keyword.value.value, int)
                    return keyword.value.value
    raise AssertionError("app/cli.py has no --port default")


def test_every_env_var_is_a_setting() -> None:
    fields = set(Settings.model_fields)
    used: dict[str, set[str]] = {}
    for name, text in deploy_texts().items():
        for variable in env_var_names(text):
            used.setdefault(variable, set()).add(name)
    unknown = {
        variable: sorted(files)
        for variable, files in used.items()
        if variable.removeprefix("CLIP_PROXY_").lower() not in fields
    }
    assert unknown == {}
    # The files do set the settings a deployment needs.
    assert {"CLIP_PROXY_UPSTREAM_API_KEY", "CLIP_PROXY_CACHE_URL", "CLIP_PROXY_DEVICE"} <= set(used)


def test_env_example_values_are_accepted_by_settings() -> None:
    values: dict[str, Any] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("CLIP_PROXY_"):
            name, _, value = line.partition("=")
            values[name.removeprefix("CLIP_PROXY_").lower()] = value
    settings = Settings(**values)
    assert settings.upstream_api_key.get_secret_value() == ""


def test_kubernetes_config_map_values_are_accepted_by_settings() -> None:
    documents = dict((document["kind"], document) for _, document in kubernetes_documents())
    data = documents["ConfigMap"]["data"]
    settings = Settings(**{name.removeprefix("CLIP_PROXY_").lower(): v for name, v in data.items()})
    assert settings.device == ["cuda"]


def test_every_port_is_the_serve_port() -> None:
    port = serve_default_port()
    dockerfile = DOCKERFILE.read_text()
    assert re.findall(r"(?m)^EXPOSE (\d+)$", dockerfile) == [str(port)]
    assert re.findall(r"127\.0\.0\.1:(\d+)/healthz", dockerfile) == [str(port)]
    assert f'"--port", "{port}"' in dockerfile

    compose = without_tags(load_yaml(COMPOSE_FILES[0]))
    assert compose["services"]["clip-proxy"]["ports"] == [f"{port}:{port}"]
    prometheus = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"clip-proxy:{port}"]

    documents = dict((document["kind"], document) for _, document in kubernetes_documents())
    container = documents["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert [item["containerPort"] for item in container["ports"]] == [port]
    assert container["args"][-2:] == ["--port", str(port)]
    assert [item["port"] for item in documents["Service"]["spec"]["ports"]] == [port]

    upstream_ports = re.findall(r"(?m)^\s*server\s+\S+:(\d+)", NGINX_CONF.read_text())
    assert upstream_ports and set(upstream_ports) == {str(port)}


def test_nginx_limits_match_the_proxy() -> None:
    settings = Settings()
    conf = NGINX_CONF.read_text()
    size = re.search(r"client_max_body_size (\d+)m;", conf)
    assert size and int(size.group(1)) * 1024 * 1024 == settings.max_body_bytes
    read = re.search(r"proxy_read_timeout (\d+)s;", conf)
    assert read and int(read.group(1)) > settings.upstream_read_timeout_s
    for directive in (
        "proxy_buffering off;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
    ):
        assert directive in conf


def probe_paths() -> set[str]:
    paths = set(re.findall(r"127\.0\.0\.1:\d+(/\w+)", DOCKERFILE.read_text()))
    for _, document in kubernetes_documents():
        if document["kind"] == "Deployment":
            container = document["spec"]["template"]["spec"]["containers"][0]
            paths |= {
                container[probe]["httpGet"]["path"]
                for probe in ("startupProbe", "livenessProbe", "readinessProbe")
            }
        if document["kind"] == "ServiceMonitor":
            paths |= {endpoint["path"] for endpoint in document["spec"]["endpoints"]}
    prometheus = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    paths |= {job.get("metrics_path", "/metrics") for job in prometheus["scrape_configs"]}
    return paths


def test_probe_and_scrape_paths_answer_on_a_real_proxy(proxy: ProxyServer) -> None:
    paths = probe_paths()
    assert paths == {"/healthz", "/readyz", "/metrics"}
    for path in sorted(paths):
        assert httpx.get(proxy.url + path, timeout=5).status_code == 200, path


def live_series_names(proxy: ProxyServer) -> set[str]:
    """Every series name the proxy can expose, from the TYPE lines of its /metrics."""
    text = httpx.get(proxy.url + "/metrics", timeout=5).text
    names = set()
    for name, kind in re.findall(r"(?m)^# TYPE (\S+) (\S+)$", text):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        if kind == "summary":
            names |= {f"{name}_sum", f"{name}_count"}
    return names


def test_every_metric_named_in_deploy_files_is_exposed(proxy: ProxyServer) -> None:
    live = live_series_names(proxy)
    named: dict[str, set[str]] = {}
    for file, text in deploy_texts().items():
        for metric in metric_names(text):
            named.setdefault(metric, set()).add(file)
    assert named, "no deployment file names a clip_proxy_* metric"
    missing = {metric: sorted(files) for metric, files in named.items() if metric not in live}
    assert missing == {}


def compose_bind_sources() -> list[Path]:
    sources = []
    for path in COMPOSE_FILES:
        for service in without_tags(load_yaml(path))["services"].values():
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith("."):
                    sources.append((ROOT / source).resolve())
    return sources


def test_compose_mounts_files_that_exist() -> None:
    sources = compose_bind_sources()
    assert ROOT / "deploy" / "prometheus" / "prometheus.yml" in sources
    assert [source for source in sources if not source.exists()] == []


def grafana_provisioning() -> list[dict[str, Any]]:
    documents = []
    for path in sorted((GRAFANA / "provisioning").rglob("*.y*ml")):
        documents += load_all_yaml(path)
    return documents


def test_grafana_provisioning_matches_compose() -> None:
    """The dashboard provider reads the folder Compose mounts, and the data source is the
    Compose Prometheus."""
    documents = grafana_provisioning()
    compose = without_tags(load_yaml(COMPOSE_FILES[0]))
    mounts = dict(
        volume.split(":")[:2]
        for volume in compose["services"]["grafana"]["volumes"]
        if volume.startswith("./")
    )
    dashboards_dir = mounts["./deploy/grafana/dashboards"]
    providers = [p for document in documents for p in document.get("providers", [])]
    assert providers and all(p["options"]["path"].rstrip("/") == dashboards_dir for p in providers)
    sources = [s for document in documents for s in document.get("datasources", [])]
    prometheus = [s for s in sources if s.get("type") == "prometheus"]
    assert prometheus and all(s["url"].rstrip("/") == "http://prometheus:9090" for s in prometheus)
    assert (GRAFANA / "dashboards" / "clip-proxy.json").is_file()


DRAIN_SETTINGS = ("drain_delay_s", "shutdown_grace_s")


def test_shutdown_grace_periods_outlast_the_drain() -> None:
    documents = dict((document["kind"], document) for _, document in kubernetes_documents())
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pause = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    env |= documents["ConfigMap"]["data"]
    compose = without_tags(load_yaml(COMPOSE_FILES[0]))
    stop_grace = compose["services"]["clip-proxy"]["stop_grace_period"]
    assert stop_grace.endswith("s")
    # After SIGTERM the proxy waits drain_delay_s, then up to shutdown_grace_s for streams:
    # the orchestrator must wait for both (and Kubernetes for the preStop pause before them).
    drain = 0.0
    for name in DRAIN_SETTINGS:
        default = Settings.model_fields[name].default
        drain += float(env.get(f"CLIP_PROXY_{name.upper()}") or default)
    assert pod["terminationGracePeriodSeconds"] > pause + drain
    assert float(stop_grace.removesuffix("s")) > drain
