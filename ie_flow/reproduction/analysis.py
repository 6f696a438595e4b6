"""What the reproduction's results say: each measurement loaded from storage, model-level IE with its
interval, differences between cells, and the verdict rule (one rule for every claim).

A difference between two cells measured on different samples gets the half-widths of their 95%
intervals added in quadrature (independent samples). A comparison by an estimator with variants
uses one variant for every cell in it (the headline its cells' jobs fixed in advance: the smoothed
measure's β of their corpus family), and one set of layers: those valid in every cell
(`common_layers`), so no cell's mean leaves out a layer the others keep."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ie_flow.emergence import Emergence, common_layers, emergence_by_variant
from ie_flow.results import ResultsRecord, read_record, variant_order
from ie_flow.store import ReproductionEntry, ReproductionIndex, results_folder

# strongest to weakest: a claim in two parts gets the weaker part's verdict
# (BELOW_NEED stands for its labels, which name the n: "not testable here (n = 512; the measure needs 4,096)")
BELOW_NEED = "not testable here (n below what the measure needs)"
VERDICTS = ("reproduced", "reproduced with the paper's estimator only", "explained by the corpus",
            "not testable here (saturated)", BELOW_NEED, "not testable here (one size per family)",
            "not testable here (no measurement)", "untestable by design", "no effect", "contradicted")
SATURATED_SHARE = 0.5  # a claim is not testable by an estimator when at least this share of its layers saturate
BY_DESIGN = "untestable by design"


def verdict_rank(label: str) -> int:
    """A verdict's place in VERDICTS (0 the strongest)."""
    return VERDICTS.index(BELOW_NEED if label.startswith("not testable here (n = ") else label)


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


def ie_mean(em: Emergence, layers: list[int] | None = None, part: str = "ie") -> Value:
    """IE mean over `layers` (default: the cell's own valid layers) with its bootstrap interval, as
    the summary computes it; `part="gauss"`: the same mean of its Gaussian reference part (NaN for
    an estimator without one). A layer in `layers` that is invalid here makes the value NaN: a
    comparison passes the layers valid in all its cells (`common_layers`)."""
    nan = Value(math.nan, math.nan, math.nan)
    if part == "gauss" and not em.has_reference:
        return nan
    if layers is None and part == "ie":
        s = em.summary
        return Value(s.ie_mean, s.ie_mean_ci_low, s.ie_mean_ci_high) if math.isfinite(s.ie_mean) else nan
    at = {l.layer: i for i, l in enumerate(em.layers)}
    own = [l.layer for l in em.layers if l.valid]
    idx = [at[l] for l in (own if layers is None else layers) if l in at]
    values = np.array([em.layers[i].ie if part == "ie" else em.layers[i].reference_ie for i in idx])
    if not idx or (layers is not None and len(idx) < len(layers)) or not np.isfinite(values).all():
        return nan
    return Value(*(em.mean_ie(idx) if part == "ie" else em.mean_reference(idx)))


def saturated_share(ems: list[Emergence]) -> float:
    """Share of layers the estimator cannot resolve at this n: at its ceiling (InfoNCE) or invalid
    (the smoothed measure's β too fine for the sample)."""
    layers = [l for em in ems for l in em.layers]
    return sum(l.saturated or not l.valid for l in layers) / max(len(layers), 1)


def headlines(measured: list[Measured]) -> list[str]:
    """The headline variants the cells recorded (fixed in advance per corpus family), in variant order."""
    return sorted({m.record.variant for m in measured}, key=variant_order)


def common_variant(measured: list[Measured]) -> tuple[str, bool]:
    """The one variant a claim's numbers by one estimator use, and whether it is valid everywhere: the
    headline its cells recorded. Cells of several corpus families (other headlines) are read at one of
    theirs: the first valid in every layer of every cell, else the one with the most valid (cell, layer)
    pairs in all (counting layers valid in *every* cell would rank variants by one layer); never at a
    variant none of them recorded. "" for an estimator without variants."""
    profiles = [m.profiles for m in measured]
    if not profiles or set(profiles[0]) == {""}:
        return "", True
    variants = headlines(measured)
    missing = [(m.key, v) for m in measured for v in variants if v not in m.profiles]
    if missing:
        raise KeyError(f"{missing[0][0]} has no variant {missing[0][1]!r}, the headline of another cell it is "
                       "compared with")
    valid = {v: sum(l.valid for p in profiles for l in p[v].layers) for v in variants}
    total = sum(len(p[variants[0]].layers) for p in profiles)
    everywhere = [v for v in variants if valid[v] == total]
    if everywhere:
        return everywhere[0], True
    return max(variants, key=lambda v: (valid[v], -variants.index(v))), False


