"""pyproject.toml and constraints.txt, as the image and the clusters depend on them: a Ray floor
that has token authentication, boto3 at run time, and every requirement pinned by a version that
satisfies it (the Dockerfile and `make` both install with -c constraints.txt)."""

from __future__ import annotations

import pytest
from infra_files import RAY_TOKEN_AUTH_SINCE, constraint_pins, normalise, pyproject
from packaging.requirements import Requirement

pytestmark = pytest.mark.infra


def requirements(extra: str | None = None) -> dict[str, Requirement]:
    project = pyproject()["project"]
    lines = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return {normalise(req.name): req for req in map(Requirement, lines)}


def test_ray_floor_is_the_first_release_with_token_auth() -> None:
    ray = requirements()["ray"]
    assert {"data", "default"} <= ray.extras
    first = ".".join(map(str, RAY_TOKEN_AUTH_SINCE)) + ".0"
    assert ray.specifier.contains(first), f"{ray} refuses Ray {first}"
    for older in ("2.40.0", "2.51.2"):  # no RAY_AUTH_MODE=token: every manifest in infra/ would be refused
        assert not ray.specifier.contains(older), f"{ray} admits Ray {older}, which has no token auth"


def test_boto3_is_a_runtime_dependency() -> None:
    # MLflow logs artifacts to S3 itself (a server without --serve-artifacts) with boto3;
    # s3fs brings only botocore.
    assert "boto3" in requirements()
    assert "botocore" not in requirements(), "botocore comes with boto3 and s3fs"


def test_jsonschema_is_a_test_dependency() -> None:
    assert "jsonschema" in requirements("test")


@pytest.mark.parametrize("extra", [None, "test"], ids=["dependencies", "test"])
def test_every_requirement_is_pinned_by_a_version_it_accepts(extra: str | None) -> None:
    pins = constraint_pins()
    for name, req in requirements(extra).items():
        if name == "torch":
            continue  # installed first with its own pin: CPU wheel here, CUDA wheel in the image
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name]), f"constraints.txt pins {name}=={pins[name]}, outside {req}"
