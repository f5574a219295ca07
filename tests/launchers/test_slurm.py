"""The sbatch scripts users run, on real local SLURMs (slurm/local/up.sh): 2-process DDP training
to COMPLETED on one node and on two (network namespaces: tests/support/slurmcluster.py), USR1 preemption
-> save -> requeue -> resume on two nodes and on one (a sweep's array task, beside the other
tasks), the loss of a node mid-epoch, the whole pipeline (dedup's four steps with two arrays, the
shard array with its merge, chained with afterok; checked against the single-process results), a
sweep's summary held by afterany, TensorBoard on a compute node."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from artclf.config import parse
from artclf.data import read_info
from artclf.metrics.classification import classification_metrics
from artclf.model import load_model
from artclf.train.config import TrainConfig
from tests.conftest import REPO, TINY, expected_batches, history, plain_predictions, run_cli
from tests.support import procs
from tests.support.slurmcluster import Slurm, cannot_run
from tests.support.system import cannot
from tests.support.tb_events import hparams_of

pytestmark = pytest.mark.slow

# What a user edits for a GPU cluster, overridden for 2 CPU processes: both on the one node of
# `slurm`, or one on each node of `slurm2` (the nodes share this machine's 2 CPUs).
CPU_LAYOUT = ["--gpus-per-node=0", "--cpus-per-task=2", "--mem=4G", "--time=15"]
BATCH = 16  # global: 8 per process
CPU_ENV = {"ACCELERATE_CONFIG": "launch/cpu_2proc.yaml", "ACCELERATE_USE_CPU": "1"}


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test(request):
    """A test that fails mid-job cancels what it submitted (the session's cluster goes on)."""
    yield
    if "slurm" in request.fixturenames:
        request.getfixturevalue("slurm").cancel_unfinished()


def submit_train(slurm: Slurm, shards_dir: Path, run: Path, out: Path, *flags: str, **env: str) -> str:
    """2 processes in all, over every node of the cluster."""
    # the rendezvous port is the test's choice: train.sbatch's default, 29500 + job id % 1000,
    # collides between two test sessions on one host (both number their jobs from 1)
    env = {**CPU_ENV, "NPROC_PER_NODE": str(2 // slurm.nodes), "SHARDS": str(shards_dir), "RUN": str(run),
           "MAIN_PORT": str(procs.free_port()), **env}  # fmt: skip
    flags = (*TINY, "--batch-size", str(BATCH), *flags)
    layout = [f"--nodes={slurm.nodes}", *CPU_LAYOUT, f"--output={out}"]
    return slurm.sbatch(*layout, "slurm/train.sbatch", *flags, env=env)


def cluster(request, nodes: int) -> Slurm:
    return request.getfixturevalue("slurm" if nodes == 1 else "slurm2")


@pytest.fixture(scope="module")
def train_job(slurm, shards, tmp_path_factory):
    d = tmp_path_factory.mktemp("slurm-train")
    run, out = d / "runs" / "tiny", d / "train.out"
    # slurm/README.md, "The environment": the nodes find artclf only through SETUP, which
    # activates the virtualenv on shared storage (here the repository's own); none on PATH
    venv = Path(sys.executable).parent
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != venv)
    setup = f"source {venv / 'activate'}"
    job = submit_train(slurm, shards, run, out, "--epochs", "1", PATH=path, SETUP=setup)
    (task,) = slurm.wait(job, {"COMPLETED"}, timeout=300)
    return task, run, out.read_text()


def test_train_sbatch_completes_with_two_processes(train_job):
    task, run, out = train_job
    assert task["ExitCode"] == "0:0" and task["Restarts"] == "0"
    assert "2 process(es) on cpu" in out  # the world size the trainer saw: 2 DDP ranks
    assert "SLURM_RESTART_COUNT=0" in out and "finished with exit code 0" in out
    model, meta = load_model(run / "model.pt")
    assert meta["classes"] and model.training is False
    assert list((run / "tb").glob("events.out.tfevents.*")), "no TensorBoard events"
    assert [r["epoch"] for r in history(run)] == [1]


# One node: test_sweep_array_with_a_preempted_task_and_its_summary sends USR1 to a one-node
# train.sbatch run (an array task) and checks the same save -> requeue -> resume; two nodes here.
@pytest.mark.parametrize("nodes", [2])
def test_usr1_saves_requeues_and_resumes(request, nodes, shards, tmp_path):
    slurm = cluster(request, nodes)
    started = time.time()
    run, out = tmp_path / "run", tmp_path / "train.out"
    job = submit_train(slurm, shards, run, out, "--epochs", "2", "--save-every", "2")
    deadline = time.time() + 300
    while not list((run / "state").glob("step-*")):  # the trainers are stepping: a step is saved
        assert slurm.job(job)[0]["JobState"] in {"PENDING", "RUNNING"}, slurm.job(job)
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)
    # what --signal=B:USR1@300 does before the time limit, but now: USR1 to the batch shell
    slurm.run("scancel", "--batch", "--signal=USR1", job)
    while True:  # the trap forwards USR1, the trainers save and exit 75, the job requeues
        (task,) = slurm.job(job)
        if task["JobState"] == "PENDING" and task["Restarts"] == "1":
            break
        assert task["JobState"] in {"RUNNING", "COMPLETING", "REQUEUED", "PENDING"}, task
        assert time.time() < deadline, f"not requeued: {task}"
        time.sleep(0.5)
    slurm.say(f"job {job} requeued: {task['JobState']} ({task['Reason']}), restarts {task['Restarts']}")
    saved = re.search(r"preempted at step (\d+) ", out.read_text())
    assert saved, out.read_text()[-3000:]
    step = int(saved.group(1))
    # every rank saved its part of the state (rank 1 on the second node when there are two)
    assert {p.name for p in (run / "state" / f"step-{step:08d}").glob("random_states_*")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    slurm.release(job, deadline)
    (task,) = slurm.wait(job, {"COMPLETED"}, timeout=300)
    slurm.say(f"preemption test on {nodes} node(s): wall time {time.time() - started:.1f} s")
    text = out.read_text()
    steps = read_info(str(shards))["splits"]["train"]["num_samples"] // BATCH  # per epoch
    assert 2 <= step < 2 * steps, step  # inside the run, after the first saved step
    assert "forwarding to the trainers" in text and f"requeueing job {job}" in text
    assert task["Restarts"] == "1" and "SLURM_RESTART_COUNT=1" in text
    assert f"resuming from {run / 'state'}/step-{step:08d}" in text
    assert [r["epoch"] for r in history(run)] == [1, 2]  # each epoch once, across the two starts
    assert (run / "model.pt").is_file() and text.rstrip().endswith("finished with exit code 0")
    assert_placed(slurm, run)


def test_a_permanent_error_fails_the_job_and_is_not_requeued(slurm, shards, tmp_path):
    """A batch the 2 ranks cannot split: every rank records exit 78 (artclf/train/outcome.py),
    torchrun restarts nothing, and the job ends FAILED with 78 and the cause in its output; a
    requeueable job (--requeue) that a retry cannot fix is not requeued."""
    run, out = tmp_path / "run", tmp_path / "train.out"
    job = submit_train(slurm, shards, run, out, "--epochs", "1", "--batch-size", "15")
    (task,) = slurm.wait(job, {"FAILED"}, timeout=300)
    text = out.read_text()
    assert task["ExitCode"] == "78:0" and task["Restarts"] == "0", (task, text[-3000:])
    assert "not requeueing; exit 78" in text and "--batch-size 15" in text, text[-3000:]
    records = sorted(p.name for p in (run / "exits" / f"slurm-{job}-0").iterdir())
    assert records == ["rank-0-78.json", "rank-1-78.json"]
    assert text.count("artclf train: error:") == 2, text[-3000:]  # once per rank: no restart


def assert_placed(slurm: Slurm, run: Path) -> None:
    """2 ranks, spread over every node of the cluster (the node names each rank recorded)."""
    where = json.loads((run / "config.json").read_text())["placement"]
    assert [r["rank"] for r in where["ranks"]] == [0, 1]
    assert where["nodes"] == slurm.node_names(), where
    slurm.say("ranks on nodes: " + ", ".join(f"{r['rank']}@{r['node']}" for r in where["ranks"]))


def test_two_nodes_train_as_one_node_does(slurm2, train_job, shards, tmp_path):
    """The 2-node job (one process on each node: its own address, its own slurmd) ends with the
    same weights and metrics as the 1-node job of 2 processes (`train_job`)."""
    run, out = tmp_path / "runs" / "tiny", tmp_path / "train.out"
    job = submit_train(slurm2, shards, run, out, "--epochs", "1")
    (task,) = slurm2.wait(job, {"COMPLETED"}, timeout=300)
    text = out.read_text()
    assert task["ExitCode"] == "0:0" and "2 process(es) on cpu" in text, text[-3000:]
    assert f"on {task['NodeList']} (2 nodes x 1 processes)" in text
    assert_placed(slurm2, run)
    _, one_node, _ = train_job
    assert json.loads((run / "val_metrics.json").read_text()) == json.loads(
        (one_node / "val_metrics.json").read_text()
    )
    two, one = (torch.load(r / "model.pt", weights_only=True)["state_dict"] for r in (run, one_node))
    assert two.keys() == one.keys() and all(torch.equal(two[k], one[k]) for k in two)


def test_losing_a_node_mid_epoch_fails_the_step_and_a_requeue_resumes(slurm2, shards, tmp_path):
    """Everything of node 2 is killed (its slurmd, step daemon, launcher and trainer: a node that
    died). Rank 0 fails at its next collective, SLURM declares the node DOWN (SlurmdTimeout 30 s)
    and requeues the job (--requeue); once the node is back, the job resumes from its last step
    and trains on exactly the batches of a run never stopped."""
    started = time.time()
    run, out = tmp_path / "run", tmp_path / "train.out"
    epochs = 4  # ~7 s an epoch: the kill comes at the first saved step, far from the end
    # --storage-patience 0: a ddp timeout this short is refused beside the 900 s default
    job = submit_train(slurm2, shards, run, out, "--epochs", str(epochs), "--save-every", "1",
                       "--ddp-timeout", "60", "--storage-patience", "0", "--record-batches",
                       MAX_RESTARTS="0")  # fmt: skip
    deadline = time.time() + 300
    while not list((run / "state").glob("step-*")):
        assert slurm2.job(job)[0]["JobState"] in {"PENDING", "RUNNING"}, slurm2.job(job)
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)
    lost = slurm2.node_names()[1]
    pids = slurm2.node_pids(lost)
    names = {Path(f"/proc/{p}/comm").read_text().strip() for p in pids if Path(f"/proc/{p}/comm").exists()}
    assert {"slurmd", "slurmstepd"} <= names, names
    for pid in pids:  # exactly the node's processes (all at once: none gets to react)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    killed = time.time()
    slurm2.say(f"killed every process of node {lost}: {sorted(names)}")
    while True:  # never a hang: the step fails, the node goes DOWN, the job is requeued
        (task,) = slurm2.job(job)
        if task["JobState"] == "PENDING" and task["Restarts"] == "1":
            break
        assert task["JobState"] in {"RUNNING", "COMPLETING", "REQUEUED", "PENDING"}, task
        assert time.time() < killed + 150, f"not requeued 150 s after the node was lost: {task}"
        time.sleep(0.5)
    took = time.time() - killed
    slurm2.say(f"job {job} requeued {took:.0f} s after node {lost} was lost ({task['Reason']})")
    text = out.read_text()  # rank 0 failed at its collective; SLURM ended the job for the node
    assert "artclf train [rank 0," in text and "DUE TO NODE FAILURE" in text, text[-3000:]
    back = time.time()
    slurm2.up()  # the node comes back: its slurmd registers, ReturnToService=2 makes it IDLE
    slurm2.release(job, time.time() + 120)
    slurm2.say(f"node {lost} back and job {job} released in {time.time() - back:.0f} s")
    (task,) = slurm2.wait(job, {"COMPLETED"}, timeout=300)
    slurm2.say(f"node-loss test: wall time {time.time() - started:.1f} s")
    text = out.read_text()
    resumed = re.search(r"resuming from \S+/step-(\d+)", text)
    assert resumed and int(resumed.group(1)) >= 1, text[-3000:]
    steps = read_info(str(shards))["splits"]["train"]["num_samples"] // BATCH
    assert [(r["epoch"], r["step"]) for r in history(run)] == [(e, e * steps) for e in range(1, epochs + 1)]
    assert_placed(slurm2, run)
    # every optimizer step, the steps the lost node's run took included, trained on the global
    # batch one process reading the order gets: nothing repeated or skipped by the requeue
    recorded = [json.loads(line) for line in (run / "batches.jsonl").read_text().splitlines()]
    assert recorded == expected_batches(shards, BATCH, epochs)