def windows_above_ceiling(m: Measured) -> bool:
    """A text corpus whose windows carry at least what the bound can report: the last position's
    plug-in prefix entropy (a deterministic model's exact MI, where it tells the windows apart) at
    or above the estimator's ceiling (InfoNCE: log2 of its report rows) in every layer, so the bound
    sits at its ceiling whatever the model. On prose nearly every window is distinct (97-100% of
    fortunes' and python-docs' 8-token windows at every n), so the entropy grows as log2 n and stays
    above a ceiling of log2 n/4 at any n. ICL corpora have a finite support: a large enough n brings
    their entropy below the ceiling."""
    man = m.record.manifest
    synthetic = str(man.dataset.settings.get("kind", "")).startswith("icl")  # icl, icl-coherence
    ceilings = [l.ceiling_bits for em in m.profiles.values() for l in em.layers if math.isfinite(l.ceiling_bits)]
    return not synthetic and bool(ceilings) and man.prefix_entropy_bits[-1] >= max(ceilings) - 1e-9


def set_by_corpus(ms: list[Measured]) -> bool:
    """An estimator's measurements that cannot test a difference whatever n: InfoNCE on text whose
    windows carry more than its ceiling (its value is its ceiling, set by the corpus and n)."""
    return bool(ms) and all(m.estimator == "infonce" and windows_above_ceiling(m) for m in ms)


@dataclass(frozen=True)
class Finding:
    """One estimator's test of a claim: the effect in the paper's direction (positive = as the
    paper says), the same effect on the control where there is one, the saturated share, and what it
    was read at: the variant (the smoothed measure's β) and n per cell. `by_design`: the estimator's
    value is set by the corpus (`set_by_corpus`), so it cannot test the claim at any n. `needs`: the
    n per cell the claim's measure needs (below it, no verdict from this finding). `net`: the effect
    is already net of its control (a difference-in-differences), so the control cannot explain it."""

    estimator: str
    effect: Value
    control: Value | None = None
    saturated: float = 0.0
    part: str = ""  # which part of a two-part claim it tests
    variant: str = ""
    n: str = "-"  # sequences per cell ("512", or "512-640" where cells differ)
    by_design: bool = False
    needs: int = 0  # 0: no bound
    net: bool = False
    note: str = ""  # which cells the effect uses, or why it has none
    # the smoothed measure: the same effect computed from the cells' Gaussian reference (what their
    # covariances alone give); the effect minus it is what the geometry beyond them adds
    gaussian: Value | None = None

    @property
    def below_need(self) -> bool:
        """The smallest n of its cells is below what the measure needs (a value set by the corpus
        is so at any n)."""
        smallest = self.n.split("-")[0]
        return not self.by_design and self.needs > 0 and smallest.isdigit() and int(smallest) < self.needs

    @property
    def supports(self) -> bool:
        return self.effect.excludes_zero() and self.effect.value > 0

    @property
    def contradicts(self) -> bool:
        """The effect is beyond its interval in the direction opposite to the paper's."""
        return self.effect.excludes_zero() and self.effect.value < 0

    @property
    def testable(self) -> bool:
        return (self.estimator != "mine-paper" and math.isfinite(self.effect.value) and not self.by_design
                and not self.below_need and self.saturated < SATURATED_SHARE)

    @property
    def control_explains(self) -> bool:
        """The control (no trained model, or no word order) shows the effect as well: at least half
        as large, in the same direction, beyond its interval."""
        c = self.control
        return (c is not None and not self.net and c.excludes_zero() and c.value > 0
                and c.value >= 0.5 * self.effect.value)

    @property
    def read_at(self) -> str:
        """What the number is: measure, variant and n ("smoothed at β=0.2, n = 512")."""
        variant = f" at {self.variant}" if self.variant else ""
        return f"{self.estimator}{variant}, n = {self.n}"


