#!/bin/sh
# The whole pipeline on Kubernetes, step by step: each step is a `kubectl apply -k`, and the next
# starts only once the previous one has succeeded (a failed step stops the script: the steps
# after it are never applied).
#
#   k8s/pipeline.sh [TRAIN_OVERLAY]       # default k8s/overlays/prod
#
#   1 k8s/stages/ingest        Job          /data/best-artworks -> /data/work (work volume)
#   2 k8s/stages/dedup         Indexed Job  features in parts
#   3 k8s/stages/dedup-merge   Job          groups
#   4 k8s/stages/split         Job          train/val/test
#   5 k8s/stages/shard         Indexed Job  shards in parts -> SHARDS (the ConfigMap's)
#   6 k8s/stages/shard-merge   Job          the index + verify
#   7 TRAIN_OVERLAY            PyTorchJob (or Indexed Job)  -> RUN/model.pt
#   8 k8s/stages/evaluate      Job          RUN/eval-test/ (test split)
#
# NAMESPACE (default: the train overlay's) is where every step runs; the stage directories carry
# no namespace. TIMEOUT (seconds, default 86400) bounds each wait; KUBECTL names the client (default kubectl).
# A step that already succeeded (a rerun after a failure) is applied again and passes at once:
# every stage resumes from what is on the volumes.
set -eu

KUBECTL=${KUBECTL:-kubectl}
TRAIN=${1:-k8s/overlays/prod}
TIMEOUT=${TIMEOUT:-86400}
[ -f k8s/pipeline.sh ] || { echo "k8s/pipeline.sh: run it from the repository root" >&2; exit 2; }
[ -f "$TRAIN/kustomization.yaml" ] || { echo "k8s/pipeline.sh: $TRAIN: no kustomization.yaml" >&2; exit 2; }
rendered=$($KUBECTL kustomize "$TRAIN") # read once: its namespace and the kind of its job
if [ -z "${NAMESPACE:-}" ]; then
    NAMESPACE=$(printf '%s\n' "$rendered" | sed -n 's/^  namespace: //p' | sed -n 1p)
fi
[ -n "$NAMESPACE" ] || { echo "k8s/pipeline.sh: set NAMESPACE (the overlay names none)" >&2; exit 2; }

# wait_for KIND/NAME OK FAILED: poll the object's conditions until OK or FAILED is True, at most
# TIMEOUT seconds (`kubectl wait` waits for one condition only: a failed job would hold it).
wait_for() {
    echo "k8s/pipeline.sh: waiting for $1 ($2)"
    deadline=$(($(date +%s) + TIMEOUT))
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
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "k8s/pipeline.sh: $1 not $2 after $TIMEOUT s (TIMEOUT): stopping here" >&2
            exit 1
        fi
        sleep "${POLL_SECONDS:-10}"
    done
}

step() { # step DIR KIND/NAME OK FAILED
    echo "k8s/pipeline.sh: kubectl apply -k $1 -n $NAMESPACE"
    $KUBECTL apply -n "$NAMESPACE" -k "$1"
    wait_for "$2" "$3" "$4"
}

train_kind=$(printf '%s\n' "$rendered" | sed -n 's/^kind: \(PyTorchJob\)$/\1/p' | sed -n 1p)
step k8s/stages/ingest job/artclf-ingest Complete Failed
step k8s/stages/dedup job/artclf-dedup Complete Failed
step k8s/stages/dedup-merge job/artclf-dedup-merge Complete Failed
step k8s/stages/split job/artclf-split Complete Failed
step k8s/stages/shard job/artclf-shard Complete Failed
step k8s/stages/shard-merge job/artclf-shard-merge Complete Failed
if [ "$train_kind" = PyTorchJob ]; then
    step "$TRAIN" pytorchjob/artclf-train Succeeded Failed
else
    step "$TRAIN" job/artclf-train Complete Failed
fi
step k8s/stages/evaluate job/artclf-evaluate Complete Failed
echo "k8s/pipeline.sh: done; the test scores are in RUN/eval-test/ on the runs volume (RUN: ConfigMap artclf-train)"
