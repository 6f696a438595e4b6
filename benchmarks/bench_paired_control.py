"""Common random numbers for a model and its control (docs/METHOD.md section 7, "The control").

A layer chain like stage 2's ("model") and a copy with other block weights ("control", the random
copy) on the same windows (the same token embeddings at boundary 0), measured with ``smoothed``
at every β of the grid, in one run two ways: with the sides named by (boundary, position) as stage
2 names them, so the model and its control draw the same query ids and standard normals for the
same side (common random numbers, CRN), and keyed by content as before (independent draws). Per
layer, IE_β(model) − IE_β(control) and its 95% interval replicate by replicate (the same block
resamples in both); and, over ``--seeds`` estimator seeds (other draws), the spread of that
difference.

    .venv/bin/python benchmarks/bench_paired_control.py                    # 8 layers x 8 positions, n = 4,096, d = 64
    .venv/bin/python benchmarks/bench_paired_control.py --activations MODEL_DIR --control-activations CONTROL_DIR
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ie_flow.estimators.smoothed import SmoothedMI  # noqa: E402
from ie_flow.stages.estimate import side_keys  # noqa: E402

BETAS = (0.4, 0.6, 0.8)


def chains(layers: int, positions: int, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(layers + 1, positions, n, d) activations of a model and of its control: the same boundary 0
    (token embeddings, K = 16 values per position), other block weights after it."""
    r = np.random.default_rng(seed)
    emb = r.standard_normal((16, d)).astype(np.float32)
    h0 = emb[r.integers(0, 16, (positions, n))] + 0.1 * r.standard_normal((positions, n, d), dtype=np.float32)
    out = []
    for weights_seed in (1, 2):
        w = np.random.default_rng(weights_seed)
        h = np.empty((layers + 1, positions, n, d), dtype=np.float32)
        h[0] = h0
        for l in range(layers):
            u = w.standard_normal((d, 8), dtype=np.float32) / math.sqrt(d)
            v = w.standard_normal((8, d), dtype=np.float32)
            # causal mixing: position t sees the mean of positions <= t (so the last position differs)
            ctx = np.cumsum(h[l], axis=0) / np.arange(1, positions + 1, dtype=np.float32)[:, None, None]
            h[l + 1] = np.tanh(h[l] + (ctx @ u) @ v) + 0.05 * w.standard_normal(h[l].shape, dtype=np.float32)
        out.append(h)
    return out[0], out[1]


def profile(h: np.ndarray, seed: int, named: bool, queries: int) -> dict[str, np.ndarray]:
    """Per layer and β: IE point (layers, betas) and replicates (layers, betas, B)."""
    layers, positions = h.shape[0] - 1, h.shape[1]
    cells = [(l, t) for l in range(layers) for t in range(positions)]
    xs = np.stack([h[l, t] for l, t in cells])
    ys = np.stack([h[l + 1, t] for l, t in cells])
    grid = SmoothedMI(queries=queries, bootstrap=200, gauss=False, modes=["raw"]).estimate_grid(
        xs, ys, betas=BETAS, seeds=(seed,), keys=side_keys(cells, "") if named else None)
    bits = np.array([[e.bits for e in row] for row in grid]).reshape(layers, positions, len(BETAS))
    reps = np.array([[e.replicate_bits for e in row] for row in grid]).reshape(layers, positions, len(BETAS), -1)
    valid = np.array([[e.valid for e in row] for row in grid]).reshape(layers, positions, len(BETAS)).all(axis=1)
    return {"ie": bits[:, -1] - bits.mean(axis=1), "reps": reps[:, -1] - reps.mean(axis=1), "valid": valid}


def interval(point: np.ndarray, reps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, mid, hi = np.percentile(reps, [2.5, 50, 97.5], axis=-1)
    return point - (mid - lo), point + (hi - mid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--positions", type=int, default=8)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--queries", type=int, default=512)
    ap.add_argument("--seeds", type=int, default=5, help="estimator seeds (other query ids and draws)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    model, control = chains(args.layers, args.positions, args.n, args.d)
    print(f"model and random-copy control on the same windows: {args.layers} layers x {args.positions} positions, "
          f"n={args.n}, d={args.d}, queries={args.queries}, betas={list(BETAS)}, {args.seeds} seeds")
    t0 = time.perf_counter()
    diffs: dict[str, list] = {"CRN": [], "independent": []}
    widths: dict[str, list] = {"CRN": [], "independent": []}
    for seed in range(args.seeds):
        for how, named in (("CRN", True), ("independent", False)):
            m, c = profile(model, seed, named, args.queries), profile(control, seed, named, args.queries)
            diff = m["ie"] - c["ie"]
            lo, hi = interval(diff, m["reps"] - c["reps"])
            diffs[how].append(diff)
            widths[how].append(hi - lo)
    print(f"({time.perf_counter() - t0:.0f}s)")
    for b, beta in enumerate(BETAS):
        w_crn, w_ind = np.mean(widths["CRN"], axis=0)[:, b], np.mean(widths["independent"], axis=0)[:, b]
        sd_crn, sd_ind = np.std(diffs["CRN"], axis=0, ddof=1)[:, b], np.std(diffs["independent"], axis=0, ddof=1)[:, b]
        print(f"beta={beta}: IE(model) - IE(control) per layer, mean over seeds (CRN): "
              + " ".join(f"{v:+.3f}" for v in np.mean(diffs["CRN"], axis=0)[:, b]))
        print(f"  95% interval width, mean over layers and seeds: CRN {w_crn.mean():.4f}, independent {w_ind.mean():.4f} "
              f"(CRN / independent {w_crn.mean() / w_ind.mean():.2f})")
        print(f"  spread of the difference over {args.seeds} seeds (sd, mean over layers): CRN {sd_crn.mean():.4f}, "
              f"independent {sd_ind.mean():.4f} ({sd_crn.mean() / sd_ind.mean():.2f})")


if __name__ == "__main__":
    main()
