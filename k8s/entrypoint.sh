#!/bin/sh
# The training container's command: turn the Kubernetes layout into `accelerate launch` flags,
# run the launcher as a child, and exit with a code the job's failure policy can act on. The
# container's args go to artclf.train.
#   TrainJob (Kubeflow Trainer v2, Torch plugin: pkg/runtime/framework/plugins/torch/torch.go):
#     PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK (the Job completion index), PET_MASTER_ADDR
#     (<trainjob>-node-0-0.<trainjob>) and PET_MASTER_PORT (29400).
#   PyTorchJob (training-operator v1, legacy): PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE,
#     MASTER_ADDR, MASTER_PORT come from the operator.
#   Indexed Job: JOB_COMPLETION_INDEX (from the Job controller) is the machine rank; NNODES,
#     NPROC_PER_NODE, JOB_NAME and SERVICE_NAME come from the manifest; rank 0's stable hostname
#     <job>-0.<headless service> hosts the rendezvous.
#   Sweep (SWEEP_RUNS set: k8s/overlays/prod-sweep): JOB_COMPLETION_INDEX selects the sweep point,
#     line i of SWEEP_RUNS/points.txt (artclf sweep plan); each pod is its own single-node run of
#     NPROC_PER_NODE processes, with RUN=SWEEP_RUNS/<name> and the point's flags
#     (SWEEP_RUNS/<name>/args, one token a line) after the container's (the point's win). It waits
#     up to SWEEP_WAIT seconds (default 900) for the plan (SWEEP_RUNS/sweep.json, written last);
#     an index outside points.txt, or no plan, is a permanent error (78).
# MAX_RESTARTS (default: the operator's PET_MAX_RESTARTS of an elasticPolicy, else 3): how often
# torchrun's agent restarts the gang after a worker fails, before the container exits and the
# job's policy takes over (launch/README.md). ACCELERATE names the launcher (tests set it to `echo`).
#
# Exit codes (k8s/README.md, "Exit codes"): the launcher reports any failed trainer as its own
# exit 1, so the trainers record why they ended in RUN/exits/<ARTCLF_LAUNCH_ID>/ (artclf/train/
# outcome.py) and this script exits
#   75  the trainers saved after a stop request (TERM: eviction, preemption): retry, uncounted;
#   78  a permanent error (a bad flag, missing data, denied credentials, a non-finite stop):
#       fail the job, never retry (the trainer also stopped its launcher's own restarts);
#   the launcher's own code otherwise (a crash, an OOM kill, a hang): retry within the budget.
# RETRY_EXIT_CODE, where set, replaces every retryable code (75 and the launcher's): the legacy
# PyTorchJob's restartPolicy ExitCode retries only 130, 137, 143 and 138 (manifest: 138).
#
# SIGTERM (eviction, preemption, `kubectl delete`) reaches this script, PID 1: it forwards it to
# the launcher, which forwards it to the trainers; they save and exit 75. torchrun SIGKILLs them
# after TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (default 30; set in the manifest next to
# terminationGracePeriodSeconds; torch's own knob, torch/distributed/launcher/api.py).
set -eu
# A TERM before the launcher starts: do not start it (no trainer has anything to save). PID 1
# ignores what it does not trap, so without this the launcher would run until the SIGKILL.
child=
pending=
trap 'if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || :; else pending=TERM; fi' TERM
trap 'if [ -n "$child" ]; then kill -INT "$child" 2>/dev/null || :; else pending=INT; fi' INT

