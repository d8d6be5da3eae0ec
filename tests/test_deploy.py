"""The deployment files are valid for whatever reads them, and agree with the worker.

Offline, no Docker and no cluster: each file is checked against the published schema of
the tool that reads it, then against what the worker and the other files say.

- Compose: the Compose Specification's JSON schema (the copy ``check-jsonschema`` ships),
  and ``docker compose config`` too where the client has the plugin.
- Kubernetes: every manifest against the Kubernetes OpenAPI schemas of each minor version
  in ``KUBERNETES_VERSIONS`` (``kubernetes-validate``, strict: unknown fields are errors,
  as ``kubectl apply`` rejects them); KEDA's ScaledObject and the Prometheus Operator's
  ServiceMonitor against their CRDs' schemas, vendored in ``deploy/k8s/schemas/``.
- Dockerfile: BuildKit's parser and the rules in ``tests/dockerfile_lint.py``.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import math
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.dockerfile_lint import lint, stages
from worker.config import ENV_PREFIX, Settings
from worker.loop import CLOSE_FLUSH_TIMEOUT_S
from worker.sync.model_sync import ModelSync

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"

#: The Kubernetes versions the manifests are stated to work on (README, deploy/README.md).
KUBERNETES_VERSIONS = tuple(f"1.{minor}" for minor in range(30, 38))
#: Custom resources: (apiVersion, kind) -> the vendored CRD that defines them.
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): K8S / "schemas/keda-2.16.1-scaledobjects.keda.sh.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (
        K8S / "schemas/prometheus-operator-0.87.0-servicemonitors.monitoring.coreos.com.yaml"
    ),
}
#: Every manifest in deploy/k8s: the kustomization's resources plus the example Secret.
MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _manifest(name: str) -> dict[str, Any]:
    document: dict[str, Any] = _yaml(K8S / name)
    return document


def _schema_errors(schema: dict[str, Any], document: Any) -> list[str]:
    """Every violation, as ``path: message`` (the validator class follows ``$schema``)."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    ]


@pytest.fixture(autouse=True)
def _no_tailor_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings built here must read the deploy files and defaults, not the shell's."""
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)


def _settings_from(variables: dict[str, str]) -> Settings:
    """The worker's settings for these ``TAILOR_*`` variables, as ``tailor run`` sees them."""
    unknown = {k for k in variables if not _is_setting(k)}
    assert not unknown, f"not settings (the worker would ignore them): {sorted(unknown)}"
    return Settings.model_validate(
        {k.removeprefix(ENV_PREFIX).lower(): v for k, v in variables.items()}
    )


def _is_setting(variable: str) -> bool:
    name = variable.removeprefix(ENV_PREFIX).lower()
    return variable.startswith(ENV_PREFIX) and name in Settings.model_fields


# -- Docker Compose ---------------------------------------------------------------------


def compose() -> dict[str, Any]:
    document: dict[str, Any] = _yaml(COMPOSE_FILE)
    return document


def compose_schema() -> dict[str, Any]:
    """The Compose Specification's schema, vendored by check-jsonschema from
    compose-spec/compose-spec (schema/compose-spec.json)."""
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(vendor.joinpath("compose-spec.json").read_text())
    return schema


def compose_topics() -> dict[str, int]:
    """Topic -> partitions, as kafka-init creates them (the deploy files' one statement
    of the partition counts)."""
    script = "\n".join(compose()["services"]["kafka-init"]["command"])
    topics: dict[str, int] = {}
    for line in script.splitlines():
        if "--create" in line:
            args = shlex.split(line)
            topics[args[args.index("--topic") + 1]] = int(args[args.index("--partitions") + 1])
    return topics


def test_compose_file_follows_the_compose_specification() -> None:
    assert _schema_errors(compose_schema(), compose()) == []


def _has_compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return done.returncode == 0


@pytest.mark.skipif(
    not _has_compose_plugin(),
    reason="the docker client has no compose plugin here; the schema test covers the file",
)
def test_docker_compose_accepts_the_file() -> None:
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_compose_runs_two_workers_that_prometheus_scrapes() -> None:
    services = compose()["services"]
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2
    port = int(worker["environment"]["TAILOR_METRICS_PORT"])
    # One host port per replica: a single published port would stop the second one.
    published, target = worker["ports"][0].rsplit(":", 1)
    first, _, last = published.partition("-")
    assert int(target) == port
    assert int(last or first) - int(first) + 1 >= worker["deploy"]["replicas"]

    prometheus = services["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = _yaml(DEPLOY / "prometheus/prometheus.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "tailor")
    assert job["metrics_path"] == "/metrics"
    # DNS discovery returns every replica of the worker service.
    assert job["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": port, "refresh_interval": "15s"}
    ]
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file(), rule_file


