# ldmtool: set-up and main jobs. `make demo` and `make test` work on a fresh machine with Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo_out
STAMP := $(VENV)/.ldmtool-installed

.PHONY: install demo test clean

# torch is installed first and pinned: 2.13.0 resolves to a local CPU build here; an unpinned
# torch would pull several GB of CUDA wheels. Then the package itself, editable, with test extras.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job end to end on built-in phantoms: data → autoencoder → latent diffusion → samples,
# then a side-by-side check of the samples against the real phantoms.
demo: install
	rm -rf $(DEMO)
	$(BIN)/ldmtool demo-data $(DEMO)/data --n 96
	$(BIN)/ldmtool train-ae $(DEMO)/data --out $(DEMO)/ae --config examples/demo.yaml
	$(BIN)/ldmtool train-ldm $(DEMO)/data --ae $(DEMO)/ae --out $(DEMO)/ldm --config examples/demo.yaml
	$(BIN)/ldmtool sample --ae $(DEMO)/ae --ldm $(DEMO)/ldm --out $(DEMO)/samples --n 16 --config examples/demo.yaml
	$(BIN)/ldmtool stats $(DEMO)/samples --real $(DEMO)/data
	@echo "montage: $(DEMO)/samples/montage.png"

# Lint (ruff), format check, import layers (import-linter), then the tests; slow tests: --runslow.
test: install
	$(BIN)/ruff check ldmtool tests benchmarks
	$(BIN)/ruff format --check ldmtool tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(DEMO) .pytest_cache
