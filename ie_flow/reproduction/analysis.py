"""What the reproduction's results say: each measurement loaded from storage, model-level IE with its
interval, differences between cells, and the verdict rule (one rule for every claim).

A difference between two cells measured on different samples gets the half-widths of their 95%
intervals added in quadrature (independent samples). A comparison by an estimator with variants
uses one variant for every cell in it (the first valid in all of them, as for a model and its
control: the smoothed measure's smallest β)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ie_flow.emergence import Emergence, emergence_by_variant
from ie_flow.results import ResultsRecord, read_record, variant_order
from ie_flow.store import ReproductionEntry, ReproductionIndex, results_folder

VERDICTS = ("reproduced", "reproduced with the paper's estimator only", "not testable here (saturated)",
            "explained by the corpus", "not reproduced")
SATURATED_SHARE = 0.5  # a claim is not testable by an estimator when at least this share of its layers saturate


@dataclass
class Measured:
    key: str
    entry: ReproductionEntry
    record: ResultsRecord
    profiles: dict[str, Emergence]  # variant -> IE profile

    @property
    def estimator(self) -> str:
        return self.entry.estimator.split(":")[0]

    @property
    def run_id(self) -> str:
        return self.record.mlflow_run_id or self.entry.mlflow_run_id or "-"

    @property
    def samples(self) -> int:
        return self.record.manifest.samples

    @property
    def digest(self) -> str:
        return self.record.corpus_digest[:12]

    def at(self, variant: str) -> Emergence:
        """The IE profile at `variant` (an error when it was not measured: never another variant)."""
        if variant not in self.profiles:
            raise KeyError(f"{self.key} has no variant {variant!r} (it has {', '.join(map(repr, self.profiles))})")
        return self.profiles[variant]


def load_measurements(index: ReproductionIndex, endpoint_url: str | None = None) -> dict[str, Measured]:
    out = {}
    for key, entry in index.entries.items():
        data, table = results_folder(entry.results_uri, endpoint_url).load()
        record = read_record(data)
        out[key] = Measured(key, entry, record, emergence_by_variant(table, record.micro_reduce))
    return out


@dataclass(frozen=True)
class Value:
    """A model-level number with its 95% interval."""

    value: float
    low: float
    high: float

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return math.isfinite(self.value) and (self.low > 0 or self.high < 0)

    def __str__(self) -> str:
        if not math.isfinite(self.value):
            return "n/a"
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"

    def __sub__(self, other: "Value") -> "Value":
        d, h = self.value - other.value, math.hypot(self.half, other.half)
        return Value(d, d - h, d + h)


def mean_of(values: list[Value]) -> Value:
    """Mean of independent values; half-width sqrt(sum h^2) / k."""
    ok = [v for v in values if math.isfinite(v.value)]
    if not ok:
        return Value(math.nan, math.nan, math.nan)
    m, h = float(np.mean([v.value for v in ok])), math.sqrt(sum(v.half**2 for v in ok)) / len(ok)
    return Value(m, m - h, m + h)


def ie_mean(em: Emergence) -> Value:
    s = em.summary
    if not math.isfinite(s.ie_mean):
        return Value(math.nan, math.nan, math.nan)
    return Value(s.ie_mean, s.ie_mean_ci_low, s.ie_mean_ci_high)


def saturated_share(ems: list[Emergence]) -> float:
    """Share of layers the estimator cannot resolve at this n: at its ceiling (InfoNCE) or invalid
    (the smoothed measure's β too fine for the sample)."""
    layers = [l for em in ems for l in em.layers]
    return sum(l.saturated or not l.valid for l in layers) / max(len(layers), 1)


def common_variant(measured: list[Measured]) -> tuple[str, bool]:
    """The one variant a claim's numbers by one estimator use, and whether it is valid everywhere:
    the first (in variant order) valid in every layer of every cell; else the one with the most valid
    (cell, layer) pairs in all (a claim spans many cells: counting layers valid in *every* cell would
    rank variants by one layer). "" for an estimator without variants."""
    profiles = [m.profiles for m in measured]
    if not profiles or set(profiles[0]) == {""}:
        return "", True
    variants = sorted(set.intersection(*(set(p) for p in profiles)), key=variant_order)
    valid = {v: sum(l.valid for p in profiles for l in p[v].layers) for v in variants}
    total = sum(len(p[variants[0]].layers) for p in profiles)
    everywhere = [v for v in variants if valid[v] == total]
    if everywhere:
        return everywhere[0], True
    return max(variants, key=lambda v: (valid[v], -variants.index(v))), False


@dataclass(frozen=True)
class Finding:
    """One estimator's test of a claim: the effect in the paper's direction (positive = as the
    paper says), the same effect on the control where there is one, and the saturated share."""

    estimator: str
    effect: Value
    control: Value | None = None
    saturated: float = 0.0
    part: str = ""  # which part of a two-part claim it tests

    @property
    def supports(self) -> bool:
        return self.effect.excludes_zero() and self.effect.value > 0

    @property
    def control_explains(self) -> bool:
        """The control (no trained model, or no word order) shows the effect as well: at least half
        as large, in the same direction, beyond its interval."""
        c = self.control
        return c is not None and c.excludes_zero() and c.value > 0 and c.value >= 0.5 * self.effect.value


def verdict(findings: list[Finding]) -> str:
    """The one rule: ours (infonce, smoothed) decides; a control that shows the same effect makes it the
    corpus's; an estimator whose layers mostly saturate cannot test it; mine-paper is reported apart."""
    measured = [f for f in findings if f.estimator != "mine-paper" and math.isfinite(f.effect.value)]
    testable = [f for f in measured if f.saturated < SATURATED_SHARE]
    support = [f for f in testable if f.supports]
    if support and all(f.control_explains for f in support):
        return "explained by the corpus"
    if support:
        return "reproduced"
    if any(f.supports for f in findings if f.estimator == "mine-paper"):
        return "reproduced with the paper's estimator only"
    if measured and not testable:
        return "not testable here (saturated)"
    return "not reproduced"  # also when nothing was measured: the report lists failed cells


def spearman(x: list[float], y: list[float]) -> float:
    """Rank correlation (no ties expected: shots are distinct)."""
    if len(x) < 3 or not all(map(math.isfinite, y)):
        return math.nan
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def token_rise(em: Emergence) -> Value:
    """How much E(t) (mean over valid layers) rises from the second position to the last, with the
    interval of the last position's E."""
    curves, ci = em.token_curves, em.token_ci
    ok = np.isfinite(curves).all(axis=1)
    if not ok.any() or curves.shape[1] < 3:
        return Value(math.nan, math.nan, math.nan)
    mean = curves[ok].mean(axis=0)
    rise = float(mean[-1] - mean[1])
    half = float(np.mean((ci[1][ok][:, -1] - ci[0][ok][:, -1]) / 2)) * math.sqrt(2)
    return Value(rise, rise - half, rise + half)


def mean_curve(em: Emergence) -> np.ndarray:
    ok = np.isfinite(em.token_curves).all(axis=1)
    return em.token_curves[ok].mean(axis=0) if ok.any() else np.full(em.token_curves.shape[1], np.nan)


def by_tags(measured: dict[str, Measured], experiment: str, estimator: str, **tags: Any) -> list[Measured]:
    return [m for m in measured.values() if m.entry.experiment == experiment and m.entry.estimator == estimator
            and all(m.entry.tags.get(k) == v for k, v in tags.items())]


def spread(em: Emergence) -> Value:
    """The spread of IE over layers (standard deviation of the valid IE_l), with the bootstrap
    interval of the same statistic over the replicates, centred on the estimate."""
    ie = np.array([l.ie for l in em.layers])
    ok = np.isfinite(ie)
    if ok.sum() < 2:
        return Value(math.nan, math.nan, math.nan)
    point = float(ie[ok].std(ddof=1))
    reps = em.ie_replicates[:, ok]
    if len(reps) < 2:
        return Value(point, point, point)
    p_lo, mid, p_hi = np.percentile(reps.std(axis=1, ddof=1), [2.5, 50, 97.5])
    return Value(point, point - (mid - p_lo), point + (p_hi - mid))
