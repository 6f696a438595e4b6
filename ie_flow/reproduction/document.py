"""docs/REPRODUCTION.md and its figures, generated from the reproduction index and the results it
points to (never edited by hand: rerunning `ie-flow reproduce --report-only` rewrites it)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ie_flow import __version__
from ie_flow.reproduction import claims
from ie_flow.reproduction.analysis import SATURATED_SHARE, Finding, Measured, load_measurements
from ie_flow.reproduction.claims import NEEDED_N, ClaimResult
from ie_flow.reproduction.experiments import Experiment
from ie_flow.store import ReproductionIndex, StorageRoot

CLAIM_TESTS = {
    "icl": ("IE mean over layers of the three one-category corpora minus the K-matched mixed corpus "
            "(icl-mixed-matched: 16 names spread over the three categories, so its prefixes have the one-category "
            "corpora's entropy at every position, which icl-mixed's 48 names do not), trained model minus its "
            "random-weight copy at each shot count (a difference-in-differences), averaged over the shot counts "
            "whose control was measured (clear-cut; the control shown is the random copy's own difference, and "
            "InfoNCE, with no random copy measured, gives none); the spread of IE over layers at 5 shots "
            "minus at 1 shot, averaged over the four corpora (spread grows); and, with an exact answer, the target "
            "measure on icl-coherence: target IE (the linear probe's usable information about whether all four "
            "names share a category, which no single name carries) of the model minus its random-weight copy, "
            "with the emergence layer and the exact ceilings (label decodable)."),
    "natural-text": ("The rise of E(t) (mean over layers) from the second token to the last on the as-written "
                     "8-token windows minus the same rise on the shuffled-token windows of the same corpus (the "
                     "control, shown on its own too), averaged over the corpora that have both and reach the n the "
                     "measure needs where any does. InfoNCE runs on one cell: its value is set by the corpus."),
    "human-vs-model": ("IE mean over layers on model-written minus human-written windows, averaged over the "
                       "two generators. Control (smoothed): the same difference measured by the random-weight copy. "
                       "InfoNCE runs on one cell: its value is set by the corpus."),
    "model-size": ("Within one family of at least 3 sizes: the least-squares slope of IE mean over layers "
                   "against log2 of the parameter count (bits per doubling), each model over the layers valid in "
                   "all its cells. Control (smoothed): the same slope for their random-weight copies. With fewer "
                   "sizes per family the table shows what was measured and the claim is not testable."),
}
CLAIM_FUNCTIONS = {"icl": claims.icl, "natural-text": claims.natural_text,
                   "human-vs-model": claims.human_vs_model, "model-size": claims.model_size}


def _table(rows: list[list[str]]) -> list[str]:
    if len(rows) < 2:
        return ["(no measurement yet)"]
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return out + ["| " + " | ".join(r) + " |" for r in rows[1:]]


def _finding_line(f: Finding) -> str:
    control = f"; control {f.control}" if f.control is not None else "; no control for this estimator"
    if f.net and f.control is not None:
        control += " (already taken off the effect)"
    if math.isfinite(f.effect.value) and f.effect.half == 0:
        control += " (no interval: one seed, the paper's protocol has no resampling)"
    sat = f"; {f.saturated:.0%} of layers saturated or invalid" if f.saturated else ""
    short = f"; n below the {f.needs:,} the measure needs" if f.below_need else ""
    note = f" ({f.note})" if f.note else ""
    part = f"{f.part}, " if f.part else ""
    return f"- {part}{f.read_at}: effect {f.effect} bits{note}{_split(f)}{control}{sat}{short}."


def _split(f: Finding) -> str:
    """The smoothed effect's Gaussian part (what the cells' covariances alone give) and the excess."""
    g = f.gaussian
    if g is None or not (math.isfinite(g.value) and math.isfinite(f.effect.value)):
        return ""
    return f"; of it, Gaussian part {g} and excess {f.effect.value - g.value:+.3f} bits"


def _why(result: ClaimResult) -> str:
    """One paragraph from the findings: which estimator decided and how."""
    if result.fixed:
        return f"*{result.fixed[0]}*: {result.fixed[1]}."
    parts = []
    for f in result.findings:
        who = f"{f.part}, {f.read_at}" if f.part else f.read_at
        short = (f"n = {f.n} is below the {f.needs:,} per cell the measure needs "
                 f"({NEEDED_N[result.experiment][1]})") if f.below_need else ""
        if not math.isfinite(f.effect.value) and not f.by_design:
            reason = f.note or "no measurement (see the failed cells at the top)"
            parts.append(f"{who}: no effect can be read: {reason}" + (f"; and {short}" if short else "") + ".")
        elif f.estimator == "mine-paper":
            parts.append(f"The paper's estimator (mine-paper, 300 steps: what this machine affords, not the "
                         f"paper's 10,000) gives {f.effect} bits.")
        elif f.by_design:
            parts.append(f"{who}: untestable by design: nearly every window of this text is distinct, so the "
                         "windows carry more bits than InfoNCE's ceiling (log2 of its report rows) and a "
                         "deterministic model's exact MI is above it at any n; its value is the ceiling, set by the "
                         "corpus and n, not by the model.")
        elif f.below_need:
            parts.append(f"{who}: not testable here: {short}, whatever its value ({f.effect}).")
        elif f.saturated >= SATURATED_SHARE:
            parts.append(f"{who}: {f.saturated:.0%} of the layers are at the estimator's ceiling or invalid, so "
                         "it cannot test the claim at this n (a larger sample can).")
        elif f.supports and f.control_explains:
            parts.append(f"{who}: the effect ({f.effect}) is there, but the control shows it too "
                         f"({f.control}): it does not need what the control removes.")
        elif f.supports:
            ctrl = f" and the control does not show it ({f.control})" if f.control is not None else ""
            if f.net:
                ctrl = f", beyond what the control shows ({f.control})" if f.control is not None else ""
            parts.append(f"{who}: the effect is in the paper's direction beyond its interval ({f.effect}){ctrl}.")
        elif f.contradicts:
            parts.append(f"{who}: contradicted: the effect is opposite to the paper's direction, beyond its "
                         f"interval ({f.effect}).")
        else:
            parts.append(f"{who}: no effect: the interval of the effect ({f.effect}) includes 0.")
    if result.parts:
        parts.append("Verdicts of the parts: " + "; ".join(f"{k}: *{v}*" for k, v in result.parts.items()) +
                     "; the claim gets the weaker.")
    return " ".join(parts)


def _ran(experiment: Experiment, measured: list[Measured], root: StorageRoot) -> list[str]:
    path = experiment.path.resolve()
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path.name
    out = [f"Command: `{experiment.command}` (file `{shown}`).", "",
           "| cell | measurement | model | corpus digest | n | MLflow run |", "|---|---|---|---|---|---|"]
    for m in sorted(measured, key=lambda m: m.key):
        out.append(f"| {m.entry.cell} | {m.entry.estimator} | {_model(m.record.model_name, root)} | {m.digest} | "
                   f"{m.samples} | {m.run_id} |")
    return out


def _model(name: str, root: StorageRoot) -> str:
    """A model as the report names it: an alias or hub id as is, a local folder by its name only
    (its absolute path is the machine's, not the result's)."""
    if os.path.isabs(name.removeprefix("random:")):
        rel = root.relative(name.removeprefix("random:"))
        return ("random:" if name.startswith("random:") else "") + (rel or Path(name).name)
    return name


def _section(n: int, experiment: Experiment, measured: dict[str, Measured], figures: Path, out: Path,
             root: StorageRoot) -> tuple[list[str], ClaimResult]:
    mine = [m for m in measured.values() if m.entry.experiment == experiment.name]
    result = CLAIM_FUNCTIONS[experiment.name](measured, figures)
    lines = [f"## Claim {n}: {experiment.name}", "", f"**The paper:** {experiment.claim}", "",
             f"**Verdict: {result.verdict}.** Read at: {result.basis}.", ""]
    if experiment.name in NEEDED_N:
        needs, why = NEEDED_N[experiment.name]
        lines += [f"**n:** the measure needs {needs:,} per cell ({why}); this run (scale `{experiment.scale}`) "
                  f"used n = {claims._n(mine)}.", ""]
    lines += ["### What we ran", ""]
    lines += _ran(experiment, mine, root)
    lines += ["", "### Numbers", "", f"Test: {CLAIM_TESTS[experiment.name]}", ""]
    variants = [f"{k}: {v}" for k, v in result.variants.items() if v]
    if variants:
        lines += [f"One variant of each estimator for every cell of this claim ({'; '.join(variants)}), and one "
                  "set of layers: those valid in every cell compared.", ""]
    lines += _table(result.rows) + ["", "Intervals are 95%. A saturated layer's estimate is at its ceiling "
                                    "(log2 of the report rows): the number is a floor, not a measurement.", ""]
    if result.figure is not None:
        lines += [f"![{experiment.name}]({os.path.relpath(result.figure, out.parent)})", ""]
    lines += ["### Findings and controls", ""] + [_finding_line(f) for f in result.findings]
    lines += ["", "### Why", "", _why(result), ""]
    return lines, result


def _needs(experiments: list[Experiment], measured: dict[str, Measured]) -> list[str]:
    """The n each claim's measure needs beside the n this run used."""
    lines = ["| claim | n the measure needs | why | n this run used |", "|---|---|---|---|"]
    for e in experiments:
        if e.name in NEEDED_N:
            needs, why = NEEDED_N[e.name]
            used = claims._n([m for m in measured.values() if m.entry.experiment == e.name])
            lines.append(f"| {e.name} | {needs:,} | {why} | {used} |")
    return lines + [""]


