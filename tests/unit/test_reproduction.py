"""`ie-flow reproduce` on a small fixture: two experiments on a tiny model, run in-process, then the
generated report checked against the stored results (numbers, verdicts, run ids), a rerun that
resumes without redoing a cell, and the bad inputs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from ie_flow.cli import run_cli
from ie_flow.emergence import Emergence, LayerEmergence
from ie_flow.reproduction import claims, document
from ie_flow import IEFlowError
from ie_flow.reproduction.analysis import (
    VERDICTS, Finding, Measured, Value, common_layers, decide, ie_mean, set_by_corpus, verdict, verdict_rank,
)
from ie_flow.reproduction.experiments import load_experiment, load_experiments
from ie_flow.report import load_results
from ie_flow.store import StorageRoot, results_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_experiments(folder: Path, model: Path) -> Path:
    folder.mkdir()
    job = {"model": {"name": str(model)}, "corpus": {"samples": 640},
           "estimate": {"method": "infonce", "seeds": [0], "settings": {"max_steps": 40, "bootstrap": 50}}}
    icl = {"experiment": "icl", "claim": "One category above the mix; spread grows with shots.", "job": job,
           "also": ["smoothed"], "matrix": {"corpus.name": ["icl-countries", "icl-mixed-matched"], "corpus.shots": [1, 2]},
           "cells": [{"name": "icl-mixed-matched-shots3-random", "set": {"corpus.name": "icl-mixed-matched",
                                                                         "corpus.shots": 3,
                                                                 "control.kind": "random"}}]}
    text = folder / "words.txt"
    words = np.array(["the", "a", "cat", "sat", "on", "mat", "is", "and", "France", "red", "dog", "Spain"])
    rng = np.random.default_rng(0)  # word-level sentences the tiny tokenizer knows, no two alike
    text.write_text("\n\n".join(" ".join(rng.choice(words, 9)) + "." for _ in range(700)))
    two_seeds = {**job, "estimate": {**job["estimate"], "seeds": [0, 1]}}
    natural = {"experiment": "natural-text", "claim": "IE rises token by token.", "job": two_seeds, "also": ["smoothed"],
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
    control_cell = index.entries["icl/icl-mixed-matched-shots3-random/infonce"].mlflow_run_id
    grandchildren = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{control_cell}'")
    assert sorted(r.data.tags["model"] for r in grandchildren) == sorted([str(tiny_llama), f"random:{tiny_llama}"])


def test_an_also_estimator_runs_with_one_seed_whatever_the_job_names(reproduced):
    tmp, _ = reproduced
    index = StorageRoot(str(tmp / "data")).load_reproduction()

    def seeds(key: str) -> set[int]:
        _, table = results_folder(index.entries[key].results_uri).load()
        return set(table.column("seed").to_pylist())

    assert seeds("natural-text/words-6tok/infonce") == {0, 1}  # the job's estimator: the job's seeds
    assert seeds("natural-text/words-6tok/smoothed") == {0}  # run alongside: as a job naming only it


def test_report_numbers_come_from_the_stored_results(reproduced):
    tmp, _ = reproduced
    report = (tmp / "docs" / "REPRODUCTION.md").read_text()
    index = StorageRoot(str(tmp / "data")).load_reproduction()
    entry = index.entries["icl/icl-countries-shots2/infonce"]
    s = load_results(results_folder(entry.results_uri)).record.summary
    shown = f"{s.ie_mean:+.3f} [{s.ie_mean_ci_low:+.3f}, {s.ie_mean_ci_high:+.3f}]"
    assert f"| icl-countries | 2 | infonce | 640 | {shown} |" in report
    for key, e in index.entries.items():  # every measurement traced to its folder under the root, and its run
        folder = e.results_uri.rsplit("/", 1)[0].removeprefix(str(tmp / "data") + "/")
        run = load_results(results_folder(e.results_uri)).record.mlflow_run_id or e.mlflow_run_id or "-"
        assert folder.startswith("results/") and f"| {key} | `{folder}/` | {run} |" in report
    assert str(tmp) not in report  # no absolute temporary path: the report outlives this machine's folders
    assert report.count("**Verdict: ") == 2
    verdicts = re.findall(r"\*\*Verdict: (.+?)\.\*\* Read at: (.+?)\.\n", report)
    assert len(verdicts) == 2 and all(verdict_rank(v) >= 0 for v, _ in verdicts)  # each a known label
    # 640 sequences: below the n each claim's measure needs, said in the verdict and beside the numbers
    assert verdicts[0][0] == "not testable here (n = 640; the measure needs 4,096)"
    assert "Scale: `default`" in report and "| icl | 4,096 |" in report and "| natural-text | 16,384 |" in report
    assert "**n:** the measure needs 4,096 per cell" in report and "used n = 640." in report
    # each verdict names its measure(s), variant and n (or, for a verdict without one, why)
    assert all(re.search(r"(infonce|smoothed at [^,]+|mine-paper), n = 640", basis) for _, basis in verdicts
               if not basis.startswith("-")), verdicts
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
    assert verdict([Finding("infonce", up, saturated=0.9), Finding("smoothed", flat)]) == "no effect"
    assert verdict([Finding("infonce", up, saturated=0.9)]) == "not testable here (saturated)"
    assert verdict([Finding("infonce", up, by_design=True)]) == "untestable by design"
    # one saturated at this n, one set by the corpus: a larger n could still test it
    assert verdict([Finding("infonce", up, by_design=True), Finding("smoothed", flat, saturated=0.6)]) == \
        "not testable here (saturated)"
    assert verdict([Finding("infonce", down), Finding("mine-paper", up)]) == "reproduced with the paper's estimator only"
    assert verdict([Finding("infonce", down), Finding("smoothed", flat)]) == "contradicted"
    nothing = Value(float("nan"), float("nan"), float("nan"))
    assert verdict([Finding("infonce", nothing), Finding("smoothed", nothing)]) == "not testable here (no measurement)"
    label, rests_on = decide([Finding("infonce", flat, n="512"), Finding("smoothed", up, variant="β=0.4", n="512")])
    assert label == "reproduced" and [f.read_at for f in rests_on] == ["smoothed at β=0.4, n = 512"]
    # a control already taken off the effect (a difference-in-differences) cannot explain it
    assert verdict([Finding("smoothed", up, control=Value(0.4, 0.1, 0.7), net=True)]) == "reproduced"
    assert str(Value(0.5, 0.2, 0.8) - Value(0.25, 0.15, 0.35)) == "+0.250 [-0.066, +0.566]"


# --- the labels on synthetic per-layer profiles --------------------------------------------------------
Z = np.linspace(-1, 1, 201)  # replicate offsets: percentiles 2.5 / 50 / 97.5 are -0.95, 0, +0.95


def _profile(ie: list[float], half: float = 0.1, saturated: bool = False, ceiling: float = 10.0,
             curve: list[float] | None = None) -> Emergence:
    """An IE profile over layers 0..L-1 with IE_l = ie[l] (NaN: invalid layer) whose replicates move
    every layer together by half * Z: a mean over any set of layers has the interval mean -/+ 0.95 half.
    `curve`: E(t) of every layer (4 positions), its interval -/+ 0.1."""
    L, N = len(ie), 4
    layers = [LayerEmergence(l, v, 0.0, v - half, v + half, v, 0.0, ceiling, saturated, 0, valid=bool(np.isfinite(v)))
              for l, v in enumerate(ie)]
    zeros = np.zeros((L, N))
    tokens = zeros if curve is None else np.tile(np.array(curve, dtype=float), (L, 1))
    return Emergence(layers, zeros, zeros, tokens, np.stack([tokens - 0.1, tokens + 0.1]), np.full((L, N), saturated),
                     zeros.astype(bool), zeros + ceiling, np.array([ie]), np.array(ie)[None, :] + half * Z[:, None],
                     [0], "mean")


def _measured(key: str, em: Emergence, estimator: str = "smoothed", experiment: str = "icl", samples: int = 512,
              text: bool = False, kind: str = "", last_bits: float | None = None, **tags) -> Measured:
    """A measurement of `em`; `text`: a text corpus whose windows are all distinct (last position's
    prefix entropy log2 n) unless `last_bits` says otherwise."""
    from types import SimpleNamespace

    from ie_flow.store import ReproductionEntry

    last = last_bits if last_bits is not None else math.log2(samples) if text else 7.9
    manifest = SimpleNamespace(samples=samples, prefix_entropy_bits=[4.0, 4.0, 7.9, last], tokens=8,
                               dataset=SimpleNamespace(settings={"kind": kind or ("text" if text else "icl")}))
    entry = ReproductionEntry(experiment=experiment, cell=key, estimator=estimator, tags=tags, results_uri="x")
    return Measured(key, entry, SimpleNamespace(manifest=manifest, mlflow_run_id=None, variant="β=0.4"), {"β=0.4": em})


def _effect(a: Emergence, b: Emergence, estimator: str = "smoothed") -> Finding:
    keep = common_layers([a, b])
    return Finding(estimator, ie_mean(a, keep) - ie_mean(b, keep), variant="β=0.4", n="512")


def test_cells_are_compared_on_the_layers_valid_in_all_of_them():
    one = _profile([1.0, 2.0, 3.0, float("nan")])
    mix = _profile([0.5, 1.5, float("nan"), 9.0])
    assert common_layers([one, mix]) == [0, 1]
    # on its own the mix would average 0.5, 1.5 and 9.0 (3.667): the comparison uses layers 0 and 1 only
    assert mix.summary.ie_mean == pytest.approx(11 / 3)
    d = _effect(one, mix).effect
    assert d.value == pytest.approx(0.5) and d.half == pytest.approx(0.095 * math.sqrt(2))
    assert math.isnan(ie_mean(mix, [0, 2]).value)  # a layer invalid in a cell is never silently dropped


def test_each_label_on_synthetic_profiles():
    base = _profile([1.0, 1.2, 1.4, 1.6])  # IE mean 1.3
    higher, lower, same = (_profile([v + s for v in (1.0, 1.2, 1.4, 1.6)]) for s in (0.4, -0.4, 0.05))
    up, down, flat = _effect(higher, base), _effect(lower, base), _effect(same, base)
    assert (up.effect.value, down.effect.value, flat.effect.value) == pytest.approx((0.4, -0.4, 0.05))
    assert flat.effect.low == pytest.approx(0.05 - 0.095 * math.sqrt(2))  # -0.084: the interval covers 0
    assert decide([up])[0] == "reproduced" and up.read_at == "smoothed at β=0.4, n = 512"
    assert decide([down])[0] == "contradicted" and decide([flat])[0] == "no effect"
    # InfoNCE on text whose windows are all distinct: the corpus sets its value at any n
    text = [_measured(f"t{i}", _profile([13.0] * 4, saturated=True), "infonce", "natural-text", 8192, text=True)
            for i in range(2)]
    assert set_by_corpus(text) and not set_by_corpus([_measured("i", base, "infonce")])
    assert not set_by_corpus([_measured("s", base, "smoothed", "natural-text", 8192, text=True)])
    # prose with a few repeated windows (fortunes: 510 of 512 distinct, 8.99 bits) still carries more than
    # InfoNCE's ceiling (10 bits here); a text whose windows repeat so much that their entropy is below
    # the ceiling, or a synthetic corpus whose n draws happen to be distinct (its support is finite: a
    # larger n repeats them), is not set by the corpus
    assert set_by_corpus([_measured("f", base, "infonce", "natural-text", 8192, text=True, last_bits=12.99)])
    assert not set_by_corpus([_measured("r", base, "infonce", "natural-text", 8192, text=True, last_bits=9.5)])
    for kind in ("icl", "icl-coherence"):
        assert not set_by_corpus([_measured("c", base, "infonce", samples=512, last_bits=9.0, kind=kind)])
    design = Finding("infonce", Value(0.0, 0.0, 0.0), saturated=1.0, by_design=set_by_corpus(text))
    assert decide([design])[0] == "untestable by design"
    assert decide([Finding("smoothed", up.effect, saturated=0.75)])[0] == "not testable here (saturated)"
    # no layer valid in every cell: no value, and the reason is the invalid layers, not a missing cell
    empty = _profile([float("nan"), 1.0])
    assert common_layers([empty, _profile([1.0, float("nan")])]) == []
    nan = Finding("smoothed", ie_mean(empty, []) - ie_mean(base, []), saturated=0.5)
    assert math.isnan(nan.effect.value) and decide([nan])[0] == "not testable here (saturated)"


def test_claim_4_needs_three_sizes_of_one_family(tmp_path):
    def cells(models: dict[str, tuple[str, int, float]]) -> dict[str, Measured]:
        out = {}
        for model, (family, params, ie) in models.items():
            for est in ("infonce", "smoothed"):
                em = _profile([ie, ie + 0.2, ie + 0.4])
                out[f"{model}/{est}"] = _measured(model, em, est, "model-size", 16384, model=model, family=family,
                                                  params_m=params)  # the n prose needs (the hub series')
        return out

    offline = claims.model_size(cells({"smollm2-135m": ("smollm2", 135, 1.0), "gemma3-270m": ("gemma3", 270, 1.5)}),
                                tmp_path)
    assert offline.verdict == "not testable here (one size per family)" and not offline.findings
    assert "needs 3 sizes of one family; measured here gemma3: 1, smollm2: 1" in offline.basis
    assert [r[:3] for r in offline.rows[1:3]] == [["gemma3", "gemma3-270m", "270"], ["smollm2", "smollm2-135m", "135"]]
    # a series of one family (IE mean 1.2, 1.7, 2.2 at 70M, 140M, 280M: +0.5 bit per doubling)
    series = claims.model_size(cells({"p-70m": ("pythia", 70, 1.0), "p-140m": ("pythia", 140, 1.5),
                                      "p-280m": ("pythia", 280, 2.0)}), tmp_path)
    assert [f.effect.value for f in series.findings] == pytest.approx([0.5, 0.5])
    assert series.verdict == "reproduced" and series.findings[0].part == "pythia"


def test_a_claim_reads_its_cells_at_the_headline_they_recorded():
    """The cells' headline, fixed in advance per corpus family, is what a claim reads, even where
    another β is valid in more layers; cells of two families are read at one of their two headlines
    (the first valid everywhere), never at a β neither recorded, and a cell lacking it is an error."""
    from ie_flow.reproduction.analysis import common_variant

    def cell(key: str, headline: str, ie: dict[str, list[float]]) -> Measured:
        m = _measured(key, _profile([1.0]))
        m.record.variant, m.profiles = headline, {v: _profile(x) for v, x in ie.items()}
        return m

    nan = float("nan")
    icl = [cell(f"i{i}", "β=0.6", {"β=0.4": [1.0, 1.0], "β=0.6": [1.0, nan], "β=0.8": [1.0, 1.0]}) for i in (1, 2)]
    assert common_variant(icl) == ("β=0.6", False)  # flagged, kept at the family's β
    text = cell("t", "β=0.8", {"β=0.4": [1.0, 1.0], "β=0.6": [1.0, 1.0], "β=0.8": [1.0, 1.0]})
    assert common_variant([*icl, text]) == ("β=0.8", True)  # 0.4 is valid everywhere, but no cell fixed it
    with pytest.raises(KeyError, match="t has no variant 'β=0.6'"):
        common_variant([icl[0], cell("t", "β=0.8", {"β=0.8": [1.0, 1.0]})])


def test_a_profile_is_never_read_at_another_variant():
    m = _measured("c", _profile([1.0, 2.0]))
    assert m.at("β=0.4").summary.ie_mean == pytest.approx(1.5)
    with pytest.raises(KeyError, match="no variant 'β=0.2'"):
        m.at("β=0.2")


def test_unknown_experiment_is_one_line(reproduced, ie_flow):
    tmp, _ = reproduced
    result = ie_flow("reproduce", "iccl", "--workflows", str(tmp / "paper"), "--storage", str(tmp / "x"))
    assert result.code == 2
    result.assert_one_error("unknown experiment 'iccl'; known: icl, natural-text")


@pytest.mark.parametrize("scale", ["default", "paper"])
def test_the_paper_workflows_load(scale):
    experiments = load_experiments(scale=scale)
    assert [e.name for e in experiments] == ["icl", "natural-text", "human-vs-model", "model-size"]
    for e in experiments:
        assert e.command.startswith(f"ie-flow reproduce {e.name}") and e.scale == scale
    from ie_flow.reproduction.runner import Setup, cell_job
    from ie_flow.store import ReproductionIndex

    index = ReproductionIndex(generated={g["name"]: {"uri": f"/data/{g['name']}.jsonl"}
                                         for e in experiments for g in e.generate})
    jobs = {e.name: {c.name: cell_job(e, c, Setup("/tmp/x"), index) for c in e.cells} for e in experiments}
    controls = set()
    for e in experiments:  # every cell is a valid job
        for name, job in jobs[e.name].items():
            # 3 seeds at the paper's n; one at the default scale, and on cells that name their own
            one_seed = scale == "default" or "mine-paper" in name or name.endswith(("-infonce", "-probe"))
            assert job.storage.uri == "/tmp/x" and job.estimate.seeds == ([0] if one_seed else [0, 1, 2])
            if job.control.kind != "none" and job.control.estimator == "smoothed":  # at the family's headline β
                assert job.control.settings.get("headline_beta") == (0.6 if job.corpus.name.startswith("icl-") else 0.8)
                controls.add((e.name, job.control.settings["headline_beta"]))
    assert {("icl", 0.6), ("human-vs-model", 0.8)} <= controls
    # the n of each scale: today's 512, or the n each claim's measure needs (claims.NEEDED_N)
    paper = {"icl": 4096, "natural-text": 16384, "human-vs-model": 8192, "model-size": 16384}
    for e in experiments:
        assert {j.corpus.samples for j in jobs[e.name].values()} == {512 if scale == "default" else paper[e.name]}
        assert paper[e.name] == claims.NEEDED_N[e.name][0]
    icl = experiments[0]
    assert len(icl.cells) == 4 * 4 + 3 and {c.tags.get("corpus.shots") for c in icl.cells} == {1, 3, 4, 5, None}
    # claim 1 compares the one-category corpora with the mix matched to them in K, never the 48-name mix;
    # the target measure reads icl-coherence, against its random-weight copy measured by the probe too
    assert {c.tags["corpus.name"] for c in icl.cells} == {"icl-countries", "icl-animals", "icl-colours",
                                                          "icl-mixed-matched", "icl-coherence"}
    probe = jobs["icl"]["icl-coherence-probe"]
    assert (probe.estimate.method, probe.control.kind, probe.control.estimator) == ("probe", "random", "probe")
    # every (corpus, shots) cell measures its random-weight control; the paper's estimator does not
    assert {n: j.control.kind for n, j in jobs["icl"].items() if j.control.kind != "random"} == {
        "icl-countries-shots4-mine-paper": "none", "icl-mixed-matched-shots4-mine-paper": "none"}
    # prose: the smoothed measure on every cell, InfoNCE on one (its value is set by the corpus)
    for e in experiments[1:3]:
        methods = [j.estimate.method for j in jobs[e.name].values()]
        assert methods.count("infonce") == 1 and set(methods) == {"smoothed", "infonce"}
        assert all(not c.also for c in e.cells)
    hvm = experiments[2]
    suffix = "" if scale == "default" else "-paper"  # a scale that changes a generator writes its own file
    assert [(g["name"], g["samples"]) for g in hvm.generate] == (
        [("smollm2-continues-fortunes", 256), ("gemma3-continues-fortunes", 128)] if scale == "default" else
        [("smollm2-continues-fortunes-paper", 4500), ("gemma3-continues-fortunes-paper", 4500)])
    assert jobs["human-vs-model"]["gemma3-writer-human"].corpus.name == f"/data/gemma3-continues-fortunes{suffix}.jsonl"
    assert [j.control.kind for j in jobs["human-vs-model"].values()] == ["random"] * 4 + ["none"]
    # claim 4 offline: one size per family; the hub series: five sizes of one family, the same report code
    assert {c.tags["family"] for c in experiments[3].cells} == {"smollm2", "gemma3"}
    from ie_flow.reproduction.experiments import default_folder

    (hub,) = load_experiments(folder=default_folder().parent / "paper-hub", scale=scale)
    assert hub.name == "model-size" and hub.command.startswith("ie-flow reproduce model-size --workflows")
    assert {c.tags["family"] for c in hub.cells} == {"pythia"} and len(hub.cells) >= claims.SIZES_FOR_A_TREND
    for c in hub.cells:
        job = cell_job(hub, c, Setup("/tmp/x"), index)
        assert job.model.name == f"EleutherAI/{c.tags['model']}" and job.control.kind == "random"
        assert job.corpus.samples == 16384  # already the paper's n at the default scale


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


def test_changed_generation_settings_regenerate_the_corpus_and_rerun_its_cells(tiny_llama, tmp_path):
    """The reproduction owns its generated corpora: text generated with other settings is replaced,
    and a cell that reads it is measured again (its settings alone did not change)."""
    from ie_flow.corpora.text import GENERATION_META_KEY

    human = tmp_path / "human.jsonl"
    human.write_text("".join(json.dumps({"text": f"the cat sat on the mat number {i}. a dog is red and the mat is "
                                                 f"on a cat. the end."}) + "\n" for i in range(160)))
    folder = tmp_path / "paper"
    folder.mkdir()

    def write(max_new_tokens: int) -> None:
        exp = {"experiment": "human-vs-model", "claim": "Model-written text has higher IE.",
               "job": {"model": {"name": str(tiny_llama)}, "corpus": {"tokens": 2, "samples": 128},
                       "estimate": {"method": "infonce", "seeds": [0], "settings": {"max_steps": 5, "bootstrap": 5}}},
               "generate": [{"name": "g", "model": str(tiny_llama), "prompts": str(human), "samples": 144,
                             "batch_size": 48, "max_new_tokens": max_new_tokens}],
               "cells": [{"name": "model-text", "set": {"corpus.name": "generated:g"},
                          "tags": {"writer": "model", "generator": "tiny"}}]}
        (folder / "3-hvm.yaml").write_text("# ie-flow reproduce human-vs-model\n" + json.dumps(exp))

    args = ["reproduce", "--workflows", str(folder), "--storage", str(tmp_path / "d"), "--no-tracking",
            "--executor", "serial", "--out", str(tmp_path / "R.md"), "--report-only"]
    root = StorageRoot(str(tmp_path / "d"))
    digests = []
    for max_new_tokens in (6, 6, 8):
        write(max_new_tokens)
        assert run_cli(args[:-1]) == 0
        index = root.load_reproduction()
        meta = json.loads(Path(index.generated["g"]["uri"]).read_text().splitlines()[0])[GENERATION_META_KEY]
        assert meta["settings"]["max_new_tokens"] == max_new_tokens
        digests.append(index.entries["human-vs-model/model-text/infonce"].job_digest)
        report = (tmp_path / "R.md").read_text()
        assert "| model-text | infonce | " in report and "| human-vs-model | 1/1 |" in report  # shown, timed
    assert digests[0] == digests[1] != digests[2]  # kept while the text is the same, rerun on new text


# --- the designs of claims 1-3 on synthetic measurements ------------------------------------------------
def test_claim_1_is_a_difference_in_differences_at_each_shot_count(tmp_path):
    """Trained (one category - mix) minus random (one category - mix) per shot count, averaged over the
    shot counts whose control was measured; the shown control is the random copy's own difference."""
    trained = {1: (2.0, 2.2, 2.4, 1.6), 3: (3.0, 3.0, 3.0, 2.0), 5: (4.0, 4.0, 4.0, 1.0)}  # countries ... mix
    random = {1: (1.0, 1.0, 1.3, 1.0), 3: (1.2, 1.2, 1.2, 1.0)}  # 5 shots: no control measured

    def cells(samples: int) -> dict[str, Measured]:
        out = {}
        for est, values in (("smoothed", trained), ("smoothed:control-random", random)):
            for k, ies in values.items():
                for c, ie in zip((*claims.ICL, claims.MIXED), ies):
                    tags = {"corpus.name": c, "corpus.shots": k}
                    out[f"{c}-{k}/{est}"] = _measured(f"{c}-{k}", _profile([ie] * 3), est, "icl", samples, **tags)
        return out

    result = claims.icl(cells(4096), tmp_path)
    infonce, smoothed = (f for f in result.findings if f.part == "clear-cut")
    # shots 1: (2.2 - 1.6) - (1.1 - 1.0) = 0.5; shots 3: (3.0 - 2.0) - (1.2 - 1.0) = 0.8; 5 left out (3.0 raw)
    assert smoothed.effect.value == pytest.approx(0.65) and smoothed.control.value == pytest.approx(0.15)
    # each cell -/+ 0.095: a side's difference 0.095 * sqrt(4/3), trained - random sqrt(2) that, mean of two
    assert smoothed.effect.half == pytest.approx(0.095 * 2 / math.sqrt(3))
    assert smoothed.net and smoothed.note == "trained minus random-weight copy at shots 1, 3; shots 5 have no " \
                                             "control and are left out"
    assert result.parts["clear-cut"] == "reproduced" and decide([smoothed])[1] == [smoothed]
    assert math.isnan(infonce.effect.value) and "no shot count has its random-weight control" in infonce.note
    diffs = [r for r in result.rows[1:] if r[0] == "one category - mix" and r[2] == "smoothed"]
    assert [(r[1], r[4].split()[0], r[5].split()[0]) for r in diffs] == [("1", "+0.600", "+0.100"),
                                                                        ("3", "+1.000", "+0.200"), ("5", "+3.000", "-")]
    assert result.rows[0][4:6] == ["IE (bits)", "random-weight copy IE"]
    assert ["icl-colours", "1", "smoothed", "4096"] == result.rows[3][:4] and result.rows[3][5].startswith("+1.300")
    # the same cells at 512 sequences: below what the measure needs, whatever the value
    small = claims.icl(cells(512), tmp_path)
    assert small.parts["clear-cut"] == "not testable here (n = 512; the measure needs 4,096)"


