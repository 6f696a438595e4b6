"""Secrets never leave the environment: with distinctive S3 keys and an MLflow tracking token, a
whole job against the S3 server and the MLflow server writes neither into storage (manifests,
markers, Parquet, summaries), MLflow (params, tags, metrics names, artifacts), its output or logs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_credentials_and_tokens_are_never_written(s3_server, mlflow_server, tiny_llama, cli, base_env, tmp_path):
    import mlflow

    probe = uuid.uuid4().hex[:12]
    secrets = {
        "AWS_ACCESS_KEY_ID": f"AKIAPROBE{probe.upper()}",  # moto accepts any key pair
        "AWS_SECRET_ACCESS_KEY": f"secret-probe-{probe}",
        "MLFLOW_TRACKING_TOKEN": f"token-probe-{probe}",  # sent as a bearer header, ignored by this server
    }
    storage = f"s3://{s3_server.bucket}/secrets-{probe}"
    env = base_env(**secrets, AWS_DEFAULT_REGION="us-east-1")
    res = cli("run", "--model", str(tiny_llama), "--samples", "256", "--estimator", "gaussian",
              "--storage", storage, "--s3-endpoint", s3_server.endpoint, "--tracking-uri", mlflow_server.uri,
              "--experiment", f"secrets-{probe}", "--json", env=env, cwd=tmp_path, timeout=400)
    out = res.json()
    needles = [v.encode() for v in secrets.values()]

    def leaks(data: bytes) -> list[str]:
        return [n.decode() for n in needles if n in data]

    # everything the job wrote to storage, and everything the MLflow server keeps in the bucket
    written = s3_server.keys(f"secrets-{probe}/") + [k for k in s3_server.keys("mlflow-artifacts/")]
    assert any(k.endswith("manifest.json") for k in written) and any(k.endswith("summary.json") for k in written)
    for key in written:
        assert not leaks(s3_server.get(key)), key
    # the run's params, tags and metric names, and its artifacts as downloaded
    client = mlflow.MlflowClient(mlflow_server.uri)
    run = client.get_run(out["mlflow_run_id"])
    record = json.dumps({"params": run.data.params, "tags": run.data.tags, "metrics": sorted(run.data.metrics)})
    assert not leaks(record.encode())
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts")))
    files = [p for p in local.rglob("*") if p.is_file()]
    assert {"job.yaml", "summary.json", "mi.parquet"} <= {p.name for p in files}
    for path in files:
        assert not leaks(path.read_bytes()), path
    # the command's own output, and anything it left in its working folder
    assert not leaks((res.stdout + res.stderr).encode())
    for path in (p for p in tmp_path.rglob("*") if p.is_file() and "artifacts" not in p.parts):
        assert not leaks(path.read_bytes()), path
