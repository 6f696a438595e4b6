"""GPU against CPU in the same run: stage-1 capture throughput on SmolLM2 and the batched
estimator on a layer group of 576-dim pairs, plus a check that CUDA captures the same
activations as the CPU (both in float32). Where no CUDA GPU is present it measures the CPU
side only and says so.

    .venv/bin/python benchmarks/bench_gpu.py [--model smollm2-135m] [--samples 2048] [--pairs 48]

`--model random:FOLDER` (a folder with SmolLM2's config.json and tokenizer, no weights) measures
the same architecture with seeded random weights: the same compute, for machines the 94 MiB
weights file cannot reach.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def capture_tokens_per_s(model: str, device: str, samples: int, batch_size: int) -> tuple[float, str]:
    """Tokens/s of capture_boundaries over all boundaries, in the dtype stage 1 uses on `device`."""
    import torch

    from ie_flow.corpora.icl import icl_corpus
    from ie_flow.models import load_model
    from ie_flow.stages.extract import capture_boundaries

    loaded = load_model(model, device=device)
    ids = icl_corpus("countries", loaded.tokenizer, 4, samples, seed=0).input_ids
    every = list(range(loaded.num_blocks + 1))
    capture_boundaries(loaded, ids[:batch_size], batch_size, every)  # warm-up (CUDA kernels, caches)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    capture_boundaries(loaded, ids, batch_size, every)  # ends with .cpu() copies: synchronised
    return ids.size / (time.perf_counter() - t0), str(next(loaded.model.parameters()).dtype)


def cuda_matches_cpu(model: str, sequences: int = 64) -> float:
    """Largest |CUDA - CPU| over every boundary of `sequences` windows, both in float32, relative
    to the largest activation magnitude."""
    from ie_flow.corpora.icl import icl_corpus
    from ie_flow.models import load_model
    from ie_flow.stages.extract import capture_boundaries

    out = {}
    for dev in ("cpu", "cuda"):
        loaded = load_model(model, device=dev, dtype="float32")
        ids = icl_corpus("countries", loaded.tokenizer, 4, sequences, seed=0).input_ids
        out[dev] = capture_boundaries(loaded, ids, sequences, list(range(loaded.num_blocks + 1)))
    worst = max(np.abs(out["cuda"][b] - out["cpu"][b]).max() / np.abs(out["cpu"][b]).max() for b in out["cpu"])
    return float(worst)


def estimator_seconds(device: str, pairs: int, n: int, d: int) -> tuple[float, float, str]:
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
    return time.perf_counter() - t0, float(np.mean([abs(e.bits - 4.0) for e in ests])), ests[0].settings["precision"]


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=48, help="estimates trained together (6 layers x 8 positions)")
    ap.add_argument("--n", type=int, default=4096)
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    print(f"torch {torch.__version__}; CPU threads {torch.get_num_threads()}; "
          f"CUDA GPU: {torch.cuda.get_device_name(0) if gpu else 'none available'}; model {args.model}")
    if gpu:
        print(f"CUDA vs CPU activations (float32, all boundaries, 64 windows): "
              f"max |diff| / max |activation| = {cuda_matches_cpu(args.model):.2e}")
    devices = ["cpu", "cuda"] if gpu else ["cpu"]
    results = {}
    for dev in devices:
        tps, dtype = capture_tokens_per_s(args.model, dev, args.samples, args.batch_size)
        secs, err, precision = estimator_seconds(dev, args.pairs, args.n, 576)
        results[dev] = (tps, secs, err)
        print(f"{dev:>5}: capture {tps:9.0f} tokens/s ({dtype}, all boundaries) | {args.pairs} InfoNCE estimates "
              f"on {args.n} x 576 ({precision}): {secs:7.1f} s, mean |error| {err:.3f} bit (truth 4)", flush=True)
    if gpu:
        (c_tps, c_s, _), (g_tps, g_s, _) = results["cpu"], results["cuda"]
        print(f"GPU / CPU: capture x{g_tps / c_tps:.1f}, estimator x{c_s / g_s:.1f}")
    else:
        print("no CUDA GPU on this machine: only the CPU baseline was measured")


if __name__ == "__main__":
    main()
