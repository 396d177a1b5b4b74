# Everything runs in a virtual environment that this Makefile builds itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-predict bench-empirical bench-cnn bench-finite-width example-cntk clean clean-numba

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test,demo]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ntkit demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_mlp.py

bench-predict: $(STAMP)
	$(BIN)/python benchmarks/bench_predict.py

bench-empirical: $(STAMP)
	$(BIN)/python benchmarks/bench_empirical.py

bench-cnn: $(STAMP)
	$(BIN)/python benchmarks/bench_cnn.py

bench-finite-width: $(STAMP)
	$(BIN)/python benchmarks/bench_finite_width.py

example-cntk: $(STAMP)
	$(BIN)/python examples/cntk_digits.py

clean: clean-numba
	rm -rf $(VENV) .venv-nt build src/*.egg-info .pytest_cache

# Numba's on-disk machine code (see src/ntkit/_compiled/_jit.py)
clean-numba:
	find src -name '*.nbi' -delete -o -name '*.nbc' -delete
