"""The deployment files agree with their schemas and with the code, checked without Docker.

- ``docker-compose.yml`` validates against the Compose Specification schema that
  ``check-jsonschema`` vendors (no download at test time).
- The kustomize overlays are rendered by the real kustomize
  (``tests/unit/test_manifests.py``, which also validates them against the
  Kubernetes and CRD schemas); here they are checked against the code.
- The Dockerfiles parse (``dockerfile-parse``) and keep their promises: multi-stage,
  non-root, the entry point, the metrics port.
- Environment variables, ports, probe paths, grace periods, queue names and the uid
  are the same in the manifests, the compose file, the images and the code.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tomllib
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
from consumer import sandbox
from pagewire.cli import parse_args
from producer.dropfolder import DropFolderSettings
from producer.jobs import RetentionSettings
from producer.web.app import create_app
from producer.web.gateway import HttpSettings
from schemas.names import Topology
from schemas.settings import PlannerSettings, RecorderSettings, Settings, WorkerSettings
from tests.unit.test_manifests import pod_spec, render

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
    "gc": RetentionSettings,
}
# Subcommands the manifests name before the code has them.
PENDING_COMMANDS: set[str] = set()
# Variables the deployment files set before the code reads them: the gateway's explicit
# opt-out of API keys for a laptop. A name leaves this set by itself once its field exists.
PENDING_VARIABLES = {"PAGEWIRE_METRICS_PORT", "PAGEWIRE_HTTP_NO_AUTH"} - {
    f"PAGEWIRE_{name.upper()}" for cls in ROLE_SETTINGS.values() for name in cls.model_fields
}


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def pod_containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(doc) or {}
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / "overlays" / request.param)


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def config_map(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The generated ConfigMap's data (its name carries a hash: ``pagewire-config-<hash>``)."""
    (found,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("pagewire-config-")]
    return dict(found["data"])


def example_secrets() -> list[dict[str, Any]]:
    return load_documents(K8S / "base" / "secret.example.yaml")


def secret_data() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["stringData"] for d in example_secrets()}


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def grace_of(args: list[str]) -> float:
    """The drain time a role gets from these arguments, from the real command-line parser."""
    return float(parse_args(args).grace)


def duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text))


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """What a container's environment holds: the ConfigMap, the example Secrets, its own env."""
    secrets = secret_data()
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            values.update(config_map(docs))
        if "secretRef" in source:
            values.update(secrets[source["secretRef"]["name"]])
    for entry in container.get("env", []):
        if "value" in entry:
            values[entry["name"]] = entry["value"]
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            ref = entry["valueFrom"]["secretKeyRef"]
            values[entry["name"]] = secrets[ref["name"]][ref["key"]]
    return values


