"""The control in the same run (docs/METHOD.md section 7): the same job on a copy that should carry
no meaning (`random`: the model with random seeded weights; `shuffled`: the tokens of each window
permuted), measured with the resolution-aware estimator on both, and model minus control per layer
with a bootstrap interval, on the layers valid in both (a layer invalid in either has no difference).
Both sides use the same variant of the estimator (its headline over both: the smoothed measure's β fixed
for the corpus family, kept where layers are invalid at it) and the same bootstrap
resamples (same n and seed), so the difference is bootstrapped replicate by replicate; stage 2 names
each cell's sides alike in both, so the smoothed measure draws the same query ids and noise for both
(common random numbers). Where the estimator splits a value into a reference part and an excess (the
smoothed measure's Gaussian reference G^β), the difference is split too, each part with its paired
interval: how much of it the covariances explain. Where the estimator shows a companion variant beside
its headline (the smoothed measure's standardised mode at the same β), model minus control is given
at it too, per layer with its paired interval, and in the sentence."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ie_flow.config import EstimateSpec, JobSpec
from ie_flow.emergence import Emergence, bootstrap_interval, headline
from ie_flow.models import RANDOM_PREFIX
from ie_flow.results import ControlLayer, ControlRecord, TargetRecord, companion_label


def measured_job(job: JobSpec) -> JobSpec:
    """The job with the control's estimator (the same model and corpus)."""
    spec = EstimateSpec(method=job.control.estimator, seeds=job.estimate.seeds, micro_reduce=job.estimate.micro_reduce,
                        dims=job.estimate.dims, settings=job.control.settings)
    return job.model_copy(update={"estimate": spec})


def control_job(job: JobSpec) -> JobSpec:
    """The control copy of a job: random weights (seeded) or shuffled tokens."""
    measured = measured_job(job)
    if job.control.kind == "random":
        model = job.model.model_copy(update={"name": RANDOM_PREFIX + job.model.name, "seed": job.control.seed})
        return measured.model_copy(update={"model": model})
    corpus = job.corpus.model_copy(update={"shuffle_tokens": True})
    return measured.model_copy(update={"corpus": corpus})


@dataclass(frozen=True)
class LayerDifference:
    layer: int
    model_ie: float
    control_ie: float
    diff: float  # model - control; NaN when either side is invalid at the headline variant
    ci_low: float
    ci_high: float
    reference_diff: float = math.nan  # the difference of the reference parts (smoothed: Gaussian)
    reference_ci_low: float = math.nan
    reference_ci_high: float = math.nan
    excess_diff: float = math.nan  # diff - reference_diff
    excess_ci_low: float = math.nan
    excess_ci_high: float = math.nan
    companion_diff: float = math.nan  # model - control at the companion variant (Estimator.companion_variant)
    companion_ci_low: float = math.nan
    companion_ci_high: float = math.nan
    companion_reference_diff: float = math.nan  # of it, the reference parts' difference at the companion
    companion_reference_ci_low: float = math.nan
    companion_reference_ci_high: float = math.nan


@dataclass
class ControlComparison:
    kind: str
    estimator: str
    variant: str
    variant_valid: bool
    model: Emergence
    control: Emergence
    layers: list[LayerDifference]
    model_results: str = ""  # mi.parquet URIs of the two measurements
    control_results: str = ""
    target: TargetRecord | None = None  # a target measure's boundaries and emergence layer (targets.py)

    def record(self) -> ControlRecord:
        """What summary.json keeps of the comparison."""
        companion = self.model.companion.variant if self.model.companion and self.control.companion else None
        return ControlRecord(
            kind=self.kind, estimator=self.estimator, variant=self.variant, variant_valid=self.variant_valid,
            companion_variant=companion, model_results=self.model_results, control_results=self.control_results,
            layers=[ControlLayer(**asdict(d)) for d in self.layers], target=self.target,
        )


def compare(spec: EstimateSpec, model_table: Any, control_table: Any
            ) -> tuple[str, bool, Emergence, Emergence, list[LayerDifference]]:
    """IE of both tables (measured with `spec`) at their common headline variant, and model - control per layer."""
    variant, valid, (em, ec) = headline(spec.estimator(), spec.micro_reduce, model_table, control_table)
    rows = [LayerDifference(lm.layer, lm.ie, lc.ie, **_paired(em, ec, i, i), **_companion(em, ec, lm.layer))
            for i, (lm, lc) in enumerate(zip(em.layers, ec.layers))]
    return variant, valid, em, ec, rows


