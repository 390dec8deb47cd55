#!/usr/bin/env bash
# One-command set-up on a fresh Debian/Ubuntu machine: system packages the tests use
# (nginx, prometheus, redis, curl, openssl), then a virtual environment with a CPU build of torch
# and the project in editable mode. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for tool in curl nginx openssl prometheus redis-server; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
# The playground's browser tests (tests/proxy/test_playground.py): Chromium and its driver.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# Fonts for the OCR benchmark's generated corpus (bench/ocr.py): Latin and CJK.
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf ] || need+=(fonts-dejavu-core)
[ -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] || need+=(fonts-noto-cjk)
if [ "${#need[@]}" -gt 0 ]; then
    packages=("${need[@]}")  # each tool is also its Debian package name; fonts by theirs
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# Pinned so pip takes the CPU wheel; an unpinned torch pulls several GB of CUDA packages.
# (Never torchvision: transformers' CLIP image processor works without it.)
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[test]"
# LiteLLM's proxy, a describer server nobody here wrote (tests/proxy/test_describer_litellm.py),
# in a venv of its own: its [proxy] extra pins an older huggingface_hub than the project's.
if [ ! -x bench/.venv-litellm/bin/litellm ]; then
    python3 -m venv bench/.venv-litellm
    bench/.venv-litellm/bin/pip install -q "litellm[proxy]"
fi
# The tests use a real Redis on 127.0.0.1:6379; start one if the machine has none running.
if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
fi
echo "set-up done: activate with '. .venv/bin/activate'"