def _runtimes(experiments: list[Experiment], index: ReproductionIndex) -> list[str]:
    lines = ["## Run times", "", "Measured on the machine that ran the reproduction (wall seconds; a cell's "
             "time includes its extraction, every estimator and its control; a generation's, every run that "
             "generated batches of it).", "",
             "| experiment | cells | cell seconds | generation seconds |", "|---|---|---|---|"]
    total = 0.0
    for e in experiments:
        cells: dict[str, float] = {}
        digests = {c.name: e.cell_digest(c, index.generated) for c in e.cells}
        for entry in index.entries.values():
            if entry.experiment == e.name and digests.get(entry.cell) == entry.job_digest:
                cells[entry.cell] = max(cells.get(entry.cell, 0.0), entry.seconds)
        gen = sum(index.generated.get(g["name"], {}).get("seconds", 0.0) for g in e.generate)
        total += sum(cells.values()) + gen
        lines.append(f"| {e.name} | {len(cells)}/{len(e.cells)} | {sum(cells.values()):.0f} | {gen:.0f} |")
    lines += [f"| **all** | | **{total:.0f}** ({total / 60:.0f} min) | |", ""]
    return lines


def _results_path(uri: str, root: StorageRoot) -> str:
    """A results folder as the report names it: relative to the reproduction's storage root."""
    folder = uri.rsplit("/", 1)[0]
    rel = root.relative(folder)
    return f"{rel}/" if rel is not None else (folder if "://" in folder else f"(outside the root) {Path(folder).name}")


