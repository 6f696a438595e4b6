"""The printed tables: one row per layer with its figures, saturation marks, the comparison."""

from __future__ import annotations

import pytest

from ie_flow.config import load_job
from ie_flow.emergence import information_emergence
from ie_flow.report import format_compare, format_table, json_summary
from ie_flow.results import Result, ResultsRecord
from ie_flow.store import DatasetInfo, Manifest, ModelInfo


def _manifest(model: str) -> Manifest:
    return Manifest(code_version="test", model=ModelInfo(name=model, key=model, kind="folder", location=model),
                    tokenizer={}, dataset=DatasetInfo(name="icl-x", id="icl-x-12345678", digest="ab" * 32, settings={}),
                    samples=640, tokens=3, num_blocks=2, hidden_size=8, boundaries=[0, 1, 2], positions=[0, 1, 2],
                    storage_dtype="float16", micro="in_context", prefix_entropy_bits=[4.0, 4.0, 7.86])


def _result(model: str, macro_last: float, saturated_at: float = 10.0) -> Result:
    rows = []
    for layer in (0, 1):
        for pos, bits in enumerate((1.0, 2.0, macro_last + layer)):
            for level in ("macro", "micro"):
                rows.append({"layer": layer, "position": pos, "level": level, "method": "infonce", "seed": 0,
                             "bits": bits, "ceiling_bits": 10.0, "saturated": bits >= saturated_at - 0.1,
                             "n_train": 80, "n_eval": 20})
    em = information_emergence(rows)
    record = ResultsRecord(
        job=load_job(None, {"estimate.method": "infonce"}), job_yaml="", manifest_uri="m", manifest=_manifest(model),
        results_uri="r/mi.parquet", seconds={}, summary=em.summary, layers=em.layer_rows())
    return Result(record, rows, em, None)


def test_format_table_rows_and_notes():
    text = format_table(_result("m1", 9.95)).splitlines()
    assert text[0].startswith("Information Emergence of m1 / icl-x-12345678")
    # layer 0: IE = 9.95 - mean(1, 2, 9.95) = 9.95 - 4.317
    assert text[2].split()[:4] == ["0", "9.950", "4.317", "5.633"] and text[2].endswith("macro, 1 micro")
    assert text[3].split()[:4] == ["1", "10.950", "4.650", "6.300"]
    assert "note: 2 layer(s) have estimates at their ceiling" in text[-2]
    assert text[-1] == "prefix entropy per position (caps M_l(t)): 4.00 4.00 7.86"


def test_format_compare_shows_intervals_and_marks_saturated_layers():
    text = format_compare([_result("m1", 3.0), _result("m2", 9.95)]).splitlines()
    assert text[:2] == ["1: m1 / icl-x-12345678  (infonce)", "2: m2 / icl-x-12345678  (infonce)"]
    assert "95% interval" in text[2]
    # IE 3 - mean(1, 2, 3) = 1, and its interval (no replicates: the value itself)
    assert text[3].replace("[", " ").replace("]", " ").replace(",", " ").split() == \
        ["0", "1.000", "1.000", "1.000", "5.633*", "5.633", "5.633"]
    assert text[5].startswith("mean") and text[-1].startswith("* layer with saturated estimates")


def test_format_compare_averages_over_the_layers_valid_in_every_run():
    """Each run's own mean leaves out its invalid layers; the comparison's mean uses only the layers
    valid in every run, and says how many."""
    a, b = _result("m1", 3.0), _result("m2", 4.0)
    b.table = [{**r, "valid": r["layer"] != 1, "invalid_reason": "gap"} for r in b.table]
    b.emergence = information_emergence(b.table)
    text = format_compare([a, b]).splitlines()

    def row(name: str) -> list[float]:  # value, interval low, high per run
        line = next(l for l in text if l.startswith(name))
        return [float(v) for v in line.replace("[", " ").replace("]", " ").replace(",", " ").split()[1:]]

    # IE per layer: a 1.0 and 4 - 7/3; b 4 - 7/3 and invalid
    assert row("mean")[::3] == pytest.approx([(1 + 5 / 3) / 2, 5 / 3], abs=1e-3)  # printed to 3 decimals
    assert row("common")[::3] == pytest.approx([1.0, 5 / 3], abs=1e-3)  # layer 0 alone
    assert "common: over the 1 layers valid in every run (0)" in "\n".join(text)


