"""What a target measure's results show (docs/METHOD.md section 8): the usable information at every
boundary for a model and its control, the gain of each block, and the emergence layer.

A target measure's MI table holds, for layer l, the value at boundary l + 1 as its macro rows and
the value at boundary 0 (each token's embedding) as its micro rows (stages/estimate.py). Here the
rows become a (boundary, position) grid again. Every cell's bootstrap replicates come from the same
resamples of the sample ids, in the model's table and its control's, so differences of cells (a block's
gain, model minus control) get their intervals replicate by replicate."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ie_flow.emergence import bootstrap_interval
from ie_flow.results import TargetBoundary, TargetRecord, table_rows


class TargetGrid:
    """A target measure's table as (boundary, position) arrays, mean over estimator seeds."""

    def __init__(self, table: Any, variant: str | None = None) -> None:
        rows = [r for r in table_rows(table) if variant is None or r["variant"] == variant]
        self.positions = sorted({int(r["position"]) for r in rows})
        self.boundaries = [0] + sorted({int(r["layer"]) + 1 for r in rows})
        first_layer = self.boundaries[1] - 1  # every layer repeats boundary 0's rows: read them once
        cells: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for r in rows:
            if r["level"] == "macro":
                cells.setdefault((int(r["layer"]) + 1, int(r["position"])), []).append(r)
            elif int(r["layer"]) == first_layer:
                cells.setdefault((0, int(r["position"])), []).append(r)
        shape = (len(self.boundaries), len(self.positions))
        self.bits, self.low, self.high, self.ceiling = (np.full(shape, np.nan) for _ in range(4))
        b_count = max((len(rs[0].get("replicates") or []) for rs in cells.values()), default=0)
        self.replicates = np.full((b_count, *shape), np.nan)
        for (b, t), rs in cells.items():
            i, j = self.boundaries.index(b), self.positions.index(t)
            first = rs[0]
            self.bits[i, j] = float(np.mean([r["bits"] for r in rs]))
            self.low[i, j], self.high[i, j] = first["ci_low"], first["ci_high"]
            self.ceiling[i, j] = first["ceiling_bits"]
            reps = first.get("replicates") or []
            self.replicates[:, i, j] = reps if len(reps) == b_count else self.bits[i, j]


def _paired(point: float, replicates: np.ndarray) -> tuple[float, float]:
    return bootstrap_interval(point, replicates, np.array([point])) if math.isfinite(point) else (math.nan, math.nan)


def emergence_boundary(model: TargetGrid, control: TargetGrid) -> tuple[int | None, dict[str, float]]:
    """The first boundary where the model's lower end (its held-out value's 95% lower end) clears the
    control's upper end (the 95% upper end of its probe refitted on all rows, in sample), at the last
    position; and the share of bootstrap replicates on which each boundary is that first one, the same
    rule applied to the replicate (each side's replicate moved by its own margin to its interval end)."""
    last = -1
    above = model.low[:, last] > control.high[:, last]
    point = model.boundaries[int(np.argmax(above))] if above.any() else None
    b = min(len(model.replicates), len(control.replicates))
    shares: dict[str, float] = {}
    if b:
        lower = model.replicates[:b, :, last] - (model.bits - model.low)[None, :, last]
        upper = control.replicates[:b, :, last] + (control.high - control.bits)[None, :, last]
        clear = lower > upper
        firsts = [str(model.boundaries[int(np.argmax(row))]) if row.any() else "none" for row in clear]
        for key in sorted(set(firsts), key=lambda k: (k == "none", int(k) if k != "none" else 0)):
            shares[key] = firsts.count(key) / b
    return point, shares


