"""ie-flow on a real Ray cluster: a head and a worker node (`ray start`, two processes trees on
loopback, token authentication), the S3 server and the MLflow server. `ie-flow submit` sends a
workflow through the Ray Jobs API and waits; the results are found in S3 and in MLflow. The same
workflow file run locally (`ie-flow run`, only the storage URI changed) gives the same MI table."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = pytest.mark.integration

SAMPLES = 256
SHARD = 64  # 4 shards: work for both nodes' actors


def _workflow(path, tiny_llama, storage: str, endpoint: str, tracking: str) -> None:
    path.write_text(
        "# ie-flow submit THIS --ray-address http://HEAD:8265   |   ie-flow run THIS\n" + yaml.safe_dump({
            "name": "cluster-it",
            "model": {"name": str(tiny_llama)},
            "corpus": {"name": "icl-countries", "shots": 4, "samples": SAMPLES, "seed": 0},
            "extract": {"shard_size": SHARD, "batch_size": 64, "storage_dtype": "float16"},
            "estimate": {"method": "gaussian", "seeds": [0]},
            "storage": {"uri": storage, "endpoint_url": endpoint},
            "tracking": {"uri": tracking, "experiment": "ie-flow-cluster"},
        }, sort_keys=False))


def _s3_table(s3_server, uri: str):
    assert uri.startswith(f"s3://{s3_server.bucket}/"), uri
    return pq.read_table(io.BytesIO(s3_server.get(uri[len(f"s3://{s3_server.bucket}/"):])))


def test_submit_to_cluster_matches_local_run(ray_cluster, s3_server, mlflow_server, tiny_llama, cli, base_env,
                                             tmp_path):
    from mlflow import MlflowClient

    storage = f"s3://{s3_server.bucket}/cluster-run"
    workflow = tmp_path / "cluster.yaml"
    _workflow(workflow, tiny_llama, storage, s3_server.endpoint, mlflow_server.uri)

    # -- submit and wait; the client needs the Jobs API address and the cluster token, and S3
    # credentials to upload the model folder, which exists on this machine only (the job reads it
    # from the storage)
    sub = cli("submit", str(workflow), "--ray-address", ray_cluster.address, "--wait", "--timeout", "480", "--json",
              env={**ray_cluster.env, **s3_server.credentials}, timeout=540)
    out = json.loads(sub.stdout.strip().splitlines()[-1]) if sub.stdout.strip() else {}
    job_id = out.get("job_id")
    if sub.returncode != 0 or out.get("status") != "SUCCEEDED":
        job_logs = cli("logs", job_id, "--ray-address", ray_cluster.address, env=ray_cluster.env).stdout if job_id else ""
        pytest.fail(f"{sub.describe()}\n--- job logs ---\n{job_logs[-8000:]}")
    out = sub.json()
    result = out["result"]
    assert result, f"the job printed no --json result:\n{sub.describe()}"

    # -- the results are in S3
    assert result["manifest"].startswith(f"{storage}/activations/tiny-llama/")
    assert result["results"].startswith(f"{storage}/results/tiny-llama/") and result["results"].endswith("/mi.parquet")
    cluster_table = _s3_table(s3_server, result["results"])
    assert cluster_table.num_rows == 2 * 8 * 2  # layers x positions x (macro, micro), one seed
    manifest_key = result["manifest"][len(f"s3://{s3_server.bucket}/"):]
    cluster_manifest = json.loads(s3_server.get(manifest_key))
    assert cluster_manifest["complete"] and len(cluster_manifest["shards"]) == SAMPLES // SHARD
    summary_key = result["results"][len(f"s3://{s3_server.bucket}/"):].replace("mi.parquet", "summary.json")
    assert json.loads(s3_server.get(summary_key))["mlflow_run_id"] == result["mlflow_run_id"]

    # -- and in MLflow
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "ie-flow-cluster"
    assert run.data.tags["storage_uri"] == storage and run.data.tags["results_uri"] == result["results"]
    assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "ie")) == \
        [(l["layer"], l["ie"]) for l in result["layers"]]

    # -- the job ran on the cluster's worker actors. Each pool names a node per worker, one per node
    # first (unit test: test_ray_workers_are_placed_one_per_node_before_a_second); which ones Ray had
    # placed before this small job ended is timing (CI saw a run whose other-node workers never were)
    nodes = _extractor_nodes(ray_cluster)
    assert nodes and nodes <= _cluster_nodes(ray_cluster), f"worker actors on {nodes}"

    # -- status and logs of the job
    status = cli("status", job_id, "--ray-address", ray_cluster.address, env=ray_cluster.env, timeout=60)
    assert status.returncode == 0 and status.stdout.startswith(f"{job_id}: SUCCEEDED"), status.describe()
    logs = cli("logs", job_id, "--ray-address", ray_cluster.address, env=ray_cluster.env, timeout=60)
    assert logs.returncode == 0 and "stage 1" in logs.stdout and "stage 2" in logs.stdout, logs.describe()
    json_lines = [json.loads(l) for l in logs.stdout.splitlines() if l.startswith("{") and l.endswith("}")]
    assert json_lines and json_lines[-1] == result
    assert s3_server.secret not in logs.stdout  # the cluster's credentials stay out of the job's logs
    # the same as one JSON object each; stop: the job has already ended
    answers = {cmd: cli(cmd, job_id, "--ray-address", ray_cluster.address, "--json", env=ray_cluster.env,
                        timeout=60).json() for cmd in ("status", "logs", "stop")}
    assert answers["status"]["job_id"] == job_id and answers["status"]["status"] == "SUCCEEDED"
    assert answers["logs"]["status"] == "SUCCEEDED" and answers["logs"]["logs"] == logs.stdout
    assert answers["stop"] == {"job_id": job_id, "stopped": False}

    # -- the same workflow file run on this machine (only the storage URI changed) gives the same MI
    # table; run after the cluster job, since a third Ray runtime beside the cluster timed out at
    # start-up on a loaded 2-core machine
    local_result = cli("run", str(workflow), "--storage", str(tmp_path / "local"), "--json",
                       env=base_env(), timeout=500).json()
    assert local_result["corpus_digest"] == result["corpus_digest"]
    local_table = pq.read_table(local_result["results"])
    assert local_table.schema == cluster_table.schema
    assert local_table.to_pandas().equals(cluster_table.to_pandas()), (  # pandas: NaN equals NaN
        f"cluster and local MI tables differ:\n{cluster_table.to_pandas()}\n{local_table.to_pandas()}")
    assert local_result["layers"] == result["layers"]
    # the activations behind them are the same bytes
    local_manifest = json.loads(open(local_result["manifest"]).read())
    assert local_manifest["shards"] == cluster_manifest["shards"]


CARRY_WORDS = ["the", "a", "cat", "sat", "on", "mat", "is", "and", "France", "Spain", "Italy", "Egypt", "China"]


def _local_corpus(path) -> None:
    """A JSONL corpus on this machine only: sentences of 9-13 words of the tiny tokenizer's vocabulary."""
    import numpy as np

    rng = np.random.default_rng(3)
    lines = [" ".join(rng.choice(CARRY_WORDS, size=int(rng.integers(9, 14)))) + "." for _ in range(300)]
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))


