"""What holds across every deployment file: the ie-flow image, pinned images, the ports ie-flow
uses, workflow files that exist, `ie-flow` command lines the CLI accepts, no secret values."""

from __future__ import annotations

import re
import shlex

import pytest
from infra_files import (
    COMPOSE, IMAGE, LAUNCHER, MLFLOW_DOCKERFILE, PORTS, RAYCLUSTER, RAYJOB, README, ROOT, compose_ports,
    dockerfile_instructions, head_container, image_refs, kuberay_cluster_specs, load_yaml, load_yaml_docs,
    manifest_paths, rayjob, walk,
)

pytestmark = pytest.mark.infra


def test_every_manifest_uses_the_ie_flow_image() -> None:
    kube_images = [image for path in (RAYCLUSTER, RAYJOB) for doc in load_yaml_docs(path) for image in image_refs(doc)]
    assert kube_images and set(kube_images) == {IMAGE}
    assert load_yaml(LAUNCHER)["docker"]["image"] == IMAGE
    services = load_yaml(COMPOSE)["services"]
    assert services["ray-head"]["image"] == IMAGE and services["ray-worker"]["image"] == IMAGE


def test_every_image_is_pinned() -> None:
    for path in manifest_paths():
        for doc in load_yaml_docs(path):
            for name in image_refs(doc):
                tag = name.rsplit("/", 1)[-1].partition(":")[2]
                assert tag and tag != "latest", f"{path.name}: image {name!r} is not pinned"
    for kw, rest in dockerfile_instructions(MLFLOW_DOCKERFILE):
        if kw == "FROM":
            assert ":" in rest and not rest.endswith(":latest")


def test_manifests_cover_the_ports_ie_flow_uses() -> None:
    seen: set[int] = set()
    for spec in kuberay_cluster_specs().values():
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
    assert "ie-flow run" in rayjob()["spec"]["entrypoint"]
    assert refs, "no manifest names a workflow file"
    missing = sorted(name for name in refs if not (ROOT / "workflows" / name).is_file())
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
    import typer.main

    from ie_flow import cli

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
