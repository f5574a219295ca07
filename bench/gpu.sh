#!/usr/bin/env bash
# The GPU check, in one call: at most ~9.5 minutes, the sum of its parts' time limits (not yet run
# on a GPU), on a bare machine: Python 3.12 with PyTorch, torchvision, Accelerate, TensorBoard,
# scikit-learn and Pillow; no network.
#   setup      what artclf needs beyond those, from bench/wheels (bench/device_wheels.sh), no index
#   synthetic  synthetic batches through the trainer's own step loop at per-device batch 8, 16, 64,
#              128: fp32, bf16, bf16+channels_last, +compile (compile time); peak memory, syncs/step
#   data       the full-size sample set (sample-data --scale 1, originals uncapped) -> ingest, dedup,
#              split -> shards
#   compiled   artclf train, 1 epoch, bf16, --compile: steady img/s and data wait; then artclf
#              evaluate on its model.pt (a compiled run's model loads)
#   recipe     the 15-epoch recipe (bf16) from start to model.pt while the time allows; past it,
#              the time extrapolated from the measured epochs, and labelled so
# Each part is guarded (its own time limit; a failure is reported and the next part runs). The whole
# log goes to OUT/gpu.log; a summary table comes last (also OUT/summary.txt).
# Usage: bash bench/gpu.sh [--dry-run] [OUT]
#   --dry-run: CPU, tiny sizes, no CUDA, the same parts and code paths (make test runs it).
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
if [[ ${1:-} == --dry-run ]]; then
    dry=1
    shift
fi
out=$(realpath -m "${1:-${OUT:-/tmp/artclf-gpu}}")
mkdir -p "$out"
log=$out/gpu.log
: >"$log"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PY=${PYTHON:-python3} OUT=$out DATA=$out/data
if ((dry)); then
    export LAUNCH="--cpu --num_processes 1" PRECISION=no CORES=2 SCALE=0.02 SIZES="--max-side 128" \
        SYNTH="--device cpu --arch resnet18 --size 32 --batches 2 --steps 2 --compile-backend eager --budget 60" \
        TRAIN="--arch resnet18 --image-size 32 --batch-size 16 --workers 2 --compile-backend eager" \
        EPOCHS=2 LIMITS="120 300 300 300 300"
else
    CORES=$(nproc)
    export LAUNCH="--num_processes 1" PRECISION=bf16 CORES SCALE=1 SIZES="--max-side 0" \
        SYNTH="--steps 20 --budget 50" TRAIN="--workers $(($(nproc) - 2))" EPOCHS=15 LIMITS="40 130 120 90 150"
fi
read -r -a limits <<<"$LIMITS"
summary=()
say() { echo "$*" | tee -a "$log"; }

# run PART LIMIT: the function part_PART under a time limit, output to the log; one summary row
run() {
    local name=$1 limit=$2 t0=$SECONDS rc
    say "== $name (limit ${limit} s)"
    timeout --kill-after=10 "$limit" bash -c "part_$name" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    local status=ok
    ((rc == 124 || rc == 137)) && status="timed out"
    ((rc != 0 && rc != 124 && rc != 137)) && status="failed ($rc)"
    local figures=""
    [[ -f $out/$name.figures ]] && figures=$(<"$out/$name.figures")
    summary+=("$(printf '%-10s %-12s %5d s  %s' "$name" "$status" $((SECONDS - t0)) "$figures")")
}

part_setup() {
    set -eo pipefail
    if ! "$PY" -c "import webdataset, boto3, matplotlib" 2>/dev/null; then
        [[ -f bench/wheels/requirements.txt ]] || {
            echo "bench/wheels is missing: run bench/device_wheels.sh where PyPI is reachable"
            exit 1
        }
        "$PY" -m pip install --no-index --find-links bench/wheels -r bench/wheels/requirements.txt
    fi
    "$PY" -c "import torch, artclf; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    fi
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores"
}

part_synthetic() {
    set -eo pipefail
    # shellcheck disable=SC2086  # word splitting of the flag lists is intended
    "$PY" -m bench.gpu_throughput $SYNTH --json "$OUT/synthetic.json"
    "$PY" - "$OUT/synthetic.json" >"$OUT/synthetic.figures" <<'PY'
import json, sys
rows = [r for r in json.load(open(sys.argv[1])) if not r.get("skipped")]
best = max(rows, key=lambda r: r["images_per_s"])
print(f"best {best['images_per_s']:.0f} img/s ({best['variant']}, batch {best['batch']})")
PY
}

