"""Speed of a full model profile: 30 layers x 8 positions = 240 MI estimates on 4,096 samples
of 576-dim pairs (SmolLM2-135M's width), trained together by ``estimate_mi_many``, against a
one-at-a-time loop of the same estimator with the same settings, measured in the same run.

The loop is measured on a subset of pairs and multiplied out (said so in the output).

Data: synthetic activations shaped like a deterministic residual stream over discrete
prefixes: position t has K_t distinct prefixes (like the ICL task, 16 names per slot), boundary 0
is a random embedding of the prefix, boundary l+1 = boundary l + 0.5 * tanh(boundary l @ W_l).

    .venv/bin/python benchmarks/bench_estimator_profile.py            # 240 pairs, loop on 8 (one per position)
    .venv/bin/python benchmarks/bench_estimator_profile.py --quick    # 3 layers x 8 positions
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ie_flow.estimators import estimate_mi, estimate_mi_many  # noqa: E402


def synthetic_profile(layers: int, positions: int, n: int, d: int, seed: int = 0) -> np.ndarray:
    """(layers + 1, positions, n, d) float32 boundaries of a deterministic residual stream."""
    r = np.random.default_rng(seed)
    names = 16
    out = np.empty((layers + 1, positions, n, d), dtype=np.float32)
    seq = r.integers(0, names, size=(n, (positions + 1) // 2))  # one name per two tokens
    for t in range(positions):
        # prefix id up to position t: names seen so far (+ whether we are on the comma)
        k = t // 2 + 1
        prefix = np.zeros(n, dtype=np.int64)
        for j in range(k):
            prefix = prefix * names + seq[:, j]
        prefix = prefix * 2 + (t % 2)
        _, ids = np.unique(prefix, return_inverse=True)
        emb = r.standard_normal((ids.max() + 1, d)).astype(np.float32)
        out[0, t] = emb[ids]
    w = [(r.standard_normal((d, d)) / math.sqrt(d)).astype(np.float32) for _ in range(layers)]
    for l in range(layers):
        for t in range(positions):
            h = out[l, t]
            out[l + 1, t] = h + 0.5 * np.tanh(h @ w[l])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 layers x 8 positions")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--positions", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--loop-pairs", type=int, default=None, help="pairs measured one at a time")
    ap.add_argument("--method", default="infonce")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    layers = args.layers or (3 if args.quick else 30)
    loop_pairs = args.loop_pairs or 8
    t0 = time.perf_counter()
    acts = synthetic_profile(layers, args.positions, args.samples, args.dim)
    xs = acts[:-1].reshape(-1, args.samples, args.dim)  # views: boundary l  -> x of pair (l, t)
    ys = acts[1:].reshape(-1, args.samples, args.dim)  #        boundary l+1 -> y of pair (l, t)
    P = xs.shape[0]
    print(f"data: {layers} layers x {args.positions} positions = {P} pairs, n={args.samples}, d={args.dim} "
          f"({acts.nbytes / 2**30:.2f} GiB of boundaries; x/y stacks are views) generated in {time.perf_counter() - t0:.1f}s; "
          f"torch threads={torch.get_num_threads()}, cpu count={os.cpu_count()}, load avg={os.getloadavg()[0]:.2f}")

    t = time.perf_counter()
    batched = estimate_mi_many(xs, ys, method=args.method, seeds=(0,), drop_constant=True,
                               precision=args.precision, device=args.device)
    t_batched = time.perf_counter() - t
    print(f"batched: {P} estimates in {t_batched:.1f}s ({t_batched / P:.2f}s per estimate), "
          f"steps run {batched[0].settings['steps_run']}, precision {batched[0].settings['precision']}, "
          f"device {batched[0].settings['device']}")

    # one pair per position (layers spread out): positions differ in how long they train
    layer_of = np.linspace(0, layers - 1, loop_pairs).round().astype(int)
    idx = np.array([layer_of[i] * args.positions + i % args.positions for i in range(loop_pairs)])
    t = time.perf_counter()
    singles = [estimate_mi(xs[i], ys[i], method=args.method, seed=0, drop_constant=True,
                           precision=args.precision, device=args.device) for i in idx]
    t_loop_sub = time.perf_counter() - t
    t_loop = t_loop_sub / loop_pairs * P
    print(f"one-at-a-time loop: measured {loop_pairs} pairs in {t_loop_sub:.1f}s "
          f"-> {t_loop:.1f}s for {P} pairs (MULTIPLIED OUT from the subset)")
    print(f"speed-up batched vs loop: {t_loop / t_batched:.2f}x; target (240 pairs) < 300s: "
          f"{'met' if t_batched < 300 else 'NOT met'} ({t_batched:.1f}s)")

    print("\nper-layer MI (bits, mean over positions; saturated count) and batched-vs-single check:")
    bits = np.array([e.bits for e in batched]).reshape(layers, args.positions)
    sat = np.array([e.saturated for e in batched]).reshape(layers, args.positions)
    print("position:      " + " ".join(f"{p:>6d}" for p in range(args.positions)))
    for l in sorted({0, layers // 2, layers - 1}):
        print(f"layer {l:3d} bits: " + " ".join(f"{b:6.2f}" for b in bits[l]) + f"   saturated {int(sat[l].sum())}/{args.positions}")
    print(f"ceiling log2(n_candidates) = {batched[0].ceiling_bits:.2f} bits")
    diffs = [abs(batched[i].bits - s.bits) for i, s in zip(idx, singles)]
    print("pair   batched  single  |diff|")
    for i, s, dd in zip(idx, singles, diffs):
        print(f"{i:4d}  {batched[i].bits:7.3f} {s.bits:7.3f}  {dd:.3f}")
    print(f"max |batched - single| = {max(diffs):.3f} bits")


if __name__ == "__main__":
    main()
