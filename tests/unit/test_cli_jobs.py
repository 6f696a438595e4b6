"""Whole jobs through the CLI, in-process on the serial executor with tiny models: the --json
contract, report, compare, reuse on rerun, layer and position selection, MLflow run lifecycle."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest

JOB = ("--samples", "512", "--estimator", "gaussian", "--seeds", "0,1", "--executor", "serial")


@pytest.fixture(scope="module")
def two_jobs(tiny_llama, tiny_gpt2, tmp_path_factory):
    from ie_flow.cli import run_cli

    root = tmp_path_factory.mktemp("jobs")
    outs = []
    for model in (tiny_llama, tiny_gpt2):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = run_cli(["run", "--model", str(model), *JOB, "--storage", str(root / "data"),
                            "--tracking-uri", f"sqlite:///{root}/mlflow.db", "--json"])
        assert code == 0
        outs.append(json.loads(buf.getvalue()))  # stdout is exactly one JSON object
    return root, outs


def test_json_contract(two_jobs):
    _, (out, _) = two_jobs
    assert set(out) >= {"manifest", "results", "tracking_uri", "mlflow_run_id", "model", "corpus_digest",
                        "summary", "layers"}
    assert len(out["mlflow_run_id"]) == 32 and len(out["corpus_digest"]) == 64
    table = pq.read_table(out["results"]).to_pylist()
    assert {r["seed"] for r in table} == {0, 1}
    assert [l["layer"] for l in out["layers"]] == [0, 1]
    for layer in out["layers"]:
        macro = [r["bits"] for r in table if r["layer"] == layer["layer"] and r["level"] == "macro"
                 and r["position"] == 7]
        micro = [r["bits"] for r in table if r["layer"] == layer["layer"] and r["level"] == "micro"]
        assert layer["mi_macro"] == pytest.approx(sum(macro) / 2)
        assert layer["mi_micro"] == pytest.approx(sum(micro) / len(micro))
        assert layer["ie"] == pytest.approx(layer["mi_macro"] - layer["mi_micro"])
    assert out["summary"]["ie_mean"] == pytest.approx(sum(l["ie"] for l in out["layers"]) / 2)


def test_report_latest_and_by_run_id(two_jobs, ie_flow, tmp_path):
    """(Before the tests that rewrite a summary: `latest` is the newest summary on storage.)"""
    root, (first, second) = two_jobs
    latest = ie_flow("report", "--storage", root / "data", "--json")
    assert latest.code == 0, latest.err[-2000:]
    assert json.loads(latest.out)["results"] == second["results"]
    by_id = ie_flow("report", first["mlflow_run_id"], "--tracking-uri", f"sqlite:///{root}/mlflow.db",
                    "--out", tmp_path / "plots")
    assert by_id.code == 0, by_id.err[-2000:]
    assert f"{first['layers'][1]['ie']:.3f}" in by_id.out
    assert all((tmp_path / "plots" / f).stat().st_size > 1000
               for f in ("ie_per_layer.png", "mi_heatmap.png", "token_curves.png"))
    ie_flow("report", "0" * 32, "--tracking-uri", f"sqlite:///{root}/mlflow.db").assert_one_error("no MLflow run")


def test_compare_prints_both_profiles_and_one_plot(two_jobs, ie_flow, tmp_path):
    _, (a, b) = two_jobs
    result = ie_flow("compare", a["results"], b["results"], "--out", tmp_path / "cmp.png")
    assert result.code == 0, result.err[-2000:]
    assert "tiny-llama" in result.out and "tiny-gpt2" in result.out
    assert f"{a['layers'][0]['ie']:.3f}" in result.out and f"{b['layers'][0]['ie']:.3f}" in result.out
    assert (tmp_path / "cmp.png").stat().st_size > 1000


def test_mlflow_run_finished_with_config_and_relog_updates_it(two_jobs, ie_flow):
    import mlflow

    root, (first, _) = two_jobs
    uri = f"sqlite:///{root}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run = client.get_run(first["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["estimate.method"] == "gaussian" and run.data.params["corpus.samples"] == "512"
    assert run.data.tags["results_uri"] == first["results"]
    assert len(client.get_metric_history(run.info.run_id, "ie")) == 2  # step = layer 0, 1
    exp = run.info.experiment_id
    before = len(client.search_runs([exp], filter_string="attributes.run_name LIKE '%on%'"))
    results = first["results"].rsplit("/", 1)[0]
    relog = ie_flow("report", results, "--log", "--tracking-uri", uri, "--json")
    assert relog.code == 0, relog.err[-2000:]
    assert json.loads(relog.out)["mlflow_run_id"] == first["mlflow_run_id"]
    assert len(client.search_runs([exp], filter_string="attributes.run_name LIKE '%on%'")) == before
    assert len(client.get_metric_history(run.info.run_id, "ie")) == 2  # updated, not logged twice


def test_server_lost_right_after_creating_the_run_then_relog_finishes_that_run(tiny_llama, ie_flow, tmp_path,
                                                                               monkeypatch):
    """The server answers create_run, then every write fails (it went down): the job keeps the
    run's id, so `report --log` later finishes that run instead of opening a second one."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def down(*args, **kwargs):
        raise ConnectionError("the tracking server went away")

    with monkeypatch.context() as m:
        m.setattr(mlflow.MlflowClient, "log_batch", down)
        result = ie_flow("run", "--model", tiny_llama, *JOB, "--storage", tmp_path / "data", "--tracking-uri", uri,
                         "--experiment", "lost", "--json")
    assert result.code == 0, result.err[-2000:]
    out = json.loads(result.out)
    assert out["mlflow_run_id"] is None and "log them later with" in result.err
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("lost").experiment_id

    def job_runs() -> list:  # the per-seed child runs left out
        return [r for r in client.search_runs([exp]) if "mlflow.parentRunId" not in r.data.tags]

    (opened,) = job_runs()
    summary = json.loads((Path(out["results"]).parent / "summary.json").read_text())
    assert summary["mlflow_pending_run_id"] == opened.info.run_id and opened.info.status != "FINISHED"
    relog = ie_flow("report", Path(out["results"]).parent, "--log", "--tracking-uri", uri, "--json")
    assert relog.code == 0, relog.err[-2000:]
    (run,) = job_runs()
    assert run.info.run_id == opened.info.run_id == json.loads(relog.out)["mlflow_run_id"]
    assert run.info.status == "FINISHED" and run.data.tags["results_uri"] == out["results"]
    assert len(client.get_metric_history(run.info.run_id, "ie")) == 2


