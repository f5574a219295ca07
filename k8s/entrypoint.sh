#!/bin/sh
# Turn the Kubernetes layout into `accelerate launch` flags; the container's args go to artclf.train.
#   PyTorchJob (training-operator v1): PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, MASTER_ADDR,
#     MASTER_PORT come from the operator.
#   Indexed Job: JOB_COMPLETION_INDEX (from the Job controller) is the machine rank; NNODES,
#     NPROC_PER_NODE, JOB_NAME and SERVICE_NAME come from the manifest; rank 0's stable hostname
#     <job>-0.<headless service> hosts the rendezvous.
# MAX_RESTARTS (default: the operator's PET_MAX_RESTARTS of an elasticPolicy, else 3): how often
# torchrun's agent restarts the gang after a worker fails,
# before the container exits and `restartPolicy: OnFailure` takes over (launch/README.md).
# ACCELERATE names the launcher (tests set it to `echo`).
#
# SIGTERM (eviction, preemption, `kubectl delete`) reaches the launcher: it is exec'ed, so it is
# PID 1. torchrun forwards TERM to the trainers, which save and exit 75, and SIGKILLs them after
# TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (default 30; set in the manifest next to
# terminationGracePeriodSeconds). That variable is torch's own knob (torch/distributed/launcher/
# api.py), so no signal forwarding of our own is needed here.
set -eu

if [ -n "${PET_NNODES:-}" ]; then
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
    echo "entrypoint.sh: neither PET_NNODES (PyTorchJob) nor JOB_COMPLETION_INDEX (Indexed Job) is set" >&2
    exit 2
fi
port=${MASTER_PORT:-29500}
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

exec ${ACCELERATE:-accelerate} launch --config_file "${ACCELERATE_CONFIG:-launch/multi_node.yaml}" \
    --num_machines "$nnodes" --num_processes "$((nnodes * nproc))" --machine_rank "$rank" \
    --main_process_ip "$host" --main_process_port "$port" \
    --rdzv_backend c10d --rdzv_conf "is_host=$is_host,join_timeout=900" \
    --max_restarts "${MAX_RESTARTS:-${PET_MAX_RESTARTS:-3}}" -m artclf.train "$@"
