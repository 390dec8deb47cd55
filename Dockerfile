# syntax=docker/dockerfile:1
#
# clip-proxy container image.
#
#   docker build -t clip-proxy .                                   # GPU (CUDA torch)
#   docker build -t clip-proxy:cpu --build-arg VARIANT=cpu .       # no GPU on the host
#   docker build -t clip-proxy:baked \
#       --build-arg BAKE_CLIP_MODEL=openai/clip-vit-large-patch14 .  # weights inside, air-gapped
#
# Stages: `builder` makes a virtual environment (torch, then the project), `weights`
# optionally downloads the CLIP checkpoint, and the final stage copies just those two onto
# a small base. No compiler, pip cache or source tree reaches the final image.

# gpu or cpu: picks the final base image and the torch wheel index.
ARG VARIANT=gpu
# The CUDA `base` flavour: cudart and the labels the NVIDIA container toolkit reads. The
# torch wheels bring their own cuBLAS/cuDNN (nvidia-* wheels), so the `runtime` flavour
# would ship those libraries twice (about 2 GB more) for nothing.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG CPU_IMAGE=ubuntu:24.04

# --------------------------------------------------------------------------------------
FROM ${CPU_IMAGE} AS builder
ARG VARIANT
# Pinned: an unpinned torch may resolve to a build that the CUDA driver on the host lacks.
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
# torch first, in its own layer: it is most of the image and changes least often.
# PyPI's Linux x86_64 torch is the CUDA build; the CPU build comes from PyTorch's CPU index.
RUN if [ "$VARIANT" = "cpu" ]; then \
        index=(--index-url https://download.pytorch.org/whl/cpu); \
    elif [ "$VARIANT" = "gpu" ]; then \
        index=(); \
    else \
        echo "VARIANT must be gpu or cpu, not '$VARIANT'" >&2; exit 1; \
    fi; \
    /opt/venv/bin/pip install "${index[@]}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
# `pip install .` keeps the torch above (it satisfies torch>=2.3) and adds the rest.
# torchvision is refused: transformers' CLIP image processor works without it, and it
# would pin torch to its own version.
RUN /opt/venv/bin/pip install . \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torchvision') is not None)" \
    && /opt/venv/bin/clip-proxy --help >/dev/null

# --------------------------------------------------------------------------------------
FROM builder AS weights
# A Hugging Face model id (e.g. openai/clip-vit-large-patch14) bakes those weights into
# the image for hosts that cannot reach the Hub; empty (the default) leaves them out and
# the proxy downloads them into the cache volume at first start.
ARG BAKE_CLIP_MODEL=""
RUN mkdir -p /opt/clip-model \
    && if [ -n "$BAKE_CLIP_MODEL" ]; then \
        /opt/venv/bin/python -c "import sys; from huggingface_hub import snapshot_download; snapshot_download(sys.argv[1], local_dir='/opt/clip-model', allow_patterns=['*.json', '*.txt', '*.safetensors'])" "$BAKE_CLIP_MODEL"; \
    fi

# --------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS base-gpu
FROM ${CPU_IMAGE} AS base-cpu

# base-gpu or base-cpu: a stage of this file, so it carries no tag of its own.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
ARG BAKE_CLIP_MODEL=""
# Baked weights: point the proxy at them; otherwise keep the hub id (the app's default).
ARG BAKED_MODEL_DIR=${BAKE_CLIP_MODEL:+/opt/clip-model}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 clipproxy \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin clipproxy \
    && mkdir -p /var/cache/clip-proxy/huggingface \
    && chown -R 10001:10001 /var/cache/clip-proxy
COPY --from=builder /opt/venv /opt/venv
COPY --from=weights /opt/clip-model /opt/clip-model
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/var/cache/clip-proxy/huggingface \
    CLIP_PROXY_CLIP_MODEL=${BAKED_MODEL_DIR:-openai/clip-vit-large-patch14}
# The Hugging Face cache outlives the container: weights download once per volume.
VOLUME ["/var/cache/clip-proxy"]
USER 10001:10001
EXPOSE 8000
# /healthz never depends on the model or the upstream, so this only says "the process
# answers". The image has no curl; Python's standard library is enough.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# Exec form: clip-proxy is PID 1 and receives SIGTERM itself, so uvicorn drains.
STOPSIGNAL SIGTERM
ENTRYPOINT ["clip-proxy"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
