"""The production deployment files agree with the code: compose validates, every
PARTNERHUB_* variable is a Settings field, the platform's containers are health-checked
and start in order, and the k8s manifests wire the same settings and probes."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.runtime.settings import DEFAULT_PORTS, SERVICES, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ENV_EXAMPLE = DEPLOY / "compose.env.example"

PREFIX = "PARTNERHUB_"
# Compose's ${NAME}, ${NAME:-default}, ${NAME-default}.
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")
# Containers the platform cannot run without, and the observability stack of DESIGN.md §5.
# The OpenTelemetry Collector image has no shell or client to run a healthcheck with;
# nothing waits on it being healthy (span export retries).
HEALTHCHECKED = {*SERVICES, "kafka", "postgres", "redis", "jaeger", "prometheus", "grafana"}
PUBLISHED = {"gateway": 8000, "grafana": 3000, "jaeger": 16686, "prometheus": 9090}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment with ${VAR:-default} resolved to its default."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {
        str(k): INTERPOLATION.sub(lambda m: m.group("default") or "", str(v))
        for k, v in env.items()
    }


def field_of(env_name: str) -> str:
    return env_name.removeprefix(PREFIX).lower()


def partnerhub_names_in_compose() -> dict[str, str]:
    """PARTNERHUB_* name → where it was found, in docker-compose.yml."""
    names: dict[str, str] = {}
    for name, service in compose()["services"].items():
        for key in environment_of(service):
            if key.startswith(PREFIX):
                names[key] = f"docker-compose.yml services.{name}.environment"
    for match in INTERPOLATION.finditer(COMPOSE.read_text()):
        if match["name"].startswith(PREFIX):
            names.setdefault(match["name"], "docker-compose.yml ${...} substitution")
    return names


def partnerhub_names_in_k8s() -> dict[str, str]:
    """PARTNERHUB_* name → where it was found, in deploy/k8s (ConfigMap, Secret, container env)."""
    names: dict[str, str] = {}
    for filename, doc in k8s_documents():
        if doc["kind"] == "ConfigMap":
            keys = list(doc.get("data") or {})
        elif doc["kind"] == "Secret":
            keys = [*(doc.get("stringData") or {}), *(doc.get("data") or {})]
        elif doc["kind"] == "Deployment":
            containers = doc["spec"]["template"]["spec"]["containers"]
            keys = [item["name"] for container in containers for item in container.get("env", [])]
        else:
            continue
        for key in keys:
            if key.startswith(PREFIX):
                names[key] = f"deploy/k8s/{filename} {doc['kind']}"
    return names


def partnerhub_names_in_files() -> dict[str, str]:
    """PARTNERHUB_* names set by the Dockerfile's ENV and the compose env example."""
    names: dict[str, str] = {}
    for key in re.findall(r"\b(PARTNERHUB_[A-Z0-9_]+)=", (ROOT / "Dockerfile").read_text()):
        names[key] = "Dockerfile ENV"
    for line in ENV_EXAMPLE.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if key.startswith(PREFIX):
            names[key] = "deploy/compose.env.example"
    return names


