"""Information Emergence from an MI table (docs/METHOD.md section 2). Pure functions, no I/O.

The MI table's columns are defined once, in ie_flow.results (MI_FIELDS); among them critic and lower_bound
(the critic check's verdict, estimators/critic_check.py). Level "macro" at position t is the in-context
M_l(t); IE uses the last position. Level "micro" at t is
M_l^mi_t (in-context: the same value; isolated: token t run alone).

Intervals: the estimators' bootstrap replicates share their resamples across cells, so IE, E_l(t)
and the model summary are bootstrapped replicate by replicate (95%, centred on the estimate); with several
seeds the Student-t half-width over seeds is added in quadrature. A cell marked invalid is never
averaged in: the layer's IE is then missing (NaN) and reported with the reason.

An estimator with variants (several values per cell) gives one IE profile per variant
(`emergence_by_variant`); which one a job's headline shows is the estimator's choice
(Estimator.choose_headline), and the profile of the variant it shows beside the headline
(Estimator.companion_variant: the smoothed measure's standardised mode) rides along with it
(`Emergence.companion`, its IE in every layer's `companion_ie` and in the summary)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ie_flow.estimators.base import seed_interval
from ie_flow.results import REFERENCE_DIAGNOSTIC, LayerRecord, Summary, table_rows, variant_order


@dataclass(frozen=True)
class LayerEmergence:
    layer: int
    ie: float  # mean over seeds; NaN when a cell it needs is invalid
    ie_std_seeds: float
    ie_ci_low: float
    ie_ci_high: float
    mi_macro: float
    mi_micro: float  # reduced over positions (mean or sum)
    ceiling_bits: float  # of the macro estimate
    macro_saturated: bool
    micro_saturated: int  # positions whose micro estimate hit its ceiling
    valid: bool = True
    invalid_reason: str | None = None
    # the estimator's declared diagnostics of the layer's macro cell (last position), mean over seeds
    diagnostics: dict[str, float] = field(default_factory=dict)
    # IE of the cells' reference part (smoothed: the Gaussian reference G^β) and the excess IE − it,
    # each with its interval from the same resamples; NaN where the estimator has no reference
    reference_ie: float = math.nan
    reference_ie_ci_low: float = math.nan
    reference_ie_ci_high: float = math.nan
    excess_ie: float = math.nan
    excess_ie_ci_low: float = math.nan
    excess_ie_ci_high: float = math.nan
    # IE of the companion variant at this layer (Emergence.companion), with its interval; NaN where none
    companion_ie: float = math.nan
    companion_ie_ci_low: float = math.nan
    companion_ie_ci_high: float = math.nan

    @property
    def saturated(self) -> bool:
        return self.macro_saturated or self.micro_saturated > 0


@dataclass
class Emergence:
    layers: list[LayerEmergence]
    macro: np.ndarray  # (L, N) in-context M_l(t), mean over seeds
    micro: np.ndarray  # (L, N) micro M_l^mi_t, mean over seeds
    token_curves: np.ndarray  # (L, N) E_l(t) = M_l(t) - mean_{i<=t} M_l^mi_i
    token_ci: np.ndarray  # (2, L, N) its 95% interval (== the curve where there are no replicates)
    saturated: np.ndarray  # (L, N) macro estimate saturated (any seed)
    invalid: np.ndarray  # (L, N) macro or micro cell invalid
    ceilings: np.ndarray  # (L, N) ceiling bits of macro estimates
    ie_per_seed: np.ndarray  # (S, L) IE_l for each estimator seed
    ie_replicates: np.ndarray  # (B, L) IE_l on each bootstrap resample (B = 0: none)
    seeds: list[int]
    micro_reduce: str
    variant: str = ""  # the estimator's variant these values are (Estimator.variants)
    # (B, L) IE of the reference part on the same resamples (B = 0: none)
    reference_replicates: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    # the profile of the variant shown beside this one (Estimator.companion_variant; `with_companion`)
    companion: "Emergence | None" = None

    @property
    def has_reference(self) -> bool:
        return any(math.isfinite(l.reference_ie) for l in self.layers)

    @property
    def summary(self) -> Summary:
        ie = np.array([l.ie for l in self.layers])
        ok = np.isfinite(ie)
        beside = {}
        if self.companion is not None:  # its own summary's mean, over its own valid layers
            c = self.companion.summary
            beside = {"companion_variant": self.companion.variant, "companion_ie_mean": c.ie_mean,
                      "companion_ie_mean_ci_low": c.ie_mean_ci_low, "companion_ie_mean_ci_high": c.ie_mean_ci_high,
                      "companion_invalid_layers": c.invalid_layers}
        if not ok.any():
            return Summary(ie_mean=math.nan, ie_mean_ci_low=math.nan, ie_mean_ci_high=math.nan, ie_max=math.nan,
                           ie_argmax_layer=-1, ie_std_layers=math.nan, ie_std_seeds=math.nan, saturated_layers=0,
                           invalid_layers=len(ie), **beside)
        mean, low, high = self.mean_ie(ok)
        return Summary(
            ie_mean=mean, ie_mean_ci_low=low, ie_mean_ci_high=high, ie_max=float(ie[ok].max()),
            ie_argmax_layer=int(self.layers[int(np.flatnonzero(ok)[ie[ok].argmax()])].layer),
            ie_std_layers=float(ie[ok].std(ddof=1)) if ok.sum() > 1 else 0.0,
            # spread of the model-level IE (mean over layers) across estimator seeds
            ie_std_seeds=float(self.ie_per_seed[:, ok].mean(axis=1).std(ddof=1)) if len(self.seeds) > 1 else 0.0,
            saturated_layers=int(sum(l.saturated for l in self.layers)), invalid_layers=int((~ok).sum()), **beside,
        )

    def mean_ie(self, columns: Any) -> tuple[float, float, float]:
        """IE's mean over the layers `columns` selects (a mask or indices) with its 95% interval: the
        replicates' and the seeds' means over the same layers."""
        mean = float(np.array([l.ie for l in self.layers])[columns].mean())
        return (mean, *bootstrap_interval(mean, self.ie_replicates[:, columns].mean(axis=1),
                                          self.ie_per_seed[:, columns].mean(axis=1)))

    def mean_reference(self, columns: Any) -> tuple[float, float, float]:
        """The Gaussian reference part of IE (the smoothed measure) over the same layers, with its 95%
        interval from the same resamples; it has no seed spread (covariances have no Monte-Carlo noise)."""
        mean = float(np.array([l.reference_ie for l in self.layers])[columns].mean())
        reps = self.reference_replicates[:, columns].mean(axis=1) if self.reference_replicates.size else np.zeros(0)
        return (mean, *bootstrap_interval(mean, reps, np.zeros(0)))

    def layer_rows(self) -> list[LayerRecord]:
        return [LayerRecord(**asdict(l), saturated=l.saturated) for l in self.layers]


def bootstrap_interval(point: float, replicates: np.ndarray, per_seed: np.ndarray) -> tuple[float, float]:
    """95% interval: the bootstrap replicates' 2.5/97.5% percentiles relative to their median, around
    `point`, widened in quadrature by the t half-width over seeds; (point, point) when there is neither."""
    lo = hi = 0.0
    reps = replicates[np.isfinite(replicates)]
    if reps.size >= 2:
        # centred on the estimate: resamples repeat samples, which shifts a biased estimator's
        # replicates as a whole (below the point at a ceiling); their spread is what counts
        p_lo, mid, p_hi = np.percentile(reps, [2.5, 50, 97.5])
        lo, hi = mid - p_lo, p_hi - mid
    if per_seed.size > 1 and np.isfinite(per_seed).all():
        _, s_lo, s_hi = seed_interval(per_seed)
        half = (s_hi - s_lo) / 2
        lo, hi = math.hypot(lo, half), math.hypot(hi, half)
    return point - lo, point + hi


@dataclass
class _Grids:
    """The table's fields as (seeds, layers, positions) arrays, NaN where a row is missing."""

    layers: list[int]
    seeds: list[int]
    positions: int
    rows: list[dict[str, Any]]

    def field(self, level: str, name: str) -> np.ndarray:
        """(seeds, layers, positions) of a column, or of a declared diagnostic of that name; NaN where a row
        lacks it."""
        out = np.full((len(self.seeds), len(self.layers), self.positions), np.nan)
        li = {l: i for i, l in enumerate(self.layers)}
        si = {s: i for i, s in enumerate(self.seeds)}
        for r in self.rows:
            if r["level"] == level:
                out[si[r["seed"]], li[r["layer"]], r["position"]] = _value(r, name)
        return out

    def replicates(self, level: str, column: str = "replicates", value: str = "bits") -> np.ndarray:
        """(B, layers, positions) bootstrap replicates of each cell (shared across seeds); B = 0 if none.
        A cell without replicates among cells with them (a constant side: exactly 0 on every
        resample) repeats its value."""
        found = {(r["layer"], r["position"]): (r.get(column) or [], _value(r, value)) for r in self.rows
                 if r["level"] == level}
        b = max((len(reps) for reps, _ in found.values()), default=0)
        out = np.full((b, len(self.layers), self.positions), np.nan)
        li = {l: i for i, l in enumerate(self.layers)}
        for (layer, pos), (reps, bits) in found.items():
            out[:, li[layer], pos] = np.asarray(reps, dtype=float) if len(reps) == b else bits
        return out

    def headline_diagnostics(self) -> dict[int, dict[str, float]]:
        """Layer -> the estimator's diagnostics of its macro cell at the last position, mean over seeds."""
        found: dict[int, list[dict[str, float]]] = {}
        for r in self.rows:
            if r["level"] == "macro" and r["position"] == self.positions - 1 and r.get("diagnostics"):
                found.setdefault(int(r["layer"]), []).append(r["diagnostics"])
        return {layer: {k: float(np.mean([d[k] for d in ds])) for k in ds[0]} for layer, ds in found.items()}

    def reasons(self) -> dict[tuple[int, int], str]:
        return {(r["layer"], r["position"]): f"{r['level']} t={r['position']}: {r['invalid_reason'] or 'invalid'}"
                for r in self.rows if r.get("valid") is False}


