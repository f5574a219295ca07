"""k8s/entrypoint.sh: the cluster's layout (PyTorchJob, TrainJob, Indexed Job) becomes
`accelerate launch` flags; the launcher runs as a child with TERM forwarded; the container's exit
code tells a saved stop, a permanent error and a failure apart."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artclf.config import parse
from artclf.train.config import TrainConfig
from tests.conftest import REPO
from tests.launchers.test_k8s import K8S, first, render, trainjob_pod
from tests.support import procs

# ---- k8s/entrypoint.sh: cluster layout -> accelerate launch flags ----------------------------


def entrypoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "ACCELERATE": "echo"}  # print the command instead of launching
    return subprocess.run(
        ["sh", str(K8S / "entrypoint.sh"), *args], env={**base, **env}, capture_output=True, text=True
    )


def launch_flags(res: subprocess.CompletedProcess) -> dict[str, str]:
    assert res.returncode == 0, res.stderr
    words = res.stdout.split()
    assert words[0] == "launch" and words[words.index("-m") + 1] == "artclf.train"
    flags = words[1 : words.index("-m")]
    return dict(zip(flags[::2], flags[1::2], strict=True))


@pytest.mark.parametrize("nnodes", [1, 2, 3, 4])
def test_indexed_job_ranks(nnodes):
    """Env as the rendered Indexed Job sets it (JOB_NAME from the job-name label) for every index."""
    job = first(render("k8s/base/indexed-job"), "Job", "artclf-train")
    c = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    env |= {"NNODES": str(nnodes), "NPROC_PER_NODE": "8", "JOB_NAME": job["metadata"]["name"]}
    seen = []
    for index in range(nnodes):
        flags = launch_flags(entrypoint({**env, "JOB_COMPLETION_INDEX": str(index)}, "--run", "/runs/x"))
        assert flags["--config_file"] == "launch/multi_node.yaml"
        assert flags["--num_machines"] == str(nnodes) and flags["--num_processes"] == str(8 * nnodes)
        assert flags["--main_process_ip"] == "artclf-train-0.artclf-train"  # pod 0 behind the service
        assert flags["--main_process_port"] == env["MASTER_PORT"]
        assert flags["--rdzv_conf"] == f"is_host={int(index == 0)},join_timeout=900"  # pod 0 hosts c10d
        seen.append(int(flags["--machine_rank"]))
    assert seen == list(range(nnodes))


TRAINER_PORT = 29400  # kubeflow/trainer pkg/constants: ContainerTrainerPort


def trainjob_pods(docs: list[dict]) -> list[tuple[dict, dict[str, str]]]:
    """(container, what the cluster adds to its environment) of each node of the TrainJob in DOCS,
    as Kubeflow Trainer v2 builds the pods (read in kubeflow/trainer's source,
    pkg/runtime/framework/plugins/torch/torch.go, EnforceMLPolicy): the runtime's pod with the
    TrainJob's trainer fields over its container `node` (test_k8s.trainjob_pod), and the Torch
    plugin's PET_NNODES (numNodes), PET_NPROC_PER_NODE (numProcPerNode), PET_NODE_RANK (a
    fieldRef to the Job completion index), PET_MASTER_ADDR (pod 0 of the JobSet's headless
    service, <trainjob>-node-0-0.<trainjob>) and PET_MASTER_PORT (29400); the Job controller
    adds JOB_COMPLETION_INDEX, as it does in any Indexed Job."""
    job = first(docs, "TrainJob", "artclf-train")
    ref, trainer = job["spec"]["runtimeRef"], job["spec"]["trainer"]
    runtime = first(docs, ref.get("kind", "ClusterTrainingRuntime"), ref["name"])
    pod, _ = trainjob_pod(copy.deepcopy(docs))
    container = next(c for c in pod["containers"] if c["name"] == "node")
    policy = runtime["spec"]["mlPolicy"]
    nnodes = trainer.get("numNodes", policy.get("numNodes", 1))
    nproc = str(trainer.get("numProcPerNode", policy["torch"].get("numProcPerNode", "auto")))
    name = job["metadata"]["name"]
    plugin = {"PET_NNODES": str(nnodes), "PET_NPROC_PER_NODE": nproc}
    plugin |= {"PET_MASTER_ADDR": f"{name}-node-0-0.{name}", "PET_MASTER_PORT": str(TRAINER_PORT)}
    return [
        (container, plugin | {"PET_NODE_RANK": str(i), "JOB_COMPLETION_INDEX": str(i)}) for i in range(nnodes)
    ]


@pytest.mark.parametrize("nnodes", [1, 2, 4])
def test_trainjob_ranks(nnodes):
    """prod's TrainJob (Kubeflow Trainer v2) at NNODES nodes: every pod launches the same world
    around pod 0 of the JobSet, as its own machine rank, with 8 processes per node."""
    docs = render("k8s/overlays/prod")
    first(docs, "TrainJob", "artclf-train")["spec"]["trainer"]["numNodes"] = nnodes
    seen = []
    for container, env in trainjob_pods(docs):
        assert container["command"] == ["sh", "/opt/artclf/k8s/entrypoint.sh"]
        flags = launch_flags(entrypoint(env, "--run", "/runs/x"))
        assert flags["--num_machines"] == str(nnodes) and flags["--num_processes"] == str(8 * nnodes)
        assert flags["--main_process_ip"] == "artclf-train-node-0-0.artclf-train"
        assert flags["--main_process_port"] == str(TRAINER_PORT)
        assert flags["--rdzv_conf"] == f"is_host={int(env['PET_NODE_RANK'] == '0')},join_timeout=900"
        seen.append(int(flags["--machine_rank"]))
    assert seen == list(range(nnodes))


def test_entrypoint_refuses_auto_processes_without_a_gpu():
    """numProcPerNode "auto" (the Torch plugin's default) means one process per GPU; a pod that
    sees none is told so, not launched with 0 processes."""
    env = {"PET_NNODES": "1", "PET_NODE_RANK": "0", "PET_NPROC_PER_NODE": "auto", "PET_MASTER_ADDR": "m"}
    env |= {"CUDA_VISIBLE_DEVICES": ""}
    res = entrypoint(env | {"PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"})
    assert res.returncode == 2 and "numProcPerNode=auto but this pod sees no GPU" in res.stderr


@pytest.mark.parametrize("nnodes", [1, 2, 3, 4])
def test_pytorchjob_ranks(nnodes):
    """The variables training-operator v1 sets (Master: node rank 0, Worker i: i + 1)."""
    seen = []
    for rank in range(nnodes):
        env = {"PET_NNODES": str(nnodes), "PET_NODE_RANK": str(rank), "PET_NPROC_PER_NODE": "8"}
        env |= {"MASTER_ADDR": "artclf-train-master-0", "MASTER_PORT": "23456"}
        res = entrypoint(env, "--shards", "s3://b/p", "--run", "/runs/x")
        flags = launch_flags(res)
        assert res.stdout.split()[-4:] == ["--shards", "s3://b/p", "--run", "/runs/x"]  # args pass through
        assert flags["--num_machines"] == str(nnodes) and flags["--num_processes"] == str(8 * nnodes)
        assert (flags["--main_process_ip"], flags["--main_process_port"]) == (
            "artclf-train-master-0",
            "23456",
        )
        seen.append(int(flags["--machine_rank"]))
    assert seen == list(range(nnodes))


OPERATOR_PORT = 23456  # training-operator v1's default for the port "pytorchjob-port"


def operator_env(job: dict, kind: str, index: int) -> dict[str, str]:
    """What training-operator v1 (>= 1.7) adds to the environment of replica `kind` `index` of a
    PyTorchJob: pkg/controller.v1/pytorch/envvar.go (setPodEnv), master.go and elastic.go."""
    name, specs = job["metadata"]["name"], job["spec"]["pytorchReplicaSpecs"]
    replicas = sum(s["replicas"] for s in specs.values())
    nproc = job["spec"].get("nprocPerNode", "auto")
    rank = index + (kind == "Worker")
    env = {
        "PYTHONUNBUFFERED": "0",
        "MASTER_PORT": str(OPERATOR_PORT),
        "MASTER_ADDR": f"{name}-master-0",
        "WORLD_SIZE": str(replicas * (int(nproc) if nproc.isdigit() else 1)),
        "RANK": str(rank),
        "PET_NPROC_PER_NODE": nproc,
        "PET_NODE_RANK": str(rank),
    }
    elastic = job["spec"].get("elasticPolicy")
    if elastic is None:
        return env | {"PET_NNODES": str(replicas)}
    env["PET_RDZV_ENDPOINT"] = (
        f"{elastic.get('rdzvHost', f'{name}-worker-0')}:{elastic.get('rdzvPort', OPERATOR_PORT)}"
    )
    env["PET_RDZV_BACKEND"] = elastic.get("rdzvBackend", "c10d")
    if "minReplicas" in elastic or "maxReplicas" in elastic:
        env["PET_NNODES"] = f"{elastic['minReplicas']}:{elastic['maxReplicas']}"
    else:
        env["PET_NNODES"] = str(specs["Worker"]["replicas"])
    if "maxRestarts" in elastic:
        env["PET_MAX_RESTARTS"] = str(elastic["maxRestarts"])
    return env


def test_elastic_overlay_restarts_a_fixed_world():
    """prod-elastic: c10d, minReplicas = maxReplicas = every replica, and the entrypoint turns the
    operator's PET_NNODES=MIN:MAX and PET_MAX_RESTARTS into a fixed node count and the restarts."""
    job = first(render("k8s/overlays/prod-elastic"), "PyTorchJob", "artclf-train")
    replicas = sum(s["replicas"] for s in job["spec"]["pytorchReplicaSpecs"].values())
    policy = job["spec"]["elasticPolicy"]
    assert policy["rdzvBackend"] == "c10d" and policy["minReplicas"] == policy["maxReplicas"] == replicas
    assert policy["maxRestarts"] >= 1
    for kind, index in (("Master", 0), ("Worker", replicas - 2)):
        env = operator_env(job, kind, index)
        assert env["PET_NNODES"] == f"{replicas}:{replicas}"
        flags = launch_flags(entrypoint(env, "--run", "/runs/x"))
        assert flags["--num_machines"] == str(replicas)
        assert flags["--num_processes"] == str(replicas * int(job["spec"]["nprocPerNode"]))
        assert flags["--max_restarts"] == str(policy["maxRestarts"])
        assert flags["--machine_rank"] == env["RANK"] and flags["--main_process_ip"] == env["MASTER_ADDR"]


def test_entrypoint_refuses_a_node_range():
    env = {"PET_NNODES": "2:4", "PET_NODE_RANK": "0", "PET_NPROC_PER_NODE": "8", "MASTER_ADDR": "m-0"}
    res = entrypoint(env)
    assert res.returncode == 2 and "minReplicas = maxReplicas" in res.stderr


def test_entrypoint_restarts_and_rendezvous(tmp_path):
    """--max_restarts (MAX_RESTARTS, default 3) on a c10d rendezvous that the node of rank 0
    hosts, and the variables torchrun reads (launch/README.md: why each is needed)."""
    stub = tmp_path / "accelerate"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\nenv | grep -E "^(PET_RDZV|TORCH)_" | sort\n')
    stub.chmod(0o755)
    layout = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "8", "MASTER_ADDR": "m-0", "MASTER_PORT": "23456"}
    for rank, env in [(0, {}), (1, {"MAX_RESTARTS": "0"})]:
        res = entrypoint({**layout, "PET_NODE_RANK": str(rank), "ACCELERATE": str(stub), **env})
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        flags = dict(zip(lines[1 : lines.index("-m") : 2], lines[2 : lines.index("-m") : 2], strict=True))
        assert flags["--rdzv_backend"] == "c10d"  # a flag: accelerate ignores the yaml's rdzv_backend
        assert flags["--rdzv_conf"] == f"is_host={1 - rank},join_timeout=900"
        assert flags["--max_restarts"] == ("3" if rank == 0 else "0")
        assert lines[-2:] == ["PET_RDZV_ENDPOINT=m-0:23456", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"]


def test_entrypoint_refuses_an_unknown_layout():
    res = entrypoint({})
    assert res.returncode == 2 and "JOB_COMPLETION_INDEX" in res.stderr


# A stand-in for artclf.train, shadowing the package (the current folder comes first on sys.path
# of `python -m`): one all-reduce, then the first rank 1 to get here dies once (exit 3), then a
# second all-reduce over the whole world and a row per rank. A hung collective gives up after 60 s.
DIES_ONCE = """
import datetime, json, os, sys
import torch, torch.distributed as dist
out = sys.argv[sys.argv.index("--run") + 1]
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
t = torch.ones(1)
dist.all_reduce(t)
if dist.get_rank() == 1 and not os.path.exists(os.path.join(out, "died")):
    open(os.path.join(out, "died"), "w").close()
    os._exit(3)
t = torch.ones(1)
dist.all_reduce(t)
row = dict(rank=dist.get_rank(), world=dist.get_world_size(), sum=t.item(),
           attempt=int(os.environ["TORCHELASTIC_RESTART_COUNT"]))
with open(os.path.join(out, f"{dist.get_rank()}.json"), "w") as f:
    json.dump(row, f)
dist.barrier()  # no rank tears down while another still talks to it
dist.destroy_process_group()  # else gloo may abort at exit (SIGABRT: a failure, one more round)
"""


def stand_in_trainer(tmp_path, source: str):
    """A folder to run entrypoint.sh from, in which `-m artclf.train` runs SOURCE."""
    (tmp_path / "cwd" / "artclf").mkdir(parents=True)
    (tmp_path / "cwd" / "artclf" / "__init__.py").write_text("")
    (tmp_path / "cwd" / "artclf" / "train.py").write_text(source)
    (tmp_path / "out").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE", "PET_", "TORCH"))}
    env |= {
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "PATH": f"{os.path.dirname(sys.executable)}:{env['PATH']}",
    }
    env |= {"ACCELERATE_CONFIG": str(REPO / "launch" / "multi_node.yaml")}
    return tmp_path / "cwd", tmp_path / "out", env


@pytest.mark.slow
def test_entrypoint_restarts_the_gang_after_a_worker_dies(tmp_path):
    """Two "nodes" on this host run entrypoint.sh for real: a worker of node 1 dies, its agent
    restarts it, node 0's agent sees the new rendezvous round and restarts its worker too, and the
    world of 2 forms again. (With the static rendezvous, or c10d sharing the agent's store, the
    restarted workers often read the previous attempt's addresses and fail or hang: launch/README.md.)"""
    cwd, out, env = stand_in_trainer(tmp_path, DIES_ONCE)
    logs = [tmp_path / "node-0.log", tmp_path / "node-1.log"]

    def two_nodes(port: int) -> list[tuple[int | None, str]]:
        for f in [*out.iterdir(), *logs]:  # a retry on another port starts from nothing
            f.unlink(missing_ok=True)
        cmd = ["sh", str(K8S / "entrypoint.sh"), "--run", str(out)]
        nodes = []
        for rank in (0, 1):
            layout = {"PET_NNODES": "2", "PET_NODE_RANK": str(rank), "PET_NPROC_PER_NODE": "1"}
            layout |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "LOGLEVEL": "INFO"}
            nodes.append({"cmd": cmd, "cwd": cwd, "env": {**env, **layout}, "log": logs[rank]})
        return procs.run_together(nodes, timeout=300)

    results = procs.on_free_port(two_nodes)
    assert [rc for rc, _ in results] == [0, 0], "\n".join(
        f"--- {f.name}\n{f.read_text()[-6000:]}" for f in logs
    )
    rows = sorted((json.loads(p.read_text()) for p in out.glob("*.json")), key=lambda r: r["rank"])
    assert (out / "died").exists()
    assert [(r["rank"], r["world"], r["sum"]) for r in rows] == [(0, 2, 2.0), (1, 2, 2.0)]
    assert max(r["attempt"] for r in rows) >= 1  # the node whose worker died used a restart
    # what the permanent-error test below must not see (LOGLEVEL=INFO in both)
    assert any("will restart worker group" in out for _, out in results)


