"""The deployment files agree with their schemas and with the code, checked without Docker.

- ``docker-compose.yml`` validates against the Compose Specification schema that
  ``check-jsonschema`` vendors (no download at test time).
- The kustomize overlays render and every built-in resource validates against the
  Kubernetes OpenAPI schemas that ``kubernetes-validate`` ships (strict: unknown
  fields fail). Rendering uses a small kustomize subset written here (resources,
  namespace, images, strategic-merge patches): no kustomize binary comes from PyPI.
  Where ``kubectl`` is on the PATH, its real kustomize renders the same overlays and
  the two renderings must be equal, which keeps the subset honest.
- The Dockerfiles parse (``dockerfile-parse``) and keep their promises: multi-stage,
  non-root, the entry point, the metrics port.
- Environment variables, ports, probe paths, grace periods, queue names and the uid
  are the same in the manifests, the compose file, the images and the code.
"""

from __future__ import annotations

import copy
import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema
from dockerfile_parse import DockerfileParser
from prometheus_client import REGISTRY
from pydantic import SecretStr

from adapters import metrics
from pagewire.cli import parse_args
from producer.dropfolder import DropFolderSettings
from producer.web.gateway import HttpSettings
from schemas.names import Topology
from schemas.settings import PlannerSettings, RecorderSettings, Settings, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.30"  # the oldest minor we promise to run on
UID = 10001

# Settings classes by subcommand; a role's env must name fields of its own class.
ROLE_SETTINGS: dict[str, type[Settings]] = {
    "planner": PlannerSettings,
    "worker": WorkerSettings,
    "recorder": RecorderSettings,
    "migrate": Settings,
    "dropfolder": DropFolderSettings,
    "http": HttpSettings,
}
# Subcommands the manifests name before the code has them.
PENDING_COMMANDS: set[str] = set()
# Variables the manifests set before schemas/settings.py reads them: the metrics port, until
# the lead wires adapters/metrics.py in. Remove a name here once its field exists.
PENDING_VARIABLES = {"PAGEWIRE_METRICS_PORT"} - {f"PAGEWIRE_{name.upper()}" for name in Settings.model_fields}
BUILTIN_API_GROUPS = ("v1", "apps/v1", "batch/v1", "policy/v1")


# --- a kustomize subset --------------------------------------------------------------


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def strategic_merge(base: Any, patch: Any) -> Any:
    """Kustomize's strategic merge, as far as these manifests use it.

    Maps merge key by key; lists of maps that all carry ``name`` (containers, env, volumes,
    volume mounts, ports) merge item by item on it; any other list is replaced, which is
    also what kustomize does for custom resources (JSON merge patch).
    """
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(item, dict) and "name" in item for item in base + patch)
    ):
        # Kustomize's order: the patch's items first (merged with their base item), then the rest of the base.
        by_name = {item["name"]: item for item in base}
        patched = {item["name"] for item in patch}
        merged_list = [
            strategic_merge(by_name[i["name"]], i) if i["name"] in by_name else copy.deepcopy(i) for i in patch
        ]
        merged_list += [copy.deepcopy(item) for item in base if item["name"] not in patched]
        return merged_list
    return copy.deepcopy(patch)


def pod_containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    template = doc.get("spec", {}).get("template", {}).get("spec", {})
    yield from template.get("initContainers", [])
    yield from template.get("containers", [])


