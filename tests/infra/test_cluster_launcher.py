"""infra/cluster-launcher/aws.yaml against the schema `ray up` validates with (shipped inside the
ray package as ray/autoscaler/ray-schema.json), and the image, token and ports it must use."""

from __future__ import annotations

import json
import re
from importlib.util import find_spec
from pathlib import Path

import pytest
from infra_files import ENTRY_POINT, IMAGE, LAUNCHER, PORTS, load_yaml, schema_errors

pytestmark = pytest.mark.infra


def ray_launcher_schema() -> dict:
    spec = find_spec("ray")  # locates the package without importing it (ray's import takes a second)
    if spec is None or spec.origin is None:
        pytest.skip("ray is not installed here")
    return json.loads((Path(spec.origin).parent / "autoscaler" / "ray-schema.json").read_text())


def test_config_matches_rays_launcher_schema() -> None:
    assert schema_errors(ray_launcher_schema(), load_yaml(LAUNCHER), validator="Draft7Validator") == []


def test_launcher_schema_check_refuses_a_misspelt_key() -> None:
    config = load_yaml(LAUNCHER)
    config["available_node_types"]["gpu_worker"]["max_worker"] = config["available_node_types"]["gpu_worker"].pop(
        "max_workers")
    errors = schema_errors(ray_launcher_schema(), config, validator="Draft7Validator")
    assert errors == ["available_node_types/gpu_worker: Additional properties are not allowed "
                      "('max_worker' was unexpected)"]


def test_runs_the_image_with_token_auth_and_a_gpu_worker() -> None:
    config = load_yaml(LAUNCHER)
    docker = config["docker"]
    assert docker["image"] == IMAGE
    assert "-e RAY_AUTH_MODE=token" in docker["run_options"]
    assert "~/.ray/auth_token" in config["file_mounts"], "every node needs the token file"
    assert any("--gpus" in opt for opt in docker.get("worker_run_options", []))
    node_types = config["available_node_types"]
    head = config["head_node_type"]
    workers = {name: nt for name, nt in node_types.items() if name != head}
    assert workers
    for name, node_type in workers.items():
        assert node_type["resources"]["GPU"] >= 1, f"{name} has no GPU"
        assert re.match(r"(g|p)\d", node_type["node_config"]["InstanceType"]), f"{name} is not a GPU instance"
        assert node_type["max_workers"] > node_type.get("min_workers", 0)
    assert node_types[head]["resources"].get("GPU", 0) == 0
    assert any(ENTRY_POINT in cmd for cmd in config["setup_commands"])


def test_start_commands_use_the_standard_ports_and_load_the_env_file() -> None:
    config = load_yaml(LAUNCHER)
    head = " ".join(config["head_start_ray_commands"])
    assert "ray start --head" in head
    for flag in (f"--port={PORTS['gcs']}", "--dashboard-host=0.0.0.0", f"--dashboard-port={PORTS['dashboard']}",
                 f"--ray-client-server-port={PORTS['client']}", "--autoscaling-config=~/ray_bootstrap_config.yaml"):
        assert flag in head
    worker = " ".join(config["worker_start_ray_commands"])
    assert f"--address=$RAY_HEAD_IP:{PORTS['gcs']}" in worker
    env_file = [remote for remote in config["file_mounts"] if remote.endswith(".env")]
    assert env_file and all(f". {env_file[0]}" in cmds for cmds in (head, worker)), "S3/MLflow env not loaded"