def _value(row: dict[str, Any], name: str) -> float:
    """A row's column, or its declared diagnostic of that name; NaN where it has neither."""
    value = row.get(name) if name in row else (row.get("diagnostics") or {}).get(name)
    return math.nan if value is None else float(value)


def split_by_variant(table: Any) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by the estimator's variant ("" for an estimator with one), in variant order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in table_rows(table):
        groups.setdefault(r["variant"], []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: variant_order(kv[0])))


def information_emergence(table: Any, micro_reduce: str = "mean", variant: str | None = None) -> Emergence:
    """IE_l = M_l^ma - reduce_t M_l^mi_t per seed, then mean and interval (docs/METHOD.md section 2).
    A table of several variants needs `variant` (see `emergence_by_variant`); one that is not there
    is an error, never another variant."""
    if micro_reduce not in ("mean", "sum"):
        raise ValueError(f"micro_reduce must be 'mean' or 'sum', got {micro_reduce!r}")
    groups = split_by_variant(table)
    if not groups:
        raise ValueError("the MI table is empty")
    if variant is None:
        if len(groups) > 1:
            raise ValueError(f"the MI table holds several variants ({', '.join(groups)}): name one")
        variant = next(iter(groups))
    if variant not in groups:
        raise ValueError(f"the MI table has no variant {variant!r} (it has: {', '.join(map(repr, groups))})")
    rows = groups[variant]
    layers = sorted({int(r["layer"]) for r in rows})
    grids = _Grids(layers, sorted({int(r["seed"]) for r in rows}), 1 + max(int(r["position"]) for r in rows), rows)
    macro, micro = grids.field("macro", "bits"), grids.field("micro", "bits")
    if np.isnan(macro[:, :, -1]).any() or np.isnan(micro).all(axis=2).any():
        raise ValueError("the MI table lacks macro (last position) or micro rows for some layer/seed")
    return _assemble(grids, macro, micro, micro_reduce, variant)