def _array_then_merge(slurm: Slurm, script: str, n: int, out: Path, env: dict, *flags: str) -> None:
    common = ["--cpus-per-task=1", "--mem-per-cpu=1G", "--time=10", f"--output={out}/%x-%j.out"]
    array = slurm.sbatch(*common, f"--array=0-{n - 1}", script, *flags, env=env)
    merge = slurm.sbatch(*common, f"--dependency=afterok:{array}", script, *flags, env=env)
    tasks = slurm.wait(array, {"COMPLETED"})
    assert sorted(int(t["ArrayTaskId"]) for t in tasks) == list(range(n))
    (task,) = slurm.wait(merge, {"COMPLETED"})
    # afterok held the merge until every part had ended (times: ISO seconds, comparable as text)
    assert task["StartTime"] >= max(t["EndTime"] for t in tasks), (task, tasks)


def test_shard_array_with_dependent_merge(slurm, work, shards, tmp_path):
    """(dedup's arrays run in the pipeline test, checked there against one process.)"""
    w = tmp_path / "work"
    shutil.copytree(work, w)  # ingested, deduplicated, split
    env = {"WORK": str(w), "SHARDS": str(tmp_path / "shards")}
    _array_then_merge(
        slurm, "slurm/shard.sbatch", 3, tmp_path, env, "--store-size", "96", "--shard-samples", "16"
    )
    res = run_cli("shard", "--verify", tmp_path / "shards")
    assert res.returncode == 0, res.stdout + res.stderr
    # byte-identical to the single-process shards: same names, same sha256 in every record
    records = sorted(p.name for p in (tmp_path / "shards/_shards").glob("*.json"))
    assert records == sorted(p.name for p in (shards / "_shards").glob("*.json")) and records
    for name in records:
        array_rec = json.loads((tmp_path / "shards/_shards" / name).read_text())
        single_rec = json.loads((shards / "_shards" / name).read_text())
        assert array_rec["sha256"] == single_rec["sha256"], name
    merged = list(tmp_path.glob("artclf-shard-*.out"))
    assert any("merge" in p.read_text() and "verify" in p.read_text().lower() for p in merged)


