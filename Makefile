# The README's two commands: `make demo` and `make test`. Both install into .venv first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# A CPU build of torch: an unpinned `torch` can pull a multi-GB CUDA build. GPU users: see README.
TORCH_CPU := torch==2.13.0

.PHONY: install demo test test-fast fetch-data train-default benchmarks clean

install: $(VENV)/.installed

$(VENV)/.installed: XDiffusionLib/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_CPU)
	$(PY) -m pip install -q -e 'XDiffusionLib[test]'
	$(PY) -m pip install -q slicer-core==5.13.31053.0  # Slicer's MRML for Testing/test_slicer_scene.py
	touch $@

demo: install
	$(VENV)/bin/xdiffusion demo --output-dir out/demo

test: install
	$(PY) -m pytest -q -n 2 Testing

fetch-data: install
	$(VENV)/bin/xdiffusion fetch-data

train-default: install
	$(VENV)/bin/xdiffusion train configs/cpu_default.yaml

benchmarks: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) out