def _trace(measured: dict[str, Measured], root: StorageRoot) -> list[str]:
    lines = ["## Where every number comes from", "",
             "Results folders relative to the reproduction's storage root (`--storage`), and MLflow runs.", "",
             "| measurement | results folder | MLflow run |", "|---|---|---|"]
    for key in sorted(measured):
        m = measured[key]
        lines.append(f"| {key} | `{_results_path(m.entry.results_uri, root)}` | {m.run_id} |")
    return lines + [""]


def _where(uri: str | None) -> str:
    """A storage or tracking URI as the report shows it: a remote one as is; a local path (this
    machine's, often temporary) relative to the working directory when under it, else not at all."""
    if not uri:
        return "-"
    path = uri.removeprefix("file://").removeprefix("sqlite:///")
    if uri.startswith(("s3://", "http://", "https://")) or not os.path.isabs(path):
        return f"`{uri}`"
    here = Path(path).resolve()
    if here.is_relative_to(Path.cwd()):
        return f"`{uri[: len(uri) - len(path)]}{here.relative_to(Path.cwd())}`"
    return "(a local path of the machine that ran it)"


SPLIT_NOTE = ("Every effect the smoothed measure reads is also computed, by the same arithmetic, from the cells' "
              "Gaussian reference (the MI their covariances alone would give at the same β): that is its *Gaussian "
              "part*, and the effect minus it the *excess*, what the geometry beyond the covariances adds. An effect "
              "that is mostly Gaussian part is a difference in covariance spectra, which matrix-entropy tools "
              "measure too.")


