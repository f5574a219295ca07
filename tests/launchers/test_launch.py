"""launch/*.yaml: accelerate reads every file, every key is commented, and cpu_2proc.yaml really
starts two ranks (world size 2, gloo) when launched as launch/README.md says."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType

from tests.conftest import REPO
from tests.support import procs
from tests.support.cpu_launch import finish

LAUNCH = REPO / "launch"
CONFIGS = sorted(LAUNCH.glob("*.yaml"))

# What each file promises (launch/README.md).
EXPECTED = {
    "single_node_bf16.yaml": dict(
        distributed_type=DistributedType.MULTI_GPU, mixed_precision="bf16", num_machines=1, use_cpu=False
    ),
    "multi_node.yaml": dict(
        distributed_type=DistributedType.MULTI_GPU,
        mixed_precision="bf16",
        rdzv_backend="c10d",
        use_cpu=False,
    ),
    "single_gpu.yaml": dict(distributed_type=DistributedType.NO, num_processes=1, use_cpu=False),
    "cpu_2proc.yaml": dict(
        distributed_type=DistributedType.MULTI_GPU,
        num_processes=2,
        num_machines=1,
        mixed_precision="no",
        use_cpu=True,
    ),
}

# Each process of the launch writes its rank, world size and backend.
WORLD_SCRIPT = """
import json, os, sys
import torch.distributed as dist
from accelerate import Accelerator
acc = Accelerator()
backend = dist.get_backend() if dist.is_initialized() else None
row = dict(rank=acc.process_index, world=acc.num_processes, type=str(acc.distributed_type), backend=backend)
with open(os.path.join(sys.argv[1], f"{os.getpid()}.json"), "w") as f:
    json.dump(row, f)
acc.wait_for_everyone()  # no rank tears down while another still talks to it
acc.end_training()  # destroy the process group: exiting with a live one can abort (SIGABRT)
"""


def test_every_config_is_listed_and_documented():
    assert sorted(p.name for p in CONFIGS) == sorted(EXPECTED)
    readme = (LAUNCH / "README.md").read_text()
    for p in CONFIGS:
        assert f"## `{p.name}`" in readme, f"launch/README.md has no section for {p.name}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_accelerate_reads_config(path: Path):
    cfg = load_config_from_file(str(path))  # accelerate's own loader: unknown keys are errors
    for key, value in EXPECTED[path.name].items():
        assert getattr(cfg, key) == value, f"{path.name}: {key}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_key_has_a_comment(path: Path):
    keys = yaml.safe_load(path.read_text())
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith((" ", "#"))]
    assert sorted(line.split(":")[0] for line in lines) == sorted(keys)  # one top-level line per key
    uncommented = [line for line in lines if " # " not in line]
    assert not uncommented, f"{path.name}: keys without a comment: {uncommented}"


def test_accelerate_launch_ignores_the_rendezvous_keys():
    """Why the launchers pass --rdzv_backend c10d as a flag (accelerate 1.15): `accelerate launch`
    copies a config key only where its flag's default is None, and --rdzv_backend defaults to
    'static' (--same_network to False). If accelerate starts honouring the keys, this test fails."""
    parser = launch_command_parser()
    args, *_ = _validate_launch_command(
        parser.parse_args(["--config_file", str(LAUNCH / "multi_node.yaml"), "train.py"])
    )
    assert load_config_from_file(str(LAUNCH / "multi_node.yaml")).rdzv_backend == "c10d"
    assert (args.rdzv_backend, args.same_network, args.max_restarts) == ("static", False, 0)


def launch_cpu_2proc(tmp_path: Path, use_cpu_env: bool) -> list[dict]:
    """`accelerate launch --config_file launch/cpu_2proc.yaml` of WORLD_SCRIPT; one row per process."""
    script = tmp_path / "world.py"
    script.write_text(WORLD_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env["OMP_NUM_THREADS"] = "1"
    if use_cpu_env:
        env["ACCELERATE_USE_CPU"] = "1"
    cmd = [accelerate, "launch", "--config_file", str(LAUNCH / "cpu_2proc.yaml"), str(script), str(out)]
    code, output = finish(procs.spawn(cmd, env=env), timeout=300)
    assert code == 0, output[-3000:]
    return sorted((json.loads(p.read_text()) for p in out.glob("*.json")), key=lambda r: r["rank"])


@pytest.mark.slow
def test_cpu_2proc_starts_two_ranks(tmp_path):
    rows = launch_cpu_2proc(tmp_path, use_cpu_env=True)
    assert [r["rank"] for r in rows] == [0, 1]
    assert {r["world"] for r in rows} == {2}
    assert {r["backend"] for r in rows} == {"gloo"}
    assert {r["type"] for r in rows} == {"DistributedType.MULTI_CPU"}


@pytest.mark.slow
def test_cpu_2proc_without_the_variable_trains_alone_twice(tmp_path):
    """Why launch/README.md insists on ACCELERATE_USE_CPU=1 (accelerate 1.15): the MULTI_GPU
    launcher starts two processes but does not pass `use_cpu` on, so each is a world of one.
    If accelerate fixes this, this test fails: drop the variable from the docs then."""
    rows = launch_cpu_2proc(tmp_path, use_cpu_env=False)
    assert len(rows) == 2
    assert [r["world"] for r in rows] == [1, 1], rows
    assert {r["type"] for r in rows} == {"DistributedType.NO"}  # prepare() wraps nothing: no gradient sync


FLIGHT_RECORDER = {"TORCH_NCCL_TRACE_BUFFER_SIZE": "2000", "TORCH_NCCL_DUMP_ON_TIMEOUT": "1"}
TRAINING_MANIFESTS = ["k8s/base/pytorchjob/pytorchjob.yaml", "k8s/base/indexed-job/indexed-job.yaml"]


def test_the_launchers_agree_on_the_flight_recorder():
    """launch/README.md's export line (for a bare `accelerate launch`), slurm/train.sbatch and the
    k8s training manifests turn NCCL's Flight Recorder on with the same values (docs/debugging.md)."""
    readme = (LAUNCH / "README.md").read_text()
    assert "export " + " ".join(f"{k}={v}" for k, v in FLIGHT_RECORDER.items()) in readme
    sbatch = (REPO / "slurm" / "train.sbatch").read_text()
    for k, v in FLIGHT_RECORDER.items():
        assert f"export {k}=${{{k}:-{v}}}" in sbatch, k  # a site's own value wins
    for manifest in TRAINING_MANIFESTS:
        (job,) = yaml.safe_load_all((REPO / manifest).read_text())
        specs = job["spec"]["pytorchReplicaSpecs"].values() if job["kind"] == "PyTorchJob" else [job["spec"]]
        for spec in specs:
            env = {e["name"]: e.get("value") for e in spec["template"]["spec"]["containers"][0]["env"]}
            assert {k: env.get(k) for k in FLIGHT_RECORDER} == FLIGHT_RECORDER, manifest
