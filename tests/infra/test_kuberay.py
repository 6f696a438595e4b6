"""infra/kuberay: the RayCluster and RayJob against the CRD schemas of the KubeRay release the
README names (vendored, strict about unknown fields), token auth through authOptions, and the
shape ie-flow relies on (ports, GPU workers, settings from the ConfigMap and Secrets)."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import pytest
from infra_files import (
    CONFIG_MAP, ENTRY_POINT, IMAGE, MLFLOW_K8S, PORTS, RAY_TOKEN_AUTH_SINCE, RAYCLUSTER, RAYJOB, README, S3_SECRET,
    TOKEN_SECRET, dockerfile_instructions, head_container, index_of, kuberay_cluster_specs, kuberay_schema,
    host_allowed, load_yaml_docs, rayjob, schema_errors, version_tuple, walk, worker_containers,
)

pytestmark = pytest.mark.infra

KINDS = ["RayCluster", "RayJob"]


def kuberay_document(kind: str) -> dict[str, Any]:
    path = RAYCLUSTER if kind == "RayCluster" else RAYJOB
    (doc,) = [d for d in load_yaml_docs(path) if d.get("kind") == kind]
    return doc


@pytest.mark.parametrize("kind", KINDS)
def test_manifest_matches_the_crd_schema(kind: str) -> None:
    doc = kuberay_document(kind)
    assert doc["apiVersion"] == "ray.io/v1"
    assert schema_errors(kuberay_schema(kind), doc) == []


def test_schema_check_refuses_a_misplaced_or_misspelt_field() -> None:
    # The mistake this tier exists for: authOptions is a RayClusterSpec field, so on RayJob it
    # belongs under spec.rayClusterSpec; at spec level the operator would never see it.
    job = rayjob()
    misplaced = copy.deepcopy(job)
    misplaced["spec"]["authOptions"] = misplaced["spec"]["rayClusterSpec"].pop("authOptions")
    errors = schema_errors(kuberay_schema("RayJob"), misplaced)
    assert len(errors) == 1 and errors[0].startswith("spec: Additional properties")
    assert "'authOptions' was unexpected" in errors[0]

    wrong_mode = copy.deepcopy(job)
    wrong_mode["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "tokens"
    assert schema_errors(kuberay_schema("RayJob"), wrong_mode) == [
        "spec/rayClusterSpec/authOptions/mode: 'tokens' is not one of ['disabled', 'token']"
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_token_auth_goes_through_auth_options_with_the_token_secret(kind: str) -> None:
    spec = kuberay_cluster_specs()[kind]
    # The operator sends the token to the dashboard (job status, autoscaling) only with authOptions.
    assert spec["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}
    # KubeRay refuses authOptions.mode=token below Ray 2.52 (its ValidateRayClusterSpec).
    assert version_tuple(spec["rayVersion"]) >= RAY_TOKEN_AUTH_SINCE
    # The operator fills RAY_AUTH_* in; a hand-written value from another Secret would win over it.
    for node in walk(kuberay_document(kind)):
        if isinstance(node, dict) and str(node.get("name", "")).startswith("RAY_AUTH"):
            raise AssertionError(f"{kind}: {node['name']} is set by hand; authOptions sets it")


@pytest.mark.parametrize("kind", KINDS)
def test_manifest_sets_no_field_whose_cel_rules_this_check_cannot_run(kind: str) -> None:
    # x-kubernetes-validations are CEL rules that only the API server evaluates.
    doc = kuberay_document(kind)
    guarded = cel_guarded_paths(kuberay_schema(kind))
    assert guarded, "the vendored schema has CEL rules; this test reads them"
    for path in guarded:
        assert lookup(doc, path) is None, f"{kind} sets {'/'.join(path)}, checked only by the API server"


def cel_guarded_paths(schema: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path] if "x-kubernetes-validations" in schema else []
    for name, child in schema.get("properties", {}).items():
        found += cel_guarded_paths(child, (*path, name))
    return found


def lookup(doc: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


@pytest.mark.parametrize("kind", KINDS)
def test_head_serves_gcs_dashboard_and_client(kind: str) -> None:
    spec = kuberay_cluster_specs()[kind]
    head = head_container(spec)
    assert head["image"] == IMAGE
    ports = {p["containerPort"] for p in head["ports"]}
    assert {PORTS["gcs"], PORTS["dashboard"], PORTS["client"]} <= ports
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})


@pytest.mark.parametrize("kind", KINDS)
def test_gpu_worker_group_autoscales(kind: str) -> None:
    spec = kuberay_cluster_specs()[kind]
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


@pytest.mark.parametrize("kind", KINDS)
def test_s3_and_mlflow_settings_come_from_configmap_and_secret(kind: str) -> None:
    spec = kuberay_cluster_specs()[kind]
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


@pytest.mark.parametrize("kind", KINDS)
def test_pods_run_as_the_image_user(kind: str) -> None:
    spec = kuberay_cluster_specs()[kind]
    users = [rest for kw, rest in dockerfile_instructions() if kw == "USER"]
    uid = int(users[-1].split(":")[0])
    pods = [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]
    if kind == "RayJob":
        pods.append(rayjob()["spec"]["submitterPodTemplate"]["spec"])
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid


def test_rayjob_runs_a_baked_in_workflow_with_s3_and_mlflow() -> None:
    spec = rayjob()["spec"]
    entry = shlex.split(spec["entrypoint"])
    assert entry[:2] == [ENTRY_POINT, "run"]
    workflow = Path(entry[2])
    instructions = dockerfile_instructions()
    workdir = [rest for kw, rest in instructions if kw == "WORKDIR"][-1]
    index_of(instructions, "COPY", r"^workflows/?\s+workflows/?$")
    assert workflow.parent == Path(workdir) / "workflows", "the path must be where the image has the workflows"
    options = dict(zip(entry[3::2], entry[4::2]))
    assert options["--storage"].startswith("s3://")
    assert options["--tracking-uri"] == f"http://mlflow:{PORTS['mlflow']}"
    assert options["--ray-address"] == "auto", "the driver runs on the head and joins its cluster"
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] == "K8sJobMode"


def test_mlflow_server_accepts_the_host_names_ray_pods_call_it_by() -> None:
    """MLflow >= 3.5 refuses API calls with a Host header it was not started with (only /health skips
    the check), so the Deployment must allow the Service name the ConfigMap's tracking URI uses."""
    docs = {d["kind"]: d for d in load_yaml_docs(MLFLOW_K8S)}
    service, deployment = docs["Service"], docs["Deployment"]
    (config_map,) = [d for d in load_yaml_docs(RAYCLUSTER) if d.get("kind") == "ConfigMap"]
    tracking_host = config_map["data"]["MLFLOW_TRACKING_URI"].split("://", 1)[1]
    assert tracking_host == f"{service['metadata']['name']}:{PORTS['mlflow']}"
    assert [p["port"] for p in service["spec"]["ports"]] == [PORTS["mlflow"]]
    template = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    (container,) = template["spec"]["containers"]
    argv = container["command"]
    assert argv[:2] == ["mlflow", "server"]
    options = dict(zip(argv[2::2], argv[3::2]))
    assert options["--port"] == str(PORTS["mlflow"]) and options["--artifacts-destination"] == "s3://mlflow/"
    allowed = options["--allowed-hosts"]
    for host in (tracking_host, f"mlflow.ie-flow.svc.cluster.local:{PORTS['mlflow']}", f"localhost:{PORTS['mlflow']}"):
        assert host_allowed(host, allowed), host
    assert not host_allowed(f"attacker.example:{PORTS['mlflow']}", allowed)
    assert {"secretRef": {"name": S3_SECRET}} in container["envFrom"]