def test_submit_carries_a_local_corpus_and_model(ray_cluster, s3_server, tiny_llama, cli, base_env, tmp_path):
    """`ie-flow submit` of a workflow naming a corpus file and a model folder on this machine: both
    are uploaded to the job's S3 storage (content-addressed) and the cluster reads them from there;
    the numbers equal a local run of the same workflow."""
    import shutil

    model, corpus = tmp_path / "my-model", tmp_path / "my-corpus.jsonl"
    shutil.copytree(tiny_llama, model)  # saved with save_pretrained, from a config
    _local_corpus(corpus)
    storage = f"s3://{s3_server.bucket}/carry-run"
    workflow = tmp_path / "carry.yaml"
    workflow.write_text(yaml.safe_dump({
        "name": "carry-it", "model": {"name": str(model)},
        "corpus": {"name": str(corpus), "tokens": 8, "samples": SAMPLES},
        "extract": {"shard_size": 128, "batch_size": 64}, "estimate": {"method": "gaussian", "seeds": [0]},
        "storage": {"uri": storage, "endpoint_url": s3_server.endpoint}, "tracking": {"enabled": False},
    }, sort_keys=False))
    # the submitting machine uploads: it needs the S3 credentials (the cluster has its own)
    sub = cli("submit", str(workflow), "--ray-address", ray_cluster.address, "--wait", "--timeout", "420", "--json",
              env={**ray_cluster.env, **s3_server.credentials}, timeout=480)
    assert sub.returncode == 0, sub.describe()
    out = sub.json()
    assert out["status"] == "SUCCEEDED", sub.describe()
    assert sub.stderr.count("uploaded") == 2, sub.describe()
    result = out["result"]
    summary = json.loads(s3_server.get(result["results"][len(f"s3://{s3_server.bucket}/"):].replace(
        "mi.parquet", "summary.json")))
    inputs = f"{storage}/inputs/sha256-"
    assert summary["job"]["model"]["name"].startswith(inputs) and summary["job"]["model"]["name"].endswith("/my-model")
    assert summary["job"]["corpus"]["name"].startswith(inputs)
    assert summary["job"]["corpus"]["name"].endswith("/my-corpus.jsonl")
    records = [k for k in s3_server.keys("carry-run/inputs/") if k.endswith("/_sha256.json")]
    assert len(records) == 2, s3_server.keys("carry-run/inputs/")
    assert result["manifest"].startswith(f"{storage}/activations/my-model/my-corpus-8tok-")
    cluster_table = _s3_table(s3_server, result["results"])
    cluster_manifest = json.loads(s3_server.get(result["manifest"][len(f"s3://{s3_server.bucket}/"):]))

    local = cli("run", str(workflow), "--storage", str(tmp_path / "local"), "--executor", "serial", "--json",
                env=base_env(), timeout=300).json()
    local_table = pq.read_table(local["results"])
    assert local_table.num_rows == cluster_table.num_rows == 2 * 8 * 2  # layers x positions x levels
    assert local_table.to_pandas().equals(cluster_table.to_pandas()), (
        f"cluster and local MI tables differ:\n{cluster_table.to_pandas()}\n{local_table.to_pandas()}")
    assert local["layers"] == result["layers"]
    local_manifest = json.loads(open(local["manifest"]).read())
    assert local_manifest["shards"] == cluster_manifest["shards"]  # the same activation bytes
    assert local_manifest["model"]["fingerprint"] == cluster_manifest["model"]["fingerprint"]


def _cluster_nodes(ray_cluster) -> set[str]:
    """Node ids of the cluster's live nodes (Ray's state API, via the CLI)."""
    return {n["node_id"] for n in _ray_list(ray_cluster, "nodes") if n.get("state") == "ALIVE"}


def _ray_list(ray_cluster, what: str) -> list[dict]:
    import subprocess
    import sys
    from pathlib import Path

    ray_bin = str(Path(sys.executable).parent / "ray")
    proc = subprocess.run([ray_bin, "list", what, "--address", ray_cluster.address, "--format", "json",
                           "--detail", "--limit", "1000"], env=ray_cluster.env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _extractor_nodes(ray_cluster) -> set[str]:
    """Node ids of the worker actors that were placed (Ray's state API, via the CLI). An actor the
    pool asked for but Ray never placed before the job ended has no node (node_id None) and ran
    nothing, so it is not a node the job ran on."""
    return {a["node_id"] for a in _ray_list(ray_cluster, "actors")
            if "StepWorker" in a.get("class_name", "") and a.get("node_id")}
