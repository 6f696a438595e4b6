"""Partial resolution: families whose dependence a linear critic sees only partly, each cell
estimated with the library defaults (the critic check on), against the truth.

A cell counts as within tolerance when |bits - truth| <= max(0.1 nat, 15%), as flagged when its
estimate says it is a lower bound (``settings["lower_bound"]``, or ``saturated``), and as
neither otherwise (target: 0).  Families (truths in closed form or by 1-D quadrature):
- additive: x ~ N(0, 1), y = x + U(-a, a), a in {0.1, 0.3, 1, 2};
- swiss roll: a 1-D Gaussian pair (rho in {0.5, 0.75, 0.9}) with x rolled into 2-D;
- spiral d: the sparse Gaussian (d + d dims, 2 pairs at rho = 0.8) with x's (0, 1) plane rotated
  by 0.5 ||x||^2, d in {3, 5, 25}.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_partial_resolution.py --seeds 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_partial_resolution.py --only spiral --nonlinear-check off
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ie_flow.estimators import estimate_mi_many  # noqa: E402
from ie_flow.estimators.synthetic import additive_uniform, spiral_gaussian, swiss_roll_gaussian  # noqa: E402

Draw = Callable[[int, int], tuple[np.ndarray, np.ndarray, float]]


def families() -> dict[str, list[tuple[str, Draw]]]:
    """Family -> its cells (label, draw(seed, n)); cells of a family share their shapes."""
    return {
        "additive": [(f"a={a:g}", lambda s, n, a=a: additive_uniform(a, s, n)) for a in (0.1, 0.3, 1.0, 2.0)],
        "swiss roll": [(f"rho={r:g}", lambda s, n, r=r: swiss_roll_gaussian(r, s, n)) for r in (0.5, 0.75, 0.9)],
        **{f"spiral {d}": [(f"d={d}", lambda s, n, d=d: spiral_gaussian(s, n, d=d))] for d in (3, 5, 25)},
    }


def tolerance(truth: float) -> float:
    return max(0.1 / math.log(2.0), 0.15 * truth)


def verdict(est, truth: float) -> tuple[bool, bool]:
    """(within tolerance, flagged as a lower bound); a cell that is neither is a silent miss."""
    return abs(est.bits - truth) <= tolerance(truth), bool(est.settings.get("lower_bound") or est.saturated)


def run_family(cells: list[tuple[str, Draw]], seeds: int, n: int, settings: dict) -> list[tuple]:
    draws = [(label, s, *draw(1000 + s, n)) for label, draw in cells for s in range(seeds)]
    xs = np.stack([d[2] for d in draws]).astype(np.float32)
    ys = np.stack([d[3] for d in draws]).astype(np.float32)
    t = time.perf_counter()
    ests = estimate_mi_many(xs, ys, seeds=(0,), **settings)
    seconds = time.perf_counter() - t
    return [(label, s, truth, e, seconds / len(draws)) for (label, s, _, _, truth), e in zip(draws, ests)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="data draws per cell (seeds 1000, 1001, ...)")
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--only", default=None, help="families whose name contains this")
    ap.add_argument("--nonlinear-check", choices=("on", "off"), default="on")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    settings = {"threads": args.threads, "nonlinear_check": args.nonlinear_check == "on"}
    print(f"n={args.samples}, {args.seeds} draws per cell, critic check {args.nonlinear_check}; "
          f"tolerance max(0.1 nat, 15%)")
    print(f"{'family':11s} {'cell':9s} {'draw':>4s} {'truth':>6s} {'bits':>6s} {'95% interval':>15s} "
          f"{'critic':>8s} {'linear':>6s} {'mlp':>6s} {'knn':>6s} {'verdict':>14s} {'s/cell':>6s}")
    totals: dict[str, dict[str, int]] = {}
    for family, cells in families().items():
        if args.only and args.only not in family:
            continue
        count = totals.setdefault(family, {"within": 0, "flagged": 0, "NEITHER": 0})
        for label, s, truth, e, sec in run_family(cells, args.seeds, args.samples, settings):
            within, flagged = verdict(e, truth)
            count["within"] += within
            count["flagged"] += flagged
            count["NEITHER"] += not (within or flagged)
            v = "+".join(w for w, on in (("within", within), ("flagged", flagged)) if on) or "NEITHER"
            d = e.diagnostics
            critic = e.settings.get("critic", "-").split(" ")[0]
            print(f"{family:11s} {label:9s} {s:4d} {truth:6.3f} {e.bits:6.3f} [{e.ci_low:6.3f}, {e.ci_high:6.3f}] "
                  f"{critic:>8s} {d.get('linear_bits', math.nan):6.3f} {d.get('mlp_bits', math.nan):6.3f} "
                  f"{d.get('knn_bits', math.nan):6.3f} {v:>14s} {sec:6.1f}", flush=True)
    print("\nper family (cells): within tolerance / flagged as a lower bound (some are both) / neither")
    for family, c in totals.items():
        print(f"  {family:11s} {c['within']:3d} {c['flagged']:3d} {c['NEITHER']:3d}")
    print(f"  {'all':11s} {sum(c['within'] for c in totals.values()):3d} "
          f"{sum(c['flagged'] for c in totals.values()):3d} {sum(c['NEITHER'] for c in totals.values()):3d}")


if __name__ == "__main__":
    main()