def _text_cells(windows: dict[tuple[str, bool], tuple[list[float], int]], est: str = "smoothed") -> dict[str, Measured]:
    """natural-text cells: (corpus, shuffled) -> (E(t) of every layer, n)."""
    return {f"{c}-{s}/{est}": _measured(f"{c}-{s}", _profile([1.0] * 3, curve=curve), est, "natural-text", n,
                                        text=True, **{"corpus.name": c, "corpus.shuffle_tokens": s})
            for (c, s), (curve, n) in windows.items()}


def test_claim_2_is_read_against_the_shuffled_windows_of_the_same_corpus(tmp_path):
    windows = {("fortunes", False): ([0.0, 1.0, 1.5, 2.0], 16384), ("fortunes", True): ([0.0, 1.0, 1.2, 1.3], 16384),
               ("python-docs", False): ([0.0, 0.5, 1.0, 1.5], 16384),
               ("python-docs", True): ([0.0, 0.5, 0.6, 0.7], 16384)}
    f = claims.natural_text(_text_cells(windows), tmp_path).findings[1]
    # rises: fortunes 1.0 - 0.3, python-docs 1.0 - 0.2; the control is the shuffled rise itself
    assert f.estimator == "smoothed" and f.effect.value == pytest.approx(0.75)
    assert f.control.value == pytest.approx(0.25)
    assert f.effect.half == pytest.approx(0.1 * math.sqrt(2))  # four rises of -/+ 0.1 sqrt(2), mean of two differences
    assert f.net and f.n == "16384" and f.note == "as written minus shuffled, paired by corpus: fortunes, python-docs"
    assert decide([f])[0] == "reproduced"
    # python-docs has 1,396 windows: left out where another corpus reaches the n the measure needs
    small = {**windows, ("python-docs", False): ([0.0, 0.5, 1.0, 1.5], 1396),
             ("python-docs", True): ([0.0, 0.5, 0.6, 0.7], 1396)}
    f = claims.natural_text(_text_cells(small), tmp_path).findings[1]
    assert f.effect.value == pytest.approx(0.7) and f.n == "16384" and f.note == (
        "as written minus shuffled, paired by corpus: fortunes; python-docs left out (n below the 16,384 the "
        "measure needs)")
    # a corpus without its shuffled cell gives no effect, never its raw rise (1.0)
    alone = claims.natural_text(_text_cells({("fortunes", False): ([0.0, 1.0, 1.5, 2.0], 16384)}), tmp_path)
    f = alone.findings[1]
    assert math.isnan(f.effect.value) and f.control is None and "no corpus has both" in f.note
    assert "fortunes without its shuffled or as-written cell" in f.note
    assert alone.verdict == "not testable here (no measurement)"


