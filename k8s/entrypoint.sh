#!/bin/sh
# Turn the Kubernetes layout into `accelerate launch` flags; the container's args go to artclf.train.
#   PyTorchJob (training-operator v1): PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, MASTER_ADDR,
#     MASTER_PORT come from the operator.
#   Indexed Job: JOB_COMPLETION_INDEX (from the Job controller) is the machine rank; NNODES,
#     NPROC_PER_NODE, JOB_NAME and SERVICE_NAME come from the manifest; rank 0's stable hostname
#     <job>-0.<headless service> is the main process.
# ACCELERATE names the launcher (tests set it to `echo`).
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

exec ${ACCELERATE:-accelerate} launch --config_file "${ACCELERATE_CONFIG:-launch/multi_node.yaml}" \
    --num_machines "$nnodes" --num_processes "$((nnodes * nproc))" --machine_rank "$rank" \
    --main_process_ip "$host" --main_process_port "${MASTER_PORT:-29500}" \
    -m artclf.train "$@"
