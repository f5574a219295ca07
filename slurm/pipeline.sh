#!/usr/bin/env bash
# The whole pipeline in one submission, a job per stage: ingest -> dedup-parts (features, array)
# -> dedup-pairs -> dedup-verify (array) -> dedup-merge -> split -> shard-parts (array) ->
# shard-merge (+ verify) -> train -> evaluate (test split), each held by --dependency=afterok on the
# one before. A stage that fails cancels every job after it (--kill-on-invalid-dep=yes: they never
# start, their reason is DependencyNeverSatisfied).
#
#   slurm/pipeline.sh DATA_DIR WORK SHARDS RUN [--dedup-parts N] [--shard-parts M] [-- TRAIN FLAGS]
#
#   DATA_DIR  the Kaggle folder (artists.csv, images/images/<Artist>/...)
#   WORK      the work folder (manifest, dedup, split); SHARDS a folder or s3://bucket/prefix;
#             RUN the run folder. All on a file system every node sees.
#   --dedup-parts N, --shard-parts M   array sizes (default 4 and 8; N: both dedup arrays)
#   after --   flags for artclf.train (e.g. --epochs 30 --lr 3e-4)
#
# Site settings (environment; sbatch passes the rest of the environment to every job):
#   DEDUP_ARGS, SHARD_ARGS  extra flags for every dedup / shard call (e.g. SHARD_ARGS="--store-size 576")
#   SBATCH_FLAGS            sbatch flags for every job (e.g. "--partition=main --account=proj")
#   DATA_SBATCH_FLAGS       ... for the data stages and evaluate (ingest, dedup, split, shard)
#   TRAIN_SBATCH_FLAGS      ... for train (e.g. "--nodes=4"); train.sbatch's own variables
#                           (NPROC_PER_NODE, ACCELERATE_CONFIG, SETUP, ...) pass as they are
#   LOG_DIR                 where every job writes %x-%j.out (default ./slurm-logs)
# Run from the repository root (the scripts read launch/ from the submit directory).
set -euo pipefail
trap 'echo "slurm/pipeline.sh: exit $? at line $LINENO: $BASH_COMMAND" >&2' ERR # say why set -e ends it

usage() { sed -n 7,13p "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
(($# >= 4)) || usage
DATA_DIR=$1 WORK=$2 SHARDS=$3 RUN=$4
shift 4
DEDUP_PARTS=4
SHARD_PARTS=8
while (($#)); do
    case $1 in
        --dedup-parts) DEDUP_PARTS=$2; shift 2 ;;
        --shard-parts) SHARD_PARTS=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "slurm/pipeline.sh: unknown option $1" >&2; usage ;;
    esac
done
for n in "$DEDUP_PARTS" "$SHARD_PARTS"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "slurm/pipeline.sh: parts must be >= 1, not '$n'" >&2; exit 2; }
done
[[ -d $DATA_DIR ]] || { echo "slurm/pipeline.sh: $DATA_DIR: no such folder (DATA_DIR)" >&2; exit 2; }
[[ -f slurm/train.sbatch && -d launch ]] || { echo "slurm/pipeline.sh: run it from the repository root" >&2; exit 2; }
LOG_DIR=${LOG_DIR:-slurm-logs}
mkdir -p "$LOG_DIR"
export WORK SHARDS RUN # read by dedup.sbatch, shard.sbatch and train.sbatch
unset NUM_PARTS        # left from a rerun of some parts, it would override every array's size

read -ra every <<<"${SBATCH_FLAGS:-}"
read -ra data <<<"${DATA_SBATCH_FLAGS:-}"
read -ra train <<<"${TRAIN_SBATCH_FLAGS:-}"
read -ra dedup_args <<<"${DEDUP_ARGS:-}"
read -ra shard_args <<<"${SHARD_ARGS:-}"
jobs=()
after=
# submit NAME [sbatch flags...] -- SCRIPT [args...]: the job id; held by the previous job
submit() {
    local name=$1 flags=() id
    shift
    while [[ $1 != -- ]]; do flags+=("$1"); shift; done
    shift
    id=$(sbatch --parsable --job-name="artclf-$name" --output="$LOG_DIR/%x-%j.out" \
        ${after:+--dependency=afterok:$after --kill-on-invalid-dep=yes} "${every[@]}" "${flags[@]}" "$@")
    id=${id%%;*} # "id;cluster" on a federation
    printf '%-12s job %s\n' "$name" "$id"
    jobs+=("$id")
    after=$id
}

submit ingest "${data[@]}" -- slurm/stage.sbatch ingest "$DATA_DIR" --work "$WORK"
submit dedup-parts "${data[@]}" --array="0-$((DEDUP_PARTS - 1))" -- slurm/dedup.sbatch features "${dedup_args[@]}"
NUM_PARTS=$DEDUP_PARTS submit dedup-pairs "${data[@]}" -- slurm/dedup.sbatch pairs "${dedup_args[@]}"
submit dedup-verify "${data[@]}" --array="0-$((DEDUP_PARTS - 1))" -- slurm/dedup.sbatch verify "${dedup_args[@]}"
submit dedup-merge "${data[@]}" -- slurm/dedup.sbatch merge "${dedup_args[@]}"
submit split "${data[@]}" -- slurm/stage.sbatch split --work "$WORK"
submit shard-parts "${data[@]}" --array="0-$((SHARD_PARTS - 1))" -- slurm/shard.sbatch "${shard_args[@]}"
submit shard-merge "${data[@]}" -- slurm/shard.sbatch "${shard_args[@]}"
submit train "${train[@]}" -- slurm/train.sbatch "$@"
submit evaluate "${data[@]}" -- slurm/stage.sbatch evaluate --model "$RUN/model.pt" --shards "$SHARDS" --split test

ids=$(IFS=,; echo "${jobs[*]}")
echo "watch:       squeue -j $ids"
echo "afterwards:  sacct -j $ids --format=JobID,JobName%20,State,ExitCode,Elapsed"
echo "logs:        $LOG_DIR/artclf-<stage>-<job id>.out; the test scores: $RUN/eval-test/metrics.json"
echo "TensorBoard: tensorboard --logdir $(dirname "$RUN")   (or sbatch slurm/tensorboard.sbatch $(dirname "$RUN"))"
