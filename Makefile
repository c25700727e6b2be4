# clv_training: every target creates .venv and installs the pinned dependencies on first use.
# `make help` lists the targets.

PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
SPARK_STAMP := $(VENV)/.installed-spark
# The local env manager of `mlflow models serve` starts uvicorn from PATH.
export PATH := $(BIN):$(PATH)
export MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK := true

ARGS ?=
BIND_HOST ?= 127.0.0.1
PORT ?= 5001
UI_PORT ?= 5000
MODEL ?= models:/clv@champion
STORE := $(abspath mlruns)
TRACKING_URI ?= sqlite:///$(STORE)/mlflow.db
export MLFLOW_TRACKING_URI := $(TRACKING_URI)
INPUT ?=
OUTPUT ?= predictions.csv
AS_OF ?=
VERSION ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install install-spark train tune-worker test test-slow ui serve predict promote \
	bench bench-quick bench-scale clean

help: ## List every target with one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# uv installs the same pins in seconds; plain pip is the fallback.
	( $(BIN)/python -m pip install --quiet uv && \
	  $(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.txt && \
	  $(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e . ) || \
	( $(BIN)/python -m pip install --quiet -r requirements.txt && \
	  $(BIN)/python -m pip install --quiet --no-deps -e . )
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the pinned dependencies and the package

$(SPARK_STAMP): requirements-spark.txt $(STAMP)
	( $(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements-spark.txt ) || \
	$(BIN)/python -m pip install --quiet -r requirements-spark.txt
	touch $(SPARK_STAMP)

install-spark: $(SPARK_STAMP) ## Add the optional Spark engine (pyspark; needs Java 17) to .venv

# `engine=spark` in ARGS installs the Spark pins first.
NEEDS_SPARK := $(if $(findstring engine=spark,$(ARGS)),$(SPARK_STAMP))

train: $(STAMP) $(NEEDS_SPARK) ## Run the training job (Hydra overrides: make train ARGS='horizon_days=91')
	$(BIN)/python -m clv_training.jobs.train $(ARGS)

tune-worker: $(STAMP) $(NEEDS_SPARK) ## One more Optuna worker on train's studies (give it train's ARGS)
	$(BIN)/python -m clv_training.jobs.tune_worker $(ARGS)

test: $(STAMP) ## Run the default test suite (slow tests excluded)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP) $(SPARK_STAMP) ## Run only the slow tests
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

ui: $(STAMP) ## MLflow UI on the project store at 127.0.0.1:UI_PORT (default 5000); Ctrl+C stops it
	# One worker and no background job runner: this UI only browses runs and the registry,
	# and the job runner's consumer processes outlive a SIGTERM sent to the UI alone.
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri $(TRACKING_URI) \
		--host $(BIND_HOST) --port $(UI_PORT) --workers 1

serve: $(STAMP) ## Serve the champion with mlflow models serve (127.0.0.1:PORT)
	$(BIN)/mlflow models serve -m "$(MODEL)" --env-manager local --host $(BIND_HOST) --port $(PORT)

predict: $(STAMP) ## Score a file: make predict INPUT=tx.csv OUTPUT=out.csv [AS_OF=YYYY-MM-DD]
	$(BIN)/python -m clv_training.jobs.predict input=$(INPUT) output=$(OUTPUT) \
		$(if $(AS_OF),as_of=$(AS_OF)) model_uri='$(MODEL)' $(ARGS)

promote: $(STAMP) ## Promote a registered version to champion: make promote VERSION=N
	$(BIN)/python -m clv_training.jobs.promote version=$(VERSION) $(ARGS)

bench: $(STAMP) $(SPARK_STAMP) ## Full benchmark (quality, serving, speed, e2e, 10^8-row scale, spark); merges into bench/results.json
	$(BIN)/python -m clv_training.bench.run --size full $(ARGS)

bench-quick: $(STAMP) $(SPARK_STAMP) ## Small benchmark run (minutes); writes bench/results-quick.json and bench/RESULTS-quick.md
	$(BIN)/python -m clv_training.bench.run --size quick $(ARGS)

bench-scale: $(STAMP) $(SPARK_STAMP) ## Only the 10^8-row DuckDB and Spark figures (needs ~8 GiB free in /tmp)
	$(BIN)/python -m clv_training.bench.run --size full --sections scale,spark $(ARGS)

clean: ## Remove caches and Hydra outputs (keeps .venv and mlruns)
	rm -rf outputs multirun .pytest_cache .hypothesis catboost_info
