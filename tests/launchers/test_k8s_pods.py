"""Kubernetes launches without a cluster: the training container of a rendered overlay runs for real
as two "pods" on this host, with the real `accelerate`, on CPU.

Each pod's command, arguments and environment come from the rendered manifests (env, envFrom,
fieldRef, secretKeyRef and `$(VAR)` expansion, as the kubelet does them), plus what the cluster
adds: Kubeflow Trainer's Torch plugin variables for a TrainJob (and the TrainJob's trainer
fields over its runtime's pod), the training-operator's for a PyTorchJob, the Job controller's
JOB_COMPLETION_INDEX for an Indexed Job, and DNS for the head pod's name (here: /etc/hosts, to
loopback). So a manifest change that breaks the launch breaks these tests. What the test changes
is only what points at this machine: the image's working folder is the repository, RUN and
SHARDS are test folders, the port is a free one, and the layout is 2 pods x 1 CPU process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch

from artclf.metrics.classification import classification_metrics
from tests.conftest import REPO, history, plain_predictions
from tests.launchers.test_k8s import first, render
from tests.launchers.test_k8s_entrypoint import TRAINER_PORT, operator_env, trainjob_pods
from tests.support import etchosts, procs
from tests.support.slurmcluster import evidence

pytestmark = pytest.mark.slow

IMAGE_WORKDIR = "/opt/artclf"  # the Dockerfile's WORKDIR: this repository here
TINY_ARGS = ["--arch", "resnet18", "--weights", "none", "--image-size", "48", "--log-every", "1"]


def container_env(container: dict, docs: list[dict], fields: dict[str, str]) -> dict[str, str]:
    """The environment the kubelet gives `container`: envFrom first, env over it; values from
    the rendered ConfigMaps and Secrets (a Secret the overlay leaves to the user gets a fake
    value), fieldRefs from `fields`."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= first(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e["valueFrom"]:
            ref = e["valueFrom"]["secretKeyRef"]
            secrets = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == ref["name"]]
            env[e["name"]] = secrets[0]["stringData"][ref["key"]] if secrets else "test-not-a-secret"
        else:
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def expand(word: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args ($$ escapes; unknown names stay)."""
    return re.sub(r"\$\$|\$\((\w+)\)", lambda m: env.get(m[1], m[0]) if m[1] else "$", word)


def pod(container: dict, env: dict[str, str], run: Path, shards: Path, log: Path, epochs: int = 1) -> dict:
    """procs.spawn arguments for a pod of `container` with `env` (the test's changes applied)."""
    env = env | {"RUN": str(run), "SHARDS": str(shards), "BATCH_SIZE": "16", "WORKERS": "1"}
    env |= {"EPOCHS": str(epochs)}
    env |= {"HOME": str(run.parent / "home"), "TORCH_HOME": str(run.parent / "torch")}
    cmd = [expand(w, env).replace(IMAGE_WORKDIR, str(REPO)) for w in container["command"]]
    args = [expand(w, env) for w in container.get("args", [])]
    system = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # the image's python first
    system |= {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}  # no GPU here
    return {"cmd": [*cmd, *args, *TINY_ARGS], "cwd": REPO, "env": system | env, "log": log}


def pytorchjob_pods(docs: list[dict], port: int) -> list[tuple[dict, dict[str, str]]]:
    """(container, env) of each replica of the PyTorchJob, Master then Workers, with what the
    training-operator adds (tests/launchers/test_k8s.py: operator_env) and the test's port."""
    job = first(docs, "PyTorchJob", "artclf-train")
    pods = []
    for kind in ("Master", "Worker"):
        spec = job["spec"]["pytorchReplicaSpecs"].get(kind, {"replicas": 0})
        for index in range(spec["replicas"]):
            (container,) = spec["template"]["spec"]["containers"]
            env = container_env(container, docs, {}) | operator_env(job, kind, index)
            pods.append((container, env | {"MASTER_PORT": str(port)}))
    return pods


def indexed_job_pods(docs: list[dict]) -> list[tuple[dict, dict[str, str]]]:
    """(container, env) of each index of the Indexed Job, with what the Job controller adds."""
    job = first(docs, "Job", "artclf-train")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    labels = {"metadata.labels['batch.kubernetes.io/job-name']": job["metadata"]["name"]}
    return [
        (container, container_env(container, docs, labels) | {"JOB_COMPLETION_INDEX": str(i)})
        for i in range(job["spec"]["completions"])
    ]


def two_pods_train(tmp_path: Path, shards: Path, pods_for) -> tuple[Path, list[str]]:
    """Run the pods `pods_for(port)` gives together; the run folder and each pod's output."""
    run = tmp_path / "runs" / "k8s"

    def attempt(port: int) -> list[tuple[int | None, str]]:
        pods = pods_for(port)
        assert len(pods) == 2
        logs = [tmp_path / f"pod-{i}-port-{port}.log" for i in range(2)]
        shutil.rmtree(run, ignore_errors=True)  # a retry on another port starts from nothing
        started = [pod(c, env, run, shards, log) for (c, env), log in zip(pods, logs, strict=True)]
        return procs.run_together(started, 420)

    results = procs.on_free_port(attempt)
    outs = [out for _, out in results]
    tails = "\n".join(f"--- pod {i}\n{out[-4000:]}" for i, out in enumerate(outs))
    assert [code for code, _ in results] == [0, 0], tails
    return run, outs


@pytest.fixture
def say(pytestconfig):
    return evidence(pytestconfig, "k8s")


def assert_trained_once_by_two(
    run: Path, shards: Path, outs: list[str], say, layout: str, epochs: int = 1
) -> None:
    """One world of 2 (one rank per pod), each epoch once, one model.pt whose metrics a plain
    single-process loop reproduces."""
    config = json.loads((run / "config.json").read_text())
    assert config["derived"]["world_size"] == 2
    ranks = config["placement"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and len({r["pid"] for r in ranks}) == 2
    say(f"{layout}: 2 pods, ranks " + ", ".join(f"{r['rank']}@{r['node']} (pid {r['pid']})" for r in ranks))
    assert [r["epoch"] for r in history(run)] == list(range(1, epochs + 1))
    # the main process (global rank 0) is on whichever pod joined the c10d rendezvous first
    (main,) = [out for out in outs if "2 process(es) on cpu" in out]
    assert "done: best val macro F1" in main
    got = json.loads((run / "val_metrics.json").read_text())
    assert config["derived"]["mixed_precision"] == "bf16"  # launch/multi_node.yaml's, as on GPUs
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what Accelerate makes of bf16 on a CPU
        ref = classification_metrics(*plain_predictions(run / "model.pt", shards))
    assert got["confusion_matrix"] == ref["confusion_matrix"] and got["accuracy"] == ref["accuracy"]
    assert len(list(run.glob("model.pt"))) == 1 and not list(run.glob("*.tmp*"))


def test_pytorchjob_two_pods_train(shards, tmp_path, say):
    """The legacy PyTorchJob (prod-pytorchjob) shrunk to Master + 1 Worker x 1 process (its replica
    count and nprocPerNode: the layout of this machine), everything else as rendered."""
    docs = render("k8s/overlays/prod-pytorchjob")
    job = first(docs, "PyTorchJob", "artclf-train")
    job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = 1
    job["spec"]["nprocPerNode"] = "1"
    head = f"{job['metadata']['name']}-master-0"  # the Master's Service name
    with etchosts.names({head: "127.0.0.1"}):
        run, outs = two_pods_train(tmp_path, shards, lambda port: pytorchjob_pods(docs, port))
    assert_trained_once_by_two(run, shards, outs, say, "PyTorchJob (Master + 1 Worker)")


def test_indexed_job_two_pods_train(shards, tmp_path, say):
    """prod-indexed's Job with completions = parallelism = NNODES = 2 and NPROC_PER_NODE = 1;
    pod 0's stable name <job>-0.<service> resolves to loopback."""
    docs = render("k8s/overlays/prod-indexed")
    job = first(docs, "Job", "artclf-train")
    job["spec"]["completions"] = job["spec"]["parallelism"] = 2
    (container,) = job["spec"]["template"]["spec"]["containers"]
    layout = {"NNODES": "2", "NPROC_PER_NODE": "1"}
    for e in container["env"]:
        e.update({"value": layout[e["name"]]} if e["name"] in layout else {})
    head = f"{job['metadata']['name']}-0.{job['spec']['template']['spec']['subdomain']}"

    def pods(port: int) -> list[tuple[dict, dict[str, str]]]:
        return [(c, env | {"MASTER_PORT": str(port)}) for c, env in indexed_job_pods(docs)]

    with etchosts.names({head: "127.0.0.1"}):
        run, outs = two_pods_train(tmp_path, shards, pods)
    assert_trained_once_by_two(run, shards, outs, say, "Indexed Job (2 completions)")


def test_trainjob_pod_evicted_and_replaced(shards, tmp_path, say):
    """prod's TrainJob (Kubeflow Trainer v2) at 2 nodes x 1 process, its pods built as the Trainer
    builds them (test_k8s_entrypoint.trainjob_pods). An eviction's TERM reaches pod 1's PID 1
    mid-epoch: the trainers of both pods stop at the same step and save; pod 1's container
    exits 75 (the code the runtime's podFailurePolicy ignores: the pod is replaced, nothing
    counted), while pod 0's torchrun agent restarts its trainer in place, to wait in the c10d
    rendezvous. The replacement pod 1 joins it, the gang resumes from the saved step and
    finishes: the epoch trained once, one model, the metrics of a plain reference."""
    docs = render("k8s/overlays/prod")
    trainer = first(docs, "TrainJob", "artclf-train")["spec"]["trainer"]
    trainer["numNodes"], trainer["numProcPerNode"] = 2, 1
    run = tmp_path / "runs" / "k8s"

    def pod_of(port: int, i: int, attempt: str) -> dict:
        c, plugin = trainjob_pods(docs)[i]
        assert plugin["PET_MASTER_PORT"] == str(TRAINER_PORT)
        env = container_env(c, docs, {}) | plugin | {"PET_MASTER_PORT": str(port)}
        started = pod(c, env, run, shards, tmp_path / f"{attempt}-pod-{i}-port-{port}.log")
        return started | {"cmd": [*started["cmd"], "--save-every", "2"]}

    def evicted_and_replaced(port: int) -> list[tuple[int | None, str]]:
        shutil.rmtree(run, ignore_errors=True)  # a retry on another port starts from nothing
        pods = [procs.spawn(**pod_of(port, i, "first")) for i in range(2)]
        try:
            procs.wait_for(lambda: list((run / "state").glob("step-*")), 300, "a saved step", pods[1])
            pods[1].send_signal(signal.SIGTERM)  # the kubelet: TERM to the evicted pod's PID 1
            pods[1].wait(timeout=300)
            assert pods[0].poll() is None, procs.output(pods[0])[-3000:]  # pod 0 restarts in place
            pods.append(procs.spawn(**pod_of(port, 1, "replacement")))
            for p in (pods[0], pods[2]):
                p.wait(timeout=420)
            return [(p.returncode, procs.output(p)) for p in pods]
        finally:
            for p in pods:
                procs.stop_tree(p)

    with etchosts.names({"artclf-train-node-0-0.artclf-train": "127.0.0.1"}):
        results = procs.on_free_port(evicted_and_replaced)
    (head, out0), (evicted, out1), (replaced, _) = results
    tails = "\n".join(f"--- pod {i}\n{out[-4000:]}" for i, (_, out) in enumerate(results))
    assert (head, evicted, replaced) == (0, 75, 0), tails
    assert "the trainers saved after a stop request" in out1, tails
    both = out0 + out1 + results[2][1]  # the main process may be on either pod, in each start
    saved = re.search(r"preempted at step (\d+) ", both)
    assert saved and re.search(rf"resuming from \S+: epoch \d+, step {saved[1]}\b", both), tails
    outs = [out0, results[2][1]]
    assert_trained_once_by_two(run, shards, outs, say, "TrainJob (2 nodes), pod 1 evicted and replaced")
