#!/bin/sh
# The whole pipeline on Kubernetes, step by step, from a namespace that holds only the S3 Secret
# and the data set (k8s/README.md): each step is a `kubectl apply -k`, and the next starts only
# once the previous one has succeeded (a failed step stops the script: the steps after it are
# never applied).
#
#   k8s/pipeline.sh [TRAIN_OVERLAY]       # default k8s/overlays/prod (TrainJob)
#
#   0 k8s/base/shared          PVCs, ConfigMap artclf-train, TensorBoard (applied, not waited for)
#   1 k8s/stages/weights       Job          pretrained weights -> TORCH_HOME (/runs/.torch)
#   2 k8s/stages/ingest        Job          /data/best-artworks -> /data/work (work volume)
#   3 k8s/stages/dedup         Indexed Job  features in parts
#   4 k8s/stages/dedup-pairs   Job          candidate pairs, split into verification parts
#   5 k8s/stages/dedup-verify  Indexed Job  the candidates verified in parts
#   6 k8s/stages/dedup-merge   Job          groups
#   7 k8s/stages/split         Job          train/val/test
#   8 k8s/stages/shard         Indexed Job  shards in parts -> SHARDS (the ConfigMap's)
#   9 k8s/stages/shard-merge   Job          the index (init container), then verify every shard
#  10 TRAIN_OVERLAY            TrainJob (or the legacy PyTorchJob, or the Indexed Job) -> RUN/model.pt
#  11 k8s/stages/evaluate      Job          RUN/eval-test/ (test split)
#
# NAMESPACE (default: the train overlay's) is where every step runs; the stage directories carry
# no namespace. TIMEOUT (seconds, default 86400) bounds each wait. PENDING_TIMEOUT (seconds,
# default 900) bounds how long a step's pod may stay Pending (unschedulable: no GPU, no PVC; or an
# image that does not pull): past it the step fails with the pod's events. A job that Kueue holds
# suspended has no pods yet, and waits up to TIMEOUT. KUBECTL names the client (default kubectl).
# A step that already succeeded (a rerun after a failure) is applied again and passes at once:
# every stage resumes from what is on the volumes.
set -eu

KUBECTL=${KUBECTL:-kubectl}
TRAIN=${1:-k8s/overlays/prod}
TIMEOUT=${TIMEOUT:-86400}
PENDING_TIMEOUT=${PENDING_TIMEOUT:-900}
[ -f k8s/pipeline.sh ] || { echo "k8s/pipeline.sh: run it from the repository root" >&2; exit 2; }
[ -f "$TRAIN/kustomization.yaml" ] || { echo "k8s/pipeline.sh: $TRAIN: no kustomization.yaml" >&2; exit 2; }
rendered=$($KUBECTL kustomize "$TRAIN") # read once: its namespace and the kind of its job
if [ -z "${NAMESPACE:-}" ]; then
    NAMESPACE=$(printf '%s\n' "$rendered" | sed -n 's/^  namespace: //p' | sed -n 1p)
fi
[ -n "$NAMESPACE" ] || { echo "k8s/pipeline.sh: set NAMESPACE (the overlay names none)" >&2; exit 2; }

# fail_if_stuck SELECTOR: exit 1 once some pod of the step has been Pending for PENDING_TIMEOUT
# seconds without a break, with its events (FailedScheduling says which resource is missing).
pending_since=
fail_if_stuck() {
    pending=$($KUBECTL get -n "$NAMESPACE" pods -l "$1" \
        -o jsonpath='{range .items[?(@.status.phase=="Pending")]}{.metadata.name}{" "}{end}')
    if [ -z "$pending" ]; then
        pending_since=
        return 0
    fi
    now=$(date +%s)
    [ -n "$pending_since" ] || pending_since=$now
    if [ $((now - pending_since)) -ge "$PENDING_TIMEOUT" ]; then
        pod=${pending%% *}
        echo "k8s/pipeline.sh: pod $pod Pending for $PENDING_TIMEOUT s (PENDING_TIMEOUT): stopping here;" \
            "its events (kubectl describe -n $NAMESPACE pod/$pod):" >&2
        $KUBECTL describe -n "$NAMESPACE" "pod/$pod" | sed -n '/^Events:/,$p' >&2
        exit 1
    fi
}

# wait_for KIND/NAME OK FAILED SELECTOR: poll the object's conditions until OK or FAILED is True,
# at most TIMEOUT seconds (`kubectl wait` waits for one condition only: a failed job would hold
# it), and its pods (SELECTOR) for one stuck Pending.
wait_for() {
    echo "k8s/pipeline.sh: waiting for $1 ($2)"
    deadline=$(($(date +%s) + TIMEOUT))
    pending_since=
    while :; do
        true_conditions=$($KUBECTL get -n "$NAMESPACE" "$1" \
            -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}')
        case " $true_conditions " in
            *" $2 "*)
                echo "k8s/pipeline.sh: $1 $2"
                return 0
                ;;
            *" $3 "*)
                echo "k8s/pipeline.sh: $1 $3: the steps after it are not applied;" \
                    "see kubectl describe -n $NAMESPACE $1, and kubectl logs" >&2
                exit 1
                ;;
        esac
        fail_if_stuck "$4"
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "k8s/pipeline.sh: $1 not $2 after $TIMEOUT s (TIMEOUT): stopping here" >&2
            exit 1
        fi
        sleep "${POLL_SECONDS:-10}"
    done
}

apply() {
    echo "k8s/pipeline.sh: kubectl apply -k $1 -n $NAMESPACE"
    $KUBECTL apply -n "$NAMESPACE" -k "$1"
}

stage() { # stage NAME: the Job artclf-NAME of k8s/stages/NAME
    apply "k8s/stages/$1"
    wait_for "job/artclf-$1" Complete Failed "batch.kubernetes.io/job-name=artclf-$1"
}

apply k8s/base/shared
for s in weights ingest dedup dedup-pairs dedup-verify dedup-merge split shard shard-merge; do
    stage "$s"
done
apply "$TRAIN"
if printf '%s\n' "$rendered" | grep -qx 'kind: TrainJob'; then
    # the JobSet, and so the label of its pods, carries the TrainJob's name
    wait_for trainjob/artclf-train Complete Failed jobset.sigs.k8s.io/jobset-name=artclf-train
elif printf '%s\n' "$rendered" | grep -qx 'kind: PyTorchJob'; then
    wait_for pytorchjob/artclf-train Succeeded Failed training.kubeflow.org/job-name=artclf-train
else
    wait_for job/artclf-train Complete Failed batch.kubernetes.io/job-name=artclf-train
fi
stage evaluate
echo "k8s/pipeline.sh: done; the test scores are in RUN/eval-test/ on the runs volume (RUN: ConfigMap artclf-train)"