def _assemble(g: _Grids, macro: np.ndarray, micro: np.ndarray, micro_reduce: str, variant: str) -> Emergence:
    reduce = np.nanmean if micro_reduce == "mean" else np.nansum
    invalid = (g.field("macro", "valid") == 0).any(axis=0) | (g.field("micro", "valid") == 0).any(axis=0)
    layer_invalid = invalid[:, -1] | (invalid & ~np.isnan(micro).all(axis=0)).any(axis=1)
    ie_seed = macro[:, :, -1] - reduce(micro, axis=2)  # (S, L)
    ie_seed[:, layer_invalid] = np.nan
    rep_macro, rep_micro = g.replicates("macro"), g.replicates("micro")
    b = min(len(rep_macro), len(rep_micro))
    ie_reps = rep_macro[:b, :, -1] - reduce(rep_micro[:b], axis=2) if b else np.zeros((0, len(g.layers)))
    sat = g.field("macro", "saturated") > 0
    micro_sat = (g.field("micro", "saturated") > 0).any(axis=0)
    ceil = np.nanmax(g.field("macro", "ceiling_bits"), axis=0)
    reasons, diagnostics = g.reasons(), g.headline_diagnostics()
    ref = _reference_ie(g, reduce, layer_invalid, ie_seed, ie_reps)
    out_layers = []
    for i, layer in enumerate(g.layers):
        mean = float(ie_seed[:, i].mean())
        low, high = bootstrap_interval(mean, ie_reps[:, i], ie_seed[:, i]) if not layer_invalid[i] else (math.nan, math.nan)
        why = "; ".join(v for (l, _), v in sorted(reasons.items()) if l == layer) if layer_invalid[i] else None
        parts = {} if ref is None else {k: float(v[i]) for k, v in ref.items() if k != "replicates"}
        out_layers.append(LayerEmergence(
            layer=layer, ie=mean, ie_std_seeds=float(ie_seed[:, i].std(ddof=1)) if len(g.seeds) > 1 else 0.0,
            ie_ci_low=low, ie_ci_high=high, mi_macro=float(macro[:, i, -1].mean()),
            mi_micro=float(reduce(micro[:, i], axis=1).mean()), ceiling_bits=float(ceil[i, -1]),
            macro_saturated=bool(sat[:, i, -1].any()), micro_saturated=int(micro_sat[i].sum()),
            valid=not layer_invalid[i], invalid_reason=why, diagnostics=diagnostics.get(layer, {}), **parts,
        ))
    curves, curve_ci = _token_curves(macro.mean(axis=0), micro.mean(axis=0), rep_macro[:b], rep_micro[:b])
    curves[invalid] = np.nan
    return Emergence(
        layers=out_layers, macro=macro.mean(axis=0), micro=micro.mean(axis=0), token_curves=curves,
        token_ci=curve_ci, saturated=sat.any(axis=0), invalid=invalid, ceilings=ceil, ie_per_seed=ie_seed,
        ie_replicates=ie_reps, seeds=g.seeds, micro_reduce=micro_reduce, variant=variant,
        reference_replicates=ref["replicates"] if ref is not None else np.zeros((0, len(g.layers))),
    )


