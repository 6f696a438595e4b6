"""MLflow: one run per (model, corpus) job with tags, params, per-layer metrics (step = layer),
the corpus as a dataset input, and artifacts (MI table, plots, job spec)."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from ie_flow import IEFlowError, __version__

log = logging.getLogger("ie_flow")


class TrackingUnavailable(IEFlowError):
    """The tracking server cannot be reached; results are safe on storage."""


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when an HTTP tracking server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            r.read()
    except OSError as e:
        raise TrackingUnavailable(f"MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)})") from None


def _flat_params(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat_params(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = str(value)[:500]  # MLflow caps param values


def log_run(record: dict[str, Any], table: Any, em: Any, tracking_uri: str, experiment: str,
            input_ids: Any = None) -> str:
    """Log one job. `record` is the summary.json of the results folder (see pipeline.py)."""
    import mlflow
    from mlflow.entities import Metric

    from ie_flow.plots import plot_ie_per_layer, plot_mi_heatmap, plot_token_curves

    check_reachable(tracking_uri)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    job, manifest = record["job"], record["manifest"]
    model, dataset = manifest["model"], manifest["dataset"]
    title = f"{model.get('key', model['name'])} on {dataset['id']}"
    tags = {
        "model": model["name"], "model.kind": model["kind"], "model.revision": str(model["revision"]),
        "model.fingerprint": str(model["fingerprint"]), "corpus.digest": dataset["digest"],
        "corpus.name": dataset["name"], "estimator": job["estimate"]["method"], "units": "bits",
        "code_version": __version__, "storage_uri": job["storage"]["uri"], "manifest_uri": record["manifest_uri"],
        "results_uri": record["results_uri"], "mlflow.note.content": f"Information Emergence of {title}",
    }
    params: dict[str, str] = {}
    _flat_params("", {
        "tokens": manifest["tokens"], "samples": manifest["samples"], "layers": manifest["num_blocks"],
        "hidden_size": manifest["hidden_size"], "storage_dtype": manifest["storage_dtype"],
        "micro": manifest["micro"], "estimate": job["estimate"], "corpus": job["corpus"],
    }, params)
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_name=title, tags=tags) as run:
        mlflow.log_params(params)
        now = int(time.time() * 1000)
        metrics = []
        for row in em.layer_rows():
            for key in ("ie", "mi_macro", "mi_micro", "ie_ci_low", "ie_ci_high", "ceiling_bits"):
                if math.isfinite(row[key]):  # closed-form estimators have no ceiling (inf)
                    metrics.append(Metric(key, float(row[key]), now, row["layer"]))
        for key, value in {**em.summary, **{f"seconds_{k}": v for k, v in record["seconds"].items()}}.items():
            metrics.append(Metric(key, float(value), now, 0))
        for i in range(0, len(metrics), 900):  # MLflow's log_batch limit is 1000 metrics
            client.log_batch(run.info.run_id, metrics=metrics[i : i + 900])
        if input_ids is not None:
            with warnings.catch_warnings():  # MLflow warns that a local path could be two source kinds
                warnings.simplefilter("ignore", UserWarning)
                ds = mlflow.data.from_numpy(input_ids, source=record["manifest_uri"], name=dataset["id"],
                                            digest=dataset["digest"][:16])
            mlflow.log_input(ds, context="corpus")
        if len(em.seeds) > 1:
            _log_seed_children(run.info.run_id, em, tags)
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            table.to_pandas().to_csv(d / "mi.csv", index=False)
            import pyarrow.parquet as pq

            pq.write_table(table, d / "mi.parquet")
            plot_ie_per_layer(em, d / "ie_per_layer.png", f"IE per layer: {title}")
            plot_mi_heatmap(em, d / "mi_heatmap.png", f"M_l(t): {title}")
            plot_token_curves(em, d / "token_curves.png", f"E_l(t): {title}")
            import json

            (d / "job.yaml").write_text(record["job_yaml"])
            (d / "summary.json").write_text(json.dumps(record, indent=2, default=str))
            mlflow.log_artifacts(tmp)
        return run.info.run_id


def _log_seed_children(parent_id: str, em: Any, tags: dict[str, str]) -> None:
    """One nested run per estimator seed, with that seed's IE per layer."""
    import mlflow

    for s, seed in enumerate(em.seeds):
        with mlflow.start_run(run_name=f"seed {seed}", nested=True, parent_run_id=parent_id,
                              tags={**tags, "seed": str(seed)}):
            for i, layer in enumerate(em.layers):
                mlflow.log_metric("ie", float(em.ie_per_seed[s, i]), step=layer.layer)
