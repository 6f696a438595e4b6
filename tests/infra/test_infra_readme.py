"""infra/README.md says what the files do: the commands and URIs of each setup, the KubeRay
release and images the manifests need, what is and is not tested, and sizing arithmetic that
adds up."""

from __future__ import annotations

import re

import pytest
from infra_files import (
    COMPOSE, IMAGE, KUBERAY_VERSION, PORTS, README, ROOT, SCHEMAS, load_yaml, normalise_space,
)

pytestmark = pytest.mark.infra


def readme() -> str:
    return normalise_space(README.read_text())


def test_says_how_to_start_each_setup_and_which_uris_to_use() -> None:
    text = README.read_text()
    for command in (
        "docker build -t " + IMAGE,
        "docker compose -f infra/compose/docker-compose.yaml up",
        "kubectl apply -f infra/kuberay/raycluster.yaml",
        "kubectl apply -f infra/kuberay/rayjob.yaml",
        "ray up infra/cluster-launcher/aws.yaml",
        "--storage s3://ie-flow/",
        f"AWS_ENDPOINT_URL=http://localhost:{PORTS['s3']}",
        f"--tracking-uri http://localhost:{PORTS['mlflow']}",
        f"--ray-address http://localhost:{PORTS['dashboard']}",
        "RAY_AUTH_MODE=token",
    ):
        assert command in text, f"infra/README.md does not show {command!r}"
    for path in set(re.findall(r"(?:infra|tests)/[\w./-]+\.(?:yaml|md|py|Dockerfile)", text)):
        assert (ROOT / path).is_file(), f"README names a missing file {path}"


def test_names_the_kuberay_release_whose_schemas_are_checked() -> None:
    text = readme()
    assert f"KubeRay operator **{KUBERAY_VERSION} or newer**" in text
    assert (SCHEMAS / f"kuberay-{KUBERAY_VERSION}").is_dir()
    assert "RayJob.spec.rayClusterSpec" in text and "secretName: ie-flow-ray-token" in text
    assert "any KubeRay version" not in text, "a RayJob without authOptions fails on every KubeRay"


def test_names_the_images_the_compose_file_pulls() -> None:
    text = readme()
    for name, service in load_yaml(COMPOSE)["services"].items():
        if "build" not in service and service["image"].startswith("quay.io/"):
            assert service["image"] in text, f"README does not name {name}'s image {service['image']}"


def test_says_what_this_machine_cannot_run_and_what_is_checked_instead() -> None:
    text = readme()
    assert "no Docker engine and no Kubernetes cluster" in text
    for checked in ("tests/infra", "tests/integration/test_cluster_submit.py", "ray/autoscaler/ray-schema.json"):
        assert checked in text
    assert "Compose Specification schema" in text


def test_s3_retry_figures_describe_the_configured_client() -> None:
    from ie_flow.storage import S3_RETRIES

    attempts = S3_RETRIES["total_max_attempts"]
    assert S3_RETRIES["mode"] == "adaptive"
    assert f"adaptive retry mode with {attempts} attempts in all" in readme()
    # botocore's backoff before retry i (1-based) is at most 2 ** (i - 1) seconds.
    bound = " + ".join(str(2 ** i) for i in range(attempts - 1))
    assert f"at most {bound} = {2 ** (attempts - 1) - 1} s" in readme()


@pytest.mark.parametrize(
    ("model", "blocks", "width"),
    [("GPT-2", 12, 768), ("Gemma-2B", 18, 2048)],
)
def test_sizing_arithmetic(model: str, blocks: int, width: int) -> None:
    text = README.read_text()
    sizing = text[text.index("## SIZING"):]
    samples, positions, float16 = 300_000, 8, 2
    per_boundary = samples * positions * width * float16
    total = (blocks + 1) * per_boundary
    section = sizing[sizing.index(f"**{model}**"):]
    section = section[: section.index("\n\n")]
    assert f"L = {blocks} blocks, d = {width}" in section
    assert f"{samples:,} x {positions} x {width} x 2 = {per_boundary:,} bytes" in section
    assert f"({blocks} + 1) x {per_boundary:,} = {total:,} bytes" in section
    # stage 2 holds cells (layer, position pairs), not whole boundaries: its planned bytes per batch
    assert "c x n x 2d x 2" in sizing and "estimate.memory_budget" in sizing
    # its worked examples (a task of one cell, of a layer's 8) are the plan's own numbers
    from ie_flow.config import EstimateSpec
    from ie_flow.stages.estimate import task_plan

    plan = task_plan(EstimateSpec(), samples, width, "float16")
    for cells in (1, 8):
        assert f"{plan.bytes(cells):,} bytes" in sizing, (model, cells, plan.bytes(cells))
    assert "L + 1 boundaries" in sizing
    assert "object store is not used for activations" in normalise_space(sizing.replace("**", "")).lower()
