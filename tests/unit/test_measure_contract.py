"""Adding a measure is one file (issue 21): an estimator defined in the test folder only
(tests/measure_first_coordinates.py: its own variants and a diagnostic of its own) is registered and
run through a whole job on the serial executor; its values, variant and diagnostic are found in
mi.parquet (equal to the closed form on the stored activations), in the report table, in the MLflow
run and in compare, and nothing in ie_flow names it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from measure_first_coordinates import FirstCoordinates, first_correlation, gaussian_bits

from ie_flow.config import load_job
from ie_flow.estimators import ESTIMATORS, register, unregister
from ie_flow.jobs import run_job
from ie_flow.store import dataset_folder

SAMPLES = 256


def run_measure(model: Path, root: Path, tracking_uri: str):
    job = load_job(None, {"model.name": str(model), "corpus.samples": SAMPLES, "storage.uri": str(root / "data"),
                          "tracking.uri": tracking_uri, "runtime.executor": "serial",
                          "estimate.method": "first-coordinates"})
    return run_job(job)


@pytest.fixture(scope="module")
def measured(tiny_llama, tiny_gpt2, tmp_path_factory):
    root = tmp_path_factory.mktemp("measure")
    uri = f"sqlite:///{root}/mlflow.db"
    register(FirstCoordinates)  # for this module's tests only: other tests see the built-in registry
    yield run_measure(tiny_llama, root, uri), run_measure(tiny_gpt2, root, uri), root, uri
    unregister(FirstCoordinates.name)
    assert "first-coordinates" not in ESTIMATORS


def test_a_registered_measure_fills_the_mi_table_with_its_variants_and_diagnostic(measured):
    result = measured[0]
    assert "first-coordinates" in ESTIMATORS and result.record.variant == "k=1" and result.record.variant_valid
    rows = pq.read_table(result.record.results_uri).to_pylist()
    assert {r["variant"] for r in rows} == {"k=1", "k=2"} and {r["method"] for r in rows} == {"first-coordinates"}
    assert all(dict(r["diagnostics"]).keys() == {"first_correlation"} for r in rows)
    # every value against the closed form on the activations as stored
    acts, _ = dataset_folder(result.record.manifest_uri)
    m = acts.load_manifest()
    checked = 0
    for r in (r for r in rows if r["level"] == "macro"):
        t = m.positions.index(r["position"])
        x, y = (acts.read_cells(m, [(r["layer"] + side, t)])[0].astype(np.float64) for side in (0, 1))
        k = int(r["variant"][2:])
        assert r["bits"] == pytest.approx(gaussian_bits(x[:, :k], y[:, :k]), abs=1e-9)
        assert dict(r["diagnostics"])["first_correlation"] == pytest.approx(first_correlation(x, y), abs=1e-9)
        checked += 1
    assert checked == 2 * len(m.layers) * len(m.positions)


def test_report_mlflow_and_compare_show_the_measure(measured, ie_flow):
    first, second, root, uri = measured
    layer = first.emergence.layers[0]
    diag = layer.diagnostics["first_correlation"]
    report = ie_flow("report", first.record.results_uri, "--storage", str(root / "data"), "--tracking-uri", uri)
    assert report.code == 0, report.err
    header = next(l for l in report.out.splitlines() if l.strip().startswith("layer"))
    assert "first_correlation" in header and "estimator=first-coordinates, k=1" in report.out
    assert f"{diag:.3f}" in next(l for l in report.out.splitlines() if l.split()[:1] == [str(layer.layer)])

    import mlflow

    client = mlflow.MlflowClient(uri)
    run = client.get_run(first.record.mlflow_run_id)
    assert run.data.tags["estimator"] == "first-coordinates" and run.data.tags["variant"] == "k=1"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "diagnostic.first_correlation")}
    assert history == {l.layer: pytest.approx(l.diagnostics["first_correlation"]) for l in first.emergence.layers}

    out = ie_flow("compare", first.record.results_uri, second.record.results_uri, "--out",
                  str(root / "compare.png"), "--json")
    assert out.code == 0, out.err
    runs = json.loads(out.out)["runs"]
    assert [r["variant"] for r in runs] == ["k=1", "k=1"]
    text = ie_flow("compare", first.record.results_uri, second.record.results_uri, "--out", str(root / "c.png"))
    assert "first_correlation 1" in text.out and "(first-coordinates, k=1)" in text.out
    assert f"{diag:.3f}" in text.out