def test_rerun_reuses_activations_and_layers(two_jobs, tiny_llama, ie_flow, caplog):
    root, (first, _) = two_jobs
    with caplog.at_level(logging.INFO, logger="ie_flow"):
        result = ie_flow("run", "--model", tiny_llama, *JOB, "--storage", root / "data", "--no-tracking", "--json")
    assert result.code == 0, result.err[-2000:]
    assert "reusing complete activations" in caplog.text and "units to do" not in caplog.text
    assert json.loads(result.out)["layers"] == first["layers"]


def test_estimate_on_an_incomplete_extraction(ie_flow, tmp_path):
    folder = tmp_path / "activations" / "m" / "d-12345678"
    (folder / "_done").mkdir(parents=True)
    (folder / "_done" / "part-00000").write_text("{}")
    ie_flow("estimate", folder, "--storage", tmp_path, "--no-tracking").assert_one_error(
        "incomplete extraction (1 shard(s) finished")


def test_layer_and_position_selection(tiny_llama, ie_flow, tmp_path):
    """--layers/--positions store and estimate only those; IE uses the last position as macro
    and the kept positions as micro."""
    result = ie_flow("run", "--model", tiny_llama, "--samples", "256", "--estimator", "gaussian", "--executor",
                     "serial", "--layers", "1", "--positions", "0,2", "--storage", tmp_path / "data",
                     "--no-tracking", "--json")
    assert result.code == 0, result.err[-3000:]
    out = json.loads(result.out)
    manifest = json.loads(open(out["manifest"]).read())
    assert manifest["boundaries"] == [1, 2] and manifest["positions"] == [0, 2, 7]
    table = pq.read_table(out["results"]).to_pylist()
    assert {(r["layer"], r["position"]) for r in table} == {(1, 0), (1, 2), (1, 7)}
    (layer,) = out["layers"]
    micro = [r["bits"] for r in table if r["level"] == "micro"]
    macro = [r["bits"] for r in table if r["level"] == "macro" and r["position"] == 7]
    assert layer["layer"] == 1 and layer["ie"] == pytest.approx(macro[0] - sum(micro) / 3)
    ie_flow("run", "--model", tiny_llama, "--samples", "256", "--layers", "5", "--executor", "serial",
            "--storage", tmp_path / "data", "--no-tracking").assert_one_error("layers must be in 0..1")
