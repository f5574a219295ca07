#!/usr/bin/env bash
# One self-contained GPU check (about 5 minutes on one H200; CUDA PyTorch preinstalled, no network):
#   1. ResNet50 at 512 px, synthetic tensors: fp32, bf16, bf16+channels_last, +compile, batch 64/128;
#   2. the real input pipeline: sample shards -> artclf.train (bf16, 16 workers), img/s and data wait.
# Usage: bash bench/gpu.sh [OUT_DIR]     Results: OUT_DIR/gpu.txt (and the run's history.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/artclf-gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python -c "import artclf" 2>/dev/null || pip install -q --no-deps -e .   # deps must already be there
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
git rev-parse --short HEAD 2>/dev/null | sed 's/^/commit /' | tee -a "$out/gpu.txt" || true

timeout 240 python -m bench.gpu_throughput --batches 64,128 --steps 30 | tee -a "$out/gpu.txt"

# The real input pipeline at the real set's image sizes (0.3-3 MP originals, 576 px shards).
data=$(mktemp -d)
python -m artclf sample-data "$data/data" --scale 0.5 --max-side 0 --no-quirks --workers 16 >/dev/null
python -m artclf ingest "$data/data" --work "$data/work" >/dev/null
python -m artclf dedup --work "$data/work" --weights none --montages 0 >/dev/null 2>&1
python -m artclf split --work "$data/work" >/dev/null
python -m artclf shard --work "$data/work" --out "$data/shards" --shard-samples 64 --workers 16 | tee -a "$out/gpu.txt"
timeout 300 accelerate launch --num_processes 1 --num_machines 1 --mixed_precision bf16 --dynamo_backend no \
    -m artclf.train --shards "$data/shards" --run "$out/run" --weights none --epochs 2 --workers 16 \
    --batch-size 64 --log-every 10 2>&1 | grep -E "artclf train|epoch [0-9]+/" | tee -a "$out/gpu.txt"
python - "$out/run/history.jsonl" <<'PY' | tee -a "$out/gpu.txt"
import json, sys
for row in map(json.loads, open(sys.argv[1])):
    print(f"real pipeline epoch {row['epoch']}: {row['images_per_s']:.1f} img/s, data wait {100 * row['data_wait']:.1f} %")
PY