def test_n_below_what_the_measure_needs_gives_no_verdict():
    up = Value(0.5, 0.2, 0.8)
    short = "not testable here (n = 512; the measure needs 4,096)"
    assert verdict([Finding("smoothed", up, n="512", needs=4096)]) == short
    assert verdict([Finding("smoothed", up, n="4096", needs=4096)]) == "reproduced"
    # the smallest n of its cells decides; a value set by the corpus is so at any n
    assert Finding("smoothed", up, n="1396-16384", needs=16384).below_need
    assert verdict([Finding("infonce", up, n="512", needs=16384, by_design=True)]) == "untestable by design"
    assert verdict([Finding("infonce", up, n="512", needs=16384, by_design=True),
                    Finding("smoothed", up, n="512", needs=16384)]) == short.replace("4,096", "16,384")
    # one estimator at the n it needs decides; below it, even saturation is not the reason given
    assert verdict([Finding("smoothed", up, n="512", needs=4096), Finding("infonce", Value(0.1, -0.2, 0.4))]) == \
        "no effect"
    assert verdict([Finding("smoothed", up, n="512", needs=4096, saturated=0.9)]) == short
    # between saturated and one size per family: a claim in two parts gets the weaker
    result = claims.ClaimResult("icl", [], [], None, parts={"a": "reproduced", "b": short})
    assert result.verdict == short
    assert verdict_rank("not testable here (saturated)") < verdict_rank(result.verdict) < verdict_rank(
        "not testable here (one size per family)")