def compare_targets(model_table: Any, control_table: Any, variant: str | None = None) -> TargetRecord:
    """The model and its control, boundary by boundary at the last position, with the gain of each
    block and the emergence layer (see `emergence_boundary`)."""
    m, c = TargetGrid(model_table, variant), TargetGrid(control_table, variant)
    if m.boundaries != c.boundaries or m.positions != c.positions:
        raise ValueError("the model's and the control's target tables cover different boundaries or positions")
    b = min(len(m.replicates), len(c.replicates))
    diff = m.bits - c.bits
    paired = np.array([[_paired(diff[i, j], m.replicates[:b, i, j] - c.replicates[:b, i, j])
                        for j in range(diff.shape[1])] for i in range(diff.shape[0])])  # (boundaries, positions, 2)
    rows = []
    for i, boundary in enumerate(m.boundaries):
        gain = m.bits[i, -1] - m.bits[i - 1, -1] if i else math.nan
        gain_ci = _paired(gain, m.replicates[:, i, -1] - m.replicates[:, i - 1, -1]) if i else (math.nan, math.nan)
        rows.append(TargetBoundary(
            boundary=boundary, model=m.bits[i, -1], model_low=m.low[i, -1], model_high=m.high[i, -1],
            control=c.bits[i, -1], control_low=c.low[i, -1], control_high=c.high[i, -1], diff=diff[i, -1],
            diff_low=paired[i, -1, 0], diff_high=paired[i, -1, 1],
            gain=gain, gain_low=gain_ci[0], gain_high=gain_ci[1], ceiling=m.ceiling[i, -1]))
    point, shares = emergence_boundary(m, c)
    return TargetRecord(position=m.positions[-1], boundaries=rows, emergence_boundary=point, emergence_shares=shares,
                        positions=m.positions, model_grid=m.bits.tolist(), control_grid=c.bits.tolist(),
                        diff_low_grid=paired[..., 0].tolist(), diff_high_grid=paired[..., 1].tolist(),
                        ceilings=m.ceiling[-1].tolist())


def format_target(record: TargetRecord, kind: str) -> str:
    """The boundaries side by side at the last position, the gains and the emergence layer."""
    lines = [f"usable information about the label at position {record.position}, model vs {kind} control "
             "(bits; interval: the cell's bracket, from the held-out value's lower end to the upper end of the probe "
             "refitted on all rows, in sample)",
             f"{'boundary':>8}  {'model':>7}  {'95% interval':>17}  {kind + ' ctrl':>11}  {'95% interval':>17}  "
             f"{'difference':>10}  {'paired interval':>17}  {'block gain':>10}  {'paired interval':>17}  {'ceiling':>7}"]
    for r in record.boundaries:
        gain = f"{r.gain:>10.3f}  [{r.gain_low:>7.3f}, {r.gain_high:>7.3f}]" if math.isfinite(r.gain) else f"{'-':>10}  {'':>17}"
        lines.append(f"{r.boundary:>8}  {r.model:>7.3f}  [{r.model_low:>7.3f}, {r.model_high:>7.3f}]  {r.control:>11.3f}  "
                     f"[{r.control_low:>7.3f}, {r.control_high:>7.3f}]  {r.diff:>10.3f}  [{r.diff_low:>7.3f}, "
                     f"{r.diff_high:>7.3f}]  {gain}  {r.ceiling:>7.3f}")
    shares = ", ".join(f"{k}: {v:.0%}" for k, v in record.emergence_shares.items())
    low, high = np.array(record.diff_low_grid, dtype=float), np.array(record.diff_high_grid, dtype=float)
    lines.append(f"cells (boundary x position) where the model is above its {kind} control beyond the paired "
                 f"interval: {int((low > 0).sum())} of {low.size}; below: {int((high < 0).sum())}")
    first = record.emergence_boundary
    if first is None:
        lines.append(f"emergence layer: none (no boundary's model lower end clears the {kind} control's upper end); "
                     f"first boundary on each bootstrap replicate: {shares or 'no replicates'}")
    else:
        lines.append(f"emergence layer: boundary {first} ({describe_boundary(first)}) is the first whose model lower "
                     f"end clears the {kind} control's upper end; first boundary on each bootstrap replicate: "
                     f"{shares or 'no replicates'}")
    return "\n".join(lines)


def describe_boundary(boundary: int) -> str:
    return "the embeddings" if boundary == 0 else f"block {boundary - 1}'s output"