def decide(findings: list[Finding]) -> tuple[str, list[Finding]]:
    """The one rule, and the findings the verdict rests on. Ours (infonce, smoothed) decides where it
    can test the claim: an effect beyond its interval in the paper's direction is *reproduced*, unless
    the control shows it too (*explained by the corpus*); one beyond its interval the other way is
    *contradicted*; an interval that covers 0 is *no effect*. Where none can test it: mine-paper's
    support is reported apart; an estimator whose value the corpus sets is *untestable by design*; one
    read at an n below what its measure needs is *not testable here (n = X; the measure needs N)*; one
    whose layers mostly saturate or are invalid at this n is *not testable here (saturated)*."""
    # measured: a value, or layers that could not give one (no layer valid in every cell leaves NaN)
    measured = [f for f in findings if f.estimator != "mine-paper"
                and (math.isfinite(f.effect.value) or f.saturated > 0 or f.by_design or f.below_need)]
    testable = [f for f in measured if f.testable]
    support = [f for f in testable if f.supports]
    if support and all(f.control_explains for f in support):
        return "explained by the corpus", support
    if support:
        return "reproduced", support
    paper = [f for f in findings if f.estimator == "mine-paper" and f.supports]
    if paper:
        return "reproduced with the paper's estimator only", paper
    if testable:
        against = [f for f in testable if f.contradicts]
        return ("contradicted", against) if against else ("no effect", testable)
    if not measured:
        return "not testable here (no measurement)", []  # the report lists the failed cells
    if all(f.by_design for f in measured):
        return BY_DESIGN, measured
    short = [f for f in measured if f.below_need]  # a larger n can test it: said before saturation, its likely cause
    if short:
        return f"not testable here (n = {short[0].n}; the measure needs {short[0].needs:,})", short
    return "not testable here (saturated)", [f for f in measured if not f.by_design]


def verdict(findings: list[Finding]) -> str:
    return decide(findings)[0]


def basis(findings: list[Finding]) -> str:
    """The measures a verdict rests on, each with its variant and n."""
    return "; ".join(f.read_at for f in findings)


def spearman(x: list[float], y: list[float]) -> float:
    """Rank correlation (no ties expected: shots are distinct)."""
    if len(x) < 3 or not all(map(math.isfinite, y)):
        return math.nan
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def _rows(em: Emergence, layers: list[int] | None) -> np.ndarray:
    """Which layers (rows of the token curves) a statistic uses: `layers` (those valid in every cell
    of a comparison), or the cell's own layers whose curve is finite."""
    if layers is None:
        return np.isfinite(em.token_curves).all(axis=1)
    return np.array([l.layer in layers for l in em.layers], dtype=bool)


def token_rise(em: Emergence, layers: list[int] | None = None) -> Value:
    """How much E(t) (mean over the layers) rises from the second position to the last, with the
    interval of the last position's E."""
    curves, ci = em.token_curves, em.token_ci
    ok = _rows(em, layers)
    if not ok.any() or curves.shape[1] < 3 or not np.isfinite(curves[ok]).all():
        return Value(math.nan, math.nan, math.nan)
    mean = curves[ok].mean(axis=0)
    rise = float(mean[-1] - mean[1])
    half = float(np.mean((ci[1][ok][:, -1] - ci[0][ok][:, -1]) / 2)) * math.sqrt(2)
    return Value(rise, rise - half, rise + half)


def mean_curve(em: Emergence, layers: list[int] | None = None) -> np.ndarray:
    ok = _rows(em, layers)
    return em.token_curves[ok].mean(axis=0) if ok.any() else np.full(em.token_curves.shape[1], np.nan)


def by_tags(measured: dict[str, Measured], experiment: str, estimator: str, **tags: Any) -> list[Measured]:
    return [m for m in measured.values() if m.entry.experiment == experiment and m.entry.estimator == estimator
            and all(m.entry.tags.get(k) == v for k, v in tags.items())]


def spread(em: Emergence, layers: list[int] | None = None) -> Value:
    """The spread of IE over layers (standard deviation of IE_l over `layers`, default the valid
    ones), with the bootstrap interval of the same statistic over the replicates, centred on the estimate."""
    ie = np.array([l.ie for l in em.layers])
    ok = np.isfinite(ie) if layers is None else np.array([l.layer in layers for l in em.layers], dtype=bool)
    if ok.sum() < 2 or not np.isfinite(ie[ok]).all():
        return Value(math.nan, math.nan, math.nan)
    point = float(ie[ok].std(ddof=1))
    reps = em.ie_replicates[:, ok]
    if len(reps) < 2:
        return Value(point, point, point)
    p_lo, mid, p_hi = np.percentile(reps.std(axis=1, ddof=1), [2.5, 50, 97.5])
    return Value(point, point - (mid - p_lo), point + (p_hi - mid))


def slope(xs: list[float], values: list[Value]) -> Value:
    """Least-squares slope of `values` against `xs`, its half-width from the independent cells'
    half-widths (slope = sum w_i v_i, w_i = (x_i - mean x) / sum (x - mean x)^2)."""
    x = np.asarray(xs, dtype=float)
    if len(x) < 3 or not all(math.isfinite(v.value) for v in values):
        return Value(math.nan, math.nan, math.nan)
    w = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
    b = float(w @ np.array([v.value for v in values]))
    h = math.sqrt(float((w**2 @ np.array([v.half**2 for v in values]))))
    return Value(b, b - h, b + h)
