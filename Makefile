# Each target creates .venv and installs first, so a fresh clone needs nothing else.
# torch is installed on its own, before anything that depends on it, so pip takes the
# CPU wheel that lies on this machine instead of pulling a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,flower,chain,dkg]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bfl-private round --epsilon 1.0

# The unit, integration and deployment tests, the four notebooks at small settings
# (BFL_NOTEBOOK_SMALL=1) and the benchmarks' quick mode.
test: $(STAMP)
	$(PY) -m bench.run --quick
	BFL_NOTEBOOK_SMALL=1 $(PY) -m pytest -q --nbmake tests notebooks

bench: $(STAMP)
	$(PY) -m bench.run
	$(PY) -m bench.report

clean:
	rm -rf $(VENV) bfl-ledger .pytest_cache