def test_tensorboard_sbatch_serves_the_runs(slurm, train_job, tmp_path):
    _, run, _ = train_job
    out = tmp_path / "tb.out"
    job = slurm.sbatch("--cpus-per-task=1", "--mem-per-cpu=1G", "--time=5", f"--output={out}",
                       "slurm/tensorboard.sbatch", str(run.parent))  # fmt: skip
    try:
        deadline = time.time() + 120
        url = None
        while url is None:
            m = re.search(r"TensorBoard at (http://\S+/)", out.read_text() if out.exists() else "")
            url = m and m.group(1)
            assert time.time() < deadline and slurm.job(job)[0]["JobState"] in {"PENDING", "RUNNING"}
            time.sleep(0.5)
        while True:  # TensorBoard needs a few seconds to start and to load the run
            try:
                with urllib.request.urlopen(url + "data/runs", timeout=5) as r:
                    runs = json.loads(r.read())
                if f"{run.name}/tb" in runs:  # a run is a folder holding event files
                    break
            except OSError:
                pass
            assert time.time() < deadline, (
                f"TensorBoard at {url} did not list {run.name}/tb: {out.read_text()}"
            )
            time.sleep(1)
    finally:
        slurm.run("scancel", job)
    slurm.wait(job, {"CANCELLED"}, timeout=60)


