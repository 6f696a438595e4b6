"""The control in the same run: how the control job is derived, the replicate-wise difference, and a
whole job with `--control random` on a tiny model."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from ie_flow.config import EstimateSpec, load_job
from ie_flow.control import compare, control_job, measured_job


def _rows(variant, layer_bits, reps_shift=0.0):
    """Two positions per layer; replicates = bits + a per-replicate offset shared by all cells."""
    offsets = np.linspace(-0.1, 0.1, 21) + reps_shift
    rows = []
    for layer, (m0, m1) in enumerate(layer_bits):
        for pos, bits in ((0, m0), (1, m1)):
            for level in ("macro", "micro"):
                rows.append({"layer": layer, "position": pos, "level": level, "method": "smoothed", "seed": 0,
                             "bits": bits, "ceiling_bits": float("inf"), "saturated": False, "n_train": 64,
                             "n_eval": 64, "variant": variant, "valid": True, "invalid_reason": None,
                             "replicates": list(bits + offsets * (1 + pos))})
    return rows


def test_difference_is_bootstrapped_replicate_by_replicate():
    model = _rows("β = 0.6", [(1.0, 3.0), (1.0, 2.0)])
    control = _rows("β = 0.6", [(1.0, 1.5), (1.0, 2.0)])
    variant, valid, em, ec, layers = compare(EstimateSpec(method="smoothed"), model, control)
    assert variant == "β = 0.6" and valid
    # IE = M(1) - mean(M(0), M(1)) = (M(1) - M(0)) / 2; its replicate offset is (2o - o) / 2 = o / 2
    assert layers[0].diff == pytest.approx((3 - 1) / 2 - (1.5 - 1) / 2)
    # the shared offsets cancel in the difference: a zero-width interval
    assert layers[0].ci_low == pytest.approx(layers[0].diff) and layers[0].ci_high == pytest.approx(layers[0].diff)
    assert layers[1].diff == pytest.approx(0.0)


def test_a_model_and_its_control_are_compared_on_the_layers_valid_in_both():
    """At the fixed headline β, a layer invalid in the control has no difference; the sentence says
    how many layers the comparison used, and its mean is over them only."""
    from ie_flow.control import summary_sentence
    from ie_flow.results import ControlLayer, ControlRecord

    model = _rows("β = 0.6", [(1.0, 3.0), (1.0, 2.0), (1.0, 2.0)]) + _rows("β = 0.8", [(1.0, 1.5)] * 3)
    control = _rows("β = 0.6", [(1.0, 1.5), (1.0, 2.0), (1.0, 9.0)]) + _rows("β = 0.8", [(1.0, 1.5)] * 3)
    for r in control:
        if r["layer"] == 2 and r["variant"] == "β = 0.6":
            r["valid"], r["invalid_reason"] = False, "gap"
    variant, valid, em, ec, layers = compare(EstimateSpec(method="smoothed", settings={"headline_beta": 0.6}),
                                             model, control)
    assert (variant, valid) == ("β = 0.6", False)  # kept, flagged: never moved to β = 0.8, valid everywhere
    assert [d.diff for d in layers[:2]] == pytest.approx([0.75, 0.0]) and np.isnan(layers[2].diff)
    record = ControlRecord(kind="random", estimator="smoothed", variant=variant, variant_valid=valid,
                           layers=[ControlLayer(**vars(d)) for d in layers])
    assert summary_sentence(record).startswith("In 1 of the 2 layers valid in both (of 3; marked *) the model's")
    assert "mean difference +0.375 bits." in summary_sentence(record)


def test_difference_splits_into_its_gaussian_part_and_the_excess_replicate_by_replicate():
    """Cells with a Gaussian reference (diagnostic gauss_bits, its replicates in reference_replicates):
    IE and the model-minus-control difference split into the reference's IE and the excess."""
    def with_reference(rows, gauss, shift):
        for r in rows:
            g = gauss[r["layer"]][r["position"]]
            r["diagnostics"] = {"gauss_bits": g}
            # the reference moves with the resample by less than the value does (its own offsets)
            r["reference_replicates"] = list(g + shift * (np.array(r["replicates"]) - r["bits"]))
        return rows

    model = with_reference(_rows("β = 0.6", [(1.0, 3.0)]), [(0.5, 1.5)], 0.5)
    control = with_reference(_rows("β = 0.6", [(1.0, 1.5)]), [(0.5, 1.0)], 0.5)
    _, _, em, ec, (layer,) = compare(EstimateSpec(method="smoothed"), model, control)
    assert em.layers[0].reference_ie == pytest.approx((1.5 - 0.5) / 2)  # Gaussian IE: G(last) - mean G
    assert em.layers[0].excess_ie == pytest.approx(em.layers[0].ie - 0.5)
    assert layer.diff == pytest.approx(0.75) and layer.reference_diff == pytest.approx(0.5 - 0.25)
    assert layer.excess_diff == pytest.approx(0.75 - 0.25)
    # the shared offsets cancel in every difference (replicate by replicate): zero-width intervals
    assert (layer.reference_ci_low, layer.reference_ci_high) == pytest.approx((0.25, 0.25))
    assert (layer.excess_ci_low, layer.excess_ci_high) == pytest.approx((0.5, 0.5))
    # the model's own parts have intervals that do not vanish (its offsets do not cancel within one profile)
    assert em.layers[0].reference_ie_ci_low < em.layers[0].reference_ie < em.layers[0].reference_ie_ci_high


