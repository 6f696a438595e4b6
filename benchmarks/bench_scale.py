"""Both stages at paper scale on this machine (issue 20): n = 16,384 / 65,536 / 300,000 ICL sequences
through the real pipeline (Ray executor, local storage, the job's default estimator), on a
GPT-2-shaped model built from a config (d = 768, 12 heads, random seeded weights, 2 blocks, the
tests' word-level tokenizer, whose ICL names are single tokens). Two blocks, not one, so that at
the smallest n a stage-2 task is filled by the memory budget (16 cells to share) rather than by the
8 cells of a single layer: the peaks compared across n are then both set by the budget.

Per n: wall time per stage, tokens/s, peak RSS of the stage-1 actor and of every stage-2 task
(measured, beside the bytes the task planned), bytes stored, and the machine load (`uptime`) when
the stage ended. Stage 2 runs under one memory budget for every n: its peak must stay within the
budget and nearly flat in n (the largest n's peak within 1.5x the smallest's), its time close to
linear in n.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_scale.py --root /tmp/bench-scale
    ... --stages extract        # stage 1 only (stage 2 later reuses the stored activations)
    ... --stages estimate       # stage 2 on activations a previous run stored
    ... --report                # the table from the figures already measured (root/figures.jsonl)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NS = (16_384, 65_536, 300_000)


def build_model(root: Path, blocks: int) -> Path:
    """The GPT-2-shaped model (seeded, so every run measures the same weights)."""
    from tests.conftest import make_tiny_model

    folder = root / f"gpt2-d768-{blocks}block"
    if not (folder / "config.json").exists():
        make_tiny_model(folder, "gpt2", seed=0, layers=blocks, hidden=768, heads=12)
    return folder


def job_for(model: Path, n: int, root: Path, budget: str | None) -> Any:
    from ie_flow.config import load_job

    return load_job(None, {"model.name": str(model), "corpus.samples": n, "storage.uri": str(root / f"n{n}"),
                           "tracking.enabled": False, "runtime.executor": "ray",
                           "estimate.memory_budget": budget})


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average: ")[-1]


def run_extract(job: Any, n: int) -> dict[str, Any]:
    from ie_flow.jobs import extract_activations

    ex = extract_activations(job)
    m = ex.manifest
    stored = sum(f.bytes for s in m.shards for f in s.files.values())
    return {"n": n, "stage": "extract", "seconds": ex.seconds, "reused": ex.reused,
            "tokens_per_s": m.samples * m.tokens / ex.seconds,
            "actor_peak_mib": max((s.peak_rss_mb for s in ex.stats), default=float("nan")),
            "stored_bytes": stored, "load": load()}


def run_estimate(job: Any, n: int) -> dict[str, Any]:
    from ie_flow.jobs import estimate_mi
    from ie_flow.store import StorageRoot

    folder = StorageRoot(job.storage.uri).activations(build_key(job), dataset_id(job))
    est = estimate_mi(job, folder)
    # each batch of cells (planned and measured peak bytes) once, though every layer in it reports it
    tasks = {json.dumps(b, sort_keys=True): b for s in est.stats for b in map(dataclasses.asdict, s)}
    m = folder.load_manifest()
    return {"n": n, "stage": "estimate", "seconds": est.seconds, "reused_layers": est.reused_layers,
            "tokens_per_s": m.samples * m.tokens / est.seconds, "budget_bytes": job.estimate.memory_budget,
            "tasks": list(tasks.values()), "rows": est.table.num_rows, "load": load()}


def build_key(job: Any) -> str:
    from ie_flow.models import resolve_model

    return resolve_model(job.model.name, job.model.revision).key


def dataset_id(job: Any) -> str:
    from ie_flow.jobs import plan_extract

    return plan_extract(job).corpus.dataset_id


def report(figures: list[dict[str, Any]]) -> None:
    """The table: the last figure measured per (n, stage)."""
    last = {(f["n"], f["stage"]): f for f in figures}
    ns = sorted({n for n, _ in last})
    print("n        stage-1 s  tok/s   actor peak MiB  stored MiB   load(1,5,15)      | stage-2 s  tok/s   "
          "tasks  cells/task  planned MiB (max)  peak RSS MiB (max)  budget MiB  load(1,5,15)")
    peaks = {}
    for n in ns:
        x, e = last.get((n, "extract")), last.get((n, "estimate"))
        left = (f"{x['seconds']:9.1f}  {x['tokens_per_s']:6.0f}  {x['actor_peak_mib']:14.0f}  "
                f"{x['stored_bytes'] / 2**20:10.1f}   {x['load']:<16}" if x else " " * 64)
        right = ""
        if e:
            tasks = e["tasks"]
            peak = max(t["peak_rss_bytes"] for t in tasks)
            peaks[n] = peak
            cells = sorted({t["cells"] for t in tasks})
            right = (f"{e['seconds']:9.1f}  {e['tokens_per_s']:6.0f}  {len(tasks):5d}  {cells!s:10}  "
                     f"{max(t['planned_bytes'] for t in tasks) / 2**20:17.0f}  {peak / 2**20:18.0f}  "
                     f"{e['budget_bytes'] / 2**20:10.0f}  {e['load']}")
        print(f"{n:<8} {left} | {right}")
    if len(peaks) > 1:
        lo, hi = min(peaks), max(peaks)
        print(f"\nstage-2 peak RSS at n={hi:,} / n={lo:,}: {peaks[hi] / peaks[lo]:.2f} (target <= 1.5)")
    times = {n: last[(n, "estimate")]["seconds"] for n in peaks}
    if len(times) > 1:
        print("stage-2 seconds per 1,000 sequences: " +
              ", ".join(f"n={n:,}: {1000 * times[n] / n:.2f}" for n in sorted(times)))


def probe_memory(n: int, d: int, cells: int, max_steps: int) -> None:
    """The estimator alone on synthetic float16 stacks (x, and y = x + noise) of `cells` pairs:
    its measured peak RSS above this process's baseline beside the plan's bytes above the
    worker's allowance. A memory check of the plan at any n, not a stage-2 timing (few steps)."""
    import numpy as np

    from ie_flow.config import load_job
    from ie_flow.memory import PeakRSS, rss_bytes
    from ie_flow.stages.estimate import WORKER_BYTES, estimate_cells, task_plan

    spec = load_job(None, {"estimate.settings": {"max_steps": max_steps}}).estimate
    base = rss_bytes()
    rng = np.random.default_rng(0)
    xs = np.empty((cells, n, d), dtype=np.float16)
    ys = np.empty_like(xs)
    for c in range(cells):
        xs[c] = rng.standard_normal((n, d), dtype=np.float32)
        ys[c] = xs[c] + rng.standard_normal((n, d), dtype=np.float32)
    t0 = time.perf_counter()
    with PeakRSS() as peak:
        est = estimate_cells(xs, ys, spec)
    planned = task_plan(spec, n, d, "float16").bytes(cells) - WORKER_BYTES
    print(f"n={n} d={d} cells={cells} max_steps={max_steps}: {time.perf_counter() - t0:.0f} s, bits "
          f"{[round(e[0].bits, 2) for e in est]}; peak above baseline {(peak.bytes - base) / 2**20:.0f} MiB, "
          f"planned above the worker {planned / 2**20:.0f} MiB (ratio {(peak.bytes - base) / planned:.2f}); "
          f"baseline RSS {base / 2**20:.0f} MiB; load {load()}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=Path("/tmp/bench-scale"))
    ap.add_argument("--ns", default=",".join(str(n) for n in NS))
    ap.add_argument("--stages", choices=("both", "extract", "estimate"), default="both")
    ap.add_argument("--memory-budget", default="3GiB")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--report", action="store_true", help="print the table of the figures measured so far")
    ap.add_argument("--probe-memory", metavar="N,D,CELLS,STEPS",
                    help="only the estimator's memory on synthetic float16 stacks (see probe_memory)")
    args = ap.parse_args()
    if args.probe_memory:
        probe_memory(*(int(v) for v in args.probe_memory.split(",")))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.root.mkdir(parents=True, exist_ok=True)
    figures_file = args.root / "figures.jsonl"
    if not args.report:
        model = build_model(args.root, args.blocks)
        for n in (int(v) for v in args.ns.split(",")):
            job = job_for(model, n, args.root, args.memory_budget)
            for stage, fn in (("extract", run_extract), ("estimate", run_estimate)):
                if args.stages in ("both", stage):
                    t0 = time.perf_counter()
                    fig = fn(job, n)
                    print(f"n={n} {stage}: {time.perf_counter() - t0:.1f} s, load {fig['load']}", flush=True)
                    with figures_file.open("a") as f:
                        f.write(json.dumps(fig) + "\n")
    figures = [json.loads(l) for l in figures_file.read_text().splitlines()] if figures_file.exists() else []
    report(figures)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
