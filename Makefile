# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := demo
# Sample-data size of the demo: a fraction of the real per-artist counts, images capped in px.
DEMO_SCALE ?= 0.05
DEMO_MAX_SIDE ?= 384

.PHONY: demo test lint fmt install clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when pyproject.toml changes; the stamp keeps `make test` fast afterwards.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

$(DEMO)/data/artists.csv: | $(VENV)/.installed
	$(BIN)/artclf sample-data $(DEMO)/data --scale $(DEMO_SCALE) --max-side $(DEMO_MAX_SIDE) --seed 0

demo: $(DEMO)/data/artists.csv
	$(BIN)/artclf ingest $(DEMO)/data --work $(DEMO)/work
	$(BIN)/artclf eda --work $(DEMO)/work
	@echo
	@echo "demo results:"
	@echo "  data set (Kaggle layout)  $(DEMO)/data"
	@echo "  manifest                  $(DEMO)/work/manifest.jsonl"
	@echo "  ingest report             $(DEMO)/work/ingest_report.json"
	@echo "  EDA plots and summary     $(DEMO)/work/eda/{class_counts.png,image_sizes.png,summary.json}"

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

fmt: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-demo:
	rm -rf $(DEMO)