# ── (1) compose validates ────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("env_file", [None, ENV_EXAMPLE], ids=["defaults", "env-example"])
def test_compose_file_validates(env_file: Path | None) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install -y docker-compose)")
    command = [binary, "--project-directory", str(ROOT), "-f", str(COMPOSE)]
    if env_file is not None:
        command += ["--env-file", str(env_file)]
    result = subprocess.run(
        [*command, "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# ── (2) every PARTNERHUB_* variable is a Settings field ──────────────────────────────────


@pytest.mark.parametrize(
    "source",
    [partnerhub_names_in_compose, partnerhub_names_in_k8s, partnerhub_names_in_files],
    ids=["compose", "k8s", "dockerfile-and-env-example"],
)
def test_every_partnerhub_variable_is_a_settings_field(source: Any) -> None:
    names = source()
    assert names, "no PARTNERHUB_* variables found: the parser no longer reads the file"
    unknown = {
        name: where for name, where in names.items() if field_of(name) not in Settings.model_fields
    }
    assert not unknown, f"not fields of services.runtime.settings.Settings: {unknown}"


def test_every_service_database_and_bootstrap_is_configured_in_both_deployments() -> None:
    expected = {f"{PREFIX}{svc.upper()}_DATABASE_URL" for svc in SERVICES} | {
        f"{PREFIX}KAFKA_BOOTSTRAP",
        f"{PREFIX}REDIS_URL",
        f"{PREFIX}ISSUER",
        f"{PREFIX}INTERNAL_CLIENT_ID",
        f"{PREFIX}INTERNAL_CLIENT_SECRET",
        f"{PREFIX}SECRET_PEPPER",
    }
    assert expected <= set(partnerhub_names_in_compose())
    assert expected <= set(partnerhub_names_in_k8s())


@pytest.mark.parametrize("name", SERVICES)
def test_compose_environment_loads_into_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [key for key in os.environ if key.startswith(PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in environment_of(compose()["services"][name]).items():
        monkeypatch.setenv(key, value)

    settings = Settings()

    assert settings.env == "production"
    assert settings.host == "0.0.0.0"
    assert settings.database_url_of(name) == (
        f"postgresql+asyncpg://partnerhub:change-me@postgres:5432/{name}"
    )
    # The gateway reaches upstreams, and every service the gateway, by service name.
    for other in SERVICES:
        assert settings.url_of(other) == f"http://{other}:{DEFAULT_PORTS[other]}"
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.kafka_partitions == 6
    assert settings.token_issuer == "http://localhost:8000"
    assert settings.internal_client_id and settings.internal_client_secret
    # A service gets only its own database.
    others = {f"{PREFIX}{svc.upper()}_DATABASE_URL" for svc in SERVICES if svc != name}
    assert not others & set(environment_of(compose()["services"][name]))


def test_k8s_configmap_loads_into_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [key for key in os.environ if key.startswith(PREFIX)]:
        monkeypatch.delenv(key)
    (config,) = [doc for _, doc in k8s_documents() if doc["kind"] == "ConfigMap"]
    for key, value in config["data"].items():
        monkeypatch.setenv(key, str(value))

    settings = Settings()

    assert settings.env == "production"
    assert settings.kafka_replication_factor == 3
    assert settings.url_of("onboarding") == "http://onboarding:8001"
    assert settings.token_issuer.startswith("https://")


# ── (3) the platform's containers exist, are health-checked and start in order ───────────


def test_platform_services_exist_with_healthchecks() -> None:
    services = compose()["services"]
    missing = HEALTHCHECKED - set(services)
    assert not missing, f"missing from docker-compose.yml: {sorted(missing)}"
    assert "otel-collector" in services
    for name in sorted(HEALTHCHECKED):
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name


@pytest.mark.parametrize("name", SERVICES)
def test_partnerhub_services_run_from_one_image_and_wait_for_their_dependencies(name: str) -> None:
    services = compose()["services"]
    service = services[name]
    assert service["image"] == services["gateway"]["image"]
    assert services["gateway"]["build"]["context"] == "."
    assert service["command"] == ["serve", name]
    port = DEFAULT_PORTS[name]
    assert f"http://127.0.0.1:{port}/healthz" in service["healthcheck"]["test"]
    depends = service["depends_on"]
    needs = {"postgres", "kafka"} | ({"redis"} if name == "gateway" else {"gateway"})
    for dependency in needs:
        assert depends[dependency]["condition"] == "service_healthy", f"{name} → {dependency}"
    assert environment_of(service)["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"


def test_only_the_gateway_and_the_uis_are_published() -> None:
    published: dict[str, set[int]] = {}
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            spec = INTERPOLATION.sub(lambda m: m.group("default") or "", str(port))
            published.setdefault(name, set()).add(int(spec.rsplit(":", 1)[-1]))
    assert published == {name: {port} for name, port in PUBLISHED.items()}


def test_postgres_init_script_creates_one_database_per_service() -> None:
    services = compose()["services"]
    mounts = [str(volume) for volume in services["postgres"]["volumes"]]
    script = next(m.split(":")[0] for m in mounts if "docker-entrypoint-initdb.d" in m)
    created = re.findall(r"CREATE DATABASE (\w+)", (ROOT / script).read_text(), re.I)
    assert sorted(created) == sorted(SERVICES)


def test_observability_configs_wire_together() -> None:
    services = compose()["services"]
    collector = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    assert "otlp/jaeger" in collector["service"]["pipelines"]["traces"]["exporters"]
    assert collector["exporters"]["otlp/jaeger"]["endpoint"].startswith("jaeger:")
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")

    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t
        for job in prometheus["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
    }
    assert f"metrics:{DEFAULT_PORTS['metrics']}" in targets
    assert f"lifecycle:{DEFAULT_PORTS['lifecycle']}" in targets  # webhook queue depth
    assert "otel-collector:8889" in targets
    for target in targets - {"localhost:9090"}:
        assert target.split(":")[0] in services, target

    datasources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/datasources.yaml").read_text()
    )
    uids = {source["uid"] for source in datasources["datasources"]}
    dashboard = json.loads((DEPLOY / "grafana/dashboards/partnerhub.json").read_text())
    used = {
        p["datasource"]["uid"] for p in dashboard["panels"] if isinstance(p.get("datasource"), dict)
    }
    assert used and used <= uids
    exprs = " ".join(
        target.get("expr", "")
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    )
    for metric in (
        "partnerhub_kpi_value",
        "partnerhub_kpi_target",
        "partnerhub_consumer_lag",
        "partnerhub_relay_lag",
        "traces_span_metrics_calls_total",
        "traces_span_metrics_duration_milliseconds_bucket",
    ):
        assert metric in exprs, metric


# ── Kubernetes manifests ─────────────────────────────────────────────────────────────────


def test_k8s_deployments_probe_limit_and_reference_existing_keys() -> None:
    docs = k8s_documents()
    (secret,) = [doc for _, doc in docs if doc["kind"] == "Secret"]
    (config,) = [doc for _, doc in docs if doc["kind"] == "ConfigMap"]
    deployments = {doc["metadata"]["name"]: doc for _, doc in docs if doc["kind"] == "Deployment"}
    assert set(deployments) == set(SERVICES)
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["serve", name]
        assert container["ports"][0]["containerPort"] == DEFAULT_PORTS[name]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert {"requests", "limits"} <= set(container["resources"])
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert [ref["configMapRef"]["name"] for ref in container["envFrom"]] == [
            config["metadata"]["name"]
        ]
        for item in container["env"]:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"], f"{name}: {ref['key']}"
        own_url = f"{PREFIX}{name.upper()}_DATABASE_URL"
        database_urls = [i["name"] for i in container["env"] if i["name"].endswith("_DATABASE_URL")]
        assert database_urls == [own_url]


def test_k8s_autoscales_gateway_and_metrics_and_exposes_only_the_gateway() -> None:
    docs = k8s_documents()
    scaled = {
        doc["spec"]["scaleTargetRef"]["name"]
        for _, doc in docs
        if doc["kind"] == "HorizontalPodAutoscaler"
    }
    assert scaled == {"gateway", "metrics"}
    backends = {
        path["backend"]["service"]["name"]
        for _, doc in docs
        if doc["kind"] == "Ingress"
        for rule in doc["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert backends == {"gateway"}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secret.template.yaml" not in kustomization["resources"]


# ── the image's health probe ─────────────────────────────────────────────────────────────


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def health_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("path", "healthy"), [("/healthz", True), ("/missing", False)])
def test_image_healthcheck_reports_the_service_state(
    health_server: str, path: str, healthy: bool
) -> None:
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "docker/healthcheck.py"), health_server + path],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode == 0) is healthy, result.stderr


def test_image_healthcheck_fails_when_nothing_listens(health_server: str) -> None:
    closed = health_server.rsplit(":", 1)[0] + ":1/healthz"
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "docker/healthcheck.py"), closed],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "unhealthy" in result.stderr


