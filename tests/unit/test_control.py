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


def test_the_difference_at_the_companion_variant_is_beside_the_headlines():
    """Both modes measured: per layer the standardised mode's model-minus-control difference at the
    headline β, its interval replicate by replicate, in the record, the table, the sentence (which names
    both) and the MLflow metrics; its values are the standardised profiles' own."""
    from types import SimpleNamespace

    from ie_flow.control import ControlComparison, format_comparison, summary_sentence
    from ie_flow.emergence import information_emergence
    from ie_flow.results import ControlLayer, ControlRecord
    from ie_flow.tracking import _log_control_metrics

    std = "β = 0.6, standardised"
    model = _rows("β = 0.6", [(1.0, 3.0), (1.0, 2.0)]) + _rows(std, [(1.0, 2.0), (1.0, 4.0)], reps_shift=0.05)
    control = _rows("β = 0.6", [(1.0, 1.5), (1.0, 2.0)]) + _rows(std, [(1.0, 1.0), (1.0, 1.5)], reps_shift=0.05)
    variant, valid, em, ec, layers = compare(EstimateSpec(method="smoothed", settings={"headline_beta": 0.6}),
                                             model, control)
    assert variant == "β = 0.6" and em.companion.variant == ec.companion.variant == std
    own_m, own_c = information_emergence(model, variant=std), information_emergence(control, variant=std)
    assert [d.companion_diff for d in layers] == [m.ie - c.ie for m, c in zip(own_m.layers, own_c.layers)]
    assert [d.companion_diff for d in layers] == pytest.approx([0.5 - 0.0, 1.5 - 0.25])
    assert [d.diff for d in layers] == pytest.approx([0.75, 0.0])  # the headline's, as before
    for d in layers:  # the shared offsets cancel replicate by replicate: zero-width intervals
        assert (d.companion_ci_low, d.companion_ci_high) == pytest.approx((d.companion_diff, d.companion_diff))
    record = ControlComparison("random", "smoothed", variant, valid, em, ec, layers).record()
    assert record.companion_variant == std
    assert ControlRecord.model_validate_json(record.model_dump_json()) == record  # summary.json round trip
    text = summary_sentence(record)
    assert "the model's smoothed IE at β = 0.6 differs" in text and "mean difference +0.375 bits." in text
    assert text.endswith(f" At {std}, beside it: 2 of the 2 layers valid in both differ beyond the interval "
                         "(2 higher, 0 lower); mean difference +0.875 bits.")
    table = format_comparison(record).splitlines()
    assert table[0] == f"model vs random control, smoothed, β = 0.6 (beside it: {std})"
    assert "standardised diff" in table[1] and table[2].split()[7:10] == ["0.500", "[", "0.500,"]
    logged = []
    _log_control_metrics(SimpleNamespace(log_batch=lambda run, metrics: logged.extend(metrics)), "run", record)
    assert {(m.key, m.step): m.value for m in logged if m.key.startswith("control_diff_companion")} == pytest.approx({
        ("control_diff_companion", 0): 0.5, ("control_diff_companion", 1): 1.25,
        ("control_diff_companion_ci_low", 0): 0.5, ("control_diff_companion_ci_low", 1): 1.25,
        ("control_diff_companion_ci_high", 0): 0.5, ("control_diff_companion_ci_high", 1): 1.25})
    # records written before the companion existed still load, with nothing beside
    old = ControlRecord.model_validate({"kind": "random", "estimator": "smoothed", "variant": "β = 0.6", "layers": [
        {"layer": 0, "model_ie": 1.0, "control_ie": 0.5, "diff": 0.5, "ci_low": 0.4, "ci_high": 0.6}]})
    assert old.companion_variant is None and np.isnan(old.layers[0].companion_diff)
    assert "beside" not in summary_sentence(old) and "beside" not in format_comparison(old)
    assert isinstance(old.layers[0], ControlLayer)


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
    # the standardised mode at the same β beside it (both modes measured), where both sides are valid there
    assert control["companion_variant"] == "β = 0.6, standardised"
    beside = [d for d in control["layers"] if d["companion_diff"] is not None]
    assert beside and all(d["companion_ci_low"] <= d["companion_diff"] <= d["companion_ci_high"] for d in beside)
    assert out["summary"].get("companion_variant") is None  # the main estimator (gaussian) has none
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db")
    children = client.search_runs([client.get_run(out["mlflow_run_id"]).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{out['mlflow_run_id']}'")
    assert sorted(c.data.tags["model"] for c in children) == [str(tiny_llama), f"random:{tiny_llama}"]
    assert len(client.get_metric_history(out["mlflow_run_id"], "control_diff")) == len(compared)  # one a layer
    history = {m.step: m.value for m in client.get_metric_history(out["mlflow_run_id"], "control_diff_companion")}
    assert history == {d["layer"]: pytest.approx(d["companion_diff"]) for d in beside}


def test_the_companion_difference_is_split_into_its_gaussian_part():
    """At the variant beside the headline too, model minus control is split into the Gaussian reference
    parts' difference (with its paired interval) and the excess, in the record, the sentence and MLflow."""
    from types import SimpleNamespace

    from ie_flow.control import ControlComparison, summary_sentence
    from ie_flow.tracking import _log_control_metrics

    def with_gauss(rows, gauss):  # every cell's Gaussian reference: `gauss` of its layer and position
        for r in rows:
            g = gauss[r["layer"]][r["position"]]
            r["diagnostics"] = {"gauss_bits": g}
            r["reference_replicates"] = list(g + np.linspace(-0.05, 0.05, 21) * (1 + r["position"]))
        return rows

    std = "β = 0.6, standardised"
    model = _rows("β = 0.6", [(1.0, 3.0)]) + with_gauss(_rows(std, [(1.0, 2.0)]), [(0.5, 1.5)])
    control = _rows("β = 0.6", [(1.0, 1.5)]) + with_gauss(_rows(std, [(1.0, 1.0)]), [(0.5, 0.7)])
    variant, valid, em, ec, layers = compare(EstimateSpec(method="smoothed", settings={"headline_beta": 0.6}),
                                             model, control)
    # IE = (M(1) - M(0)) / 2: difference (0.5 - 0.0); Gaussian part (0.5 - 0.1) = 0.4, excess 0.1
    (d,) = layers
    assert d.companion_diff == pytest.approx(0.5) and d.companion_reference_diff == pytest.approx(0.4)
    assert (d.companion_reference_ci_low, d.companion_reference_ci_high) == pytest.approx((0.4, 0.4))
    record = ControlComparison("random", "smoothed", variant, valid, em, ec, layers).record()
    assert summary_sentence(record).endswith(
        "mean difference +0.500 bits, of which the Gaussian reference accounts for +0.400 (1 layers beyond its "
        "interval) and the excess for +0.100.")
    logged = []
    _log_control_metrics(SimpleNamespace(log_batch=lambda run, metrics: logged.extend(metrics)), "run", record)
    assert {m.key: m.value for m in logged if "companion_reference" in m.key} == pytest.approx({
        "control_diff_companion_reference_diff": 0.4, "control_diff_companion_reference_ci_low": 0.4,
        "control_diff_companion_reference_ci_high": 0.4})