def settings_from(settings: type[Settings], variables: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Build ``settings`` the way the role does, from environment variables, and nothing else."""
    with monkeypatch.context() as env:
        for name in os.environ:
            if name.startswith(("PAGEWIRE_", "NEMOTRON_")):
                env.delenv(name)
        for name, value in variables.items():
            env.setenv(name, value)
        return settings()


# --- Kubernetes -----------------------------------------------------------------------


def test_overlays_hold_every_role(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for role in ("planner", "worker", "recorder", "dropfolder", "http"):
        assert ("Deployment", f"pagewire-{role}") in kinds, role
    for role in ("planner", "worker", "recorder", "http"):
        assert ("PodDisruptionBudget", f"pagewire-{role}") in kinds, role
    assert ("Service", "pagewire-http") in kinds
    assert ("Job", "pagewire-migrate") in kinds
    assert ("CronJob", "pagewire-gc") in kinds
    assert ("ScaledObject", "pagewire-worker") in kinds
    assert not any(kind == "Secret" for kind, _ in kinds), "secrets come from the cluster's secret store"


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
    assert "PAGEWIRE_API_KEYS" not in data and "PAGEWIRE_API_KEYS" not in app, "only the gateway gets the keys"
    assert not any(re.search(r"://[^/@]*:[^/@]*@", value) for value in data.values()), "credentials in a URL"


def test_pods_reference_only_what_exists(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    secrets = secret_data()
    config_names = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for doc in docs:
        for container in pod_containers(doc):
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_names
            for entry in container.get("env", []):
                if ref := entry.get("valueFrom", {}).get("secretKeyRef"):
                    assert ref["key"] in secrets[ref["name"]], ref
        for volume in (pod_spec(doc) or {}).get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_env_names_are_settings_of_their_role(
    rendered: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, docs = rendered
    for doc in docs:
        for container in pod_containers(doc):
            role = container["args"][0]
            # Given the variables the pod gets (the ConfigMap, the Secrets, its own env)
            values = container_env(docs, container)
            where = f"{doc['kind']}/{doc['metadata']['name']}"
            # Then each is a field of that role's settings class (a typo would be silently ignored)
            assert_settings_names(ROLE_SETTINGS[role], set(values), where)
            # And the role's settings accept their values
            settings_from(ROLE_SETTINGS[role], values, monkeypatch)


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
        spec = pod_spec(doc)
        if spec is None:
            continue
        assert spec["securityContext"]["runAsUser"] == UID
        assert spec["securityContext"]["runAsNonRoot"] is True
        if doc["kind"] != "Deployment" or doc["metadata"]["name"] == "pagewire-http":
            continue  # one-shot runs serve nothing; the gateway has its own port (below)
        pod = doc["spec"]["template"]
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        (container,) = spec["containers"]
        assert {"name": "metrics", "containerPort": port} in container["ports"]
        for probe, path in (
            ("startupProbe", metrics.HEALTH_PATH),
            ("livenessProbe", metrics.HEALTH_PATH),
            ("readinessProbe", metrics.READY_PATH),
        ):
            assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, (doc["metadata"]["name"], probe)


def test_the_gateway_is_probed_and_served_on_its_own_port(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    deployment = find(docs, "Deployment", "pagewire-http")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = parse_args(container["args"])
    assert args.command == "http"
    assert args.host == "0.0.0.0", "reachable from the Service, not only from inside the pod"
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": args.port}
    # The probes ask the gateway's own /health (it serves no metrics port)
    routes = set(create_app(HttpSettings(http_no_auth=True)).openapi()["paths"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
        assert "/health" in routes
    assert "prometheus.io/scrape" not in deployment["spec"]["template"]["metadata"].get("annotations", {})
    # The Service selects its pods and sends to the named port
    service = find(docs, "Service", "pagewire-http")["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()
    assert [p["targetPort"] for p in service["ports"]] == ["http"]
    # API keys are required: the pod does not start without them
    (keys,) = [e for e in container["env"] if e["name"] == "PAGEWIRE_API_KEYS"]
    assert keys["valueFrom"]["secretKeyRef"].get("optional", False) is False


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


def test_workers_scale_on_both_task_queues_from_zero(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    scaled = find(docs, "ScaledObject", "pagewire-worker")["spec"]
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "pagewire-worker"}
    assert scaled["minReplicaCount"] == 0
    assert "replicas" not in find(docs, "Deployment", "pagewire-worker")["spec"], "KEDA owns the replica count"
    # One trigger per queue the workers consume, each able to wake the first worker on its own
    topology = Topology(prefix=config_map(docs)["PAGEWIRE_PREFIX"])
    triggers = scaled["triggers"]
    assert sorted(t["metadata"]["queueName"] for t in triggers) == sorted(
        [topology.tasks_queue, topology.tasks_high_queue]
    )
    secrets = secret_data()
    for trigger in triggers:
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["activationValue"] == "0"
        assert trigger["metadata"]["value"] == ("20" if name == "gpu" else "4")
        auth = find(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secrets[ref["name"]]


def test_gpu_overlay_gives_workers_one_gpu_on_gpu_nodes_without_an_address_space_cap() -> None:
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
    # CUDA does not start under the page process's address-space cap: 0 lifts it
    assert env["PAGEWIRE_PAGE_MEMORY_MB"] == "0"
    assert "memory" in container["resources"]["limits"], "the container's limit bounds the worker instead"
    # Only the workers take the GPU image and a GPU
    for doc in docs:
        if pod_spec(doc) is not None and doc["metadata"]["name"] != "pagewire-worker":
            for other in pod_containers(doc):
                assert "pagewire-gpu" not in other["image"]
                assert "nvidia.com/gpu" not in other.get("resources", {}).get("limits", {})


def test_cpu_workers_keep_the_address_space_cap() -> None:
    (container,) = find(render(K8S / "overlays" / "cpu"), "Deployment", "pagewire-worker")["spec"]["template"]["spec"][
        "containers"
    ]
    assert "PAGEWIRE_PAGE_MEMORY_MB" not in {e["name"] for e in container["env"]}


def test_a_page_memory_of_zero_sets_no_address_space_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the GPU deployment files rely on: 0 means no cap, and is a valid setting
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(sandbox.resource, "setrlimit", lambda *args: calls.append(args))
    sandbox._limit_memory(0)
    assert calls == []
    sandbox._limit_memory(3072)
    assert calls == [(sandbox.resource.RLIMIT_AS, (3072 * 1024**2, 3072 * 1024**2))]
    assert settings_from(WorkerSettings, {"PAGEWIRE_PAGE_MEMORY_MB": "0"}, monkeypatch).page_memory_mb == 0  # type: ignore[attr-defined]


def test_migration_is_a_job() -> None:
    job = find(render(K8S / "overlays" / "cpu"), "Job", "pagewire-migrate")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate", "--create-database"]
    assert parse_args(container["args"]).create_database


def test_retention_runs_on_a_schedule_with_a_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(K8S / "overlays" / "cpu")
    cron = find(docs, "CronJob", "pagewire-gc")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid", "two runs would delete the same objects"
    (container,) = pod_containers(cron)
    args = parse_args(container["args"])
    assert args.command == "gc" and not args.dry_run and args.every is None, "one run per schedule, for real"
    # Without a limit `pagewire gc` refuses to run: the CronJob sets one
    settings = settings_from(RetentionSettings, container_env(docs, container), monkeypatch)
    assert isinstance(settings, RetentionSettings)
    assert settings.retention_max_age or settings.retention_max_jobs or settings.retention_max_bytes


# --- docker compose -------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_spec() -> None:
    jsonschema.validate(compose(), get_builtin_schema("vendor.compose-spec"))


def test_compose_services_agree_with_the_code() -> None:
    services = compose()["services"]
    assert {
        "rabbitmq",
        "postgres",
        "seaweedfs",
        "migrate",
        "planner",
        "worker",
        "recorder",
        "dropfolder",
        "http",
    } <= set(services)
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["http-dev"]["profiles"] == ["dev"]
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
        if command[0] == "http":
            # The gateway serves no metrics port: its health check asks its own /health
            probe = " ".join(service["healthcheck"]["test"])
            assert f"127.0.0.1:{args.port}/health" in probe, name
            assert f"{metrics.DEFAULT_PORT}" not in probe, name
    assert services["migrate"]["command"] == ["migrate", "--create-database"]
    gpu_env = services["worker-gpu"]["environment"]
    assert any(v.endswith(":" + gpu_env["NEMOTRON_OCR_MODEL_DIR"] + ":ro") for v in services["worker-gpu"]["volumes"])


def test_compose_publishes_on_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)


def test_compose_gpu_worker_has_no_address_space_cap() -> None:
    services = compose()["services"]
    assert services["worker-gpu"]["environment"]["PAGEWIRE_PAGE_MEMORY_MB"] == "0"
    assert "PAGEWIRE_PAGE_MEMORY_MB" not in services["worker"]["environment"], "CPU workers keep the cap"


def gateway_guard(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the ``http`` service's entry point as its container would, with a stand-in ``pagewire``."""
    service = compose()["services"]["http"]
    # Compose turns $$ into $ before the container sees it.
    entrypoint = [part.replace("$$", "$") for part in service["entrypoint"]]
    fake = tmp_path / "pagewire"
    fake.write_text('#!/bin/sh\necho "started: $*"\n')
    fake.chmod(0o755)
    path = f"{tmp_path}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run(
        [*entrypoint, *service["command"]], env={"PATH": path, **env}, capture_output=True, text=True, timeout=30
    )


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
def test_compose_gateway_refuses_to_start_without_api_keys(tmp_path: Path) -> None:
    for keys in ({}, {"PAGEWIRE_API_KEYS": ""}, {"PAGEWIRE_API_KEYS": "[]"}):
        refused = gateway_guard(tmp_path, keys)
        assert refused.returncode != 0, keys
        assert "PAGEWIRE_API_KEYS" in refused.stderr and "started" not in refused.stdout
    started = gateway_guard(tmp_path, {"PAGEWIRE_API_KEYS": '["k"]'})
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "started: http --host 0.0.0.0 --port 8080"
    # The environment passes the key on, interpolated from the host's
    assert compose()["services"]["http"]["environment"]["PAGEWIRE_API_KEYS"] == "${PAGEWIRE_API_KEYS:-}"