def test_format_compare_flags_results_that_are_not_the_same_quantity():
    a, b = _result("m1", 3.0), _result("m2", 3.0)
    b.record.job.estimate.method = "smoothed"
    b.emergence.variant = "β = 0.6"
    notes = [l for l in format_compare([a, b]).splitlines() if l.startswith("note:")]
    assert notes == ["note: the results differ in estimator (1: infonce, 2: smoothed): their IE are not the same "
                     "quantity, compare them with care",
                     "note: the results differ in variant (1: none, 2: β = 0.6): their IE are not the same "
                     "quantity, compare them with care"]
    assert not [l for l in format_compare([a, _result("m2", 3.0)]).splitlines() if l.startswith("note:")]


def test_json_summary_follows_the_contract():
    out = json_summary(_result("m1", 3.0))
    assert out["model"] == "m1" and out["results"] == "r/mi.parquet" and out["corpus_digest"] == "ab" * 32
    assert [l["layer"] for l in out["layers"]] == [0, 1] and abs(out["summary"]["ie_mean"] - (1 + 5 / 3) / 2) < 1e-9


def test_lower_bound_cells_reach_the_table_and_the_report(tmp_path):
    """The critic check's verdict goes from the estimate's settings to the MI table's `critic` and
    `lower_bound` columns (a real Parquet round trip), and from there to the printed report."""
    import pyarrow.parquet as pq

    from ie_flow.estimators.base import MIEstimate
    from ie_flow.emergence import lower_bound_cells
    from ie_flow.stages.estimate import mi_rows, mi_table

    def est(bits: float, **settings) -> MIEstimate:
        return MIEstimate(bits=bits, ceiling_bits=10.0, saturated=False, n_train=80, n_eval=20, method="infonce",
                          seconds=0.0, seeds=(0,), bits_per_seed=(bits,), ci_low=bits - 0.1, ci_high=bits + 0.1,
                          settings=settings)

    why = "a k-nearest-neighbour (KSG) estimate reads 1.22 bits"
    cells = {(0, 0): est(1.0, critic="linear"), (0, 1): est(2.0, critic="linear"),
             (1, 0): est(0.9, critic="linear", lower_bound=why), (1, 1): est(2.5, critic="mlp (hidden=128, layers=1)")}
    rows = [r for (layer, pos), e in cells.items() for level in ("macro", "micro") for r in mi_rows(layer, pos, level, e)]
    path = tmp_path / "mi.parquet"
    pq.write_table(mi_table(rows), path)
    table = pq.read_table(path)
    back = {(r["layer"], r["position"], r["level"]): r for r in table.to_pylist()}
    assert back[(1, 0, "macro")]["lower_bound"] == why and back[(0, 0, "micro")]["lower_bound"] is None
    assert back[(1, 1, "macro")]["critic"] == "mlp (hidden=128, layers=1)" and back[(0, 1, "macro")]["critic"] == "linear"
    assert lower_bound_cells(table) == {1: [f"macro t=0: {why}", f"micro t=0: {why}"]}
    result = _result("m1", 3.0)
    text = format_table(Result(result.record, table, information_emergence(table), None)).splitlines()
    assert text[3].endswith("2 lower bound") and text[2].endswith("  -")  # layer 1 has the flagged cell
    assert f"note: 2 cell(s) are lower bounds (the critic check); the first: layer 1 macro t=0: {why}" in text
    from ie_flow.tracking import _critic_tags  # and the MLflow run's tags (the table itself is its artifact)

    assert _critic_tags(table) == {"critic_check.critics": "linear: 6 rows, mlp (hidden=128, layers=1): 2 rows",
                                   "critic_check.lower_bound_cells": "2"}


