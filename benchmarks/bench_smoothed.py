"""Cost and accuracy of the ``smoothed`` estimator (docs/METHOD.md section 7).

Default mode (speed): a layer-chain stack like stage 2's -- 30 layers x 8 positions, n = 4,096
samples, d = 576 (SmolLM2-135M's width), a few massive coordinates -- estimated at 3 betas with
``SmoothedMI.estimate_grid`` (one call), against a naive baseline that computes every cell and
every beta on its own: the value, the shuffled-pair null and the n/2 value each from explicit
float32 distances (5 full-size matmuls per cell and beta; the baseline skips the bootstrap, which
favours it).  The baseline is MEASURED on a few cells and SCALED to all cells; the output says so.

    .venv/bin/python benchmarks/bench_smoothed.py                       # the 30 x 8 x 3-beta target (CPU)
    .venv/bin/python benchmarks/bench_smoothed.py --n 65536 --device cuda --layers 8
    .venv/bin/python benchmarks/bench_smoothed.py --truth               # Gaussian ground truth vs beta
    .venv/bin/python benchmarks/bench_smoothed.py --gauss-cost --threads 1   # G^β's cost vs the profile's
    .venv/bin/python benchmarks/bench_smoothed.py --activations DIR --layers 0,1,8,15,22,29
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ie_flow.estimators.smoothed import SmoothedMI  # noqa: E402
from ie_flow.estimators.synthetic import linear_gaussian_smoothed  # noqa: E402

BETAS = (0.4, 0.6, 0.8)


def layer_chain(layers: int, positions: int, n: int, d: int, seed: int = 0) -> np.ndarray:
    """(layers + 1, positions, n, d) float32 activations: token embeddings (K = 16 values per
    position) mixed down a chain H' = tanh(H + (H U) V) + noise, with 2 massive coordinates
    (~100 +- 30: they hold most of tr Cov, so they set sigma in raw mode)."""
    r = np.random.default_rng(seed)
    h = np.empty((layers + 1, positions, n, d), dtype=np.float32)
    emb = r.standard_normal((16, d)).astype(np.float32)
    h[0] = emb[r.integers(0, 16, (positions, n))] + 0.1 * r.standard_normal((positions, n, d), dtype=np.float32)
    for l in range(layers):
        u = r.standard_normal((d, 32), dtype=np.float32) / math.sqrt(d)
        v = r.standard_normal((32, d), dtype=np.float32)
        nxt = np.tanh(h[l] + (h[l] @ u) @ v) + 0.05 * r.standard_normal(h[l].shape, dtype=np.float32)
        nxt[..., :2] = 100.0 + 30.0 * nxt[..., :2]  # massive activations: large, and most of the variance
        h[l + 1] = nxt
    return h


def naive_bits(x, y, beta: float, qids, zx, zy):
    """LOO bits of one cell at one beta from explicit distances (float32 torch, one matmul per side)."""
    import torch

    logits = []
    for t, z in ((x, zx), (y, zy)):
        t = t - t.mean(0)
        sigma = beta * float(t.square().sum(0).sum() / len(t)) ** 0.5
        noisy = t[qids] + sigma * z
        d2 = noisy.square().sum(1, keepdim=True) - 2 * noisy @ t.T + t.square().sum(1)
        own = (torch.arange(len(qids), device=t.device), qids)
        logits.append((-d2 / (2 * sigma**2)).index_put_(own, torch.tensor(-math.inf, device=t.device)))
    a, b = logits
    v = torch.logsumexp(a + b, 1) - torch.logsumexp(a, 1) - torch.logsumexp(b, 1) + math.log(len(x) - 1)
    return float(v.mean()) / math.log(2)


def naive_cell(x, y, beta: float, m: int, seed: int) -> tuple[float, float, float]:
    """Value, shuffled-pair null and n/2 value, each computed on its own."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = len(x)
    q = torch.randperm(n, generator=g)[:m].to(x.device)
    zx, zy = (torch.randn((m, t.shape[1]), generator=g).to(x.device) for t in (x, y))
    value = naive_bits(x, y, beta, q, zx, zy)
    null = naive_bits(x, y[torch.randperm(n, generator=g).to(x.device)], beta, q, zx, zy)
    half = naive_bits(x[: n // 2], y[: n // 2], beta, q[: m // 2] % (n // 2), zx[: m // 2], zy[: m // 2])
    return value, null, half


def speed(args: argparse.Namespace) -> None:
    import torch

    layers = int(args.layers) if args.layers else 30
    t0 = time.perf_counter()
    h = layer_chain(layers, args.positions, args.n, args.d)
    xs = h[:-1].reshape(-1, args.n, args.d)  # views: Y of (l, t) is X of (l + 1, t), as in stage 2
    ys = h[1:].reshape(-1, args.n, args.d)
    print(f"stack: {xs.shape[0]} cells ({layers} layers x {args.positions} positions), n={args.n}, d={args.d}, "
          f"betas={list(BETAS)}, queries={args.queries}; generated in {time.perf_counter() - t0:.1f}s; "
          f"load average {os.getloadavg()[0]:.1f}")
    est = SmoothedMI(queries=args.queries, bootstrap=200, modes=["raw"])  # one mode: the naive loop does one
    t0 = time.perf_counter()
    grid = est.estimate_grid(xs, ys, betas=BETAS, seeds=(0,), device=args.device)
    batched = time.perf_counter() - t0
    if args.device.startswith("cuda"):
        # the estimator streams the stacks in chunks: its peak GPU memory, against the data's size
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB for "
              f"{(xs.nbytes + h[-1].nbytes) / 2**30:.1f} GiB of activations")
    sides = xs.shape[0] + args.positions
    gflop = sides * 2 * (2 * args.queries) * args.n * args.d / 1e9
    print(f"batched grid (estimate_grid, one call): {batched:.1f}s for {len(grid) * len(BETAS)} cell-betas "
          f"({gflop:.0f} GFLOP of Gram matmuls over {sides} distinct sides = {gflop / batched:.0f} GFLOP/s overall)")
    k = min(args.baseline_cells, xs.shape[0])
    cells = np.linspace(0, xs.shape[0] - 1, k).astype(int)
    t0 = time.perf_counter()
    for p in cells:
        x, y = torch.as_tensor(xs[p]).to(args.device), torch.as_tensor(ys[p]).to(args.device)
        for b in BETAS:
            naive_cell(x, y, b, args.queries, int(p))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    naive = (time.perf_counter() - t0) * xs.shape[0] / k
    print(f"naive one-cell-one-beta loop: MEASURED on {k} cells x {len(BETAS)} betas, SCALED x{xs.shape[0] / k:.0f} "
          f"to all cells: {naive:.1f}s")
    print(f"ratio naive / batched: {naive / batched:.1f}x   (target: batched <= 30 s on the 2-core CPU; "
          f"load average now {os.getloadavg()[0]:.1f})")
    e = grid[len(grid) // 2]
    print("example cell:", ", ".join(f"beta={x.settings['beta']}: {x.bits:.2f} bit [{x.ci_low:.2f}, {x.ci_high:.2f}]"
                                      f"{'' if x.valid else ' invalid'}" for x in e))


def gauss_cost(args: argparse.Namespace) -> None:
    """The Gaussian reference (G^β with its bootstrap replicates) against the smoothed profile
    without it, on the same stack, resamples and threads (target: at most a third)."""
    from ie_flow.estimators.gaussian_reference import gaussian_reference
    from ie_flow.estimators.smoothed import _layout, dedup_sides, layout_rng, sample_blocks

    layers = int(args.layers) if args.layers else 30
    h = layer_chain(layers, args.positions, args.n, args.d)
    xs, ys = h[:-1].reshape(-1, args.n, args.d), h[1:].reshape(-1, args.n, args.d)
    print(f"stack: {xs.shape[0]} cells ({layers} layers x {args.positions} positions), n={args.n}, d={args.d}, "
          f"betas={list(BETAS)}, queries={args.queries}, torch threads {args.threads or 'default'}")
    sides, sx, sy, _ = dedup_sides(xs, ys)
    rng = layout_rng(args.n, 0)
    layout = _layout(args.n, 64, rng)
    weights = rng.multinomial(layout.blocks, np.full(layout.blocks, 1.0 / layout.blocks), size=200)

    def reference(modes: list[bool]) -> float:
        t0 = time.perf_counter()
        gaussian_reference(sides, sx, sy, BETAS, modes, sample_blocks(layout), weights, layout.block_counts,
                           args.device)
        if args.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        return time.perf_counter() - t0

    profiles, alone = {}, {}
    for standardise in (False, True):
        t0 = time.perf_counter()
        SmoothedMI(queries=args.queries, bootstrap=200, gauss=False, standardise=standardise).estimate_grid(
            xs, ys, betas=BETAS, device=args.device)
        profiles[standardise] = profile = time.perf_counter() - t0
        alone[standardise] = gauss = reference([standardise])
        print(f"{'standardised' if standardise else 'raw'}: smoothed profile without the reference {profile:.1f}s; "
              f"Gaussian reference with 200 replicates {gauss:.1f}s = {gauss / profile:.2f} x the profile "
              f"(target <= 0.33); load average {os.getloadavg()[0]:.1f}")
    # the job's default: both modes, whose references share the second moments
    both, profile = reference([False, True]), sum(profiles.values())
    print(f"both modes: profiles {profile:.1f}s; their references in one call {both:.1f}s (one mode at a time: "
          f"{sum(alone.values()):.1f}s) = {both / profile:.2f} x the profiles; load average {os.getloadavg()[0]:.1f}")


def truth(args: argparse.Namespace) -> None:
    """Headline (LOO) vs resubstitution vs the Gaussian closed form (the measurements behind the
    headline choice and the validity thresholds)."""
    betas = [0.1, 0.2, 0.3, 0.4, 0.6, 0.8]
    for d in (4, 16, 64):
        x, y, _ = linear_gaussian_smoothed(d, 0.4, seed=0, n=args.n)
        exact = [linear_gaussian_smoothed(d, b, seed=0, n=8)[2] for b in betas]  # same A, same truth formula
        row = SmoothedMI(queries=args.queries, modes=["raw"]).estimate_grid(x[None], y[None], betas=betas)[0]
        print(f"d={d} n={args.n} queries={args.queries}")
        for b, t, e in zip(betas, exact, row):
            g = e.diagnostics
            print(f"  beta={b:.1f} truth={t:6.3f} loo={g['loo_bits']:7.3f} resub={g['resub_bits']:6.3f} "
                  f"null={g['null_bits']:7.3f} stab={g['stability_bits']:6.3f} gap={g['resub_loo_gap_bits']:6.3f} "
                  f"mcse={g['mc_se_bits']:.3f} ci=[{e.ci_low:.2f},{e.ci_high:.2f}] "
                  f"{'valid' if e.valid else 'INVALID: ' + str(e.invalid_reason)}")


def read_activations(folder: str, boundary: int, positions: int) -> np.ndarray:
    """(samples, positions, d) float32 of one boundary, read with plain pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(f"{folder}/boundary={boundary:03d}/part-*.parquet"))])
    order = np.lexsort((t.column("pos").to_numpy(), t.column("sample_id").to_numpy()))
    vec = t.column("vec").combine_chunks()
    flat = vec.values.to_numpy(zero_copy_only=False).reshape(-1, vec.type.list_size)
    return flat[order].astype(np.float32).reshape(-1, positions, vec.type.list_size)


def activations(args: argparse.Namespace) -> None:
    layers = [int(v) for v in (args.layers or "0,1,8,15,22,29").split(",")]
    betas = [0.2, 0.3, 0.4, 0.6, 0.8]
    acts = {b: read_activations(args.activations, b, args.positions) for b in sorted({*layers, *[l + 1 for l in layers]})}
    cells = [(l, t) for l in layers for t in range(args.positions)]
    xs = np.stack([acts[l][:, t] for l, t in cells])
    ys = np.stack([acts[l + 1][:, t] for l, t in cells])
    for standardise in (False, True):
        t0 = time.perf_counter()
        grid = SmoothedMI(queries=args.queries, standardise=standardise).estimate_grid(xs, ys, betas=betas)
        print(f"mode={'standardised' if standardise else 'raw'}: {len(cells)} cells x {len(betas)} betas in "
              f"{time.perf_counter() - t0:.0f}s; per cell: bits (null | stability | resub-LOO gap), * = invalid")
        for (l, t), row in zip(cells, grid):
            print(f"  L{l:02d} pos {t}: " + "  ".join(
                f"{e.bits:5.2f}({e.diagnostics['null_bits']:+.2f}|{e.diagnostics['stability_bits']:+.2f}|"
                f"{e.diagnostics['resub_loo_gap_bits']:.2f}){'' if e.valid else '*'}" for e in row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--positions", type=int, default=8)
    ap.add_argument("--layers", default=None, help="speed: how many layers (30); activations: comma list")
    ap.add_argument("--queries", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--baseline-cells", type=int, default=4, help="cells the naive baseline is measured on")
    ap.add_argument("--truth", action="store_true", help="Gaussian ground truth table instead of the speed test")
    ap.add_argument("--activations", default=None, help="activations folder (manifest.json + boundary=BBB/)")
    ap.add_argument("--gauss-cost", action="store_true", help="the Gaussian reference's cost against the profile's")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.truth:
        truth(args)
    elif args.gauss_cost:
        gauss_cost(args)
    elif args.activations:
        activations(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