def test_compose_dev_gateway_is_the_only_one_without_keys() -> None:
    services = compose()["services"]
    dev = services["http-dev"]
    assert dev["environment"]["PAGEWIRE_HTTP_NO_AUTH"] == "1"
    assert "PAGEWIRE_API_KEYS" not in dev["environment"]
    assert dev["command"] == services["http"]["command"]
    assert "entrypoint" not in dev
    assert not any("PAGEWIRE_HTTP_NO_AUTH" in s.get("environment", {}) for n, s in services.items() if n != "http-dev")


def test_compose_s3_is_seaweedfs_with_the_roles_credentials_and_bucket() -> None:
    spec = compose()
    services = spec["services"]
    assert not any("minio" in s.get("image", "") for s in services.values())
    weed = services["seaweedfs"]
    assert weed["image"].startswith("chrislusf/seaweedfs:")
    flags = dict(arg.lstrip("-").split("=", 1) for arg in weed["command"][1:])
    assert weed["command"][0] == "mini"
    env = services["planner"]["environment"]
    # The roles reach S3 at the service's name and S3 port, in the bucket weed creates
    assert env["PAGEWIRE_S3_ENDPOINT_URL"] == f"http://seaweedfs:{flags['s3.port']}"
    assert flags["bucket"] == env["PAGEWIRE_S3_BUCKET"]
    assert f"/buckets/{env['PAGEWIRE_S3_BUCKET']}/" in " ".join(weed["healthcheck"]["test"])
    # With the one identity the roles sign with
    (mount,) = weed["configs"]
    assert mount["target"] == flags["s3.config"]
    identities = json.loads(spec["configs"][mount["source"]]["content"])["identities"]
    credentials = [c for i in identities for c in i["credentials"]]
    assert {"accessKey": env["PAGEWIRE_S3_ACCESS_KEY_ID"], "secretKey": env["PAGEWIRE_S3_SECRET_ACCESS_KEY"]} in (
        credentials
    )
    # Every role waits for it to be healthy
    for name, service in services.items():
        if service.get("image", "").startswith("pagewire") and name != "migrate":
            assert service["depends_on"]["seaweedfs"]["condition"] == "service_healthy", name


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
    # pagewire is installed as its wheel (the migrations inside it), not run from copied sources
    assert ("COPY", ". ./") in instructions
    assert any(op == "RUN" and value.split()[:4] == ["pip", "install", "--no-deps", "."] for op, value in instructions)
    assert [value for op, value in final_stage if op == "COPY"] == ["--from=builder /opt/venv /opt/venv"]
    assert "PYTHONPATH" not in parser.envs, "an installed package needs no source tree on the path"
    env = parser.envs
    assert env["PAGEWIRE_METRICS_PORT"] == str(metrics.DEFAULT_PORT)
    assert_settings_names(WorkerSettings, {k for k in env if k.startswith(("PAGEWIRE_", "NEMOTRON_"))}, name)
    if name == "Dockerfile.gpu":
        assert "cuda" in parser.baseimage
        assert (
            env["NEMOTRON_OCR_MODEL_DIR"]
            == compose()["services"]["worker-gpu"]["environment"]["NEMOTRON_OCR_MODEL_DIR"]
        )

    # Whatever the Dockerfile copies from the context by name, .dockerignore lets through
    allowed = image_context()
    for op, value in instructions:
        if op == "COPY" and not value.startswith("--from") and value != ". ./":
            source = value.split()[0].rstrip("/")
            assert source in allowed, f"{name} copies {source}, which .dockerignore leaves out"
            assert (ROOT / source).exists(), source


def image_context() -> set[str]:
    """What .dockerignore lets into the images' build context (an allow-list: ``*``, then ``!path``)."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines, ".dockerignore is an allow-list"
    return {line[1:].rstrip("/") for line in lines if line.startswith("!")}


def test_the_build_context_holds_everything_the_wheel_is_built_from() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    sources = {
        setuptools["package-dir"].get(package, package.replace(".", "/")).split("/")[0]
        for package in setuptools["packages"]
    }
    needed = {"pyproject.toml", project["project"]["readme"], *sources}
    assert needed <= image_context(), sorted(needed - image_context())


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