def _paired(em: Emergence, ec: Emergence, i: int, j: int) -> dict[str, float]:
    """Model (its layer i) minus control (its layer j), the interval replicate by replicate, and the
    split into the reference parts' difference and the excess (`_split`); NaN where either is invalid."""
    diff = em.layers[i].ie - ec.layers[j].ie
    if not math.isfinite(diff):
        return {"diff": diff, "ci_low": math.nan, "ci_high": math.nan}
    b = min(len(em.ie_replicates), len(ec.ie_replicates))
    reps = em.ie_replicates[:b, i] - ec.ie_replicates[:b, j]
    low, high = bootstrap_interval(diff, reps, np.array([diff]))
    return {"diff": diff, "ci_low": low, "ci_high": high, **_split(em, ec, i, j, diff, reps)}


def _companion(em: Emergence, ec: Emergence, layer: int) -> dict[str, float]:
    """Model minus control at the companion variant at `layer` (`_paired`), with the reference parts'
    share of it ({} where either side has no companion, or no valid IE there)."""
    if em.companion is None or ec.companion is None:
        return {}
    i, j = ({l.layer: k for k, l in enumerate(p.layers)}.get(layer) for p in (em.companion, ec.companion))
    paired = {} if i is None or j is None else _paired(em.companion, ec.companion, i, j)
    if not math.isfinite(paired.get("diff", math.nan)):
        return {}
    return {f"companion_{k}": paired[k] for k in ("diff", "ci_low", "ci_high", "reference_diff", "reference_ci_low",
                                                  "reference_ci_high") if k in paired}


def _split(em: Emergence, ec: Emergence, i: int, j: int, diff: float, reps: np.ndarray) -> dict[str, float]:
    """The difference of layers i and j split into the reference parts' difference and the excess, each
    with its interval replicate by replicate ({} where either side has no reference)."""
    ref = em.layers[i].reference_ie - ec.layers[j].reference_ie
    if not (math.isfinite(ref) and math.isfinite(diff)):
        return {}
    b = min(len(reps), len(em.reference_replicates), len(ec.reference_replicates))
    ref_reps = em.reference_replicates[:b, i] - ec.reference_replicates[:b, j]
    one = lambda v: np.array([v])  # noqa: E731
    r_lo, r_hi = bootstrap_interval(ref, ref_reps, one(ref))
    e_lo, e_hi = bootstrap_interval(diff - ref, reps[:b] - ref_reps, one(diff - ref))
    return {"reference_diff": ref, "reference_ci_low": r_lo, "reference_ci_high": r_hi,
            "excess_diff": diff - ref, "excess_ci_low": e_lo, "excess_ci_high": e_hi}


def format_comparison(control: ControlRecord, main: Emergence | None = None, main_label: str = "") -> str:
    """Side by side per layer: the main estimator's IE (`*` saturated), the control estimator's IE of
    the model and of the control at the headline variant, and their difference with its interval, its
    Gaussian part and excess, and the difference at the companion variant (from a ControlComparison's
    record, so `ie-flow report` prints it from summary.json too)."""
    est, kind = control.estimator, control.kind
    variant = f", {control.variant}" if control.variant else ""
    variant += "" if control.variant_valid else " (not valid in every layer: a layer invalid in either is not compared)"
    split = any(math.isfinite(d.reference_diff) for d in control.layers)
    beside = companion_label(control.variant, control.companion_variant) if control.companion_variant else ""
    head = f"{'layer':>5}  " + (f"{main_label + ' IE':>13}  " if main else "") + \
        f"{est + ' IE':>12}  {kind + ' ctrl':>12}  {'difference':>10}  {'95% interval':>17}" + \
        (f"  {'Gaussian part':>13}  {'95% interval':>17}  {'excess':>7}  {'95% interval':>17}" if split else "") + \
        (f"  {beside + ' diff':>{max(10, len(beside) + 5)}}  {'95% interval':>17}" if beside else "")
    lines = [f"model vs {kind} control, {est}{variant}" + (f" (beside it: {control.companion_variant})" if beside else ""),
             head]
    main_ie = {l.layer: l for l in main.layers} if main else {}
    for d in control.layers:
        m = main_ie.get(d.layer)
        first = f"{m.ie:>12.3f}{'*' if m.saturated else ' '}  " if m else ""
        parts = (f"  {d.reference_diff:>13.3f}  [{d.reference_ci_low:>7.3f}, {d.reference_ci_high:>7.3f}]"
                 f"  {d.excess_diff:>7.3f}  [{d.excess_ci_low:>7.3f}, {d.excess_ci_high:>7.3f}]") if split else ""
        parts += (f"  {d.companion_diff:>{max(10, len(beside) + 5)}.3f}  [{d.companion_ci_low:>7.3f}, "
                  f"{d.companion_ci_high:>7.3f}]") if beside else ""
        lines.append(f"{d.layer:>5}  {first}{d.model_ie:>12.3f}  {d.control_ie:>12.3f}  {d.diff:>10.3f}  "
                     f"[{d.ci_low:>7.3f}, {d.ci_high:>7.3f}]{parts}{'  *' if d.apart else ''}")
    lines.append(summary_sentence(control))
    if control.target:
        from ie_flow.targets import format_target

        lines += ["", format_target(control.target, kind)]
    return "\n".join(lines)


