"""The target measure (`probe`, docs/METHOD.md section 8) against ground truth, and its cost.

Accuracy: H = delta * s * u + N(0, I_576), s a fair bit, delta set for I in {0.10, 0.50, 0.90} bits
(truth by 1-D quadrature), plus shuffled labels (truth 0); ``--sets`` data sets per task, n = 4,096
(the job's size), one probe seed, library defaults. Per task: the mean held-out value (``bits``, a
lower bound), the mean midpoint (``corrected_bits``, the point estimate), the share of data sets whose
interval's upper end reaches the truth and whose lower end stays below it, the mean width.
Targets: midpoint within [truth - 0.05, truth + 0.01]; upper end >= truth in >= 95%; shuffled:
|bits| <= 0.01 on average and intervals covering 0 in >= 95%.

Speed: the probes of one `icl-coherence` job, 31 boundaries x 8 positions x 2 models = 496 cells of
n = 4,096, d = 576 (SmolLM2-135M's shape), with the 200-replicate bootstrap, on this machine's threads.
Target: <= 10 minutes on 2 cores.

    .venv/bin/python benchmarks/bench_probe.py                 # 200 data sets per task + the speed run
    .venv/bin/python benchmarks/bench_probe.py --sets 50 --skip-speed
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ie_flow.estimators.probe import UsableInformation  # noqa: E402
from ie_flow.estimators.synthetic import shifted_gaussian_labels  # noqa: E402

N, D = 4096, 576


def accuracy(truth: float, sets: int, shuffle: bool, seed: int) -> dict[str, float]:
    """Each data set is its own call (its own labels); the estimator is the library default."""
    xs, labels = shifted_gaussian_labels(0.5 if shuffle else truth, N, D, sets, seed)
    rng = np.random.default_rng(seed)
    res = []
    for k in range(sets):
        target = rng.permutation(labels[k]) if shuffle else labels[k]
        res += UsableInformation().estimate_targets(xs[k:k + 1], target)
    bits = np.array([r.bits for r in res])
    mid = np.array([r.diagnostics["corrected_bits"] for r in res])
    return {"truth": truth, "bits": bits.mean(), "mid": mid.mean(), "mid_sd": mid.std(ddof=1),
            "upper_ok": np.mean([r.ci_high >= truth for r in res]), "lower_ok": np.mean([r.ci_low <= truth for r in res]),
            "width": np.mean([r.ci_high - r.ci_low for r in res]), "abs_bits": np.abs(bits).mean()}


def speed(cells: int, threads: int) -> float:
    """Seconds for `cells` probes of one job's shape (random features and labels: the cost does not
    depend on the values; each call is one layer's 8 positions, as stage 2 would batch them)."""
    import torch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=N)
    x = rng.standard_normal((8, N, D)).astype(np.float32)
    t = time.perf_counter()
    for _ in range(cells // 8):
        UsableInformation(cells_per_batch=8).estimate_targets(x, labels)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cells", type=int, default=496)
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    print(f"probe accuracy: n = {N}, d = {D}, {args.sets} data sets per task, one probe seed")
    print(f"{'task':<12} {'truth':>6} {'bits':>7} {'midpoint':>9} {'sd':>6} {'upper>=I':>9} {'lower<=I':>9} {'width':>6}")
    for truth, shuffle in ((0.1, False), (0.5, False), (0.9, False), (0.0, True)):
        t = time.perf_counter()
        r = accuracy(truth, args.sets, shuffle, args.seed)
        name = "shuffled" if shuffle else f"I={truth:.2f}"
        print(f"{name:<12} {r['truth']:6.3f} {r['bits']:7.4f} {r['mid']:9.4f} {r['mid_sd']:6.4f} "
              f"{r['upper_ok']:9.1%} {r['lower_ok']:9.1%} {r['width']:6.3f}   ({time.perf_counter() - t:.0f} s)",
              flush=True)
        if shuffle:
            print(f"{'':<12} mean |bits| = {r['abs_bits']:.4f} (target <= 0.01)")
    if not args.skip_speed:
        seconds = speed(args.cells, args.threads)
        print(f"speed: {args.cells} cells (n = {N}, d = {D}, 200 bootstrap replicates) in {seconds:.0f} s on "
              f"{args.threads} threads ({seconds / args.cells:.2f} s a cell; target <= 600 s)")


if __name__ == "__main__":
    main()