def _healthcheck_module() -> Any:
    spec = importlib.util.spec_from_file_location("healthcheck", DEPLOY / "docker/healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("argv", "env", "url"),
    [
        (
            ["python", "/opt/venv/bin/partnerhub", "serve", "gateway"],
            {},
            "http://127.0.0.1:8000/healthz",
        ),
        (["python", "partnerhub", "serve", "metrics"], {}, "http://127.0.0.1:8003/healthz"),
        (
            ["python", "partnerhub", "serve", "lifecycle"],
            {"PARTNERHUB_LIFECYCLE_PORT": "9102"},
            "http://127.0.0.1:9102/healthz",
        ),
        (
            ["python", "partnerhub", "serve", "onboarding", "--port", "9001"],
            {},
            "http://127.0.0.1:9001/healthz",
        ),
        (
            ["python", "partnerhub", "serve", "onboarding", "--port=9002"],
            {},
            "http://127.0.0.1:9002/healthz",
        ),
    ],
    ids=[
        "gateway-default",
        "metrics-default",
        "port-from-env",
        "port-option",
        "port-option-equals",
    ],
)
def test_image_healthcheck_finds_the_port_of_the_served_service(
    argv: list[str], env: dict[str, str], url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _healthcheck_module().url_from_command_line(argv) == url


def test_image_healthcheck_refuses_a_container_not_serving_a_service() -> None:
    with pytest.raises(RuntimeError, match="pass a URL"):
        _healthcheck_module().url_from_command_line(["python", "partnerhub", "client", "create"])
