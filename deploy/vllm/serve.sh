#!/usr/bin/env bash
# Start a vLLM (CPU) OpenAI-compatible server for a local HF model folder, with
# runtime LoRA loading (POST /v1/load_lora_adapter, /v1/unload_lora_adapter).
#
#   deploy/vllm/serve.sh [--model DIR] [--host H] [--port P] [--max-lora-rank N]
#                        [--max-loras N] [--dtype D] [--served-model-name NAME]
#                        [--max-model-len N] [--venv DIR] [-- extra vllm args...]
#   deploy/vllm/serve.sh DIR            # model folder as first positional arg also works
#
# Each option has an env fallback: VLLM_MODEL, VLLM_HOST (127.0.0.1), VLLM_PORT (8000),
# VLLM_MAX_LORA_RANK (16), VLLM_MAX_LORAS (4), VLLM_DTYPE (float32;
# NB vLLM's "auto" turns an fp32 config into bfloat16 on CPU; on AVX2-only CPUs bf16 is no
# faster, and fp32 matches transformers greedy output token-for-token),
# VLLM_SERVED_MODEL_NAME (folder name), VLLM_MAX_MODEL_LEN (unset: model max), VLLM_VENV (<repo>/.venv-vllm).
# VLLM_CPU_KVCACHE_SPACE (GiB of KV cache, default 2) is passed through.
# Runs in the foreground (exec); stop it with SIGTERM/SIGINT to its process group.
# Readiness: poll GET /health until 200 (startup ~30-60 s). Do not use /v1/models for
# readiness: it can answer 200 while the engine is dead.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"

model="${VLLM_MODEL:-}"
host="${VLLM_HOST:-127.0.0.1}"
port="${VLLM_PORT:-8000}"
max_lora_rank="${VLLM_MAX_LORA_RANK:-16}"
max_loras="${VLLM_MAX_LORAS:-4}"
dtype="${VLLM_DTYPE:-float32}"
served_name="${VLLM_SERVED_MODEL_NAME:-}"
max_model_len="${VLLM_MAX_MODEL_LEN:-}"
venv="${VLLM_VENV:-$repo_root/.venv-vllm}"
extra=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --host) host="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --max-lora-rank) max_lora_rank="$2"; shift 2 ;;
    --max-loras) max_loras="$2"; shift 2 ;;
    --dtype) dtype="$2"; shift 2 ;;
    --served-model-name) served_name="$2"; shift 2 ;;
    --max-model-len) max_model_len="$2"; shift 2 ;;
    --venv) venv="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    --) shift; extra+=("$@"); break ;;
    -*) extra+=("$1"); shift ;;   # unknown flags go to vLLM as-is
    *) if [[ -z "$model" ]]; then model="$1"; else extra+=("$1"); fi; shift ;;
  esac
done

[[ -n "$model" ]] || { echo "serve.sh: no model folder given (--model DIR or VLLM_MODEL)" >&2; exit 2; }
[[ -f "$model/config.json" ]] || { echo "serve.sh: $model/config.json not found" >&2; exit 2; }
[[ -x "$venv/bin/python" ]] || { echo "serve.sh: no vLLM venv at $venv (run deploy/vllm/build-venv.sh)" >&2; exit 2; }
model="$(cd "$model" && pwd)"
served_name="${served_name:-$(basename "$model")}"

export VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"

cmd=("$venv/bin/python" -m vllm.entrypoints.openai.api_server
     --model "$model" --served-model-name "$served_name"
     --host "$host" --port "$port" --dtype "$dtype"
     --enable-lora --max-lora-rank "$max_lora_rank" --max-loras "$max_loras"
     "${extra[@]}")
if [[ -n "$max_model_len" ]]; then cmd+=(--max-model-len "$max_model_len"); fi
echo "[serve.sh] VLLM_CPU_KVCACHE_SPACE=$VLLM_CPU_KVCACHE_SPACE ${cmd[*]}" >&2
exec "${cmd[@]}"