def test_array_that_is_not_0_to_n_minus_1_is_refused(slurm, tmp_path):
    """An array of parts 1-2 (shard.sbatch, dedup.sbatch verify) and a dedup array step
    submitted as one job fail with exit 2 and the submission to use, before anything runs."""
    env = {"WORK": str(tmp_path / "work"), "SHARDS": str(tmp_path / "shards")}
    common = ["--cpus-per-task=1", "--mem-per-cpu=1G", "--time=5", f"--output={tmp_path}/%j.out"]
    jobs = [
        slurm.sbatch(*common, "--array=1-2", "slurm/shard.sbatch", env=env),
        slurm.sbatch(*common, "--array=1-2", "slurm/dedup.sbatch", "verify", env=env),
        slurm.sbatch(*common, "slurm/dedup.sbatch", "features", env=env),
    ]
    tasks = [t for job in jobs for t in slurm.wait(job, {"FAILED"}, timeout=120)]
    assert [t["ExitCode"] for t in tasks] == ["2:0"] * 5
    logs = " ".join(p.read_text() for p in tmp_path.glob("*.out"))
    for script in ("shard", "dedup"):
        assert f"artclf-{script}: array 1-2 is not 0-(n-1)" in logs and "NUM_PARTS" in logs
    assert "features is an array step: sbatch --array=0-(n-1) slurm/dedup.sbatch features" in logs
    assert not (tmp_path / "shards").exists()  # nothing packed with a wrong --num-parts


