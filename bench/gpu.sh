#!/usr/bin/env bash
# The GPU run of issue 15, one command for one H200 (torch 2.11, transformers 5.17, no network), < 8 minutes:
#   1. the golden fixtures on CUDA in fp32 (PASS/FAIL at the 1e-4 contract) and, end to end on the same
#      cases, the error of fp16 / bf16 / float8 weight storage against the official fp32 outputs;
#   2. the per-stage error of each precision against fp32 at the real small-music and medium shapes;
#   3. this pack against the official code on the same random real-shape weights, fp16 (the official CUDA
#      default), flash-attn absent: small-music 30 s and 120 s, medium 120 s;
#   4. the ComfyUI text-to-audio workflow: a separate call (bench/gpu_comfy.sh), see bench/README.md.
#
# Prepare here with `bash bench/gpu_prepare.sh` (fills the ignored .gpu/), then, with the device tool:
#   run(command="bash bench/gpu.sh", carry=[".gpu"], timeout_s=560)
# `bash bench/gpu.sh --dry-run` runs the same steps on this CPU at tiny sizes (a check of the script).
# Logs go to $OUT (the device tool brings them back), else to /tmp/sa3-gpu-out.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
gpu="$root/.gpu"
out="${OUT:-/tmp/sa3-gpu-out}"
mkdir -p "$out"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$root"

[[ -d "$gpu/fixtures" && -d "$gpu/official/stable_audio_3" ]] || { echo "no .gpu/: run bash bench/gpu_prepare.sh first" >&2; exit 2; }
# tiny-medium's T5Gemma equals tiny-small's and is not carried twice.
[[ -e "$gpu/fixtures/tiny-medium/t5gemma-b-b-ul2" ]] || cp -r "$gpu/fixtures/tiny-small/t5gemma-b-b-ul2" "$gpu/fixtures/tiny-medium/"

if [[ "${1:-}" == "--dry-run" ]]; then
  device=cpu
  cases=(--cases t2a_small t2a_medium lora_a_full --precisions fp32 bf16 fp8_e4m3fn)
  stages=(--variant small --seconds 2 --precisions fp32 bf16 fp8_e4m3fn)
  small=(--seconds 2 --steps 2 --rounds 1)
  medium=()  # medium at real shapes takes many minutes on 2 cores: not in the dry run
  limit=1500
else
  device=cuda
  cases=(--precisions fp32 fp16 bf16 fp8_e4m3fn fp8_e5m2)
  stages=(--variant small medium --seconds 30)
  small=(--seconds 30 120)
  medium=(--variant medium --seconds 120)
  limit=200
fi

failed=0
step() {  # step NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, never stop the script
  local name="$1" seconds="$2"
  shift 2
  echo "== $name: $* (limit ${seconds} s, $(date +%T))"
  local start=$SECONDS
  timeout "$seconds" "$@" > "$out/$name.log" 2>&1
  local code=$?
  grep -v "Loading weights" "$out/$name.log" | tail -n 40
  echo "== $name: exit $code after $((SECONDS - start)) s"
  (( code == 0 )) || failed=1
}

echo "== environment"
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| transformers', transformers.__version__)"
python3 -c "import flash_attn" 2>/dev/null && echo "flash-attn: PRESENT (this run is meant without it)" || echo "flash-attn: absent"
echo "official code: $(cat "$gpu/official/COMMIT" 2>/dev/null || echo unknown)"

step golden_and_e2e_errors "$limit" python3 -m bench.precision_error --cases-only --device "$device" \
  --fixtures "$gpu/fixtures" "${cases[@]}" --json "$out/cases.json"
step stage_errors "$limit" python3 -m bench.precision_error --stages-only --device "$device" "${stages[@]}" \
  --json "$out/stages.json"
step official_small "$limit" python3 -m bench.official --official "$gpu/official" --fixtures "$gpu/fixtures" \
  --device "$device" --variant small "${small[@]}"
if (( ${#medium[@]} )); then
  step official_medium "$limit" python3 -m bench.official --official "$gpu/official" --fixtures "$gpu/fixtures" \
    --device "$device" "${medium[@]}"
fi
echo "== done in $SECONDS s; $([[ $failed == 0 ]] && echo 'every step passed' || echo 'some step FAILED (see above)')"
exit $failed
