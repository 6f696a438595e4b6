"""Results in a real `mlflow server` (SQLite backend store, artifacts proxied to the S3 server):
a small `ie-flow run --json` is read back through MlflowClient - run, tags, params, per-layer metric
histories equal to the JSON output, artifacts, nested per-seed runs. A tracking server that is down
does not lose the results: they land on storage and `ie-flow report DIR --log` logs them later."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = pytest.mark.integration

EXPECTED_ARTIFACTS = {"mi.parquet", "mi.csv", "ie_per_layer.png", "mi_heatmap.png", "token_curves.png", "job.yaml"}


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _assert_metrics_equal_layers(client, run_id: str, layers: list[dict]) -> None:
    """Metric histories `ie`, `mi_macro`, `mi_micro`: one value per layer, step = layer, the JSON's values."""
    for key in ("ie", "mi_macro", "mi_micro"):
        history = _history(client, run_id, key)
        assert [step for step, _ in history] == [row["layer"] for row in layers], key
        for (step, value), row in zip(history, layers):
            assert math.isclose(value, row[key], rel_tol=1e-12, abs_tol=1e-12), (key, step, value, row[key])


def test_run_is_logged_to_the_tracking_server(mlflow_server, mlflow_run, s3_server, tmp_path):
    result, client = mlflow_run.result, _client(mlflow_server.uri)
    run_id = result["mlflow_run_id"]
    assert run_id and result["tracking_uri"] == mlflow_server.uri
    layers = result["layers"]
    assert [l["layer"] for l in layers] == [0, 1]  # the tiny model's two blocks
    assert all(math.isfinite(l[k]) for l in layers for k in ("ie", "mi_macro", "mi_micro"))
    assert math.isclose(result["summary"]["ie_mean"], sum(l["ie"] for l in layers) / 2, rel_tol=1e-9)
    assert math.isclose(result["summary"]["ie_max"], max(l["ie"] for l in layers), rel_tol=1e-9)

    # the run, in the experiment named on the command line, finished
    experiment = client.get_experiment_by_name(mlflow_run.experiment)
    assert experiment is not None
    run = client.get_run(run_id)
    assert run.info.experiment_id == experiment.experiment_id and run.info.status == "FINISHED"

    # tags and params
    tags, params = run.data.tags, run.data.params
    assert tags["model"] == result["model"]
    assert tags["corpus.digest"] == result["corpus_digest"]
    assert tags["estimator"] == "gaussian" and tags["units"] == "bits"
    assert tags["results_uri"] == result["results"] and tags["manifest_uri"] == result["manifest"]
    assert tags["storage_uri"] == str(mlflow_run.storage)
    assert params["samples"] == "512" and params["tokens"] == "8" and params["layers"] == "2"
    assert params["estimate.method"] == "gaussian" and params["estimate.seeds"] == "[0, 1]"
    assert params["corpus.name"] == "icl-countries"

    # per-layer metrics, step = layer, equal to the JSON output
    _assert_metrics_equal_layers(client, run_id, layers)
    assert math.isclose(run.data.metrics["ie_mean"], result["summary"]["ie_mean"], rel_tol=1e-12)

    # the corpus as the run's dataset input
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and result["corpus_digest"].startswith(inputs[0].dataset.digest)

    # artifacts: the MI table (equal to the one on storage), plots, job spec
    names = {a.path for a in client.list_artifacts(run_id)}
    assert EXPECTED_ARTIFACTS <= names, names
    local = client.download_artifacts(run_id, "", str(tmp_path))
    table = pq.read_table(f"{local}/mi.parquet")
    assert table.to_pandas().equals(pq.read_table(result["results"]).to_pandas())  # pandas: NaN equals NaN
    assert set(table.column("seed").to_pylist()) == {0, 1}
    assert sorted(set(table.column("layer").to_pylist())) == [0, 1]
    for png in ("ie_per_layer.png", "mi_heatmap.png", "token_curves.png"):
        data = open(f"{local}/{png}", "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    job = yaml.safe_load(open(f"{local}/job.yaml").read())
    assert job["estimate"]["method"] == "gaussian" and job["estimate"]["seeds"] == [0, 1]
    assert job["corpus"]["samples"] == 512
    csv_lines = open(f"{local}/mi.csv").read().splitlines()
    assert csv_lines[0].split(",")[:3] == ["layer", "position", "level"] and len(csv_lines) == table.num_rows + 1

    # the server keeps the artifacts on S3
    stored = s3_server.keys(mlflow_server.artifacts.split("/", 3)[3] + "/")
    assert any(k.endswith(f"{run_id}/artifacts/mi.parquet") for k in stored), stored[:20]

    # nested child runs, one per estimator seed, whose IE averages to the parent's
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert sorted(c.data.tags["seed"] for c in children) == ["0", "1"]
    per_seed = [dict(_history(client, c.info.run_id, "ie")) for c in children]
    for row in layers:
        assert math.isclose(sum(h[row["layer"]] for h in per_seed) / 2, row["ie"], rel_tol=1e-9, abs_tol=1e-9)


def test_tracking_server_down_then_logged_later(mlflow_server, tiny_llama, cli, free_port, tmp_path):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    storage = tmp_path / "storage"
    experiment = "ie-flow-logged-later"
    res = cli("run", "--model", str(tiny_llama), "--samples", "256", "--estimator", "gaussian", "--seeds", "0",
              "--storage", str(storage), "--tracking-uri", down, "--experiment", experiment, "--json", timeout=400)
    # the job itself succeeded: exit 0, results on storage, no run id, and a warning that says how
    # to log them later
    out = res.json()
    assert out["mlflow_run_id"] is None
    results_dir = out["results"].rsplit("/", 1)[0]
    summary = json.loads(open(f"{results_dir}/summary.json").read())
    assert summary["mlflow_run_id"] is None and summary["layers"]
    hint = f"ie-flow report {results_dir} --log --tracking-uri {down}"
    warnings = [l for l in res.stderr.splitlines() if l.startswith("warning:") and hint in l]
    assert len(warnings) == 1, res.describe()

    # follow the hint against the live server
    logged = cli("report", results_dir, "--log", "--tracking-uri", mlflow_server.uri, "--json", timeout=180)
    info = logged.json()
    run_id = info["mlflow_run_id"]
    assert run_id
    client = _client(mlflow_server.uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == experiment
    assert run.data.tags["results_uri"] == out["results"] and run.data.tags["estimator"] == "gaussian"
    _assert_metrics_equal_layers(client, run_id, out["layers"])
    assert EXPECTED_ARTIFACTS <= {a.path for a in client.list_artifacts(run_id)}
    # storage now records where the results were logged
    assert json.loads(open(f"{results_dir}/summary.json").read())["mlflow_run_id"] == run_id

    # and `ie-flow report RUN_ID` reads them back from the server
    back = cli("report", run_id, "--tracking-uri", mlflow_server.uri, "--json", timeout=180).json()
    assert back["layers"] == out["layers"] and back["corpus_digest"] == out["corpus_digest"]


def test_unknown_run_id_is_exit_2_with_one_line(mlflow_server, cli):
    res = cli("report", "0123456789abcdef0123456789abcdef", "--tracking-uri", mlflow_server.uri, timeout=120)
    assert res.returncode == 2, res.describe()
    assert res.stdout.strip() == ""
    errors = res.error_lines()
    assert len(errors) == 1 and "0123456789abcdef0123456789abcdef" in errors[0], res.describe()
    assert "Traceback" not in res.stderr


def test_a_server_that_refuses_this_host_stops_the_job_before_any_work(mlflow_server_for_other_hosts, tiny_llama,
                                                                      cli, tmp_path):
    uri = mlflow_server_for_other_hosts.uri
    storage = tmp_path / "storage"
    res = cli("run", "--model", str(tiny_llama), "--samples", "256", "--estimator", "gaussian", "--seeds", "0",
              "--storage", str(storage), "--tracking-uri", uri, "--json", timeout=300)
    assert res.returncode == 2, res.describe()
    errors = res.error_lines()
    assert len(errors) == 1 and "refuses this client (HTTP 403)" in errors[0], res.describe()
    assert "--allowed-hosts including 127.0.0.1:" in errors[0], res.describe()
    assert res.stdout.strip() == "" and "Traceback" not in res.stderr
    # before any work: no activations, no results
    assert not (storage / "activations").exists() and not (storage / "results").exists()


def test_a_measure_from_outside_the_package_reaches_the_tracking_server(mlflow_server, tiny_llama, tmp_path):
    """Adding a measure is one file (tests/measure_first_coordinates.py): registered, run through a
    job in this process, its variant and its own diagnostic are in the real server's run."""
    from measure_first_coordinates import FirstCoordinates

    from ie_flow.config import load_job
    from ie_flow.estimators import register, unregister
    from ie_flow.jobs import run_job

    register(FirstCoordinates)
    try:
        _measure_in_the_server(mlflow_server, tiny_llama, tmp_path, load_job, run_job)
    finally:
        unregister(FirstCoordinates.name)  # the other tests see the built-in registry


def _measure_in_the_server(mlflow_server, tiny_llama, tmp_path, load_job, run_job) -> None:
    job = load_job(None, {"model.name": str(tiny_llama), "corpus.samples": 256, "storage.uri": str(tmp_path / "d"),
                          "tracking.uri": mlflow_server.uri, "tracking.experiment": "ie-flow-measure",
                          "runtime.executor": "serial", "estimate.method": "first-coordinates"})
    result = run_job(job)
    client, run_id = _client(mlflow_server.uri), result.record.mlflow_run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["estimator"] == "first-coordinates" and run.data.tags["variant"] == "k=1"
    history = _history(client, run_id, "diagnostic.first_correlation")
    assert [step for step, _ in history] == [l.layer for l in result.emergence.layers]
    assert [v for _, v in history] == pytest.approx([l.diagnostics["first_correlation"] for l in result.emergence.layers])
    rows = pq.read_table(client.download_artifacts(run_id, "mi.parquet", str(tmp_path))).to_pylist()
    assert {r["variant"] for r in rows} == {"k=1", "k=2"}
    assert {k for r in rows for k, _ in r["diagnostics"]} == {"first_correlation"}
