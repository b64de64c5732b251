# Each target creates .venv and installs first, so a fresh clone needs nothing else.
# torch is installed on its own, before anything that depends on it, so pip takes the
# CPU wheel that lies on this machine instead of pulling a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Headless Chromium for the HTML report's browser test: @sparticuz/chromium carries the
# binary in its npm tarball (nothing is downloaded at run time), pinned by the lockfile.
BROWSER := tests/browser/node_modules/.installed
# tests/test_chain_anvil.py needs a real EVM node: anvil from npm, which its fixture starts
# on 127.0.0.1 (unless BFL_CHAIN_URL names a running node or BFL_ANVIL a binary).
ANVIL := node_modules/.bin/anvil
ANVIL_PACKAGE := @foundry-rs/anvil@1.7.1

.PHONY: install demo test bench clean anvil

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,flower,chain,dkg]'
	touch $(STAMP)

$(BROWSER): tests/browser/package-lock.json
	@if command -v npm >/dev/null; then \
		npm ci --prefix tests/browser --no-audit --no-fund --silent && touch $(BROWSER); \
	else echo "npm not found: the report's browser test will skip (CI requires it)"; fi

demo: $(STAMP)
	$(VENV)/bin/bfl-private round --epsilon 1.0

# The unit, integration and deployment tests, the four notebooks at small settings
# (BFL_NOTEBOOK_SMALL=1) and the benchmarks' quick mode.
test: $(STAMP) $(BROWSER) anvil
	$(PY) -m bench.run --quick
	BFL_NOTEBOOK_SMALL=1 $(PY) -m pytest -q --nbmake tests notebooks

# Says in one line when the anvil test will skip, and why; never fails the build by itself.
anvil:
	@if [ -n "$$BFL_CHAIN_URL" ] || [ -n "$$BFL_ANVIL" ] || [ -x $(ANVIL) ]; then :; \
	elif ! command -v npm >/dev/null; then \
		echo "note: tests/test_chain_anvil.py will skip: no npm to install $(ANVIL_PACKAGE) (or set BFL_CHAIN_URL / BFL_ANVIL)"; \
	elif ! npm install --no-save --no-package-lock --no-audit --no-fund --silent $(ANVIL_PACKAGE); then \
		echo "note: tests/test_chain_anvil.py will skip: npm install $(ANVIL_PACKAGE) failed (see above)"; \
	fi

bench: $(STAMP)
	$(PY) -m bench.run
	$(PY) -m bench.report

clean:
	rm -rf $(VENV) bfl-ledger .pytest_cache node_modules tests/browser/node_modules