def _reference_ie(g: _Grids, reduce: Any, layer_invalid: np.ndarray, ie_seed: np.ndarray, ie_reps: np.ndarray
                  ) -> dict[str, np.ndarray] | None:
    """IE of the cells' reference part and the excess over it, per layer, with intervals from the
    same resamples (the excess replicate by replicate); None when the table has no reference."""
    macro, micro = g.field("macro", REFERENCE_DIAGNOSTIC), g.field("micro", REFERENCE_DIAGNOSTIC)
    if np.isnan(macro[:, :, -1]).all():
        return None
    ref_seed = macro[:, :, -1] - reduce(micro, axis=2)
    ref_seed[:, layer_invalid] = np.nan
    rep_macro = g.replicates("macro", "reference_replicates", REFERENCE_DIAGNOSTIC)
    rep_micro = g.replicates("micro", "reference_replicates", REFERENCE_DIAGNOSTIC)
    b = min(len(rep_macro), len(rep_micro), len(ie_reps))
    ref_reps = rep_macro[:b, :, -1] - reduce(rep_micro[:b], axis=2) if b else np.zeros((0, ref_seed.shape[1]))
    out = {k: np.full(ref_seed.shape[1], np.nan) for k in
           ("reference_ie", "reference_ie_ci_low", "reference_ie_ci_high", "excess_ie", "excess_ie_ci_low", "excess_ie_ci_high")}
    for i in np.flatnonzero(~layer_invalid):
        ref, ex = float(ref_seed[:, i].mean()), float((ie_seed[:, i] - ref_seed[:, i]).mean())
        out["reference_ie"][i], out["excess_ie"][i] = ref, ex
        out["reference_ie_ci_low"][i], out["reference_ie_ci_high"][i] = bootstrap_interval(ref, ref_reps[:, i], ref_seed[:, i])
        out["excess_ie_ci_low"][i], out["excess_ie_ci_high"][i] = bootstrap_interval(
            ex, ie_reps[:b, i] - ref_reps[:, i], ie_seed[:, i] - ref_seed[:, i])
    out["replicates"] = ref_reps
    return out


