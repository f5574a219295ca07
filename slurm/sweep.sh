#!/usr/bin/env bash
# A sweep in one submission: plan the runs, submit the array (one task per point, train.sbatch on
# one node each) and the summary held by --dependency=afterany on the whole array.
#
#   slurm/sweep.sh FILE RUNS [-- TRAIN FLAGS]
#
#   FILE   the sweep file (TOML: [base], [grid], seeds; README, "Sweeps and comparisons")
#   RUNS   the sweep's folder, on a file system every node sees (one run folder per point)
#   after --   train flags for every point, before the point's own (which win)
#
# Site settings (environment; sbatch passes the rest of it, e.g. SHARDS, to every job):
#   SBATCH_FLAGS          sbatch flags for both jobs (e.g. "--partition=gpu --account=proj")
#   ARRAY_SBATCH_FLAGS    ... for the points (e.g. "--gpus-per-node=4"); sweep.sbatch's and
#                         train.sbatch's variables (BATCH_SIZE, NPROC_PER_NODE, ...) pass as they are
#   SUMMARY_SBATCH_FLAGS  ... for the summary (e.g. "--gpus-per-node=1 --cpus-per-task=8 --time=2:00:00")
#   SUMMARY_ARGS          flags for `artclf sweep summary` (e.g. "--batch-size 64")
#   PARALLEL              at most this many points at once (--array=0-(N-1)%PARALLEL; default: all)
#   LOG_DIR               where the jobs write their output (default ./slurm-logs)
#   SETUP                 run here before `artclf sweep plan` and on the nodes (as in train.sbatch)
# Run from the repository root (the scripts read launch/ and slurm/ from the submit directory).
set -euo pipefail
trap 'echo "slurm/sweep.sh: exit $? at line $LINENO: $BASH_COMMAND" >&2' ERR # say why set -e ends it

usage() { sed -n 5,9p "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
(($# >= 2)) || usage
FILE=$1 RUNS=$2
shift 2
if (($#)); then
    [[ $1 == -- ]] || { echo "slurm/sweep.sh: unknown option $1 (train flags go after --)" >&2; usage; }
    shift
fi
[[ -f slurm/sweep.sbatch && -d launch ]] || { echo "slurm/sweep.sh: run it from the repository root" >&2; exit 2; }
PARALLEL=${PARALLEL:-}
[[ -z $PARALLEL || $PARALLEL =~ ^[1-9][0-9]*$ ]] || { echo "slurm/sweep.sh: PARALLEL must be >= 1, not '$PARALLEL'" >&2; exit 2; }
LOG_DIR=${LOG_DIR:-slurm-logs}
mkdir -p "$LOG_DIR"

set +u # module/conda scripts read unset variables
eval "${SETUP:-}"
set -u
artclf sweep plan "$FILE" --runs "$RUNS" # one line per point, then the count
n=$(wc -l <"$RUNS/points.txt")
((n > 0)) || { echo "slurm/sweep.sh: $RUNS/points.txt lists no point" >&2; exit 2; }
export RUNS # read by sweep.sbatch in every job

read -ra every <<<"${SBATCH_FLAGS:-}"
read -ra array <<<"${ARRAY_SBATCH_FLAGS:-}"
read -ra summary <<<"${SUMMARY_SBATCH_FLAGS:-}"
read -ra summary_args <<<"${SUMMARY_ARGS:-}"
arr=$(sbatch --parsable --array="0-$((n - 1))${PARALLEL:+%$PARALLEL}" --output="$LOG_DIR/%x-%A_%a.out" \
    "${every[@]}" "${array[@]}" slurm/sweep.sbatch "$@")
arr=${arr%%;*} # "id;cluster" on a federation
# afterany: the summary runs once every point has ended, whatever its state, and names the points
# that did not finish (afterok would leave it pending for good after one failed point).
sum=$(sbatch --parsable --dependency="afterany:$arr" --job-name=artclf-sweep-summary \
    --output="$LOG_DIR/%x-%j.out" "${every[@]}" "${summary[@]}" slurm/sweep.sbatch "${summary_args[@]}")
sum=${sum%%;*}
printf '%-12s job %s (%d points: --array=0-%d%s)\n' array "$arr" "$n" "$((n - 1))" "${PARALLEL:+%$PARALLEL}"
printf '%-12s job %s (afterany:%s)\n' summary "$sum" "$arr"
echo "watch:       squeue -j $arr,$sum"
echo "afterwards:  sacct -j $arr,$sum --format=JobID,JobName%24,State,ExitCode,Restarts,Elapsed"
echo "logs:        $LOG_DIR/artclf-sweep-${arr}_<index>.out, $LOG_DIR/artclf-sweep-summary-$sum.out"
echo "rerun:       RUNS=$RUNS sbatch --array=<i,j> slurm/sweep.sbatch   (points that failed; then the summary)"
echo "results:     $RUNS/summary.md; TensorBoard: tensorboard --logdir $RUNS"