def test_a_cluster_a_killed_session_left_running_is_not_taken_over(tmp_path):
    """A test session killed mid-run leaves its 2-node cluster running (namespaces, bridge,
    daemons) while its folder is deleted, and the next session's pytest numbers its folders from
    0 again: a new cluster starts in a folder of the same path. It comes up on a network of its
    own and leaves the old one alone. (Before: the cluster ID was a hash of the path, the new
    cluster took over the old namespaces, and its nodes never registered: "nodes not idle after
    60 s", once in a clean-clone make test after a killed session.)"""
    if reason := cannot_run(2):
        cannot(reason)
    d, old = tmp_path / "slurm", tmp_path / "old"

    def up() -> tuple[subprocess.CompletedProcess, dict]:
        ctld, slurmd = procs.free_ports(2)
        env = {**os.environ, "ARTCLF_SLURM_CTLD_PORT": str(ctld), "ARTCLF_SLURM_SLURMD_PORT": str(slurmd)}
        res = subprocess.run(["bash", "slurm/local/up.sh", "--nodes", "2", str(d)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        return res, env

    def down(folder: Path, env: dict) -> None:
        if folder.exists():
            subprocess.run(["bash", "slurm/local/down.sh", str(folder)], cwd=REPO, env=env, timeout=120)

    def cluster_id() -> str:  # what names its namespaces, bridge and nodes
        return re.search(r"^BRIDGE=artclfbr(\w+)$", (d / "net.env").read_text(), re.M)[1]

    first, env = up()
    try:
        assert first.returncode == 0, first.stdout + first.stderr
        stale = cluster_id()
        # what down.sh needs to end it at the end (pid files, net.env), sockets left out
        shutil.copytree(d, old, ignore=lambda top, names: [n for n in names if (Path(top) / n).is_socket()])
        shutil.rmtree(d)  # the folder goes; the cluster runs on
        second, env2 = up()
        try:
            assert second.returncode == 0, second.stdout + second.stderr  # its nodes are idle
            assert cluster_id() != stale
            namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            assert f"artclf-{stale}-1" in namespaces and f"artclf-{stale}-2" in namespaces  # left alone
        finally:
            down(d, env2)
    finally:
        down(old if old.exists() else d, env)


STUBS = {
    # srun: run the node command once per node, as SLURM would on 2 nodes (SLURM_NODEID 0 and 1)
    "srun": 'while [[ $1 != bash ]]; do shift; done\nfor id in 0 1; do SLURM_NODEID=$id "$@" & done\nwait\n',
    "scontrol": '[[ "$1 $2" == "show hostnames" ]] && printf "gpu-a01\\ngpu-a02\\n"\n',
    # accelerate: record its arguments, one per line, and the torchrun variables, per node
    "accelerate": 'printf "%s\\n" "$@" > "$STUB_OUT/node-$SLURM_NODEID.args"\n'
    'env | grep -E "^(PET|TORCH)_" | sort > "$STUB_OUT/node-$SLURM_NODEID.env"\n',
}


def stub_env(tmp_path: Path, stubs: dict[str, str], **env: str) -> dict[str, str]:
    """The environment of slurm/train.sbatch on 2 stand-in nodes (STUBS, overridden by `stubs`)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (STUBS | stubs).items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "STUB_OUT": str(tmp_path),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "r50",
        "SLURM_JOB_NODELIST": "gpu-a[01-02]",
        "SLURM_NNODES": "2",
        "SLURM_GPUS_ON_NODE": "4",
        "SHARDS": "s3://bucket/shards",
        "RUN": str(tmp_path / "my run"),  # a space must survive every level of quoting
    } | env


def run_with_stubs(tmp_path: Path, stubs: dict[str, str], **env: str) -> subprocess.CompletedProcess:
    """slurm/train.sbatch --epochs 3 on 2 stand-in nodes."""
    return subprocess.run(["bash", "slurm/train.sbatch", "--epochs", "3"], cwd=REPO,
                          env=stub_env(tmp_path, stubs, **env), capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_max_restarts_is_a_site_setting(tmp_path):
    res = run_with_stubs(tmp_path, {}, MAX_RESTARTS="0")
    assert res.returncode == 0, res.stdout + res.stderr
    args = (tmp_path / "node-1.args").read_text().splitlines()
    assert args[args.index("--max_restarts") + 1] == "0"


def test_the_global_batch_defaults_to_the_readme_table_and_flags_win(tmp_path):
    """2 × 8 GPUs (the script's default layout) get --batch-size 256 (README, "Choosing the
    global batch"); a --batch-size given to sbatch wins, as the trainer's parser reads them."""
    env = stub_env(tmp_path, {}, SLURM_GPUS_ON_NODE="8")
    for flags, want in (((), 256), (("--batch-size", "128"), 128)):
        res = subprocess.run(["bash", "slurm/train.sbatch", *flags], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        args = (tmp_path / "node-0.args").read_text().splitlines()
        trainer = args[args.index("artclf.train") + 1 :]
        assert parse(TrainConfig, trainer, "artclf train").batch_size == want, trainer


def test_flight_recorder_is_on_and_run_debug_exists(tmp_path):
    """Every node's launcher gets NCCL's Flight Recorder as the k8s pods do; RUN/debug is made."""
    res = run_with_stubs(tmp_path, {})
    assert res.returncode == 0, res.stdout + res.stderr
    for rank in (0, 1):
        env = (tmp_path / f"node-{rank}.env").read_text().splitlines()
        assert {"TORCH_NCCL_TRACE_BUFFER_SIZE=2000", "TORCH_NCCL_DUMP_ON_TIMEOUT=1"} <= set(env)
    assert (tmp_path / "my run" / "debug").is_dir()


def test_a_long_node_list_does_not_kill_the_script(tmp_path):
    """`scontrol show hostnames | head -n 1` under pipefail died of SIGPIPE (exit 141, no
    message) when scontrol was still writing after head had exited: 100000 names make sure."""
    many = '[[ "$1 $2" == "show hostnames" ]] && { echo gpu-a01; seq -f "gpu-b%06g" 100000; }\n'
    res = run_with_stubs(tmp_path, {"scontrol": many})
    assert res.returncode == 0, f"exit {res.returncode}: {res.stdout + res.stderr}"
    for rank in (0, 1):
        args = (tmp_path / f"node-{rank}.args").read_text().splitlines()
        assert args[args.index("--main_process_ip") + 1] == "gpu-a01"


def test_an_early_exit_says_why(tmp_path):
    """Any failing command that ends the script (set -e) names its exit code, line and command."""
    res = run_with_stubs(tmp_path, {"scontrol": "echo 'scontrol: error: no such job' >&2; exit 3\n"})
    assert res.returncode == 3, res.stdout + res.stderr
    assert re.search(r"artclf-train: exit 3 at line \d+: .*scontrol show hostnames", res.stderr), res.stderr


def test_usr1_without_a_saved_state_is_not_requeued(tmp_path):
    """USR1, then the step fails before any RUN/state exists: the script says so and keeps the
    step's exit code (`find` on the missing folder used to end it silently under pipefail)."""
    stubs = {
        "srun": 'touch "$STUB_OUT/step"; sleep 3; exit 1\n',
        "scancel": 'echo "scancel $*" >> "$STUB_OUT/scancel"\n',
    }
    out = tmp_path / "out.txt"
    with procs.running(["bash", "slurm/train.sbatch"], env=stub_env(tmp_path, stubs), log=out) as p:
        # the step runs: the traps are set (a USR1 before them would end the shell)
        procs.wait_for(lambda: (tmp_path / "step").exists(), 30, "the script's step", p)
        p.send_signal(signal.SIGUSR1)
        assert p.wait(timeout=30) == 1, out.read_text()
    assert "saved no state: not requeueing" in out.read_text()
    assert (tmp_path / "scancel").read_text() == "scancel --signal=TERM 4242\n"  # to the steps, as TERM


# ---- the whole pipeline in one submission (slurm/pipeline.sh) ---------------------------------

STAGES = [
    "ingest",
    "dedup-parts",
    "dedup-pairs",
    "dedup-verify",
    "dedup-merge",
    "split",
    "shard-parts",
    "shard-merge",
    "train",
    "evaluate",
]


def submit_pipeline(slurm: Slurm, data: Path, d: Path, *train_flags: str) -> tuple[str, dict[str, str]]:
    """slurm/pipeline.sh on the local cluster, laid out for its 2 CPUs: its output and the job id
    of each stage."""
    env = {
        **CPU_ENV,
        "NPROC_PER_NODE": "2",
        "MAIN_PORT": str(procs.free_port()),
        "DEDUP_ARGS": "--weights none --montages 0",
        "SHARD_ARGS": "--store-size 96 --shard-samples 16",
        "DATA_SBATCH_FLAGS": "--cpus-per-task=1 --mem-per-cpu=1G --time=10",
        "TRAIN_SBATCH_FLAGS": " ".join(["--nodes=1", *CPU_LAYOUT]),
        "LOG_DIR": str(d / "logs"),
    }
    args = [str(data), str(d / "work"), str(d / "shards"), str(d / "runs" / "tiny")]
    out = slurm.run("bash", "slurm/pipeline.sh", *args, "--dedup-parts", "2", "--shard-parts", "2", "--",
                    *TINY, "--batch-size", str(BATCH), *train_flags, env=env)  # fmt: skip
    jobs = dict(re.findall(r"^(\S+)\s+job (\d+)$", out, re.M))
    assert list(jobs) == STAGES, out
    slurm.submitted += list(jobs.values())  # cancelled with the rest if the test fails
    slurm.say("pipeline: " + ", ".join(f"{name} {job}" for name, job in jobs.items()))
    return out, jobs


def test_pipeline_runs_every_stage_in_order(slurm, sample_dir, work, tmp_path):
    out, jobs = submit_pipeline(slurm, sample_dir, tmp_path, "--epochs", "1")
    assert f"squeue -j {','.join(jobs.values())}" in out and "sacct -j" in out, out
    assert "tensorboard --logdir" in out, out
    ended = ""
    for name, job in jobs.items():
        tasks = slurm.wait(job, {"COMPLETED"}, timeout=600)
        assert all(t["StartTime"] >= ended for t in tasks), (name, tasks)  # afterok held it
        ended = max(t["EndTime"] for t in tasks)
    for array in ("dedup-parts", "dedup-verify"):
        assert len({t["ArrayTaskId"] for t in slurm.job(jobs[array])}) == 2, array
    # dedup's four steps found the groups one in-process `dedup` finds (conftest's work)
    groups = [json.loads((w / "dedup/groups.json").read_text()) for w in (tmp_path / "work", work)]
    assert groups[0] == groups[1] and groups[0]
    run, shards = tmp_path / "runs" / "tiny", tmp_path / "shards"
    assert [r["epoch"] for r in history(run)] == [1]
    # the test split, scored by the chain's last job, as a plain single-process loop scores it
    got = json.loads((run / "eval-test" / "metrics.json").read_text())
    ref = classification_metrics(*plain_predictions(run / "model.pt", shards, "test", calibrated=True))
    assert got["confusion_matrix"] == ref["confusion_matrix"] and got["accuracy"] == ref["accuracy"]


def test_a_failed_stage_stops_the_chain(slurm, tmp_path):
    """ingest fails on a folder without the data set: no later stage ever starts."""
    (tmp_path / "not-the-data").mkdir()
    _, jobs = submit_pipeline(slurm, tmp_path / "not-the-data", tmp_path)
    slurm.wait(jobs["ingest"], {"FAILED"}, timeout=120)
    for name in STAGES[1:]:
        (task, *_) = slurm.wait(jobs[name], {"CANCELLED"}, timeout=120)
        # Never given a node. (RunTime is no witness: on a clean clone a pending array record
        # cancelled this way once read 20788-03:30:46, the clock minus the epoch: a start time of 0.)
        assert task["Reason"] == "DependencyNeverSatisfied", (name, task)
        assert task["NodeList"] in ("", "(null)"), (name, task)
    # A batch script that starts opens its --output file: only ingest's exists.
    assert [p.name for p in (tmp_path / "logs").iterdir()] == [f"artclf-ingest-{jobs['ingest']}.out"]
    assert not (tmp_path / "work" / "manifest.jsonl").exists() and not (tmp_path / "shards").exists()


# ---- a sweep: an array of single-node runs, then a dependent summary (slurm/sweep.sh) -----------

SWEEP_FILE = "seeds = [0, 1]\n[base]\nepochs = 2\nsave_every = 2\n[grid]\nlr = [0.001, 0.01]\n"


def consecutive_free_ports(n: int) -> int:
    """The first of n consecutive ports that are free now (PORT_BASE: point i uses base + i)."""
    for base in procs.free_ports(20):
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + n):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise AssertionError(f"no {n} consecutive free ports")


def test_sweep_array_with_a_preempted_task_and_its_summary(slurm, shards, tmp_path):
    """slurm/sweep.sh plans a 2 x 2 sweep (2 learning rates x 2 seeds) and submits an array of 4
    single-node runs (one CPU process each, two at a time) and the summary, held by afterany.
    USR1 goes to the task that holds the array's own job id (the one whose plain id would name
    every task to scancel and scontrol) once it has saved: it alone saves, is requeued and resumes
    its own run; no other task restarts. The summary chooses the config with the higher mean val
    macro F1, computed here from each run's val_metrics.json, and scores only its runs on test."""
    started = time.time()
    (tmp_path / "sweep.toml").write_text(SWEEP_FILE)
    runs, logs = tmp_path / "runs", tmp_path / "logs"
    layout = "--gpus-per-node=0 --cpus-per-task=1 --mem=2G --time=15"
    env = {**CPU_ENV, "NPROC_PER_NODE": "1", "SHARDS": str(shards), "BATCH_SIZE": str(BATCH)}
    env |= {"LOG_DIR": str(logs), "PORT_BASE": str(consecutive_free_ports(4))}
    env |= {"ARRAY_SBATCH_FLAGS": layout, "SUMMARY_SBATCH_FLAGS": layout}
    out = slurm.run("bash", "slurm/sweep.sh", str(tmp_path / "sweep.toml"), str(runs), "--", *TINY, env=env)
    jobs = dict(re.findall(r"^(array|summary)\s+job (\d+)", out, re.M))
    assert set(jobs) == {"array", "summary"}, out
    slurm.submitted += list(jobs.values())  # cancelled with the rest if the test fails
    arr, summary = jobs["array"], jobs["summary"]
    names = (runs / "points.txt").read_text().splitlines()
    assert len(names) == 4 and "--array=0-3" in out, out
    # The task that keeps the array's id starts last (two run at once): wait for it, then for its save.
    deadline = time.time() + 400
    while True:
        tasks = slurm.job(arr)
        assert all(t["JobState"] in {"PENDING", "RUNNING", "COMPLETING", "COMPLETED"} for t in tasks), tasks
        owner = next((t for t in tasks if t["JobId"] == arr and t["ArrayTaskId"].isdigit()), None)
        if owner and owner["JobState"] == "RUNNING":
            index = int(owner["ArrayTaskId"])
            if list((runs / names[index] / "state").glob("step-*")):
                break
        assert time.time() < deadline, f"the last task never saved a step: {tasks}"
        time.sleep(0.2)
    task = f"{arr}_{index}"
    slurm.run("scancel", "--batch", "--signal=USR1", task)
    while True:  # the trap forwards USR1 as TERM to this task's step, the trainer saves, the task requeues
        (t,) = slurm.job(task)
        if t["JobState"] == "PENDING" and t["Restarts"] == "1":
            break
        assert t["JobState"] in {"RUNNING", "COMPLETING", "REQUEUED", "PENDING"}, t
        assert time.time() < deadline, f"not requeued: {t}"
        time.sleep(0.5)
    # start it now instead of after SLURM's requeue delay, once past the second of its revoked credential
    time.sleep(1.5)
    slurm.run("scontrol", "update", f"JobId={task}", "StartTime=now")
    tasks = slurm.wait(arr, {"COMPLETED"}, timeout=400)
    (done,) = slurm.wait(summary, {"COMPLETED"}, timeout=300)
    slurm.say(f"sweep of 4 runs, one preempted, and its summary: wall time {time.time() - started:.1f} s")

    assert {int(t["ArrayTaskId"]): t["Restarts"] for t in tasks} == {
        i: str(int(i == index)) for i in range(4)
    }
    assert done["StartTime"] >= max(t["EndTime"] for t in tasks), (done, tasks)  # afterany held it
    text = (logs / f"artclf-sweep-{task}.out").read_text()
    step = re.search(r"preempted at step (\d+) ", text)
    assert step, text[-3000:]
    assert f"forwarding to the trainers of job {task}" in text and f"requeueing job {task}" in text
    assert "SLURM_RESTART_COUNT=1" in text and text.rstrip().endswith("finished with exit code 0")
    assert f"resuming from {runs / names[index]}/state/step-{int(step[1]):08d}" in text  # its own run
    for i, name in enumerate(names):
        log = (logs / f"artclf-sweep-{arr}_{i}.out").read_text()
        assert f"point {i} of 4: {name}" in log and "1 process(es) on cpu" in log, log[-3000:]
        assert ("resuming from" in log) == (i == index), log[-3000:]
        assert [r["epoch"] for r in history(runs / name)] == [1, 2], name  # each epoch once

    # the choice, independently: mean val macro F1 per learning rate (each run's config.json), ties
    # to the first in plan order; test scores for exactly the chosen config's runs
    by_lr: dict[float, list[str]] = {}
    for name in names:
        by_lr.setdefault(json.loads((runs / name / "config.json").read_text())["config"]["lr"], []).append(
            name
        )
    val = {n: json.loads((runs / n / "val_metrics.json").read_text())["macro_f1"] for n in names}
    means = {lr: sum(val[n] for n in ns) / len(ns) for lr, ns in by_lr.items()}
    best = max(means, key=means.__getitem__)
    got = json.loads((runs / "summary.json").read_text())
    assert sorted(got["runs"]) == sorted(by_lr[best]), (got["runs"], means)
    assert sorted(got["val_means"].values()) == pytest.approx(sorted(means.values()))
    scored = sorted(n for n in names if (runs / n / "eval-test").exists())
    assert scored == sorted(by_lr[best]) and all(
        (runs / n / "eval-test" / "metrics.json").is_file() for n in scored
    )
    # TensorBoard's HParams view of the sweep (tensorboard --logdir RUNS): every run's event file,
    # the preempted one's included, holds its own flags and its best val macro F1
    for name in names:
        params, metrics = hparams_of(runs / name)
        flags = json.loads((runs / name / "config.json").read_text())["config"]
        assert (params["lr"], params["seed"]) == pytest.approx((flags["lr"], flags["seed"])), name
        assert metrics["hparam/val_macro_f1"] == pytest.approx(val[name], abs=1e-6), name
    assert (runs / "summary.md").is_file()


def sweep_env(tmp_path: Path, runs: Path, index: int, **env: str) -> dict[str, str]:
    """Array task INDEX of slurm/sweep.sbatch on one stand-in node of 8 GPUs (STUBS)."""
    one_node = {"srun": 'while [[ $1 != bash ]]; do shift; done\nSLURM_NODEID=0 "$@"\n'}
    tmp_path.mkdir()
    layout = {"SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "gpu-a01", "SLURM_GPUS_ON_NODE": "8"}
    array = {"SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": str(index), "SLURM_SUBMIT_DIR": str(REPO)}
    return stub_env(tmp_path, one_node, **layout, **array, RUNS=str(runs), **env)


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> tuple[Path, list[str]]:
    """A 2 x 2 sweep folder made by the real `artclf sweep plan`; its points' names."""
    from artclf.sweep.plan import PlanConfig, plan

    d = tmp_path_factory.mktemp("sweep-plan")
    (d / "sweep.toml").write_text(SWEEP_FILE)
    with contextlib.redirect_stdout(io.StringIO()):
        plan(PlanConfig(file=d / "sweep.toml", runs=d / "runs"))
    return d / "runs", (d / "runs" / "points.txt").read_text().splitlines()


def test_a_sweep_task_runs_its_point_through_train_sbatch(planned, tmp_path):
    """Task i launches train.sbatch's line on its one node: RUN = RUNS/<name of line i>, the
    point's flags after the sbatch flags (they win), the 1 x 8 batch (128) unless the point sets
    one, and PORT_BASE + i as the rendezvous port."""
    runs, names = planned
    for index in (0, 3):
        env = sweep_env(tmp_path / f"t{index}", runs, index, PORT_BASE="31000")
        res = subprocess.run(["bash", "slurm/sweep.sbatch", "--epochs", "9", "--workers", "2"], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        args = (tmp_path / f"t{index}" / "node-0.args").read_text().splitlines()
        assert (
            args[args.index("--num_processes") + 1] == "8" and args[args.index("--num_machines") + 1] == "1"
        )
        assert args[args.index("--main_process_port") + 1] == str(31000 + index)
        cfg = parse(TrainConfig, args[args.index("artclf.train") + 1 :], "artclf train")
        point = json.loads((runs / names[index] / "sweep.json").read_text())
        assert cfg.run == runs / names[index] and (cfg.shards, cfg.batch_size) == ("s3://bucket/shards", 128)
        assert {k: getattr(cfg, k) for k in point["flags"]} == point["flags"]  # epochs 2 over the given 9
        assert cfg.workers == 2  # a flag the point leaves alone


def test_a_sweep_index_outside_the_plan_is_permanent(planned, tmp_path):
    runs, names = planned
    res = subprocess.run(["bash", "slurm/sweep.sbatch"], cwd=REPO, env=sweep_env(tmp_path / "t", runs, 4),
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 78, res.stdout + res.stderr
    assert f"array index 4 is outside {runs}/points.txt (4 points: 0-3)" in res.stderr
    assert not (tmp_path / "t" / "node-0.args").exists()  # nothing launched


def test_usr1_in_an_array_task_signals_and_requeues_that_task_only(tmp_path):
    """In an array task, train.sbatch names itself <array>_<task> to scancel (and scontrol): the
    plain SLURM_JOB_ID of the task that keeps the array's id names the whole array."""
    stubs = {
        "srun": 'touch "$STUB_OUT/step"; sleep 3; exit 1\n',
        "scancel": 'echo "scancel $*" >> "$STUB_OUT/scancel"\n',
    }
    env = stub_env(tmp_path, stubs, SLURM_ARRAY_JOB_ID="4242", SLURM_ARRAY_TASK_ID="3")
    out = tmp_path / "out.txt"
    with procs.running(["bash", "slurm/train.sbatch"], env=env, log=out) as p:
        # the step runs: the traps are set (a USR1 before them would end the shell)
        procs.wait_for(lambda: (tmp_path / "step").exists(), 30, "the script's step", p)
        p.send_signal(signal.SIGUSR1)
        assert p.wait(timeout=30) == 1, out.read_text()
    assert (tmp_path / "scancel").read_text() == "scancel --signal=TERM 4242_3\n"
