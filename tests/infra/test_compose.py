"""infra/compose: the local stack against the Compose Specification schema (vendored), images
that can still be pulled, and the wiring a fresh `docker compose up` depends on (buckets before
MLflow, MLflow before Ray, one token for every Ray node)."""

from __future__ import annotations

import re

import pytest
from infra_files import (
    COMPOSE, COMPOSE_GPU, DOCKERFILE, INFRA, PORTS, ROOT, SCHEMAS, as_command, compose_ports, host_allowed, load_json,
    load_yaml,
    schema_errors,
)

pytestmark = pytest.mark.infra

SERVICES = {"minio", "minio-init", "postgres", "mlflow", "ray-head", "ray-worker"}


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_compose_file_matches_the_compose_spec(path) -> None:
    schema = load_json(SCHEMAS / "compose-spec.json")
    assert schema_errors(schema, load_yaml(path), validator="Draft7Validator") == []


def test_compose_spec_check_refuses_a_misspelt_key() -> None:
    schema = load_json(SCHEMAS / "compose-spec.json")
    stack = load_yaml(COMPOSE)
    stack["services"]["minio"]["healtcheck"] = stack["services"]["minio"].pop("healthcheck")
    errors = schema_errors(schema, stack, validator="Draft7Validator")
    assert errors == ["services/minio: 'healtcheck' does not match any of the regexes: '^x-'"]


def test_minio_images_come_from_minios_own_registry() -> None:
    # minio/minio and minio/mc were removed from Docker Hub: a fresh pull of those names fails.
    services = load_yaml(COMPOSE)["services"]
    assert services["minio"]["image"].startswith("quay.io/minio/minio:RELEASE.")
    assert services["minio-init"]["image"].startswith("quay.io/minio/mc:RELEASE.")
    for name, service in services.items():
        image = service.get("image", "")
        assert not re.match(r"(docker\.io/)?minio/", image), f"{name}: {image} is not on Docker Hub any more"


def test_services_and_published_ports() -> None:
    services = load_yaml(COMPOSE)["services"]
    assert SERVICES <= set(services)
    expected = {
        "minio": {PORTS["s3"], PORTS["s3_console"]},
        "mlflow": {PORTS["mlflow"]},
        "ray-head": {PORTS["gcs"], PORTS["dashboard"], PORTS["client"]},
    }
    for name, ports in expected.items():
        published = compose_ports(services[name])
        assert ports <= set(published), f"{name} publishes {published}"
        for port in ports:
            assert published[port] == port, "README's localhost URIs assume the same host port"
    for service in services.values():
        for entry in service.get("ports", []):
            assert str(entry).startswith("127.0.0.1:"), f"{entry}: default credentials must stay on loopback"


def test_start_order_from_scratch() -> None:
    # Buckets exist before MLflow writes artifacts; Ray starts once MLflow answers; the worker
    # joins a healthy head. `up --wait` waits for minio-init to exit 0 because of these conditions.
    services = load_yaml(COMPOSE)["services"]
    conditions = {
        ("minio-init", "minio"): "service_healthy",
        ("mlflow", "postgres"): "service_healthy",
        ("mlflow", "minio-init"): "service_completed_successfully",
        ("ray-head", "minio-init"): "service_completed_successfully",
        ("ray-head", "mlflow"): "service_healthy",
        ("ray-worker", "ray-head"): "service_healthy",
    }
    for (service, dependency), condition in conditions.items():
        assert services[service]["depends_on"][dependency]["condition"] == condition, (service, dependency)
    for name, condition in {"minio": "healthcheck", "postgres": "healthcheck", "mlflow": "healthcheck",
                            "ray-head": "healthcheck"}.items():
        assert services[name].get(condition, {}).get("test"), f"{name} has no health check"
    assert services["minio-init"]["restart"] == "no"


def test_bucket_init_creates_the_buckets_mlflow_and_ie_flow_use() -> None:
    services = load_yaml(COMPOSE)["services"]
    script = as_command(services["minio-init"]["command"])
    assert re.search(r"mc alias set local http://minio:9000\b", script)
    assert re.search(r"mc mb --ignore-existing local/ie-flow\b", script)
    assert re.search(r"mc mb --ignore-existing local/mlflow\b", script)


def test_mlflow_server_uses_postgres_and_s3_artifacts() -> None:
    services = load_yaml(COMPOSE)["services"]
    mlflow = services["mlflow"]
    argv = mlflow["command"]
    assert as_command(argv).startswith("mlflow server")
    options = dict(zip(argv[2::2], argv[3::2]))
    backend = options["--backend-store-uri"]
    postgres_env = services["postgres"]["environment"]
    assert backend.startswith(f"postgresql://{postgres_env['POSTGRES_USER']}:")
    assert backend.endswith(f"@postgres:5432/{postgres_env['POSTGRES_DB']}")
    assert options["--artifacts-destination"] == "s3://mlflow/"
    assert options["--host"] == "0.0.0.0" and options["--port"] == str(PORTS["mlflow"])
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == f"http://minio:{PORTS['s3']}"
    # MLflow 3 checks the Host header (fnmatch for patterns with '*', equality otherwise).
    for host in (f"mlflow:{PORTS['mlflow']}", f"localhost:{PORTS['mlflow']}"):
        assert host_allowed(host, options["--allowed-hosts"]), host
    mlflow_image = (INFRA / "compose" / mlflow["build"]["context"] / mlflow["build"]["dockerfile"]).read_text()
    for requirement in ("mlflow==", "psycopg2", "boto3"):
        assert requirement in mlflow_image


def test_ray_nodes_use_the_image_token_auth_and_the_stack() -> None:
    services = load_yaml(COMPOSE)["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    build = head["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT and (context / build["dockerfile"]).resolve() == DOCKERFILE
    # ray-worker has no build of its own: Compose builds the shared tag once, for ray-head.
    assert worker["image"] == head["image"] and "build" not in worker
    head_cmd, worker_cmd = as_command(head["command"]), as_command(worker["command"])
    assert head_cmd.startswith("ray start --head") and "--block" in head_cmd
    for flag in (f"--port={PORTS['gcs']}", "--dashboard-host=0.0.0.0", f"--dashboard-port={PORTS['dashboard']}",
                 f"--ray-client-server-port={PORTS['client']}"):
        assert flag in head_cmd
    assert worker_cmd.startswith(f"ray start --address=ray-head:{PORTS['gcs']}") and "--block" in worker_cmd
    assert "gcs_healthz" in as_command(head["healthcheck"]["test"])
    for name, node in (("ray-head", head), ("ray-worker", worker)):
        env = node["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), f"{name}: the token must be required"
        assert env["AWS_ENDPOINT_URL"] == f"http://minio:{PORTS['s3']}"
        assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow:{PORTS['mlflow']}"
        assert node.get("shm_size"), f"{name}: Docker's 64 MB /dev/shm is too small for Ray"


def test_gpu_override_gives_the_worker_a_gpu() -> None:
    override = load_yaml(COMPOSE_GPU)["services"]
    assert set(override) <= set(load_yaml(COMPOSE)["services"])
    devices = override["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)