GPU_SECTION = """## What a GPU cluster would add

The paper measured GPT-2, Gemma-2B and OpenLlama-3B on 300,000 sequences per experiment. This
machine (2 CPU cores, no GPU, no model hub) cannot: the same workflows run unchanged on a Ray
cluster (`infra/README.md`: Docker Compose, KubeRay, or Ray's cluster launcher) with the model named
by its hub id, e.g. `ie-flow submit workflows/gpt2.yaml --model google/gemma-2b --samples 300000
--storage s3://BUCKET/runs --ray-address http://HEAD:8265`. Sizing, from `infra/README.md` (SIZING):
300,000 sequences of 8 tokens are 2,400,000 rows per boundary, 3.69 GB per boundary in float16 for
GPT-2 (d = 768) and 9.83 GB for a d = 2048 model; stage 2 holds one layer's two boundaries in GPU
memory (14.7 GB in float32 for d = 768, all 8 positions). `ie-flow reproduce --scale paper` runs the
same experiments at the n each claim's measure needs (the table at the top) and writes the same report.
What it would add here: the paper's model
sizes (claim 4 with a size series of one family: `workflows/paper-hub/4-model-size.yaml`), n large enough that InfoNCE's ceiling (log2 of the report
rows) no longer caps IE, and the smoothed measure at n = 65,536 or more, where more β are valid."""


def write_report(experiments: list[Experiment], index: ReproductionIndex, setup: Any, out: Path) -> Path:
    """Write the report and its figures (in a folder named after it) from what the index holds."""
    scale = experiments[0].scale if experiments else "default"
    figures = out.parent / out.stem.lower()
    figures.mkdir(parents=True, exist_ok=True)
    # cells since removed, or measured with other settings (another scale), are left out
    current = {f"{e.name}/{c.name}": e.cell_digest(c, index.generated) for e in experiments for c in e.cells}
    shown = index.model_copy(update={"entries": {k: e for k, e in index.entries.items()
                                                 if current.get(f"{e.experiment}/{e.cell}") == e.job_digest}})
    measured = load_measurements(shown, setup.endpoint_url)
    root = StorageRoot(setup.storage, setup.endpoint_url)
    lines = ["# Reproduction of the paper's claims", "",
             f"Generated by `ie-flow reproduce` (ie-flow {__version__}) from the results listed at the end; "
             f"do not edit by hand. Rerun `ie-flow reproduce --scale {scale}` (`make reproduce` at the default "
             "scale; `--report-only` rewrites it from stored results).", "",
             f"Results under the storage root given as `--storage` {_where(setup.storage)}; the paths below are "
             f"relative to it. MLflow parent run `{index.parent_run_id or '-'}` (tracking "
             f"{_where(index.tracking_uri)}), one child run per cell.", "",
             f"Scale: `{scale}` (`ie-flow reproduce --scale {scale}`; the experiment files' `scales`). A finding "
             "read at an n below what its measure needs is *not testable here* whatever its value:", ""]
    lines += _needs(experiments, measured) + ["| claim | verdict | read at |", "|---|---|---|"]
    sections: list[str] = []
    for n, e in enumerate(experiments, 1):
        if e.name not in CLAIM_FUNCTIONS:
            continue
        section, result = _section(n, e, measured, figures, out, root)
        lines.append(f"| {n}. {e.claim} | {result.verdict} | {result.basis} |")
        sections += section
    lines += ["", SPLIT_NOTE, ""]
    if index.failed:
        lines += ["**Cells that failed** (rerun `make reproduce` to retry them):", ""]
        lines += [f"- {k}: {v}" for k, v in sorted(index.failed.items())] + [""]
    lines += sections + _runtimes(experiments, index) + _trace(measured, root) + [GPU_SECTION, ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out
