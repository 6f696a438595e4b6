"""Whole jobs through the CLI on tiny models: --json contract, report, compare, reuse on rerun."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from test_cli import ie_flow


@pytest.fixture(scope="module")
def two_jobs(tiny_llama, tiny_gpt2, tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    outs = []
    for model in (tiny_llama, tiny_gpt2):
        proc = ie_flow("run", "--model", str(model), "--samples", "512", "--estimator", "gaussian",
                       "--seeds", "0,1", "--storage", str(root / "data"),
                       "--tracking-uri", f"sqlite:///{root}/mlflow.db", "--json", cwd=root, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(json.loads(proc.stdout))  # stdout is exactly one JSON object
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


def test_report_latest_and_by_run_id(two_jobs):
    root, (first, second) = two_jobs
    latest = ie_flow("report", "--storage", str(root / "data"), "--json", cwd=root)
    assert latest.returncode == 0, latest.stderr[-2000:]
    assert json.loads(latest.stdout)["results"] == second["results"]
    by_id = ie_flow("report", first["mlflow_run_id"], "--tracking-uri", f"sqlite:///{root}/mlflow.db",
                    "--out", str(root / "plots"), cwd=root)
    assert by_id.returncode == 0, by_id.stderr[-2000:]
    assert f"{first['layers'][1]['ie']:.3f}" in by_id.stdout
    assert all((root / "plots" / f).stat().st_size > 1000
               for f in ("ie_per_layer.png", "mi_heatmap.png", "token_curves.png"))
    unknown = ie_flow("report", "0" * 32, "--tracking-uri", f"sqlite:///{root}/mlflow.db", cwd=root)
    assert unknown.returncode == 2 and "no MLflow run" in unknown.stderr


def test_compare_prints_both_profiles_and_one_plot(two_jobs):
    root, (a, b) = two_jobs
    proc = ie_flow("compare", a["results"], b["results"], "--out", str(root / "cmp.png"), cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tiny-llama" in proc.stdout and "tiny-gpt2" in proc.stdout
    assert f"{a['layers'][0]['ie']:.3f}" in proc.stdout and f"{b['layers'][0]['ie']:.3f}" in proc.stdout
    assert (root / "cmp.png").stat().st_size > 1000


def test_rerun_reuses_activations_and_layers(two_jobs, tiny_llama):
    root, (first, _) = two_jobs
    proc = ie_flow("run", "--model", str(tiny_llama), "--samples", "512", "--estimator", "gaussian",
                   "--seeds", "0,1", "--storage", str(root / "data"), "--no-tracking", "--json", cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reusing complete activations" in proc.stderr and "0 to estimate" in proc.stderr
    assert json.loads(proc.stdout)["layers"] == first["layers"]


def test_estimate_on_an_incomplete_extraction(tmp_path):
    folder = tmp_path / "activations" / "m" / "d-12345678"
    (folder / "_done").mkdir(parents=True)
    (folder / "_done" / "part-00000").write_text("{}")
    proc = ie_flow("estimate", str(folder), "--storage", str(tmp_path), "--no-tracking")
    assert proc.returncode == 2 and "incomplete extraction (1 shard(s) finished" in proc.stderr


def test_layer_and_position_selection(tiny_llama, tmp_path):
    """--layers/--positions store and estimate only those; IE uses the last position as macro
    and the kept positions as micro."""
    proc = ie_flow("run", "--model", str(tiny_llama), "--samples", "256", "--estimator", "gaussian",
                   "--layers", "1", "--positions", "0,2", "--storage", str(tmp_path / "data"),
                   "--no-tracking", "--json", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    manifest = json.loads((tmp_path / "data" / out["manifest"].split("/data/", 1)[1]).read_text())
    assert manifest["boundaries"] == [1, 2] and manifest["positions"] == [0, 2, 7]
    table = pq.read_table(out["results"]).to_pylist()
    assert {(r["layer"], r["position"]) for r in table} == {(1, 0), (1, 2), (1, 7)}
    (layer,) = out["layers"]
    micro = [r["bits"] for r in table if r["level"] == "micro"]
    macro = [r["bits"] for r in table if r["level"] == "macro" and r["position"] == 7]
    assert layer["layer"] == 1 and layer["ie"] == pytest.approx(macro[0] - sum(micro) / 3)
    bad = ie_flow("run", "--model", str(tiny_llama), "--samples", "256", "--positions", "9",
                  "--storage", str(tmp_path / "data2"), "--no-tracking", cwd=tmp_path)
    assert bad.returncode == 2 and "positions must be in 0..7" in bad.stderr
