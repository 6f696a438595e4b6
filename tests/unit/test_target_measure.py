"""The target measure in the pipeline (docs/METHOD.md section 8): labels stored beside the activations,
stage 2's rows (boundary l + 1 as layer l's macro row, boundary 0 as every layer's micro row) equal to
the probe called directly on those stored boundaries, the comparison with the random copy (paired
differences, block gains, the emergence layer) in summary.json and MLflow, and labelled text corpora."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from ie_flow.corpora.coherence import position_ceilings
from ie_flow.estimators.probe import UsableInformation


@pytest.fixture(scope="module")
def job(tiny_llama, tmp_path_factory):
    from ie_flow.cli import run_cli

    tmp = tmp_path_factory.mktemp("target")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = run_cli(["run", "--model", str(tiny_llama), "--corpus", "icl-coherence", "--samples", "768",
                        "--estimator", "probe", "--control", "random", "--executor", "serial",
                        "--storage", str(tmp / "d"), "--tracking-uri", f"sqlite:///{tmp}/m.db", "--json"])
    assert code == 0
    return json.loads(buf.getvalue()), tmp


def _stored(out):
    from ie_flow.store import dataset_folder, results_folder

    folder, _ = dataset_folder(out["manifest"])
    _, table = results_folder(out["results"]).load()
    return folder, folder.load_manifest(), table.to_pylist()


def test_labels_are_stored_beside_the_activations(job, tiny_llama):
    from ie_flow.config import load_job
    from ie_flow.corpora import build_corpus
    from ie_flow.models import load_tokenizer

    out, _ = job
    folder, manifest, _ = _stored(out)
    corpus = build_corpus(load_job(None, {"corpus.name": "icl-coherence", "corpus.samples": 768}).corpus,
                          load_tokenizer(str(tiny_llama)))
    target = folder.read_target(manifest)
    assert np.array_equal(target.labels, corpus.labels) and np.array_equal(target.groups, corpus.groups)
    assert target.info.ceilings_bits == pytest.approx(position_ceilings())
    assert target.info.token_ceilings_bits == [0.0] * 8
    assert target.info.label_names == ["names from several categories", "all four names from one category"]


def test_each_row_is_the_probe_on_its_stored_boundary(job):
    """Layer l's macro row at t is the probe at boundary l + 1, its micro row the probe at boundary 0 (the
    same in every layer), each with the exact ceiling of what that boundary sees."""
    out, _ = job
    folder, manifest, rows = _stored(out)
    target = folder.read_target(manifest)
    cells = [(2, 7), (1, 3), (0, 5)]
    direct = UsableInformation().estimate_targets(folder.read_cells(manifest, cells), target.labels, target.groups,
                                                  ceilings=[1.0, 0.494, 0.0])
    found = {(r["layer"], r["level"], r["position"]): r for r in rows}
    for (layer, level, t), est in (((1, "macro", 7), direct[0]), ((0, "macro", 3), direct[1]),
                                   ((0, "micro", 5), direct[2]), ((1, "micro", 5), direct[2])):
        row = found[(layer, level, t)]
        assert row["bits"] == pytest.approx(est.bits, abs=1e-9) and row["ci_high"] == pytest.approx(est.ci_high, abs=1e-9)
        assert row["variant"] == "linear-softmax" and not row["saturated"]
    assert {found[(l, "micro", t)]["ceiling_bits"] for l in (0, 1) for t in range(8)} == {0.0}
    assert [found[(1, "macro", t)]["ceiling_bits"] for t in range(8)] == pytest.approx(position_ceilings())


def test_the_random_copy_is_compared_boundary_by_boundary(job):
    out, tmp = job
    target = out["control"]["target"]
    assert out["control"]["estimator"] == "probe"  # a probe job's control is measured with the probe
    rows = target["boundaries"]
    assert [r["boundary"] for r in rows] == [0, 1, 2] and target["position"] == 7
    for r in rows:
        assert r["diff"] == pytest.approx(r["model"] - r["control"])
        assert r["diff_low"] <= r["diff"] <= r["diff_high"]
    assert rows[2]["gain"] == pytest.approx(rows[2]["model"] - rows[1]["model"])
    assert sum(target["emergence_shares"].values()) == pytest.approx(1.0)
    clears = [r["boundary"] for r in rows if r["model_low"] > r["control_high"]]
    assert target["emergence_boundary"] == (clears[0] if clears else None)
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp}/m.db")
    history = sorted((m.step, m.value) for m in client.get_metric_history(out["mlflow_run_id"], "target_model"))
    assert [s for s, _ in history] == [0, 1, 2]
    assert [v for _, v in history] == pytest.approx([r["model"] for r in rows])
    artifacts = [a.path for a in client.list_artifacts(out["mlflow_run_id"])]
    assert "target_per_boundary.png" in artifacts


def test_emergence_layer_is_where_the_model_clears_its_control():
    from ie_flow.targets import compare_targets

    def table(values, half):
        rows = []
        for layer in range(len(values) - 1):
            for level, boundary in (("macro", layer + 1), ("micro", 0)):
                v = values[boundary]
                rows.append({"layer": layer, "position": 0, "level": level, "method": "probe", "seed": 0,
                             "variant": "linear-softmax", "bits": v, "ci_low": v - half, "ci_high": v + half,
                             "ceiling_bits": 1.0, "replicates": list(v + np.linspace(-half / 2, half / 2, 11))})
        return rows

    record = compare_targets(table([0.0, 0.05, 0.3, 0.6], 0.05), table([0.0, 0.02, 0.05, 0.05], 0.05))
    assert record.emergence_boundary == 2  # 0.25 > 0.10; at boundary 1, 0.00 < 0.07
    assert record.emergence_shares == {"2": 1.0}
    assert [r.gain for r in record.boundaries[1:]] == pytest.approx([0.05, 0.25, 0.3])
    none = compare_targets(table([0.0, 0.05, 0.06, 0.07], 0.05), table([0.0, 0.02, 0.05, 0.05], 0.05))
    assert none.emergence_boundary is None and none.emergence_shares == {"none": 1.0}


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_labelled_text_windows_keep_their_documents_label(kind, tiny_llama, tmp_path):
    from ie_flow.corpora.text import text_corpus
    from ie_flow.models import load_tokenizer

    docs = [("the cat sat on the mat and the cat sat. a cat is on a mat and the mat is", "pets"),
            ("the mat is on the cat and a mat sat on a cat.", "mats"),
            ("a cat sat on the mat and the cat is on the mat", "pets")]
    path = tmp_path / f"c.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "topic": s}) + "\n" for t, s in docs))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": [t for t, _ in docs], "topic": [s for _, s in docs]}), path)
    corpus = text_corpus(str(path), load_tokenizer(str(tiny_llama)), tokens=6, samples=100, label_field="topic")
    assert corpus.label_names == ["mats", "pets"]
    assert corpus.labels.tolist() == [1, 1, 0, 1] and corpus.groups.tolist() == [0, 0, 1, 2]
    plain = text_corpus(str(path), load_tokenizer(str(tiny_llama)), tokens=6, samples=100)
    assert plain.labels is None and np.array_equal(plain.input_ids, corpus.input_ids)


@pytest.mark.parametrize("labels, needle", [
    (None, "line 1 has no 'topic' label (has: text)"),
    (["pets"] * 300, "the label is constant ('pets' on all 300 rows)"),
    (["mats"] * 10 + ["pets"] * 290, "label class 'mats' has 7 rows in the fit split"),
], ids=["missing", "constant", "too-few"])
def test_bad_labels_stop_the_job_before_any_model_runs(labels, needle, ie_flow, tiny_llama, tmp_path):
    text = "the cat sat on the mat and the cat is on a mat"
    rows = [{"text": text} if labels is None else {"text": text, "topic": s} for s in (labels or [None] * 300)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = ie_flow("run", "--model", tiny_llama, "--corpus", tmp_path / "c.jsonl", "--label-field", "topic",
                  "--estimator", "probe", "--no-tracking", "--executor", "serial", "--storage", tmp_path / "s")
    res.assert_one_error(needle)
    assert not (tmp_path / "s" / "activations").exists()


def test_shuffled_windows_keep_their_labels(tiny_llama, tmp_path):
    """The shuffled-token control of a labelled corpus: the same labels and groups, no exact ceilings."""
    from ie_flow.config import load_job
    from ie_flow.corpora import build_corpus
    from ie_flow.models import load_tokenizer

    (tmp_path / "c.jsonl").write_text("".join(
        json.dumps({"text": f"the cat sat on the mat and {w} cat is on a mat", "topic": w}) + "\n"
        for w in ["a", "the"] * 20))
    spec = load_job(None, {"corpus.name": str(tmp_path / "c.jsonl"), "corpus.label_field": "topic"}).corpus
    tok = load_tokenizer(str(tiny_llama))
    plain, shuffled = build_corpus(spec, tok), build_corpus(spec.model_copy(update={"shuffle_tokens": True}), tok)
    assert np.array_equal(plain.labels, shuffled.labels) and np.array_equal(plain.groups, shuffled.groups)
    assert shuffled.label_names == ["a", "the"] and shuffled.target_ceilings is None
    assert shuffled.digest != plain.digest


def test_corpus_command_prints_the_exact_ceilings(ie_flow, tiny_llama):
    res = ie_flow("corpus", "--corpus", "icl-coherence", "--model", tiny_llama, "--samples", "256", "--preview", "1")
    assert res.code == 0, res.err
    assert "exact I(s; prefix_t) per position (bits): [0.0, 0.0, 0.494, 0.494, 0.811, 0.811, 1.0, 1.0]" in res.out
    assert "exact I(s; x_t), token alone per position (bits): [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]" in res.out


def test_a_target_job_reads_the_label_field_and_measures_its_control_alike():
    from ie_flow.config import load_job

    job = load_job(None, {"estimate.method": "probe", "corpus.name": "docs.jsonl", "control.kind": "shuffled"})
    assert job.corpus.label_field == "label" and job.control.estimator == "probe"
    named = load_job(None, {"estimate.method": "probe", "corpus.name": "docs.jsonl", "corpus.label_field": "topic"})
    assert named.corpus.label_field == "topic"
    builtin = load_job(None, {"estimate.method": "probe", "corpus.name": "icl-coherence", "control.kind": "random"})
    assert builtin.corpus.label_field is None and builtin.control.estimator == "probe"
    assert load_job(None, {"corpus.name": "docs.jsonl", "control.kind": "shuffled"}).control.estimator == "smoothed"
