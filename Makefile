# The README's two commands, `make run` and `make test`, each set themselves up on a fresh machine:
# a virtualenv in .venv with the package and its extras, and ffmpeg from apt when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=
PYTEST_ARGS ?=
BENCH_QUICK ?=

.PHONY: run test bench install ffmpeg espeak services clean

install: $(STAMP)

$(STAMP): setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

ffmpeg:
	@command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || { \
	  echo "installing ffmpeg with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq ffmpeg >/dev/null; }

# espeak-ng synthesizes the spoken sentences of the speech ground truth (tests and benchmarks only).
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  echo "installing espeak-ng with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq espeak-ng >/dev/null; }

# Start RabbitMQ, Redis and PostgreSQL when they are installed but down (end-to-end tests use them).
services:
	@bash .ci/services.sh

## Gateway + worker on the embedded default (or on SG_BROKER_URL etc. when set). ARGS="--flower" etc.
run: $(STAMP) ffmpeg
	$(BIN)/python run_local.py $(ARGS)

## Unit and end-to-end tests (end-to-end on the embedded default and on RabbitMQ + Redis + PostgreSQL).
test: $(STAMP) ffmpeg espeak
	-@bash .ci/services.sh --quiet
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Benchmarks (docs/benchmarks.md): annotator accuracy, memory on 1-min vs 10-min clips, GET /jobs
## with 100,000 jobs. BENCH_QUICK=1 for a smoke run (shorter clips, fewer jobs, one repeat).
bench: $(STAMP) ffmpeg espeak
	-@bash .ci/services.sh --quiet
	$(BIN)/python benchmarks/accuracy.py
	$(BIN)/python benchmarks/memory.py $(if $(BENCH_QUICK),--quick --repeat 1)
	$(BIN)/python benchmarks/jobs_list.py $(if $(BENCH_QUICK),--jobs 5000 --requests 50)

clean:
	rm -rf $(VENV) var .pytest_cache build *.egg-info
