"""Information Emergence from an MI table (IE_SPEC section 2). Pure functions, no I/O.

MI table rows: layer, position, level, method, seed, bits, ceiling_bits, saturated, n_train, n_eval.
level "macro" at position t is the in-context M_l(t) (the sequence-level variable of the prefix
ending at t; IE uses the last position); level "micro" at t is the micro variable M_l^mi_t
(in-context: the same value; isolated: token t run alone)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MI_COLUMNS = ("layer", "position", "level", "method", "seed", "bits", "ceiling_bits", "saturated", "n_train", "n_eval")


@dataclass(frozen=True)
class LayerEmergence:
    layer: int
    ie: float  # mean over seeds
    ie_std_seeds: float
    ie_ci_low: float
    ie_ci_high: float
    mi_macro: float
    mi_micro: float  # reduced over positions (mean or sum)
    ceiling_bits: float  # of the macro estimate
    macro_saturated: bool
    micro_saturated: int  # positions whose micro estimate hit its ceiling

    @property
    def saturated(self) -> bool:
        return self.macro_saturated or self.micro_saturated > 0


@dataclass
class Emergence:
    layers: list[LayerEmergence]
    macro: np.ndarray  # (L, N) in-context M_l(t), mean over seeds
    micro: np.ndarray  # (L, N) micro M_l^mi_t, mean over seeds
    token_curves: np.ndarray  # (L, N) E_l(t) = M_l(t) - mean_{i<=t} M_l^mi_i
    saturated: np.ndarray  # (L, N) macro estimate saturated (any seed)
    ceilings: np.ndarray  # (L, N) ceiling bits of macro estimates
    ie_per_seed: np.ndarray  # (S, L) IE_l for each estimator seed
    seeds: list[int]
    micro_reduce: str

    @property
    def summary(self) -> dict[str, float]:
        ie = np.array([l.ie for l in self.layers])
        return {
            "ie_mean": float(ie.mean()),
            "ie_max": float(ie.max()),
            "ie_argmax_layer": int(self.layers[int(ie.argmax())].layer),
            "ie_std_layers": float(ie.std(ddof=1)) if len(ie) > 1 else 0.0,
            # spread of the model-level IE (mean over layers) across estimator seeds
            "ie_std_seeds": float(self.ie_per_seed.mean(axis=1).std(ddof=1)) if len(self.seeds) > 1 else 0.0,
            "saturated_layers": int(sum(l.saturated for l in self.layers)),
        }

    def layer_rows(self) -> list[dict[str, Any]]:
        return [{**asdict(l), "saturated": l.saturated} for l in self.layers]


def _grid(rows: list[dict[str, Any]], level: str, layers: list[int], positions: int, seeds: list[int],
          field: str) -> np.ndarray:
    """(seeds, layers, positions) array of one field at one level; NaN where a row is missing."""
    out = np.full((len(seeds), len(layers), positions), np.nan)
    li = {l: i for i, l in enumerate(layers)}
    si = {s: i for i, s in enumerate(seeds)}
    for r in rows:
        if r["level"] == level:
            out[si[r["seed"]], li[r["layer"]], r["position"]] = float(r[field])
    return out


def information_emergence(table: Any, micro_reduce: str = "mean") -> Emergence:
    """IE_l = M_l^ma - reduce_t M_l^mi_t per seed, then mean and interval over seeds (IE_SPEC 2)."""
    if micro_reduce not in ("mean", "sum"):
        raise ValueError(f"micro_reduce must be 'mean' or 'sum', got {micro_reduce!r}")
    rows = table.to_pylist() if hasattr(table, "to_pylist") else list(table)
    if not rows:
        raise ValueError("the MI table is empty")
    layers = sorted({int(r["layer"]) for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    positions = 1 + max(int(r["position"]) for r in rows)
    macro = _grid(rows, "macro", layers, positions, seeds, "bits")
    micro = _grid(rows, "micro", layers, positions, seeds, "bits")
    if np.isnan(macro[:, :, -1]).any() or np.isnan(micro).all(axis=2).any():
        raise ValueError("the MI table lacks macro (last position) or micro rows for some layer/seed")
    reduce = np.nanmean if micro_reduce == "mean" else np.nansum
    ie_seed_layer = macro[:, :, -1] - reduce(micro, axis=2)  # (S, L)
    sat = _grid(rows, "macro", layers, positions, seeds, "saturated") > 0
    micro_sat = (_grid(rows, "micro", layers, positions, seeds, "saturated") > 0).any(axis=0)
    ceil = np.nanmax(_grid(rows, "macro", layers, positions, seeds, "ceiling_bits"), axis=0)
    s = len(seeds)
    out_layers = []
    for i, layer in enumerate(layers):
        vals = ie_seed_layer[:, i]
        mean = float(vals.mean())
        std = float(vals.std(ddof=1)) if s > 1 else 0.0
        half = 1.96 * std / np.sqrt(s)  # normal interval of the mean over seeds
        out_layers.append(LayerEmergence(
            layer=layer, ie=mean, ie_std_seeds=std, ie_ci_low=mean - half, ie_ci_high=mean + half,
            mi_macro=float(macro[:, i, -1].mean()), mi_micro=float(reduce(micro[:, i], axis=1).mean()),
            ceiling_bits=float(ceil[i, -1]), macro_saturated=bool(sat[:, i, -1].any()),
            micro_saturated=int(micro_sat[i].sum()),
        ))
    macro_mean, micro_mean = macro.mean(axis=0), micro.mean(axis=0)
    # mean of the micro values so far; positions not stored (extract.positions) are left out
    seen = np.cumsum(~np.isnan(micro_mean), axis=1)
    running_micro = np.nancumsum(micro_mean, axis=1) / np.maximum(seen, 1)
    return Emergence(
        layers=out_layers, macro=macro_mean, micro=micro_mean, token_curves=macro_mean - running_micro,
        saturated=sat.any(axis=0), ceilings=ceil, ie_per_seed=ie_seed_layer, seeds=seeds,
        micro_reduce=micro_reduce,
    )
