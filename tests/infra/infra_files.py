"""Paths, constants and parsers shared by the infra checks: the deployment files, read as data.

Nothing here talks to Docker, Kubernetes or the network; the schemas are vendored in schemas/
(see schemas/README.md for where each comes from)."""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any, Iterator

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
DOCKERFILE = ROOT / "Dockerfile"
RAYCLUSTER = INFRA / "kuberay" / "raycluster.yaml"
RAYJOB = INFRA / "kuberay" / "rayjob.yaml"
MLFLOW_K8S = INFRA / "kuberay" / "mlflow.yaml"
LAUNCHER = INFRA / "cluster-launcher" / "aws.yaml"
COMPOSE = INFRA / "compose" / "docker-compose.yaml"
COMPOSE_GPU = INFRA / "compose" / "docker-compose.gpu.yaml"
MLFLOW_DOCKERFILE = INFRA / "compose" / "mlflow.Dockerfile"
README = INFRA / "README.md"

IMAGE = "ghcr.io/ie-flow/ie-flow:0.2.0"
ENTRY_POINT = "ie-flow"
TORCH_PIN = "torch==2.13.0"
PORTS = {"gcs": 6379, "dashboard": 8265, "client": 10001, "mlflow": 5000, "s3": 9000, "s3_console": 9001}
TOKEN_SECRET = "ie-flow-ray-token"
S3_SECRET = "ie-flow-s3"
CONFIG_MAP = "ie-flow-config"
# The KubeRay release whose CRD schemas are vendored: the first with authOptions.secretName.
KUBERAY_VERSION = "v1.6.0"
# The first Ray release with token authentication (RAY_AUTH_MODE=token); KubeRay refuses
# authOptions.mode=token for an older rayVersion.
RAY_TOKEN_AUTH_SINCE = (2, 52)


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def load_yaml(path: Path) -> dict[str, Any]:
    docs = load_yaml_docs(path)
    assert len(docs) == 1, f"{path.name}: expected one YAML document, found {len(docs)}"
    return docs[0]


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def constraint_pins() -> dict[str, str]:
    """Normalised package name -> exact version, from constraints.txt."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalise(name)] = version.strip()
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


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


def copy_sources(args: str) -> list[str]:
    """The context paths of a COPY (all words but the destination; flags dropped)."""
    words = [w for w in args.split() if not w.startswith("--")]
    return [w.rstrip("/") for w in words[:-1]]


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def image_refs(node: Any) -> list[str]:
    return [n["image"] for n in walk(node) if isinstance(n, dict) and isinstance(n.get("image"), str)]


def rayjob() -> dict[str, Any]:
    (job,) = [doc for doc in load_yaml_docs(RAYJOB) if doc.get("kind") == "RayJob"]
    return job


def kuberay_cluster_specs() -> dict[str, dict[str, Any]]:
    """kind -> the RayClusterSpec it carries (RayCluster.spec, RayJob.spec.rayClusterSpec)."""
    (cluster,) = [doc for doc in load_yaml_docs(RAYCLUSTER) if doc.get("kind") == "RayCluster"]
    return {"RayCluster": cluster["spec"], "RayJob": rayjob()["spec"]["rayClusterSpec"]}


def head_container(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["headGroupSpec"]["template"]["spec"]["containers"][0]


def worker_containers(spec: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (group, container)
        for group in spec["workerGroupSpecs"]
        for container in group["template"]["spec"]["containers"][:1]  # the Ray container
    ]


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
    return [RAYCLUSTER, RAYJOB, MLFLOW_K8S, LAUNCHER, COMPOSE, COMPOSE_GPU]


@cache
def kuberay_schema(kind: str) -> dict[str, Any]:
    """The vendored openAPIV3Schema of ray.io/v1 `kind`, made strict (see strict_schema)."""
    path = SCHEMAS / f"kuberay-{KUBERAY_VERSION}" / f"ray.io_{kind.lower()}s.v1.json"
    return strict_schema(load_json(path))


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Reject unknown fields, as `kubectl apply` does (server-side field validation is Strict by
    default since Kubernetes 1.27). CRD schemas leave additionalProperties open, so plain JSON
    Schema would accept a misplaced field such as RayJob.spec.authOptions without a word."""
    strict = copy.deepcopy(schema)
    for node in walk(strict):
        if (isinstance(node, dict) and "properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
    return strict


def schema_errors(schema: dict[str, Any], document: Any, validator: str = "Draft4Validator") -> list[str]:
    """Every violation as 'path: message' (empty when the document is valid)."""
    import jsonschema

    check = getattr(jsonschema, validator)(schema)
    return sorted(
        f"{'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message[:300]}"
        for error in check.iter_errors(document)
    )


def normalise_space(text: str) -> str:
    """Prose with every run of whitespace (line breaks included) as one space."""
    return " ".join(text.split())


def host_allowed(host: str, allowed_hosts: str) -> bool:
    """MLflow 3's Host-header check (`--allowed-hosts`): fnmatch for patterns with '*', equality otherwise."""
    import fnmatch

    return any(fnmatch.fnmatch(host, a) if "*" in a else host == a for a in allowed_hosts.split(","))
