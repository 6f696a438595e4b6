"""GPU against CPU in the same run (issue 6): stage-1 capture throughput on SmolLM2 and the
batched estimator on a layer group of 576-dim pairs. Where no CUDA GPU is present it measures
the CPU side only and says so.

    .venv/bin/python benchmarks/bench_gpu.py [--samples 2048] [--pairs 48]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def capture_tokens_per_s(device: str, samples: int, batch_size: int) -> float:
    from ie_flow.corpora.icl import icl_corpus
    from ie_flow.models import load_model
    from ie_flow.stages.extract import capture_boundaries

    loaded = load_model("smollm2-135m", device=device)
    ids = icl_corpus("countries", loaded.tokenizer, 4, samples, seed=0).input_ids
    every = list(range(loaded.num_blocks + 1))
    capture_boundaries(loaded, ids[:batch_size], batch_size, every)  # warm-up (CUDA kernels, caches)
    t0 = time.perf_counter()
    capture_boundaries(loaded, ids, batch_size, every)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return ids.size / (time.perf_counter() - t0)


def estimator_seconds(device: str, pairs: int, n: int, d: int) -> tuple[float, float]:
    """Seconds for `pairs` InfoNCE estimates trained together, and the mean error on a known MI."""
    from ie_flow.estimators import estimate_mi_many

    rng = np.random.default_rng(0)
    k = 16  # discrete uniform x through an injective map: I = log2 16 = 4 bits
    labels = rng.integers(0, k, size=(pairs, n))
    table = rng.normal(size=(pairs, k, d)).astype(np.float32)
    xs = np.take_along_axis(table, labels[..., None], axis=1)
    ys = np.tanh(xs @ rng.normal(size=(d, d)).astype(np.float32) / np.sqrt(d))
    t0 = time.perf_counter()
    ests = estimate_mi_many(xs, ys, method="infonce", device=device)
    return time.perf_counter() - t0, float(np.mean([abs(e.bits - 4.0) for e in ests]))


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=48, help="estimates trained together (6 layers x 8 positions)")
    ap.add_argument("--n", type=int, default=4096)
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    print(f"torch {torch.__version__}; CUDA GPU: {torch.cuda.get_device_name(0) if gpu else 'none available'}")
    devices = ["cpu", "cuda"] if gpu else ["cpu"]
    results = {}
    for dev in devices:
        tps = capture_tokens_per_s(dev, args.samples, args.batch_size)
        secs, err = estimator_seconds(dev, args.pairs, args.n, 576)
        results[dev] = (tps, secs, err)
        print(f"{dev:>5}: capture {tps:9.0f} tokens/s (all 31 boundaries) | "
              f"{args.pairs} InfoNCE estimates on {args.n} x 576: {secs:7.1f} s, mean |error| {err:.3f} bit")
    if gpu:
        (c_tps, c_s, _), (g_tps, g_s, _) = results["cpu"], results["cuda"]
        print(f"GPU / CPU: capture x{g_tps / c_tps:.1f}, estimator x{c_s / g_s:.1f}")
    else:
        print("no CUDA GPU on this machine: only the CPU baseline was measured")


if __name__ == "__main__":
    main()