def test_compose_provisions_grafana_with_prometheus_and_the_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.removesuffix(":ro").split(":", 1) for v in grafana["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard_target = mounts["./grafana/tailor-dashboard.json"]
    assert (DEPLOY / "grafana/tailor-dashboard.json").is_file()

    datasources = _yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "9090:9090" in compose()["services"]["prometheus"]["ports"]
    providers = _yaml(DEPLOY / "grafana/provisioning/dashboards/tailor.yml")["providers"]
    assert [p["options"]["path"] for p in providers] == [str(Path(dashboard_target).parent)]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == dashboard_target


def test_compose_plays_the_sample_once_with_the_workers_settings() -> None:
    services = compose()["services"]
    sample, worker = services["sample"], services["worker"]
    assert sample["entrypoint"][:3] == ["python", "-m", "worker.sample.play"]
    assert sample["restart"] == "no"
    assert sample["image"] == worker["image"]
    assert sample["depends_on"]["kafka-init"] == {"condition": "service_completed_successfully"}
    assert sample["environment"] == worker["environment"]
    assert importlib.util.find_spec(sample["entrypoint"][2]) is not None


def test_compose_settings_are_settings_and_topics_exist() -> None:
    worker = compose()["services"]["worker"]
    settings = _settings_from(worker["environment"])
    topics = compose_topics()
    for topic in (
        settings.events_topic,
        settings.catalog_topic,
        settings.recommendations_topic,
        settings.dlq_topic,
        settings.model_topic,
    ):
        assert topic in topics, f"kafka-init does not create {topic}"
    assert topics[settings.model_topic] == 1  # one order of deltas for every worker
    assert worker["deploy"]["replicas"] <= topics[settings.events_topic]


# -- Kubernetes -------------------------------------------------------------------------


def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The CRD's schema for that version, strict like the API server's field validation.

    With ``kubectl apply``'s default ``--validate=strict`` an unknown field in a custom
    resource is an error, not something pruned in silence, so every object schema that
    lists its properties gets ``additionalProperties: false`` (unless it already says
    what else it takes, or preserves unknown fields).
    """
    crd = _yaml(CRDS[(api_version, kind)])
    assert crd["spec"]["names"]["kind"] == kind
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: dict[str, Any] = _strict(served["schema"]["openAPIV3Schema"])
    return schema


def _strict(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in strict
        and "additionalProperties" not in strict
        and not strict.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


def validate_manifest(document: dict[str, Any], version: str) -> list[str]:
    """Errors of one manifest under Kubernetes ``version`` (a CRD's kinds by the CRD)."""
    key = (document["apiVersion"], document["kind"])
    if key in CRDS:
        return _schema_errors(crd_schema(*key), document)
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        return [f"{path or '(top)'}: {error.message}"]
    return []


def _every_document() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in MANIFESTS:
        for document in yaml.safe_load_all((K8S / name).read_text()):
            if document:
                yield name, document


def test_the_kustomization_applies_every_manifest_but_the_example_secret() -> None:
    kustomization = _manifest("kustomization.yaml")
    assert sorted(kustomization["resources"]) == [
        m for m in MANIFESTS if m != "secret.example.yaml"
    ]
    deployment = _manifest("deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert [i["name"] for i in kustomization["images"]] == [container["image"].split(":")[0]]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_valid_for_kubernetes(name: str, version: str) -> None:
    documents = [d for n, d in _every_document() if n == name]
    assert documents, f"{name} holds no manifest"
    for document in documents:
        assert validate_manifest(document, version) == [], f"{name} on Kubernetes {version}"


@pytest.mark.parametrize(
    ("name", "change", "expected"),
    [
        (
            "deployment.yaml",
            lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriod=90),
            "'terminationGracePeriod' was unexpected",
        ),
        (
            "poddisruptionbudget.yaml",
            lambda d: d["spec"].update(maxUnavailable=[1]),
            "is not valid under any of the given schemas",
        ),
        (
            "keda-scaledobject.yaml",
            lambda d: d["spec"].update(maxReplicas=6),
            "'maxReplicas' was unexpected",
        ),
        (
            "keda-scaledobject.yaml",
            lambda d: d["spec"]["triggers"][0]["metadata"].update(lagThreshold=5000),
            "5000 is not of type 'string'",
        ),
        (
            "servicemonitor.yaml",
            lambda d: d["spec"]["endpoints"][0].update(interval="15 seconds"),
            "does not match",
        ),
        ("servicemonitor.yaml", lambda d: d["spec"].pop("selector"), "'selector' is a required"),
    ],
    ids=[
        "unknown-field",
        "wrong-type",
        "crd-unknown-field",
        "crd-type",
        "crd-pattern",
        "crd-required",
    ],
)
def test_the_schemas_reject_what_kubernetes_would(name: str, change: Any, expected: str) -> None:
    document = copy.deepcopy(_manifest(name))
    change(document)
    errors = validate_manifest(document, KUBERNETES_VERSIONS[-1])
    assert any(expected in error for error in errors), errors


@pytest.mark.parametrize(
    ("service", "key", "value"),
    [("worker", "stop_grace_perod", "90s"), ("worker", "deploy", {"replica": 2})],
)
def test_the_compose_schema_rejects_a_misspelt_key(service: str, key: str, value: Any) -> None:
    broken = copy.deepcopy(compose())
    broken["services"][service][key] = value
    errors = _schema_errors(compose_schema(), broken)
    misspelt = key if isinstance(value, str) else next(iter(value))
    assert any(f"'{misspelt}'" in error for error in errors), errors


def deployed_settings() -> Settings:
    """The worker's settings in Kubernetes: the ConfigMap over the defaults."""
    return _settings_from(_manifest("configmap.yaml")["data"])


def test_the_configmap_holds_only_settings_and_matches_the_pod() -> None:
    settings = deployed_settings()
    pod = _manifest("deployment.yaml")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == settings.metrics_port
    assert [s["configMapRef"]["name"] for s in container["envFrom"] if "configMapRef" in s] == [
        _manifest("configmap.yaml")["metadata"]["name"]
    ]
    probes = {
        k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert {p["port"] for p in probes.values()} == {"metrics"}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"


def test_service_monitor_and_disruption_budget_select_the_workers() -> None:
    deployment = _manifest("deployment.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = _manifest("service.yaml")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]
    monitor = _manifest("servicemonitor.yaml")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [
        p["name"] for p in service["spec"]["ports"]
    ]
    # The alerts select job="tailor": the ServiceMonitor's job label is the Service's name.
    assert service["metadata"]["name"] == "tailor"
    assert "jobLabel" not in monitor["spec"]

    budget = _manifest("poddisruptionbudget.yaml")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # A drain must be able to evict a worker even when KEDA runs only its minimum.
    fewest = _manifest("keda-scaledobject.yaml")["spec"]["minReplicaCount"]
    if "minAvailable" in budget["spec"]:
        assert budget["spec"]["minAvailable"] < fewest
    else:
        assert budget["spec"]["maxUnavailable"] >= 1


def shutdown_bound_s(settings: Settings) -> float:
    """Longest a worker takes from SIGTERM to exit while Kafka and Redis answer.

    ``Worker.run`` finishes the step in hand, then ``Worker.close`` runs:

    - the batch: up to ``batch_wait_ms`` to fill it, then its users' states read and
      written, one pipelined Redis round trip per ``redis_chunk_size`` users each way,
      every round trip within ``redis_timeout_s``;
    - a checkpoint, if one was due in that step: reading this worker's own deltas back
      (``ModelSync._read_own_back``), the lease (one round trip), then ``ModelSync.close``
      waits for the background store to finish, at most its ``timeout_s``;
    - the outputs' acknowledgement: ``close`` flushes for ``CLOSE_FLUSH_TIMEOUT_S``.

    An outage is not in the bound on purpose: a batch stuck on Redis may wait
    ``outage_timeout_s`` (300 s by default) before giving up. Waiting that out would
    stall every drain and rollout, and SIGKILL at the grace period only costs a replay,
    which the per-user applied offsets in Redis turn into a no-op.
    """
    round_trip = settings.redis_timeout_s
    chunks = math.ceil(settings.batch_size / settings.redis_chunk_size)
    batch = settings.batch_wait_ms / 1000 + 2 * chunks * round_trip
    read_back = float(inspect.signature(ModelSync._read_own_back).parameters["timeout_s"].default)
    store = float(inspect.signature(ModelSync.close).parameters["timeout_s"].default)
    checkpoint = read_back + round_trip + store
    return batch + checkpoint + CLOSE_FLUSH_TIMEOUT_S


def test_grace_period_outlasts_a_batch_and_a_checkpoint() -> None:
    bound = shutdown_bound_s(deployed_settings())
    pod = _manifest("deployment.yaml")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > bound
    # Compose gives its workers the same budget.
    stop = compose()["services"]["worker"]["stop_grace_period"]
    assert re.fullmatch(r"\d+s", stop), stop
    assert int(stop[:-1]) == pod["terminationGracePeriodSeconds"]
    assert 60 < bound < 90  # the figure deployment.yaml's comment gives (about 67 s)


def test_keda_never_scales_past_the_partitions() -> None:
    """Kafka gives a partition to one member of the group: replicas beyond the partition
    count of the events topic would sit idle."""
    scaled = _manifest("keda-scaledobject.yaml")["spec"]
    settings = deployed_settings()
    partitions = compose_topics()[settings.events_topic]
    assert partitions >= 1, f"compose creates {settings.events_topic} without partitions"
    assert scaled["minReplicaCount"] >= 1
    assert scaled["maxReplicaCount"] >= scaled["minReplicaCount"]
    assert scaled["maxReplicaCount"] <= partitions, (scaled["maxReplicaCount"], partitions)
    assert scaled["scaleTargetRef"]["name"] == _manifest("deployment.yaml")["metadata"]["name"]
    (trigger,) = scaled["triggers"]
    config = _manifest("configmap.yaml")["data"]
    assert trigger["type"] == "kafka"
    assert config[trigger["metadata"]["topicFromEnv"]] == settings.events_topic
    assert config[trigger["metadata"]["consumerGroupFromEnv"]] == settings.group_id
    assert config[trigger["metadata"]["bootstrapServersFromEnv"]] == settings.bootstrap_servers


# -- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_passes_the_lint() -> None:
    assert lint((DEPLOY / "Dockerfile").read_text()) == []


def test_image_agrees_with_the_deployment() -> None:
    import dockerfile

    final = stages(dockerfile.parse_file(str(DEPLOY / "Dockerfile")))[-1]
    by_kind: dict[str, list[tuple[str, ...]]] = {}
    for command in final.commands:
        by_kind.setdefault(command.cmd, []).append(command.value)
    pod = _manifest("deployment.yaml")["spec"]["template"]["spec"]
    user = by_kind["USER"][-1][0]
    assert user == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert by_kind["EXPOSE"] == [(str(deployed_settings().metrics_port),)]
    assert by_kind["ENTRYPOINT"] == [("tailor",)]
    (container,) = pod["containers"]
    assert container["args"] == ["run"]


def test_the_lint_finds_what_it_looks_for() -> None:
    bad = "\n".join(
        [
            "FROM python:3.11 AS build",
            "RUN pip install .",
            "FROM python:latest",
            "ADD worker/ /app/",
            "WORKDIR app",
            "COPY --from=builder /opt/venv /opt/venv",
            "RUN apt-get update && apt-get install -y gcc",
            "USER root",
            "ENTRYPOINT tailor run",
        ]
    )
    problems = "\n".join(lint(bad))
    for expected in (
        "pip install keeps its cache",
        "pin a tag",
        "COPY, not ADD",
        "WORKDIR app should be absolute",
        "names no earlier stage",
        "apt-get install without --no-install-recommends",
        "final stage installs or builds",
        "a build image",
        "use a numeric uid",
        "ENTRYPOINT in shell form",
    ):
        assert expected in problems, problems
    assert "runs as root" in "\n".join(lint("FROM python:3.11-slim\nUSER 0\n"))


def test_the_serve_deployment_runs_serve_on_its_port_behind_its_service() -> None:
    """Same image and settings as the workers; probes and the Service on serve's port;
    no service links, which would set TAILOR_SERVE_PORT to a tcp:// URL."""
    settings = deployed_settings()
    serve = _manifest("serve-deployment.yaml")
    pod = serve["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
    (container,) = pod["containers"]
    (worker,) = _manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["serve"]
    assert container["image"] == worker["image"]
    assert container["envFrom"] == worker["envFrom"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": settings.serve_port
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    labels = serve["spec"]["template"]["metadata"]["labels"]
    service = _manifest("serve-service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    worker_labels = _manifest("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= worker_labels.items()


def test_compose_serves_with_the_workers_image_and_settings() -> None:
    services = compose()["services"]
    serve, worker = services["serve"], services["worker"]
    assert serve["command"] == ["serve"]
    assert serve["image"] == worker["image"]
    assert serve["environment"] == worker["environment"]
    port = _settings_from(serve["environment"]).serve_port
    assert f"{port}:{port}" in serve["ports"]
    assert f"127.0.0.1:{port}/healthz" in " ".join(serve["healthcheck"]["test"])