# Stand-in trainer for SIGTERM: saving takes 4 s, then exit 75 (artclf/train/preemption.py); it stops
# by itself when its launcher is gone.
SAVES_ON_TERM = """
import os, signal, sys, time
out = sys.argv[sys.argv.index("--run") + 1]
parent = os.getppid()
def save(signum, frame):
    time.sleep(4)
    open(os.path.join(out, f"saved-{os.getpid()}"), "w").close()
    exits = os.path.join(out, "exits", os.environ["ARTCLF_LAUNCH_ID"])  # as artclf/train/outcome.py
    os.makedirs(exits, exist_ok=True)
    open(os.path.join(exits, f"rank-{os.environ['RANK']}-75.json"), "w").close()
    os._exit(75)
signal.signal(signal.SIGTERM, save)
open(os.path.join(out, f"ready-{os.getpid()}"), "w").close()
while os.getppid() == parent:
    time.sleep(0.1)
"""


@pytest.mark.slow
@pytest.mark.parametrize("shutdown_timeout, saved", [("1", 0), ("30", 2)])
def test_sigterm_leaves_the_trainers_the_shutdown_timeout(tmp_path, shutdown_timeout, saved):
    """The kubelet's TERM goes to PID 1, entrypoint.sh, which forwards it to the launcher;
    torchrun forwards it and SIGKILLs the trainers TORCH_ELASTIC_SHUTDOWN_TIMEOUT s later (the
    manifests set 570 s). Pins torch's variable: a 4 s save survives a 30 s timeout and is cut
    by a 1 s one; the container exits 75 only for the save."""
    cwd, out, env = stand_in_trainer(tmp_path, SAVES_ON_TERM)
    layout = {"PET_NNODES": "1", "PET_NODE_RANK": "0", "PET_NPROC_PER_NODE": "2"}
    layout |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(procs.free_port())}
    layout |= {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": shutdown_timeout}
    cmd = ["sh", str(K8S / "entrypoint.sh"), "--run", str(out)]
    with procs.running(cmd, cwd=cwd, env={**env, **layout}) as p:
        procs.wait_for(lambda: len(list(out.glob("ready-*"))) == 2, 120, "2 trainers ready", p)
        p.send_signal(signal.SIGTERM)  # to the script alone, as the kubelet sends it to PID 1
        code = p.wait(timeout=120)
    assert len(list(out.glob("saved-*"))) == saved, procs.output(p)[-3000:]
    # saved: 75 (retry, uncounted); cut: the launcher's own failure (torchrun re-raises the TERM)
    assert (code == 75) if saved else (code not in (0, 75, 78)), (code, procs.output(p)[-3000:])


# ---- exit codes: what the trainers recorded -> what the job's failure policy sees ------------

# A stand-in launcher: files a record for each code in $RECORDS under this launch's id (as
# artclf/train/outcome.py does), one under another launch's id (an earlier start: never read),
# and exits $LAUNCHER_RC.
RECORDING_LAUNCHER = """#!/bin/sh
mkdir -p "$RUN_DIR/exits/$ARTCLF_LAUNCH_ID" "$RUN_DIR/exits/an-earlier-start"
echo '{}' > "$RUN_DIR/exits/an-earlier-start/rank-0-78.json"
rank=0
for code in $RECORDS; do
    echo '{}' > "$RUN_DIR/exits/$ARTCLF_LAUNCH_ID/rank-$rank-$code.json"
    rank=$((rank + 1))
done
exit "$LAUNCHER_RC"
"""

# case: (the launcher's exit code, the trainers' records, RETRY_EXIT_CODE, the container's exit code)
EXIT_CASES = {
    "done": (0, "", None, 0),
    "saved after TERM": (1, "75 75", None, 75),
    "saved after Ctrl-C": (1, "130", None, 75),
    "permanent": (1, "78 78", None, 78),
    "permanent beside a saved rank": (1, "75 78", None, 78),
    "crash (no record)": (1, "", None, 1),
    "OOM kill (no record)": (137, "", None, 137),
    "legacy PyTorchJob: saved": (1, "75", "138", 138),
    "legacy PyTorchJob: crash": (1, "", "138", 138),
    "legacy PyTorchJob: permanent": (1, "78", "138", 78),
}


@pytest.mark.parametrize("case", EXIT_CASES)
def test_exit_code_from_the_records(tmp_path, case):
    launcher_rc, records, retry, expected = EXIT_CASES[case]
    stub = tmp_path / "accelerate"
    stub.write_text(RECORDING_LAUNCHER)
    stub.chmod(0o755)
    run = tmp_path / "run"
    env = {"ACCELERATE": str(stub), "RUN_DIR": str(run), "RECORDS": records, "LAUNCHER_RC": str(launcher_rc)}
    env |= {"PET_NNODES": "1", "PET_NODE_RANK": "0", "PET_NPROC_PER_NODE": "2", "MASTER_ADDR": "m-0"}
    env |= {"RETRY_EXIT_CODE": retry} if retry else {}
    res = entrypoint(env, "--shards", "s3://b/p", f"--run={run}")  # the --run=DIR spelling
    assert res.returncode == expected, res.stdout + res.stderr
    if expected == 78:
        assert "exits/k8s-" in res.stderr and "do not retry" in res.stderr


PERMANENT_ERRORS = {  # case: (extra flags, extra environment, what the record's reason says)
    "batch not divisible by the world": (["--batch-size", "15"], {}, "--batch-size 15"),
    "S3 credentials refused (403)": ([], {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "403"),
}


@pytest.mark.slow
def test_a_permanent_error_ends_the_container_with_78_once(shards, s3_server, tmp_path):
    """The real trainer under the real launcher, as a TrainJob's pod (1 node x 2 processes): a
    batch that the world does not divide, and shards on the real S3 server read with a wrong
    secret. Each ends the container with 78 at the first attempt: every rank recorded it, the
    agent restarted nothing (with MAX_RESTARTS 3 it would have, three times), and no rank ran
    twice. Both launches run at once (they fail within seconds of starting)."""
    prefix = f"{tmp_path.name}/shards"
    client = s3_server.client()
    for path in sorted(p for p in shards.rglob("*") if p.is_file()):
        client.upload_file(str(path), s3_server.bucket, f"{prefix}/{path.relative_to(shards).as_posix()}")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE", "PET_", "TORCH", "AWS_"))}
    base |= {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "LOGLEVEL": "INFO"}
    base |= {"PATH": f"{os.path.dirname(sys.executable)}:{base['PATH']}"}
    tiny = ["--arch", "resnet18", "--weights", "none", "--image-size", "48", "--workers", "1"]
    runs, launches = {}, []
    for i, (case, (flags, env, _)) in enumerate(PERMANENT_ERRORS.items()):
        runs[case] = tmp_path / f"run-{i}"
        source = f"s3://{s3_server.bucket}/{prefix}" if env else str(shards)
        layout = {"PET_NNODES": "1", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": "0"}
        layout |= {"PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(procs.free_port())}
        args = ["--shards", source, "--run", str(runs[case]), *tiny, "--batch-size", "16", *flags]
        cmd = ["sh", str(K8S / "entrypoint.sh"), *args]
        launches.append(
            {"cmd": cmd, "env": base | s3_server.env() | env | layout, "log": tmp_path / f"{i}.log"}
        )
    results = procs.run_together(launches, timeout=240)
    for (case, (_, _, says)), (code, out) in zip(PERMANENT_ERRORS.items(), results, strict=True):
        assert code == 78, f"{case}: exit {code}\n{out[-5000:]}"
        (launch,) = (runs[case] / "exits").iterdir()
        records = [json.loads(p.read_text()) for p in sorted(launch.glob("rank-*.json"))]
        assert [(r["rank"], r["code"], r["restart"]) for r in records] == [(0, 78, 0), (1, 78, 0)], case
        assert all(says in r["reason"] for r in records), (case, records)
        assert "will restart worker group" not in out, f"{case}: the agent restarted\n{out[-5000:]}"
        assert out.count("artclf train: error:") == 2, f"{case}: one error per rank, once\n{out[-5000:]}"


def test_a_term_before_the_launch_starts_no_trainer(tmp_path):
    """The kubelet may send TERM while entrypoint.sh still works out the layout (here: counting
    GPUs for numProcPerNode "auto", slowed down): the script ends without starting the
    launcher (no trainer has anything to save), at once, not at the kubelet's SIGKILL."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    counting = '#!/bin/sh\ntouch "$OUT/counting"\nsleep 3\necho 1\n'  # torch.cuda.device_count(), slowly
    (bin_dir / "python").write_text(counting)
    (bin_dir / "accelerate").write_text(
        '#!/bin/sh\ntrap \'echo TERM > "$OUT/launcher"; exit 1\' TERM\necho started > "$OUT/launcher"\n'
        "sleep 30 & wait\n"
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path), "PET_NNODES": "1"}
    env |= {"PET_NODE_RANK": "0", "PET_NPROC_PER_NODE": "auto", "PET_MASTER_ADDR": "m"}
    with procs.running(["sh", str(K8S / "entrypoint.sh"), "--run", str(tmp_path)], env=env) as p:
        procs.wait_for(lambda: (tmp_path / "counting").exists(), 10, "the GPU count", p)
        p.send_signal(signal.SIGTERM)
        code = p.wait(timeout=30)
    assert code == 143 and not (tmp_path / "launcher").exists(), procs.output(p)
    assert "SIGTERM before the launch: not starting the trainers" in procs.output(p)


# ---- sweep mode: the Job completion index selects a point (k8s/overlays/prod-sweep) ------------

SWEEP_FILE = "seeds = [0, 1]\n[base]\nepochs = 3\n[grid]\nlr = [0.001, 0.01]\nce_weight = [0.3, 0.5]\n"
SAYS_ARGS = '#!/bin/sh\nprintf "%s\\n" "$@" > "$OUT/launch.args"\n'  # a launcher that records its line


def planned(tmp_path: Path) -> tuple[Path, dict]:
    """A sweep folder planned by the real `artclf sweep plan` (2 x 2 configs x 2 seeds)."""
    from artclf.sweep.plan import PlanConfig, plan

    (tmp_path / "sweep.toml").write_text(SWEEP_FILE)
    with contextlib.redirect_stdout(io.StringIO()):
        sweep = plan(PlanConfig(file=tmp_path / "sweep.toml", runs=tmp_path / "runs"))
    return tmp_path / "runs", sweep


def sweep_pod(runs: Path, **env: str) -> tuple[list[str], dict[str, str]]:
    """The args and environment of the rendered sweep pod as the kubelet gives them: the
    ConfigMap's values (envFrom) under the container's own, $(NAME) in the args expanded; its
    SWEEP_RUNS pointed at RUNS."""
    docs = render("k8s/overlays/prod-sweep")
    [c] = first(docs, "Job", "artclf-sweep")["spec"]["template"]["spec"]["containers"]
    values = dict(first(docs, "ConfigMap", "artclf-train")["data"])
    values |= {e["name"]: e["value"] for e in c["env"] if "value" in e} | {"SWEEP_RUNS": str(runs)} | env
    args = [re.sub(r"\$\((\w+)\)", lambda m: values[m[1]], a) for a in c["args"]]
    return args, values


def test_sweep_mode_runs_the_point_of_its_index(tmp_path):
    """Every index i launches point i of points.txt alone on its node (1 machine, 8 processes,
    its own rendezvous), into its own run folder, with the point's flags over the container's:
    what the trainer's parser reads is exactly the point's config, seed and run."""
    runs, sweep = planned(tmp_path)
    stub = tmp_path / "accelerate"
    stub.write_text(SAYS_ARGS)
    stub.chmod(0o755)
    args, env = sweep_pod(runs, ACCELERATE=str(stub), OUT=str(tmp_path))
    seen = []
    for point in sweep["points"]:
        res = entrypoint({**env, "JOB_COMPLETION_INDEX": str(point["index"])}, *args)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"sweep point {point['index']} of {len(sweep['points'])}: {point['name']}" in res.stdout
        words = (tmp_path / "launch.args").read_text().splitlines()
        flags = dict(zip(words[1 : words.index("-m") : 2], words[2 : words.index("-m") : 2], strict=True))
        assert (flags["--num_machines"], flags["--num_processes"], flags["--machine_rank"]) == ("1", "8", "0")
        assert flags["--main_process_ip"] == "127.0.0.1" and flags["--rdzv_conf"].startswith("is_host=1,")
        cfg = parse(TrainConfig, words[words.index("artclf.train") + 1 :], "artclf train")
        assert cfg.run == runs / point["name"] and cfg.seed == point["seed"]
        assert {k: getattr(cfg, k) for k in point["flags"]} == point["flags"]  # epochs 3 over the ConfigMap's
        assert (cfg.shards, cfg.batch_size) == (env["SHARDS"], 128)  # what the point leaves to the pod
        seen.append(cfg.run)
    assert len(set(seen)) == len(sweep["points"]) == 8


def test_sweep_mode_refuses_what_cannot_run(tmp_path):
    """Permanent errors, exit 78 (FailIndex: this point fails, the others go on): an index outside
    points.txt, container args that name a run, and no plan after SWEEP_WAIT seconds."""
    runs, sweep = planned(tmp_path)
    args, env = sweep_pod(runs, ACCELERATE="false")
    n = len(sweep["points"])
    res = entrypoint({**env, "JOB_COMPLETION_INDEX": str(n)}, *args)
    assert res.returncode == 78, res.stdout + res.stderr
    assert f"sweep index {n} is outside {runs}/points.txt ({n} points: 0-{n - 1})" in res.stderr
    assert "completions must be the number of points" in res.stderr
    res = entrypoint({**env, "JOB_COMPLETION_INDEX": "0"}, *args, "--run", "/runs/x")
    assert res.returncode == 78 and "the container's args set --run" in res.stderr
    (tmp_path / "empty").mkdir()
    env |= {"SWEEP_RUNS": str(tmp_path / "empty"), "SWEEP_WAIT": "1"}
    res = entrypoint({**env, "JOB_COMPLETION_INDEX": "0"}, *args)
    assert res.returncode == 78 and "no plan in" in res.stderr and "artclf-sweep-plan" in res.stderr


def test_sweep_mode_waits_for_the_plan(tmp_path):
    """The plan Job and the points start together: a point waits until sweep.json (written last)
    is there, then launches."""
    stub = tmp_path / "accelerate"
    stub.write_text(SAYS_ARGS)
    stub.chmod(0o755)
    args, env = sweep_pod(tmp_path / "runs", ACCELERATE=str(stub), OUT=str(tmp_path), SWEEP_WAIT="120")
    cmd = ["sh", str(K8S / "entrypoint.sh"), *args]
    with procs.running(cmd, env={**env, "JOB_COMPLETION_INDEX": "1"}) as p:
        time.sleep(1)
        assert p.poll() is None, procs.output(p)  # waiting, not failing
        _, sweep = planned(tmp_path)
        assert p.wait(timeout=30) == 0, procs.output(p)
    words = (tmp_path / "launch.args").read_text().splitlines()
    assert words[words.index("--run") + 1] == str(tmp_path / "runs" / sweep["points"][1]["name"])


def test_a_saved_sweep_point_exits_75_from_its_own_run(tmp_path):
    """The trainers of point i record their 75 under RUNS/<name>/exits/: the container exits 75
    (the pod is replaced uncounted, the point resumes its run); a 78 there: 78."""
    runs, sweep = planned(tmp_path)
    stub = tmp_path / "accelerate"
    stub.write_text(RECORDING_LAUNCHER)
    stub.chmod(0o755)
    point = sweep["points"][2]
    args, env = sweep_pod(runs, ACCELERATE=str(stub), RUN_DIR=str(runs / point["name"]), LAUNCHER_RC="1")
    for records, expected in (("75 75", 75), ("78", 78)):
        res = entrypoint({**env, "JOB_COMPLETION_INDEX": "2", "RECORDS": records}, *args)
        assert res.returncode == expected, res.stdout + res.stderr