def _running_micro(micro: np.ndarray) -> np.ndarray:
    """Mean of the micro values so far along the last axis; positions not stored are left out."""
    seen = np.cumsum(~np.isnan(micro), axis=-1)
    return np.nancumsum(micro, axis=-1) / np.maximum(seen, 1)


def _token_curves(macro: np.ndarray, micro: np.ndarray, rep_macro: np.ndarray, rep_micro: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """E_l(t) and its 95% bootstrap interval ((2, L, N); the curve itself where there are no replicates)."""
    curves = macro - _running_micro(micro)
    if not len(rep_macro):
        return curves, np.stack([curves, curves])
    p_lo, mid, p_hi = np.nanpercentile(rep_macro - _running_micro(rep_micro), [2.5, 50, 97.5], axis=0)
    return curves, np.stack([curves - (mid - p_lo), curves + (p_hi - mid)])  # centred, as IE's


def emergence_by_variant(table: Any, micro_reduce: str = "mean") -> dict[str, Emergence]:
    """One Emergence per variant of the table ({"": ...} for an estimator without variants)."""
    return {variant: information_emergence(table, micro_reduce, variant) for variant in split_by_variant(table)}


def common_layers(ems: list[Emergence], curves: bool = False) -> list[int]:
    """The layers valid in every one of `ems` (finite IE; with `curves`, a finite E(t) at every
    position): the one set a comparison of them averages over."""
    if not ems:
        return []
    sets = [{l.layer for i, l in enumerate(em.layers)
             if (np.isfinite(em.token_curves[i]).all() if curves else l.valid and math.isfinite(l.ie))} for em in ems]
    return sorted(set.intersection(*sets))


def with_companion(em: Emergence, companion: Emergence | None) -> Emergence:
    """`em` with `companion` (the profile shown beside it) attached, and its IE and interval in each
    layer of `em` ("companion_ie"); `em` itself where there is no companion."""
    if companion is None:
        return em
    by_layer = {l.layer: l for l in companion.layers}
    layers = [replace(l, companion_ie=c.ie, companion_ie_ci_low=c.ie_ci_low, companion_ie_ci_high=c.ie_ci_high)
              if (c := by_layer.get(l.layer)) else l for l in em.layers]
    return replace(em, layers=layers, companion=companion)


def headline(estimator: Any, micro_reduce: str, *tables: Any) -> tuple[str, bool, list[Emergence]]:
    """The estimator's headline variant of its tables (a model's, and its control's measured alike),
    whether every layer of each is valid there, and the Emergence of each table at it, with the
    estimator's companion variant beside it where the table has it (`with_companion`)."""
    profiles = [emergence_by_variant(t, micro_reduce) for t in tables]
    variant, valid = estimator.choose_headline(*profiles)
    companion = estimator.companion_variant(variant)
    return variant, valid, [with_companion(p[variant], p.get(companion) if companion else None) for p in profiles]


def recorded_headline(table: Any, micro_reduce: str, variant: str, companion: str | None = None) -> Emergence:
    """The profile at a recorded headline `variant`, with the recorded `companion` beside it when the
    table has it (results read back from storage or MLflow)."""
    em = information_emergence(table, micro_reduce, variant)
    if not companion or companion not in split_by_variant(table):
        return em
    return with_companion(em, information_emergence(table, micro_reduce, companion))


def lower_bound_cells(table: Any) -> dict[int, list[str]]:
    """Layer -> "level t=position: why" for the cells the critic check marked as lower bounds
    (the MI table's ``lower_bound`` column; absent in tables written before it)."""
    out: dict[int, list[str]] = {}
    for r in (r for r in table_rows(table) if r.get("lower_bound")):
        cell = f"{r['level']} t={r['position']}: {r['lower_bound']}"
        if cell not in out.setdefault(int(r["layer"]), []):  # one row per estimator seed
            out[int(r["layer"])].append(cell)
    return out