def test_infonce_measured_once_is_untestable_by_design(tmp_path):
    # one cell at n = 512: 510 distinct windows (8.99 bits) above InfoNCE's ceiling, log2 of 128 report rows
    once = _measured("fortunes-8tok-infonce", _profile([7.0] * 3, saturated=True, ceiling=7.0, curve=[0, 7, 7, 7]),
                     "infonce", "natural-text", 512, text=True, last_bits=8.99,
                     **{"corpus.name": "fortunes", "estimate.method": "infonce"})
    only = claims.natural_text({"once/infonce": once}, tmp_path)
    infonce = only.findings[0]
    assert infonce.estimator == "infonce" and infonce.by_design and infonce.n == "512"
    assert math.isnan(infonce.effect.value) and only.verdict == "untestable by design"
    windows = {("fortunes", False): ([0.0, 1.0, 1.5, 2.0], 16384), ("fortunes", True): ([0.0, 1.0, 1.2, 1.3], 16384)}
    both = claims.natural_text({**_text_cells(windows), "once/infonce": once}, tmp_path)
    assert [f.by_design for f in both.findings] == [True, False] and both.verdict == "reproduced"
    assert [r[3] for r in both.rows[1:]].count("infonce") == 1
    # human-vs-model: InfoNCE on the model's windows of one generator only
    hvm = {}
    for w, ie in (("model", 1.5), ("human", 1.0)):
        for est in ("smoothed", "smoothed:control-random"):
            hvm[f"{w}/{est}"] = _measured(w, _profile([ie if ":" not in est else 1.0] * 3), est, "human-vs-model",
                                          8192, text=True, generator="smollm2-135m", writer=w)
    hvm["once/infonce"] = _measured("once", _profile([12.0] * 3, saturated=True, ceiling=11.0), "infonce",
                                    "human-vs-model", 8192, text=True, last_bits=12.98, generator="smollm2-135m",
                                    writer="model")
    result = claims.human_vs_model(hvm, tmp_path)
    infonce, smoothed = result.findings
    assert infonce.by_design and infonce.note == "smollm2-135m: one writer measured by infonce, no difference"
    assert smoothed.effect.value == pytest.approx(0.5) and smoothed.control.value == pytest.approx(0.0)
    assert result.verdict == "reproduced"
    assert [r[1:3] for r in result.rows[1:]] == [["model", "infonce"], ["model", "smoothed"], ["human", "smoothed"]]
    assert decide([infonce])[0] == "untestable by design"


