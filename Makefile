# Every target makes the virtualenv first, so each works on a fresh machine with Python 3.11
# (3.11.2, Debian 12's, or newer). PYTHON=/path/to/python3.11 picks another interpreter.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PYTHON_OK := $(shell $(PYTHON) -c 'import sys; print(sys.version_info[:3] >= (3, 11, 2) and sys.version_info[:2] == (3, 11))' 2>/dev/null)
ifneq ($(PYTHON_OK),True)
ifeq ($(wildcard $(BIN)/python),)
$(error Needs Python 3.11 (3.11.2 or newer) to make $(VENV), and '$(PYTHON)' is not one: install python3.11 or run make PYTHON=/path/to/python3.11)
endif
endif
LOCALCLOUD_PORT ?= 4566
LOCALCLOUD_STATE ?= .localcloud
export LOCALCLOUD_PORT LOCALCLOUD_STATE

.PHONY: venv dev-venv cloud run data test test-stack test-compose test-fast lint bench bench-cloud bench-run bench-ingest bench-scale bench-athena bench-stack clean up down status logs aws-infra

venv: $(VENV)/.installed

## The runtime requirements (what the image has); dev-venv adds the test and tooling packages.
$(VENV)/.installed: requirements.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -c constraints.txt
	touch $@

dev-venv: $(VENV)/.installed-dev

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $@

## Serve the local cloud in the foreground on 127.0.0.1:$(LOCALCLOUD_PORT).
cloud: venv
	$(BIN)/python -m include.localcloud

## The dev stack as local processes (no Docker needed): the local cloud, the Airflow UI and REST API
## on http://127.0.0.1:8080 (login from .env), scheduler, DAG processor, triggerer. State in .airflow/.
up: venv
	$(BIN)/python -m include.stack up

## Stop exactly what make up started.
down: venv
	$(BIN)/python -m include.stack down

status: venv
	$(BIN)/python -m include.stack status

logs: venv
	$(BIN)/python -m include.stack logs

## The fraud_detection DAG end to end on the local cloud (started when not running; it stays up).
## Override params with CONF, e.g. make run CONF='{"tuning_max_jobs": 4}'.
run: venv
	$(BIN)/python -m include.local_run '$(CONF)'

## Raw claims.csv and customers.csv of POLICIES new policies, drawn from a model fitted to data/,
## in generated/policies-<POLICIES>-seed-<SEED>/; prints the make run CONF that uses them.
POLICIES ?= 5000
SEED ?= 0
data: venv
	$(BIN)/python -m include.datagen --policies '$(POLICIES)' --seed '$(SEED)'

## infra/template.yaml deployed with the AWS CLI to the account and region of the current
## credentials (AWS_PROFILE, AWS_DEFAULT_REGION, ...); prints the .env lines Airflow needs.
## Parameters: make aws-infra AWS_INFRA_PARAMETERS='Prefix=fraud-detection AirflowPrincipal=arn:aws:iam::...'
AWS_INFRA_STACK ?= fraud-detection
AWS_INFRA_PARAMETERS ?=
aws-infra: dev-venv
	infra/aws-infra.sh $(BIN)/aws $(AWS_INFRA_STACK) $(AWS_INFRA_PARAMETERS)

lint: dev-venv
	$(BIN)/ruff check .

test: dev-venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not stack"

## The dev stack as processes, for real (slow, so not part of make test): make up and down, a run
## triggered through the REST API, make run, the trigger form in Chromium, a run surviving its task
## process and the local cloud killed. Holds free ports of its own while it runs.
test-stack: dev-venv
	$(BIN)/python -m pytest -q -m stack

## docker-compose.yaml started for real (slow, so not part of make test): an engine (the running one,
## or, as root, one it installs and starts), official images or local stand-ins, the stack with
## LocalExecutor and with Celery, a DAG run on each; prints the time of each phase. Holds host ports
## 8080, 4566, 5432, 6379 and 8974 while it runs.
test-compose: dev-venv
	$(BIN)/python -m tests.compose

test-fast: dev-venv
	$(BIN)/python -m pytest -q -m "not slow"

## Benchmarks print tables of medians: the local cloud's APIs, and the whole DAG run.
bench: bench-cloud bench-run

bench-cloud: venv
	$(BIN)/python -m include.localcloud.bench

bench-run: venv
	$(BIN)/python -m include.bench_run

## Feature Store ingestion records/s; POLICIES="5000 50000" for more sizes.
bench-ingest: venv
	$(BIN)/python -m include.bench_ingest $(POLICIES)

## The DAG on generated data of growing size (SIZES policies): seconds, peak RSS and growth exponent per stage.
SIZES ?= 5000 50000 200000 1000000
bench-scale: venv
	$(BIN)/python -m include.bench_scale $(SIZES)

## The dataset stage's Athena queries over the offline stores of ATHENA_SIZES generated policies:
## seconds and the local cloud server's peak RSS.
ATHENA_SIZES ?= 200000 1000000
bench-athena: venv
	$(BIN)/python -m include.bench_athena $(ATHENA_SIZES)

## Worker-slot seconds of each task under the dev stack, FRAUD_DEFERRABLE off and on (stacks of its own).
bench-stack: venv
	$(BIN)/python -m include.bench_stack

clean:
	rm -rf $(LOCALCLOUD_STATE) reports .pytest_cache
