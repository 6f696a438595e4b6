"""Stage 1 throughput and memory on SmolLM2-135M (issue 3).

Side by side in one run:
  bare     : a plain `model(input_ids)` loop over the same batches (no hooks, no storage, no Ray)
  pipeline : `extract_activations` = Ray worker actor + forward hooks on all 30 blocks + Parquet to storage
Ratio = pipeline tokens/s while extracting / bare tokens/s (target >= 0.8). Model load and Ray
start-up are printed separately. Memory: actor and driver peak RSS at 1x, 2x and 8x the corpus:
bounded streaming means it must not grow with the corpus.

    .venv/bin/python benchmarks/bench_extract.py            # 1024 / 2048 / 8192 sequences
    .venv/bin/python benchmarks/bench_extract.py --quick    # 512 / 1024 / 4096
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bare_forward(model_name: str, input_ids: np.ndarray, batch_size: int) -> tuple[float, float]:
    """(seconds to load, seconds for the forward loop)."""
    import torch

    from ie_flow.models import load_model

    t0 = time.perf_counter()
    loaded = load_model(model_name)
    load_s = time.perf_counter() - t0
    with torch.inference_mode():
        loaded.model(input_ids=torch.tensor(input_ids[:batch_size]), use_cache=False)  # warm-up
        t0 = time.perf_counter()
        for start in range(0, len(input_ids), batch_size):
            loaded.model(input_ids=torch.tensor(input_ids[start : start + batch_size]), use_cache=False)
    return load_s, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    base = 512 if args.quick else args.samples
    logging.basicConfig(level=logging.WARNING)

    import torch

    from ie_flow.config import load_job
    from ie_flow.corpora import build_corpus
    from ie_flow.models import load_tokenizer
    from ie_flow.jobs import extract_activations

    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1, 2, 8):
            n = base * factor
            job = load_job(None, {
                "model.name": args.model, "corpus.samples": n, "storage.uri": f"{tmp}/x{factor}",
                "extract.batch_size": args.batch_size, "extract.shard_size": 512, "tracking.enabled": False,
            })
            t0 = time.perf_counter()
            res = extract_activations(job)
            wall = time.perf_counter() - t0
            busy = sum(s.seconds for s in res.stats)
            actor_peak = max(s.peak_rss_mb for s in res.stats)
            driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            tokens = n * res.manifest.tokens
            stored = sum(f.bytes for s in res.manifest.shards for f in s.files.values())
            rows.append((factor, n, tokens / busy, tokens / wall, actor_peak, driver_peak, stored / 2**20))
            if factor == 1:
                first_job, pipe_tps, base_tokens = job, tokens / busy, tokens
    # the bare loop runs last so its model does not count in the driver's peak above
    ids = build_corpus(first_job.corpus, load_tokenizer(args.model)).input_ids
    load_s, bare_s = bare_forward(args.model, ids, args.batch_size)
    bare_tps = base_tokens / bare_s
    print(f"\nbare model(...) loop : {bare_tps:8.0f} tokens/s  ({base} sequences, model load {load_s:.1f} s)")
    print(f"ie-flow pipeline     : {pipe_tps:8.0f} tokens/s while extracting (hooks on all blocks + Parquet)")
    print(f"ratio pipeline/bare  : {pipe_tps / bare_tps:8.2f}   (target >= 0.8)")
    print("\ncorpus  sequences  extract tok/s  end-to-end tok/s  actor peak MiB  driver peak MiB  stored MiB")
    for factor, n, tps, e2e, actor, driver, mib in rows:
        print(f"{factor:>5}x  {n:>9}  {tps:>13.0f}  {e2e:>16.0f}  {actor:>14.0f}  {driver:>15.0f}  {mib:>10.1f}")
    growth = rows[-1][4] / rows[0][4]
    print(f"\nactor peak RSS 8x / 1x corpus: {growth:.2f} (bounded: shards of 512 sequences stream to storage)")


if __name__ == "__main__":
    main()