def test_scales(tmp_path, ie_flow):
    folder = tmp_path / "paper"
    folder.mkdir()
    exp = {"experiment": "human-vs-model", "claim": "Model-written text has higher IE.",
           "job": {"model": {"name": "smollm2-135m"}, "corpus": {"samples": 512}},
           "generate": [{"name": "g", "samples": 256}],
           "matrix": {"corpus.shots": [1, 2]},
           "cells": [{"name": "model-text", "set": {"corpus.name": "generated:g", "corpus.samples": 300},
                      "tags": {"writer": "model"}}],
           "scales": {"paper": {"corpus.samples": 8192, "extract.batch_size": 64, "generate.samples": 4500}}}
    path = folder / "3-hvm.yaml"
    path.write_text("# ie-flow reproduce human-vs-model\n" + json.dumps(exp))
    base, paper = load_experiment(path), load_experiment(path, "paper")
    assert base.scale == "default" and paper.scale == "paper"
    assert [c.settings for c in base.cells] == [{"corpus.shots": 1}, {"corpus.shots": 2},
                                                {"corpus.name": "generated:g", "corpus.samples": 300}]
    # every cell: the scale's settings over the base job, the cell's own over them (model-text keeps its
    # 300 samples); a changed generator writes its own file
    assert [c.settings for c in paper.cells] == [
        {"corpus.shots": 1, "corpus.samples": 8192, "extract.batch_size": 64},
        {"corpus.shots": 2, "corpus.samples": 8192, "extract.batch_size": 64},
        {"corpus.name": "generated:g-paper", "corpus.samples": 300, "extract.batch_size": 64}]
    assert paper.cells[2].tags == {"corpus.name": "generated:g-paper", "corpus.samples": 300, "writer": "model"}
    assert base.generate == [{"name": "g", "samples": 256}] and paper.generate == [{"name": "g-paper", "samples": 4500}]
    assert paper.cells[0].job_tree(paper.job) == {"model": {"name": "smollm2-135m"}, "corpus": {
        "samples": 8192, "shots": 1}, "extract": {"batch_size": 64}}
    assert all(b.digest(base.job) != p.digest(paper.job) for b, p in zip(base.cells, paper.cells))  # they rerun
    with pytest.raises(IEFlowError, match="unknown scale 'huge'; known: default, paper"):
        load_experiment(path, "huge")
    result = ie_flow("reproduce", "--workflows", str(folder), "--scale", "huge", "--storage", str(tmp_path / "d"))
    result.assert_one_error("unknown scale 'huge'; known: default, paper")
    exp["scales"] = {"paper": {"generate.sample": 10}}
    path.write_text("# ie-flow reproduce human-vs-model\n" + json.dumps(exp))
    with pytest.raises(IEFlowError, match=r"scale 'paper' sets unknown generator settings \['sample'\]"):
        load_experiment(path, "paper")