port=${MASTER_PORT:-29500}
if [ -n "${SWEEP_RUNS:-}" ]; then # a sweep point (the index is no machine rank)
    index=${JOB_COMPLETION_INDEX:-}
    case $index in
        '' | *[!0-9]*)
            echo "entrypoint.sh: SWEEP_RUNS is set but JOB_COMPLETION_INDEX is '$index': a sweep runs" \
                "as an Indexed Job (k8s/overlays/prod-sweep)" >&2
            exit 78
            ;;
    esac
    for arg in "$@"; do
        case $arg in --run | --run=*)
            echo "entrypoint.sh: sweep point $index: the container's args set $arg; a sweep names each" \
                "point's run (SWEEP_RUNS/<name>): remove it" >&2
            exit 78
            ;;
        esac
    done
    waited=0 # the plan Job writes sweep.json last: until then the plan is incomplete
    while [ ! -f "$SWEEP_RUNS/sweep.json" ] && [ -z "$pending" ]; do
        if [ "$waited" -ge "${SWEEP_WAIT:-900}" ]; then
            echo "entrypoint.sh: no plan in $SWEEP_RUNS after ${SWEEP_WAIT:-900} s (sweep.json): run" \
                "artclf sweep plan FILE --runs $SWEEP_RUNS (the Job artclf-sweep-plan)" >&2
            exit 78
        fi
        sleep 1
        waited=$((waited + 1))
    done
    if [ -n "$pending" ]; then
        echo "entrypoint.sh: SIG$pending while waiting for the plan: not starting the trainers" >&2
        exit "${RETRY_EXIT_CODE:-143}"
    fi
    points=$SWEEP_RUNS/points.txt
    count=$(awk 'END { print NR }' "$points")
    name=$(awk -v i="$index" 'NR == i + 1' "$points")
    if [ -z "$name" ]; then
        echo "entrypoint.sh: sweep index $index is outside $points ($count points: 0-$((count - 1)));" \
            "the Job's completions must be the number of points (wc -l < points.txt): exit 78" >&2
        exit 78
    fi
    if [ ! -f "$SWEEP_RUNS/$name/args" ]; then
        echo "entrypoint.sh: $SWEEP_RUNS/$name/args: no such file; plan again (artclf sweep plan)" >&2
        exit 78
    fi
    while IFS= read -r token || [ -n "$token" ]; do # the point's flags after the container's: they win
        set -- "$@" "$token"
    done <"$SWEEP_RUNS/$name/args"
    set -- "$@" --run "$SWEEP_RUNS/$name"
    echo "entrypoint.sh: sweep point $index of $count: $name"
    nnodes=1
    rank=0
    nproc=$NPROC_PER_NODE
    host=127.0.0.1 # this pod alone hosts the rendezvous: no other index takes part
elif [ -n "${PET_MASTER_ADDR:-}" ]; then # TrainJob: the only layout that sets PET_MASTER_ADDR
    nnodes=$PET_NNODES
    rank=$PET_NODE_RANK
    nproc=$PET_NPROC_PER_NODE
    host=$PET_MASTER_ADDR
    port=${PET_MASTER_PORT:-29400}
elif [ -n "${PET_NNODES:-}" ]; then
    nnodes=$PET_NNODES
    rank=$PET_NODE_RANK
    nproc=$PET_NPROC_PER_NODE
    host=$MASTER_ADDR
elif [ -n "${JOB_COMPLETION_INDEX:-}" ]; then
    # shellcheck disable=SC2153  # NNODES is set by the manifest
    nnodes=$NNODES
    rank=$JOB_COMPLETION_INDEX
    nproc=$NPROC_PER_NODE
    host="$JOB_NAME-0.$SERVICE_NAME"
else
    echo "entrypoint.sh: none of PET_MASTER_ADDR (TrainJob), PET_NNODES (PyTorchJob) or" \
        "JOB_COMPLETION_INDEX (Indexed Job) is set" >&2
    exit 2
fi
# The Torch plugin passes numProcPerNode through: "auto" (its default) or "gpu" mean one process
# per visible GPU, as torchrun reads them; accelerate launch needs the number.
case $nproc in
    auto | gpu)
        asked=$nproc
        nproc=$(python -c 'import torch; print(torch.cuda.device_count())')
        if [ "$nproc" = 0 ]; then
            echo "entrypoint.sh: numProcPerNode=$asked but this pod sees no GPU; set" \
                "the TrainJob's trainer.numProcPerNode" >&2
            exit 2
        fi
        ;;
    *[!0-9]* | '')
        echo "entrypoint.sh: processes per node '$nproc' is not a number" >&2
        exit 2
        ;;
