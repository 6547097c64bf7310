# The README's two commands, `make run` and `make test`, each set themselves up on a fresh machine:
# a virtualenv in .venv with the package and its extras, and ffmpeg from apt when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=
PYTEST_ARGS ?=
BENCH_QUICK ?=

.PHONY: run test bench install ffmpeg test-tools services clean

install: $(STAMP)

$(STAMP): setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# $(call apt_need,COMMANDS,PACKAGES): apt-get install PACKAGES unless every one of COMMANDS is on PATH.
define apt_need
@for c in $(1); do command -v $$c >/dev/null 2>&1 || missing=1; done; [ -z "$$missing" ] || { \
  echo "installing $(2) with apt-get"; \
  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(2) >/dev/null; }
endef

ffmpeg:
	$(call apt_need,ffmpeg ffprobe,ffmpeg)

# Tests and benchmarks only: espeak-ng synthesizes the speech ground truth, chromium + its driver run
# the /ui browser test, wrk drives the HTTP benchmarks (and their smoke test).
test-tools:
	$(call apt_need,espeak-ng chromium chromedriver wrk,espeak-ng chromium chromium-driver wrk)

# Start RabbitMQ, Redis and PostgreSQL when they are installed but down (end-to-end tests use them).
services:
	@bash .ci/services.sh

## Gateway + worker on the embedded default (or on SG_BROKER_URL etc. when set). ARGS="--flower" etc.
run: $(STAMP) ffmpeg
	$(BIN)/python run_local.py $(ARGS)

## Unit and end-to-end tests (end-to-end on the embedded default and on RabbitMQ + Redis + PostgreSQL).
test: $(STAMP) ffmpeg test-tools
	-@bash .ci/services.sh --quiet
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Benchmarks: issue #8's suite B1-B8 (benchmarks/run_all.py: gateway vs Flower, raw Celery and direct
## runs, side by side on RabbitMQ + Redis + PostgreSQL; memory; GET /jobs with 100,000 jobs), written
## into docs/benchmarks.md, then the annotators' accuracy table (docs/annotations.md).
## BENCH_QUICK=1: the smoke run (< 1 min, one repeat, tiny sizes) into var/bench/benchmarks-quick.md.
## BENCH_OUTPUT=file: write the section there instead.
BENCH_OUTPUT ?=
bench: $(STAMP) ffmpeg test-tools
	-@bash .ci/services.sh --quiet
	$(BIN)/python benchmarks/run_all.py $(if $(BENCH_QUICK),--quick) $(if $(BENCH_OUTPUT),--output $(BENCH_OUTPUT))
	$(if $(BENCH_QUICK),,$(BIN)/python benchmarks/accuracy.py)

clean:
	rm -rf $(VENV) var .pytest_cache build *.egg-info