def summary_sentence(control: ControlRecord) -> str:
    """The plain sentence on what the run shows (at the headline variant, and at the companion beside it)."""
    est, kind, rows = control.estimator, control.kind, control.layers
    diffs = [d for d in rows if math.isfinite(d.diff)]
    if not diffs:
        return f"No layer has a valid {est} IE for both the model and its {kind} control: nothing to compare."
    apart = [d for d in diffs if d.apart]
    higher = sum(d.diff > 0 for d in apart)
    of_all = "" if len(diffs) == len(rows) else f"of {len(rows)}; "
    at = f" at {control.variant}" if control.variant else ""
    text = (f"In {len(apart)} of the {len(diffs)} layers valid in both ({of_all}marked *) the model's {est} IE{at} "
            f"differs from its {kind} control beyond the 95% interval ({higher} higher, {len(apart) - higher} "
            f"lower); mean difference {np.mean([d.diff for d in diffs]):+.3f} bits.")
    split = [d for d in diffs if math.isfinite(d.reference_diff)]
    if split:
        ref_apart = sum(d.reference_ci_low > 0 or d.reference_ci_high < 0 for d in split)
        ex_apart = sum(d.excess_ci_low > 0 or d.excess_ci_high < 0 for d in split)
        text += (f" Of it, the Gaussian reference (what the covariances alone give) accounts for "
                 f"{np.mean([d.reference_diff for d in split]):+.3f} bits ({ref_apart} layers beyond its interval) and "
                 f"the excess over it for {np.mean([d.excess_diff for d in split]):+.3f} ({ex_apart} layers).")
    return text + _companion_sentence(control)


def _companion_sentence(control: ControlRecord) -> str:
    """The comparison at the companion variant, on the layers valid in both there ("" where there is none)."""
    if not control.companion_variant:
        return ""
    beside = [d for d in control.layers if math.isfinite(d.companion_diff)]
    if not beside:
        return f" At {control.companion_variant}, beside it, no layer is valid in both."
    apart = [d for d in beside if d.companion_apart]
    higher = sum(d.companion_diff > 0 for d in apart)
    text = (f" At {control.companion_variant}, beside it: {len(apart)} of the {len(beside)} layers valid in both "
            f"differ beyond the interval ({higher} higher, {len(apart) - higher} lower); mean difference "
            f"{np.mean([d.companion_diff for d in beside]):+.3f} bits")
    split = [d for d in beside if math.isfinite(d.companion_reference_diff)]
    if len(split) == len(beside):
        ref = [d.companion_reference_diff for d in split]
        apart_ref = sum(d.companion_reference_ci_low > 0 or d.companion_reference_ci_high < 0 for d in split)
        text += (f", of which the Gaussian reference accounts for {np.mean(ref):+.3f} ({apart_ref} layers beyond its "
                 f"interval) and the excess for {np.mean([d.companion_diff for d in split]) - np.mean(ref):+.3f}")
    return text + "."
