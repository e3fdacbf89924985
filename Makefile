# The two commands of the README: `make demo` (main job) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test
setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) -m video_seg_ros.tools.demo $(ARGS)

test: setup
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)
