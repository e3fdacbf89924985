# The two commands of the README: `make demo` (main job) and `make test`; `make lint` for style.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint
setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) -m video_seg_ros.tools.demo $(ARGS)

test: setup
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