part_data() {
    set -eo pipefail
    rm -rf "$DATA"
    # shellcheck disable=SC2086
    "$PY" -m artclf sample-data "$DATA/originals" --scale "$SCALE" $SIZES --no-quirks --workers "$CORES" | tail -1
    "$PY" -m artclf ingest "$DATA/originals" --work "$DATA/work" --workers "$CORES" | tail -1
    "$PY" -m artclf dedup --work "$DATA/work" --weights none --montages 0 --workers "$CORES" 2>&1 | tail -1
    "$PY" -m artclf split --work "$DATA/work" | tail -1
    # one GPU reads them (shards sized for 16 would be 8-sample slivers here)
    "$PY" -m artclf shard --work "$DATA/work" --out "$DATA/shards" --workers "$CORES" --readers 1 | tail -1
    "$PY" -c "import json, sys; i = json.load(open(sys.argv[1])); \
print(' '.join(f\"{k} {v['num_samples']}\" for k, v in i['splits'].items()))" \
        "$DATA/shards/_info.json" | tee "$OUT/data.figures"
}

# train RUN EPOCHS [flags]: artclf.train through accelerate launch on the shards of part data
train() {
    local run=$1 epochs=$2
    shift 2
    # shellcheck disable=SC2086
    accelerate launch $LAUNCH --num_machines 1 --mixed_precision "$PRECISION" --dynamo_backend no \
        -m artclf.train --shards "$DATA/shards" --run "$run" --weights none --epochs "$epochs" $TRAIN "$@"
}

# figures RUN: steady img/s and data wait of the last epoch, seconds per epoch (history.jsonl)
figures() {
    "$PY" - "$1/history.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
last = rows[-1]
rate, wait = last.get("images_per_s_steady"), last.get("data_wait_steady")
if rate is None:
    rate, wait = last["images_per_s"], last["data_wait"]
print(f"{rate:.0f} img/s steady, data wait {100 * wait:.1f} %, {last['seconds']:.1f} s per epoch "
      f"(epoch {last['epoch']}), val accuracy {last.get('val_accuracy', float('nan')):.3f}")
PY
}
export -f train figures

part_compiled() {
    set -eo pipefail
    rm -rf "$OUT/run-compiled"
    train "$OUT/run-compiled" 1 --compile
    figures "$OUT/run-compiled" | tee "$OUT/compiled.figures"
    "$PY" -m artclf evaluate --model "$OUT/run-compiled/model.pt" --shards "$DATA/shards" --split val \
        --out "$OUT/run-compiled/eval" | tail -2
}

part_recipe() {
    set -eo pipefail
    rm -rf "$OUT/run-recipe"
    local t0=$SECONDS pid rc=0
    train "$OUT/run-recipe" "$EPOCHS" &
    pid=$!
    trap 'kill -TERM $pid 2>/dev/null' TERM # the time limit: the trainer saves and stops
    wait $pid || rc=$?
    if ((rc != 0)); then
        echo "recipe: the trainer exited with $rc"
        exit "$rc"
    fi
    echo "recipe: $EPOCHS epochs to model.pt in $((SECONDS - t0)) s (measured); $(figures "$OUT/run-recipe")" |
        tee "$OUT/recipe.figures"
}
export -f part_setup part_synthetic part_data part_compiled part_recipe

run setup "${limits[0]}"
run synthetic "${limits[1]}"
run data "${limits[2]}"
run compiled "${limits[3]}"
run recipe "${limits[4]}"
if [[ ! -f $out/recipe.figures && -f $out/run-recipe/history.jsonl ]]; then
    # the recipe did not finish in its time: extrapolate from the epochs it measured, labelled so
    "$PY" - "$out/run-recipe/history.jsonl" "$EPOCHS" <<'PY' | tee -a "$log" >"$out/recipe.figures"
import json, sys
rows, epochs = [json.loads(line) for line in open(sys.argv[1])], int(sys.argv[2])
per = sum(r["seconds"] for r in rows) / len(rows)
print(f"EXTRAPOLATED, not measured: {epochs} epochs ~ {epochs * per:.0f} s + start-up "
      f"({len(rows)} epoch(s) measured, {per:.1f} s each)")
PY
    summary[-1]="${summary[-1]/timed out   /extrapolated}$(<"$out/recipe.figures")"
fi
{
    echo
    echo "== summary ($( ((dry)) && echo "dry run, CPU" || echo GPU), commit $(git rev-parse --short HEAD 2>/dev/null))"
    printf '%s\n' "${summary[@]}"
    [[ -f $out/synthetic.json ]] && "$PY" -c "
import json, sys
sys.path.insert(0, '.')
from bench.gpu_throughput import row_text
for r in json.load(open('$out/synthetic.json')):
    print('  ' + row_text(r))"
} | tee "$out/summary.txt" | tee -a "$log"
! grep -qE "^[a-z]+ +(failed|timed out)" "$out/summary.txt"
