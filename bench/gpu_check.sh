#!/usr/bin/env bash
# GPU check for issue 17: one script, under 8 minutes on a CUDA host, that writes
# bench/results/gpu-<gpu>.{md,json} (model alone at batch 1/8/32/64/128 in fp16 eager,
# bf16 and compiled with CUDA graphs; VRAM; cosine to fp32; the pool with 64 callers; the
# front end on every core and with nvJPEG; end to end in process; the OOM split and CPU
# fallback). See bench/gpu.py for what each section measures.
#
#   bash bench/gpu_check.sh            # from the repository root, on the GPU host
#   OUT_DIR=/somewhere bash bench/gpu_check.sh
#
# Python: $PYTHON, else .venv/bin/python if it has CUDA torch, else python3 (a GPU image's
# own torch, transformers, torchvision and Pillow). Two server modules the check imports
# are often missing from such images, orjson and redis: wheels of them in .whl/ are
# installed into /tmp/site first (nothing is downloaded; the host may be offline).
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
    for candidate in "${PYTHON:-}" .venv/bin/python python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "no Python with a CUDA-enabled torch found (set PYTHON=...)" >&2
    exit 2
}
PY=$(pick_python)

if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCHINDUCTOR_COMPILE_THREADS="${TORCHINDUCTOR_COMPILE_THREADS:-$(nproc)}"

gpu=$("$PY" -c 'import torch, re; print(re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-"))')
out_dir="${OUT_DIR:-bench/results}"
mkdir -p "$out_dir"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# The Python side keeps its own budget (420 s) and writes after every section; the
# timeout is the backstop that keeps the whole script under 8 minutes.
timeout 465 "$PY" -m bench.gpu --budget-s 420 --out "$out_dir/gpu-$gpu"
echo "wrote $out_dir/gpu-$gpu.md and .json"