def _with_reference(em: Emergence, ref: float, half: float = 0.05) -> Emergence:
    """`em` whose every layer's Gaussian reference part is `ref`, its replicates ref + half * Z."""
    from dataclasses import replace

    em.layers = [replace(layer, reference_ie=ref) for layer in em.layers]
    em.reference_replicates = np.full((len(Z), len(em.layers)), ref) + half * Z[:, None]
    return em


def test_smoothed_effects_are_split_into_their_gaussian_part_and_the_excess(tmp_path):
    """Claim 1's difference-in-differences computed again on the cells' Gaussian reference means, and
    the report line giving both parts; InfoNCE (no reference) has none."""
    trained = {4: (2.0, 2.2, 2.4, 1.6)}  # countries, animals, colours, mix
    random = {4: (1.0, 1.0, 1.3, 1.0)}
    ref = {"smoothed": (1.5, 1.5, 1.8, 1.2), "smoothed:control-random": (0.9, 0.9, 0.9, 0.9)}
    out = {}
    for est, values in (("smoothed", trained), ("smoothed:control-random", random)):
        for c, ie, g in zip((*claims.ICL, claims.MIXED), values[4], ref[est]):
            tags = {"corpus.name": c, "corpus.shots": 4}
            out[f"{c}/{est}"] = _measured(c, _with_reference(_profile([ie] * 3), g), est, "icl", 4096, **tags)
    one = out["icl-countries/smoothed"].at("β=0.4")
    assert ie_mean(one, [0, 1, 2], "gauss").value == pytest.approx(1.5)
    assert ie_mean(one, [0, 1, 2], "gauss").half == pytest.approx(0.05 * 0.95, rel=0.05)
    assert math.isnan(ie_mean(_profile([1.0] * 3), [0, 1, 2], "gauss").value)  # no reference: none
    result = claims.icl(out, tmp_path)
    smoothed = next(f for f in result.findings if f.part == "clear-cut" and f.estimator == "smoothed")
    # effect: (2.2 - 1.6) - (1.1 - 1.0) = 0.5; Gaussian part: (1.6 - 1.2) - (0.9 - 0.9) = 0.4; excess 0.1
    assert smoothed.effect.value == pytest.approx(0.5) and smoothed.gaussian.value == pytest.approx(0.4)
    line = document._finding_line(smoothed)
    assert "of it, Gaussian part +0.400 [" in line and "excess +0.100 bits" in line
    infonce = next(f for f in result.findings if f.part == "clear-cut" and f.estimator == "infonce")
    assert infonce.gaussian is None and "Gaussian" not in document._finding_line(infonce)


