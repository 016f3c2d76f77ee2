# The course's two commands (see README):  make course   and   make test
# Both create ./.venv when it is missing and install the project into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; install it before the project so no multi-GB CUDA build is pulled in.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup course test backbones clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

course: setup
	$(PY) scripts/run_course.py

test: setup
	$(PY) -m pytest tests notebooks --nbval-lax -q

backbones: setup
	$(PY) -m llava_mini.backbones

clean:
	rm -rf work runs