def _both_modes(model: str, shift: float = 0.0) -> Result:
    """A smoothed result measured in both modes at β = 0.6 (no replicates: intervals are the points)."""
    from ie_flow.emergence import headline

    rows = []
    for variant, last in (("β = 0.6", 3.0), ("β = 0.6, standardised", 2.0)):
        for layer in (0, 1):
            for pos, bits in enumerate((1.0, 2.0, last + layer + shift)):
                for level in ("macro", "micro"):
                    rows.append({"layer": layer, "position": pos, "level": level, "method": "smoothed", "seed": 0,
                                 "bits": bits, "ceiling_bits": 10.0, "saturated": False, "n_train": 80,
                                 "n_eval": 20, "variant": variant, "valid": True})
    job = load_job(None, {"estimate.method": "smoothed"})  # the in-context family: headline β = 0.6
    variant, valid, (em,) = headline(job.estimate.estimator(), "mean", rows)
    record = ResultsRecord(job=job, job_yaml="", manifest_uri="m", manifest=_manifest(model), results_uri="r/mi.parquet",
                           seconds={}, summary=em.summary, layers=em.layer_rows(), variant=variant, variant_valid=valid)
    return Result(record, rows, em, None)


def test_both_modes_side_by_side_in_the_report_json_compare_and_mlflow():
    """The raw headline and the standardised value at its β side by side: a column of the per-layer table,
    a line with its mean and the sentence on which the headline is and why, --json, compare's companion
    means, and the MLflow metrics (per layer, step = layer, and the mean); read back from the record alike."""
    from types import SimpleNamespace

    from ie_flow.estimators.smoothed import HEADLINE_MODE_NOTE
    from ie_flow.report import result_of
    from ie_flow.tracking import METRICS_PER_LAYER, _log_metrics

    result = _both_modes("m1")
    em = result.emergence
    # layer 0: raw IE 3 - mean(1, 2, 3) = 1, standardised 2 - mean(1, 2, 2) = 1/3; layer 1: 5/3 and 1
    assert [l.companion_ie for l in em.layers] == pytest.approx([1 / 3, 1.0])
    text = format_table(result).splitlines()
    assert text[0].endswith("estimator=smoothed, β = 0.6, seeds=[0]; beside it: β = 0.6, standardised)")
    assert "standardised IE" in text[1]
    assert text[2].replace("[", " ").replace("]", " ").replace(",", " ").split()[:9] == \
        ["0", "3.000", "2.000", "1.000", "1.000", "1.000", "0.333", "0.333", "0.333"]
    assert "standardised IE (β = 0.6, standardised), beside the headline (β = 0.6): mean 0.667" in "\n".join(text)
    assert HEADLINE_MODE_NOTE in text
    out = json_summary(result)
    assert out["summary"]["companion_variant"] == "β = 0.6, standardised"
    assert out["summary"]["companion_ie_mean"] == em.companion.summary.ie_mean == pytest.approx(2 / 3)
    assert [l["companion_ie"] for l in out["layers"]] == [l.ie for l in em.companion.layers]
    assert "companion_ie" not in json_summary(_result("m1", 3.0))["layers"][0]  # an estimator without one
    again = result_of(result.record, result.table)  # as `report` reads it back from storage or MLflow
    assert [l.companion_ie for l in again.emergence.layers] == [l.companion_ie for l in em.layers]
    lines = format_compare([result, _both_modes("m2", 1.0), _result("m3", 3.0)]).splitlines()
    assert "beside the headline: 1: β = 0.6, standardised mean 0.667 [0.667, 0.667]; " \
           "2: β = 0.6, standardised mean 1.333 [1.333, 1.333]; 3: none" in lines
    assert {"companion_ie", "companion_ie_ci_low", "companion_ie_ci_high"} <= set(METRICS_PER_LAYER)
    logged = []
    _log_metrics(SimpleNamespace(log_batch=lambda run, metrics: logged.extend(metrics)), "run", result.record, em)
    metrics = {(m.key, m.step): m.value for m in logged}
    assert metrics[("companion_ie", 0)] == pytest.approx(1 / 3) and metrics[("companion_ie", 1)] == pytest.approx(1.0)
    assert metrics[("companion_ie_mean", 0)] == pytest.approx(2 / 3) and ("ie", 0) in metrics
    logged.clear()
    plain = _result("m3", 3.0)
    _log_metrics(SimpleNamespace(log_batch=lambda run, metrics: logged.extend(metrics)), "run", plain.record,
                 plain.emergence)
    assert logged and not [m for m in logged if m.key.startswith("companion")]  # nothing beside: nothing logged
