# Every target is self-sufficient on a fresh machine: it makes .venv if missing, installs the project, then works.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test phantoms clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## demo: train the AortaDiff bundle on CT phantoms on the CPU, then sample and evaluate
demo: $(STAMP)
	$(PY) -m tools.demo

## test: the whole pytest suite (CPU, tiny sizes)
test: $(STAMP)
	$(PY) -m pytest -q --durations=15

## phantoms: write 20 AAA phantom cases to ./cache/phantoms/aaa
phantoms: $(STAMP)
	$(PY) -m tools.data.phantoms --anatomy aaa --cases 20 --out cache/phantoms/aaa

clean:
	rm -rf $(VENV) .pytest_cache cache runs eval
