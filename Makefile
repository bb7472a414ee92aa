# The two commands of the README.  Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# tests run on all cores; override with `make test PYTEST_ARGS=...`
PYTEST_ARGS ?= -n 2

.PHONY: demo test test-quick install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# the local CPU build of torch first: an unpinned torch pulls GBs of CUDA packages
	$(PY) -m pip install --quiet torch==2.13.0
	# the geant4 extra brings the Geant4 libraries of simulate --engine geant4 (its tests need them)
	$(PY) -m pip install --quiet -e '.[dev,geant4]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/caloforge demo --output demo-run

test: $(STAMP)
	$(PY) -m pytest caloforge tests $(PYTEST_ARGS)

# the quick tier for the edit-test loop: every module's fast tests, without those marked slow
# (subprocess faults, Geant4, training runs); `make test` (and CI) still runs everything
test-quick: $(STAMP)
	$(PY) -m pytest caloforge tests -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo-run .pytest_cache