esac
# An elasticPolicy makes the operator set PET_NNODES to MIN:MAX (and PET_MAX_RESTARTS). accelerate
# launch takes one node count, and the global batch is fixed over the world size, so only
# MIN = MAX is run: elasticity here means restarts on a c10d rendezvous, not a changing world.
case $nnodes in
    *:*)
        if [ "${nnodes%%:*}" != "${nnodes##*:}" ]; then
            echo "entrypoint.sh: PET_NNODES=$nnodes: a node range needs torchrun's --nnodes MIN:MAX, which" \
                "accelerate launch cannot pass; set elasticPolicy.minReplicas = maxReplicas" >&2
            exit 2
        fi
        nnodes=${nnodes%%:*}
        ;;
esac

# c10d rendezvous on host:port, so that a failed worker restarts every node's gang (launch/README.md).
# Rank 0 hosts it (is_host: no guessing from DNS, which may not list pod 0 yet); join_timeout: pods
# may start 15 min apart (image pulls). accelerate passes the endpoint itself only for >1 node.
export PET_RDZV_ENDPOINT="$host:$port"
# A restarted gang gets a fresh store instead of the previous attempt's keys (with them the
# restarted workers fail to connect or hang: launch/README.md).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
is_host=0
[ "$rank" != 0 ] || is_host=1

# This launch's id: the trainers file their outcome under it (a restarted container gets a new
# one, so no record of an earlier start is read as this one's).
ARTCLF_LAUNCH_ID="k8s-$(cat /proc/sys/kernel/hostname)-$(date +%s)-$$" # the pod name, in a pod
export ARTCLF_LAUNCH_ID
run= # the run folder (--run DIR or --run=DIR), where the outcomes are
prev=
for arg in "$@"; do
    [ "$prev" != --run ] || run=$arg
    case $arg in --run=*) run=${arg#--run=} ;; esac
    prev=$arg
done

if [ -n "$pending" ]; then
    echo "entrypoint.sh: SIG$pending before the launch: not starting the trainers" >&2
    exit "${RETRY_EXIT_CODE:-143}"
fi
# the child resets the traps: a signal meant for the launcher must not be swallowed by this
# script's handlers in the moment before the exec
(
    trap - TERM INT
    exec ${ACCELERATE:-accelerate} launch --config_file "${ACCELERATE_CONFIG:-launch/multi_node.yaml}" \
        --num_machines "$nnodes" --num_processes "$((nnodes * nproc))" --machine_rank "$rank" \
        --main_process_ip "$host" --main_process_port "$port" \
        --rdzv_backend c10d --rdzv_conf "is_host=$is_host,join_timeout=900" \
        --max_restarts "${MAX_RESTARTS:-${PET_MAX_RESTARTS:-3}}" -m artclf.train "$@"
) &
child=$!
[ -z "$pending" ] || kill "-$pending" "$child" 2>/dev/null || :
while :; do # a trapped signal interrupts `wait` while the launcher still runs: wait again
    rc=0
    wait "$child" || rc=$?
    kill -0 "$child" 2>/dev/null || break
done
trap - TERM INT

recorded() { # recorded CODE: the first record of exit CODE by a trainer of this launch
    for f in "$run/exits/$ARTCLF_LAUNCH_ID"/rank-*-"$1".json; do
        [ -e "$f" ] && echo "$f" && return 0
    done
    return 1
}
code=$rc
if [ "$rc" = 0 ]; then
    exit 0
elif [ -n "$run" ] && f=$(recorded 78); then
    echo "entrypoint.sh: the launcher exited $rc after a permanent error ($f): exit 78, do not retry" >&2
    exit 78
elif [ -n "$run" ] && f=$(recorded 75 || recorded 130); then
    echo "entrypoint.sh: the launcher exited $rc; the trainers saved after a stop request ($f): exit 75"
    code=75
fi
exit "${RETRY_EXIT_CODE:-$code}"