def test_claim_1_reads_the_target_measure_against_its_random_copy(tmp_path):
    """icl-coherence measured by the probe and its random-weight copy: a third part of claim 1 whose
    effect is the model's target IE minus the copy's over the layers valid in both, with the emergence
    layer and the exact ceilings named; no probe cell, no part."""
    from types import SimpleNamespace

    tags = {"corpus.name": "icl-coherence"}
    model = _measured("coherence", _profile([0.2, 0.7, float("nan")]), "probe", "icl", 4096, **tags)
    copy = _measured("coherence", _profile([0.1, 0.1, 0.1]), "probe:control-random", "icl", 4096, **tags)
    model.record.control = SimpleNamespace(target=SimpleNamespace(emergence_boundary=2,
                                                                  ceilings=[0.0, 0.0, 0.494, 1.0]))
    result = claims.icl({"m": model, "c": copy}, tmp_path)
    target = next(f for f in result.findings if f.estimator == "probe")
    assert target.part == "label decodable (target measure)" and target.net
    assert target.effect.value == pytest.approx(0.45 - 0.1) and target.control.value == pytest.approx(0.1)
    assert "emergence layer (model's lower end above the copy's upper end): boundary 2" in target.note
    assert "0.000, 0.000, 0.494, 1.000 bits" in target.note
    assert result.parts["label decodable (target measure)"] == "reproduced"
    row = next(r for r in result.rows if r[0] == "icl-coherence")
    assert row[2:5] == ["probe (target IE)", "4096", "+0.450 [+0.355, +0.545]"]
    assert "label decodable (target measure)" not in claims.icl({}, tmp_path).parts
