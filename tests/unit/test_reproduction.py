"""`ie-flow reproduce` on a small fixture: two experiments on a tiny model, run in-process, then the
generated report checked against the stored results (numbers, verdicts, run ids), a rerun that
resumes without redoing a cell, and the bad inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ie_flow.cli import run_cli
from ie_flow.reproduction.analysis import Finding, Value, verdict
from ie_flow.reproduction.experiments import load_experiments
from ie_flow.report import load_results
from ie_flow.store import StorageRoot, results_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_experiments(folder: Path, model: Path) -> Path:
    folder.mkdir()
    job = {"model": {"name": str(model)}, "corpus": {"samples": 640},
           "estimate": {"method": "infonce", "seeds": [0], "settings": {"max_steps": 40, "bootstrap": 50}}}
    icl = {"experiment": "icl", "claim": "One category above the mix; spread grows with shots.", "job": job,
           "also": ["smoothed"], "matrix": {"corpus.name": ["icl-countries", "icl-mixed"], "corpus.shots": [1, 2]},
           "cells": [{"name": "icl-mixed-shots3-random", "set": {"corpus.name": "icl-mixed", "corpus.shots": 3,
                                                                 "control.kind": "random"}}]}
    text = folder / "words.txt"
    words = np.array(["the", "a", "cat", "sat", "on", "mat", "is", "and", "France", "red", "dog", "Spain"])
    rng = np.random.default_rng(0)  # word-level sentences the tiny tokenizer knows, no two alike
    text.write_text("\n\n".join(" ".join(rng.choice(words, 9)) + "." for _ in range(700)))
    natural = {"experiment": "natural-text", "claim": "IE rises token by token.", "job": job, "also": ["smoothed"],
               "cells": [{"name": "words-6tok", "set": {"corpus.name": str(text), "corpus.tokens": 6}}]}
    for n, e in enumerate((icl, natural), 1):
        (folder / f"{n}-{e['experiment']}.yaml").write_text(
            f"# ie-flow reproduce {e['experiment']}\n" + json.dumps(e))  # JSON is YAML
    return folder


@pytest.fixture(scope="module")
def reproduced(tiny_llama, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("repro")
    folder = _write_experiments(tmp / "paper", tiny_llama)
    args = ["reproduce", "--workflows", str(folder), "--storage", str(tmp / "data"), "--executor", "serial",
            "--tracking-uri", f"sqlite:///{tmp}/m.db", "--out", str(tmp / "docs" / "REPRODUCTION.md")]
    assert run_cli(args) == 0
    return tmp, args


def test_every_cell_is_a_child_of_one_parent_run(reproduced, tiny_llama):
    import mlflow

    tmp, _ = reproduced
    index = StorageRoot(str(tmp / "data")).load_reproduction()
    assert not index.failed
    # 4 matrix cells x (infonce + smoothed), the control cell x (infonce, smoothed, smoothed random), 1 text cell x 2
    assert len(index.entries) == 4 * 2 + 3 + 2
    client = mlflow.MlflowClient(f"sqlite:///{tmp}/m.db")
    parent = client.get_run(index.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["failed_cells"] == "none"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{index.parent_run_id}'")
    # each cell's runs are children of the parent; a control's two measurements are children of its cell's run
    main_runs = {e.mlflow_run_id for e in index.entries.values() if e.mlflow_run_id}
    assert main_runs == {c.info.run_id for c in children} and len(main_runs) == 4 * 2 + 1 + 2
    control_cell = index.entries["icl/icl-mixed-shots3-random/infonce"].mlflow_run_id
    grandchildren = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{control_cell}'")
    assert sorted(r.data.tags["model"] for r in grandchildren) == sorted([str(tiny_llama), f"random:{tiny_llama}"])


def test_report_numbers_come_from_the_stored_results(reproduced):
    tmp, _ = reproduced
    report = (tmp / "docs" / "REPRODUCTION.md").read_text()
    index = StorageRoot(str(tmp / "data")).load_reproduction()
    entry = index.entries["icl/icl-countries-shots2/infonce"]
    s = load_results(results_folder(entry.results_uri)).record.summary
    shown = f"{s.ie_mean:+.3f} [{s.ie_mean_ci_low:+.3f}, {s.ie_mean_ci_high:+.3f}]"
    assert f"| icl-countries | 2 | infonce | 640 | {shown} |" in report
    for key, e in index.entries.items():  # every measurement traced to its folder (and run, where it has one)
        assert f"| {key} | `{e.results_uri.rsplit('/', 1)[0]}` |" in report
    assert report.count("**Verdict: ") == 2
    verdicts = re.findall(r"\*\*Verdict: (.+?)\.\*\*", report)
    assert all(v in ("reproduced", "reproduced with the paper's estimator only", "not testable here (saturated)",
                     "explained by the corpus", "not reproduced") for v in verdicts)
    assert (tmp / "docs" / "reproduction" / "icl-spread.png").stat().st_size > 5000
    assert "![natural-text](reproduction/natural-text-curves.png)" in report


def test_a_rerun_resumes_and_regenerates_the_same_report(reproduced):
    tmp, args = reproduced
    before = (tmp / "docs" / "REPRODUCTION.md").read_text()
    index = StorageRoot(str(tmp / "data")).load_reproduction()
    assert run_cli(args) == 0  # every cell is in the index with the same settings: nothing reruns
    after = StorageRoot(str(tmp / "data")).load_reproduction()
    assert after.entries == index.entries and after.parent_run_id == index.parent_run_id
    assert (tmp / "docs" / "REPRODUCTION.md").read_text() == before


def test_the_verdict_rule():
    up, flat, down = Value(0.5, 0.2, 0.8), Value(0.1, -0.2, 0.4), Value(-0.5, -0.8, -0.2)
    assert verdict([Finding("infonce", up)]) == "reproduced"
    assert verdict([Finding("infonce", up, control=Value(0.4, 0.1, 0.7))]) == "explained by the corpus"
    assert verdict([Finding("infonce", up, control=Value(0.1, 0.0, 0.2))]) == "reproduced"  # control too small
    assert verdict([Finding("infonce", up, saturated=0.9), Finding("smoothed", flat)]) == "not reproduced"
    assert verdict([Finding("infonce", up, saturated=0.9)]) == "not testable here (saturated)"
    assert verdict([Finding("infonce", down), Finding("mine-paper", up)]) == "reproduced with the paper's estimator only"
    nothing = Value(float("nan"), float("nan"), float("nan"))
    assert verdict([Finding("infonce", nothing), Finding("smoothed", nothing)]) == "not reproduced"
    assert str(Value(0.5, 0.2, 0.8) - Value(0.25, 0.15, 0.35)) == "+0.250 [-0.066, +0.566]"


def test_unknown_experiment_is_one_line(reproduced, ie_flow):
    tmp, _ = reproduced
    result = ie_flow("reproduce", "iccl", "--workflows", str(tmp / "paper"), "--storage", str(tmp / "x"))
    assert result.code == 2
    result.assert_one_error("unknown experiment 'iccl'; known: icl, natural-text")


def test_the_paper_workflows_load():
    experiments = load_experiments()
    assert [e.name for e in experiments] == ["icl", "natural-text", "human-vs-model", "model-size"]
    for e in experiments:
        assert e.command.startswith(f"ie-flow reproduce {e.name}")
    from ie_flow.reproduction.runner import Setup, cell_job
    from ie_flow.store import ReproductionIndex

    index = ReproductionIndex(generated={g["name"]: {"uri": f"/data/{g['name']}.jsonl"}
                                         for e in experiments for g in e.generate})
    for e in experiments:  # every cell is a valid job
        for c in e.cells:
            job = cell_job(e, c, Setup("/tmp/x"), index)
            assert job.storage.uri == "/tmp/x" and job.estimate.seeds == ([0] if "mine-paper" in c.name else [0, 1, 2])
    icl = experiments[0]
    assert len(icl.cells) == 4 * 3 + 6 and {c.tags["corpus.shots"] for c in icl.cells} == {1, 3, 4, 5}


def test_a_failed_generation_is_recorded_and_its_cells_say_why(tiny_llama, tmp_path, monkeypatch, capsys):
    from ie_flow import IEFlowError

    def refuse(*args, **kwargs):
        raise IEFlowError("OUT.parts holds unfinished batches generated with other settings")

    monkeypatch.setattr("ie_flow.corpora.generate.generate_corpus", refuse)
    folder = tmp_path / "paper"
    folder.mkdir()
    exp = {"experiment": "human-vs-model", "claim": "Model-written text has higher IE.",
           "job": {"model": {"name": str(tiny_llama)}},
           "generate": [{"name": "g", "model": str(tiny_llama), "samples": 4}],
           "cells": [{"name": "model-text", "set": {"corpus.name": "generated:g"}}]}
    (folder / "3-hvm.yaml").write_text("# ie-flow reproduce human-vs-model\n" + json.dumps(exp))
    code = run_cli(["reproduce", "--workflows", str(folder), "--storage", str(tmp_path / "d"), "--no-tracking",
                    "--executor", "serial", "--out", str(tmp_path / "R.md")])
    assert code == 1
    failed = StorageRoot(str(tmp_path / "d")).load_reproduction().failed
    assert failed == {"human-vs-model/generate g": "IEFlowError: OUT.parts holds unfinished batches generated with "
                                                   "other settings",
                      "human-vs-model/model-text": "IEFlowError: the generated corpus 'g' is missing: its generation "
                                                   "failed (see above)"}
    assert "2 cell(s) failed" in capsys.readouterr().err
    assert "- human-vs-model/generate g: IEFlowError" in (tmp_path / "R.md").read_text()