def test_control_jobs_keep_everything_but_what_they_control():
    job = load_job(None, {"control.kind": "random", "corpus.samples": 512})
    ctrl = control_job(job)
    assert ctrl.model.name == "random:smollm2-135m" and ctrl.model.seed == 1
    assert ctrl.corpus == job.corpus and ctrl.estimate.method == "smoothed"
    assert measured_job(job).model == job.model and measured_job(job).estimate.method == "smoothed"
    text = load_job(None, {"control.kind": "shuffled", "corpus.name": "python-docs"})
    assert control_job(text).corpus.shuffle_tokens and control_job(text).model == text.model


def test_shuffled_tokens_keep_each_window_multiset(tiny_llama):
    from ie_flow.corpora import build_corpus
    from ie_flow.models import load_tokenizer

    tok = load_tokenizer(str(tiny_llama))
    spec = load_job(None, {"corpus.samples": 256}).corpus
    plain = build_corpus(spec, tok)
    shuffled = build_corpus(spec.model_copy(update={"shuffle_tokens": True}), tok)
    assert np.array_equal(np.sort(plain.input_ids, axis=1), np.sort(shuffled.input_ids, axis=1))
    assert (plain.input_ids != shuffled.input_ids).any() and shuffled.digest != plain.digest


def test_run_with_a_random_control(tiny_llama, tmp_path):
    from ie_flow.cli import run_cli

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = run_cli(["run", "--model", str(tiny_llama), "--samples", "640", "--estimator", "gaussian",
                        "--control", "random", "--executor", "serial", "--storage", str(tmp_path / "d"),
                        "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--json"])
    assert code == 0
    out = json.loads(buf.getvalue())
    control = out["control"]
    assert control["kind"] == "random" and control["estimator"] == "smoothed"
    assert control["variant"] == "β = 0.6"  # the in-context family's headline β
    assert [d["layer"] for d in control["layers"]] == [0, 1]
    compared = [d for d in control["layers"] if d["diff"] is not None]
    assert compared  # a layer invalid at the fixed β in either profile has no difference (null)
    assert all(d["model_ie"] is None or d["control_ie"] is None for d in control["layers"] if d["diff"] is None)
    for d in compared:
        assert d["diff"] == pytest.approx(d["model_ie"] - d["control_ie"])
        assert d["ci_low"] <= d["diff"] <= d["ci_high"]
        if d["diff"] == d["diff"]:  # split into the Gaussian reference's part and the excess
            assert d["reference_diff"] + d["excess_diff"] == pytest.approx(d["diff"])
            assert d["reference_ci_low"] <= d["reference_diff"] <= d["reference_ci_high"]
            assert d["excess_ci_low"] <= d["excess_diff"] <= d["excess_ci_high"]
    assert "random-tiny-llama" in control["control_results"]
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db")
    children = client.search_runs([client.get_run(out["mlflow_run_id"]).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{out['mlflow_run_id']}'")
    assert sorted(c.data.tags["model"] for c in children) == [str(tiny_llama), f"random:{tiny_llama}"]
    assert len(client.get_metric_history(out["mlflow_run_id"], "control_diff")) == len(compared)  # one a layer