def render(directory: Path) -> list[dict[str, Any]]:
    """Render one kustomization directory with the subset described in the module docstring."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    supported = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
    assert set(kustomization) <= supported, f"{directory}: the test renderer lacks {set(kustomization) - supported}"
    docs: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        docs.extend(render(path) if path.is_dir() else load_documents(path))
    for patch_entry in kustomization.get("patches", []):
        assert set(patch_entry) == {"path"}, "the test renderer matches patches by kind and name only"
        for patch in load_documents(directory / patch_entry["path"]):
            matches = [
                i
                for i, doc in enumerate(docs)
                if (doc["kind"], doc["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
            ]
            assert len(matches) == 1, f"patch {patch_entry['path']} matches {len(matches)} resources"
            docs[matches[0]] = strategic_merge(docs[matches[0]], patch)
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        for doc in docs:
            for container in pod_containers(doc):
                if container["image"].split(":")[0] == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return docs


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / "overlays" / request.param)


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def config_map(docs: list[dict[str, Any]]) -> dict[str, str]:
    return dict(find(docs, "ConfigMap", "pagewire-config")["data"])


def example_secrets() -> list[dict[str, Any]]:
    return load_documents(K8S / "base" / "secret.example.yaml")


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def grace_of(args: list[str]) -> float:
    """The drain time a role gets from these arguments, from the real command-line parser."""
    return float(parse_args(args).grace)


def duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text))


# --- Kubernetes -----------------------------------------------------------------------


def test_overlays_render_to_valid_kubernetes_resources(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    # Given an overlay rendered
    name, docs = rendered
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}

    # Then it holds every role, the migration Job, the budgets and the autoscaler
    for role in ("planner", "worker", "recorder", "dropfolder"):
        assert ("Deployment", f"pagewire-{role}") in kinds, role
    for role in ("planner", "worker", "recorder"):
        assert ("PodDisruptionBudget", f"pagewire-{role}") in kinds, role
    assert ("Job", "pagewire-migrate") in kinds
    assert ("ScaledObject", "pagewire-worker") in kinds
    assert not any(kind == "Secret" for kind, _ in kinds), "secrets come from the cluster's secret store"

    # And every built-in resource is valid against the Kubernetes schema, unknown fields included
    for doc in docs:
        if doc["apiVersion"] in BUILTIN_API_GROUPS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        else:
            assert doc["apiVersion"] in ("keda.sh/v1alpha1",), f"{name}: unexpected custom resource {doc['kind']}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its kustomize) is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_test_renderer_matches_kustomize(overlay: str) -> None:
    output = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)], check=True, capture_output=True, text=True
    ).stdout

    def key(doc: dict[str, Any]) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    theirs = sorted((d for d in yaml.safe_load_all(output) if d), key=key)
    ours = sorted(render(K8S / "overlays" / overlay), key=key)
    assert [key(d) for d in ours] == [key(d) for d in theirs]
    for mine, real in zip(ours, theirs, strict=True):
        assert mine == real, key(mine)


def test_example_secret_is_valid_and_keeps_secrets_out_of_the_config_map() -> None:
    secrets = example_secrets()
    for doc in secrets:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    app = find(secrets, "Secret", "pagewire-secrets")["stringData"]
    data = config_map(render(K8S / "base"))

    # Every secret setting (SecretStr in schemas/settings.py) is in the Secret, none in the ConfigMap
    secret_fields = {
        f"PAGEWIRE_{name.upper()}" for name, field in Settings.model_fields.items() if field.annotation is SecretStr
    }
    assert secret_fields <= set(app)
    assert not secret_fields & set(data)
    assert not any(re.search(r"://[^/@]*:[^/@]*@", value) for value in data.values()), "credentials in a URL"


def test_pods_reference_only_what_exists(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    secret_names = {d["metadata"]["name"] for d in example_secrets()}
    config_names = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for doc in docs:
        for container in pod_containers(doc):
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secret_names
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_names
        for volume in doc.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_env_names_are_settings_of_their_role(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    # Given the variables each pod gets (the ConfigMap, the Secret, its own env)
    _, docs = rendered
    shared = set(config_map(docs)) | set(find(example_secrets(), "Secret", "pagewire-secrets")["stringData"])
    for doc in docs:
        for container in pod_containers(doc):
            role = container["args"][0]
            names = shared | {e["name"] for e in container.get("env", [])}
            # Then each is a field of that role's settings class: a typo would be silently ignored
            assert_settings_names(ROLE_SETTINGS[role], names, f"{doc['kind']}/{doc['metadata']['name']}")


def assert_settings_names(settings: type[Settings], names: set[str], where: str) -> None:
    fields = {f"PAGEWIRE_{name.upper()}" for name in settings.model_fields}
    aliases = {str(f.validation_alias) for f in settings.model_fields.values() if f.validation_alias}
    unknown = names - fields - aliases - PENDING_VARIABLES
    assert not unknown, f"{where}: not settings of {settings.__name__}: {sorted(unknown)}"


def test_ports_probes_and_uid_agree_with_the_code(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    port = int(config_map(docs)["PAGEWIRE_METRICS_PORT"])
    assert port == metrics.DEFAULT_PORT
    if "metrics_port" in Settings.model_fields:
        assert port == Settings.model_fields["metrics_port"].default
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]
        assert pod["spec"]["securityContext"]["runAsUser"] == UID
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        if doc["kind"] == "Job":
            continue
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        (container,) = pod["spec"]["containers"]
        assert {"name": "metrics", "containerPort": port} in container["ports"]
        for probe, path in (
            ("startupProbe", metrics.HEALTH_PATH),
            ("livenessProbe", metrics.HEALTH_PATH),
            ("readinessProbe", metrics.READY_PATH),
        ):
            assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, (doc["metadata"]["name"], probe)


def test_grace_periods_outlast_the_roles_drain(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for doc in docs:
        for container in pod_containers(doc):
            args = container["args"]
            if args[0] in PENDING_COMMANDS:
                continue
            parsed = parse_args(args)  # the manifests run real subcommands
            if doc["kind"] == "Deployment":
                # Roles without --grace (the drop-folder watcher) finish the one object in hand.
                assert doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > getattr(parsed, "grace", 0), (
                    args
                )
    worker = find(docs, "Deployment", "pagewire-worker")
    assert grace_of(worker["spec"]["template"]["spec"]["containers"][0]["args"]) == 60


def test_workers_scale_on_the_task_queue_to_zero(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    scaled = find(docs, "ScaledObject", "pagewire-worker")["spec"]
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "pagewire-worker"}
    assert scaled["minReplicaCount"] == 0
    assert "replicas" not in find(docs, "Deployment", "pagewire-worker")["spec"], "KEDA owns the replica count"
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "rabbitmq"
    prefix = config_map(docs)["PAGEWIRE_PREFIX"]
    assert trigger["metadata"]["queueName"] == Topology(prefix=prefix).tasks_queue
    auth = find(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    secret_names = {d["metadata"]["name"]: d["stringData"] for d in example_secrets()}
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["key"] in secret_names[ref["name"]]


def test_gpu_overlay_gives_workers_one_gpu_on_gpu_nodes() -> None:
    docs = render(K8S / "overlays" / "gpu")
    pod = find(docs, "Deployment", "pagewire-worker")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "pagewire-gpu" in container["image"]
    assert pod["nodeSelector"] and pod["tolerations"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PAGEWIRE_ENGINE"] == "nemotron"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[env["NEMOTRON_OCR_MODEL_DIR"]]["readOnly"] is True
    # Only the workers take the GPU image and a GPU
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job") and doc["metadata"]["name"] != "pagewire-worker":
            for other in pod_containers(doc):
                assert "pagewire-gpu" not in other["image"]
                assert "nvidia.com/gpu" not in other.get("resources", {}).get("limits", {})


def test_migration_is_a_job() -> None:
    job = find(render(K8S / "overlays" / "cpu"), "Job", "pagewire-migrate")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate", "--create-database"]
    assert parse_args(container["args"]).create_database


# --- docker compose -------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_spec() -> None:
    jsonschema.validate(compose(), get_builtin_schema("vendor.compose-spec"))


def test_compose_services_agree_with_the_code() -> None:
    services = compose()["services"]
    assert {
        "rabbitmq",
        "postgres",
        "minio",
        "minio-init",
        "migrate",
        "planner",
        "worker",
        "recorder",
        "dropfolder",
        "http",
    } <= set(services)
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert "profiles" not in services["dropfolder"] and "profiles" not in services["http"]
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]

    for name, service in services.items():
        command = service.get("command")
        if not service.get("image", "").startswith("pagewire") or command[0] in PENDING_COMMANDS | {"--help"}:
            continue
        args = parse_args(command)  # every role service runs a real subcommand
        env = set(service["environment"])
        assert_settings_names(ROLE_SETTINGS.get(command[0], Settings), env, f"compose service {name}")
        if command[0] in ("planner", "worker", "recorder"):
            # Docker's default stop timeout is 10 s: each role needs longer than its drain
            assert duration_s(service["stop_grace_period"]) > args.grace, name
            assert service["environment"]["PAGEWIRE_METRICS_PORT"] == str(metrics.DEFAULT_PORT)
            probe = " ".join(service["healthcheck"]["test"])
            assert f"127.0.0.1:{metrics.DEFAULT_PORT}{metrics.READY_PATH}" in probe
    assert services["migrate"]["command"] == ["migrate", "--create-database"]
    gpu_env = services["worker-gpu"]["environment"]
    assert any(v.endswith(":" + gpu_env["NEMOTRON_OCR_MODEL_DIR"] + ":ro") for v in services["worker-gpu"]["volumes"])


# --- images ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_parse_and_keep_their_promises(name: str) -> None:
    # From a file object: a path is taken for a directory unless the file is named Dockerfile.
    parser = DockerfileParser(fileobj=io.BytesIO((ROOT / name).read_bytes()))
    instructions = [(i["instruction"], i["value"]) for i in parser.structure if i["instruction"] != "COMMENT"]
    final_stage = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]

    assert parser.is_multistage
    assert ("USER", f"{UID}:{UID}") in final_stage, "runs as the uid the manifests expect, not root"
    assert ("ENTRYPOINT", '["pagewire"]') in final_stage, "one image, every role by subcommand"
    assert ("EXPOSE", str(metrics.DEFAULT_PORT)) in final_stage
    assert any(op == "COPY" and value.startswith("alembic/") for op, value in final_stage), "migrate needs alembic/"
    env = parser.envs
    assert env["PAGEWIRE_METRICS_PORT"] == str(metrics.DEFAULT_PORT)
    assert_settings_names(WorkerSettings, {k for k in env if k.startswith(("PAGEWIRE_", "NEMOTRON_"))}, name)
    if name == "Dockerfile.gpu":
        assert "cuda" in parser.baseimage
        assert (
            env["NEMOTRON_OCR_MODEL_DIR"]
            == compose()["services"]["worker-gpu"]["environment"]["NEMOTRON_OCR_MODEL_DIR"]
        )

    # Whatever the Dockerfile copies from the context, .dockerignore lets through
    allowed = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    for op, value in instructions:
        if op == "COPY" and not value.startswith("--from"):
            source = value.split()[0].rstrip("/")
            assert source in allowed, f"{name} copies {source}, which .dockerignore leaves out"
            assert (ROOT / source).exists(), source


# --- dashboard ------------------------------------------------------------------------


def test_dashboard_queries_name_metrics_the_code_exports() -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exported = {name for family in REGISTRY.collect() for name in (family.name, *(s.name for s in family.samples))}
    # Histogram series exist only once observed; their families say which names will appear.
    for family in REGISTRY.collect():
        if family.type == "histogram":
            exported |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        if family.type == "counter":
            exported.add(f"{family.name}_total")
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bpagewire_\w+", target["expr"])
    }
    assert queried, "the dashboard queries pagewire metrics"
    assert queried <= exported, sorted(queried - exported)
