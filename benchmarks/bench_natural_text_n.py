"""How the sample size n moves the smoothed measure's valid β range on human prose, and what
trained SmolLM2-135M against its random-weight copies shows there (docs/METHOD.md section 7).

fortunes, 8-token windows, the first n of 16,384 (windows come in corpus order, so the first n are
the corpus at --samples n). The product's default smoothed settings (β grid 0.4 / 0.6 / 0.8,
m = 512 queries, 200 bootstrap resamples), float16 storage like stage 1.

    # 1. here: the trained model's activations from a stored run, e.g.
    #    ie-flow run --corpus fortunes --samples 16384 --estimator smoothed --storage DIR
    python benchmarks/bench_natural_text_n.py trained --activations DIR/activations/smollm2-135m/fortunes-8tok-... --out OUT
    # 2. anywhere (a GPU helps; no weights needed): random copies, seeds 1 and 2, of the model in CONFIG
    #    (a folder with its config.json and tokenizer)
    python benchmarks/bench_natural_text_n.py random --windows OUT/windows.npy --config CONFIG --out OUT --device cuda
    # 3. the comparison per n
    python benchmarks/bench_natural_text_n.py compare --out OUT
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

NS = (2048, 4096, 8192, 16384)
LAYER_GROUP = 5  # layers estimated together (bounded memory at n = 16,384)


def mi_tables(boundary: callable, layers: int, positions: int, device: str | None, ns=NS) -> dict[int, object]:
    """{n: MI table} of every layer and position, for the first n windows, n in `ns`."""
    from ie_flow.config import EstimateSpec
    from ie_flow.results import estimate_cells, mi_rows, mi_table

    spec = EstimateSpec(method="smoothed", seeds=[0])
    rows: dict[int, list] = {n: [] for n in ns}
    for start in range(0, layers, LAYER_GROUP):
        group = list(range(start, min(start + LAYER_GROUP, layers)))
        acts = {b: boundary(b) for b in range(group[0], group[-1] + 2)}
        for n in ns:
            xs = np.stack([acts[l][:n, t] for l in group for t in range(positions)])
            ys = np.stack([acts[l + 1][:n, t] for l in group for t in range(positions)])
            for k, cell in enumerate(estimate_cells(xs, ys, spec, device)):
                for est in cell:
                    for level in ("macro", "micro"):
                        rows[n].extend(mi_rows(group[k // positions], k % positions, level, est))
        print(f"  layers {group[0]}-{group[-1]} done ({time.strftime('%H:%M:%S')})", flush=True)
    return {n: mi_table(r) for n, r in rows.items()}


def trained(args: argparse.Namespace) -> None:
    import pyarrow.parquet as pq

    from ie_flow.store import dataset_folder

    folder, _ = dataset_folder(args.activations)
    manifest = folder.load_manifest()
    from ie_flow.corpora import build_corpus  # the windows, for the random copies (same token ids)
    from ie_flow.config import CorpusSpec
    from ie_flow.models import load_tokenizer

    corpus = build_corpus(CorpusSpec(name="fortunes", tokens=8, samples=manifest.samples), load_tokenizer("smollm2-135m"))
    assert corpus.digest == manifest.dataset.digest, "the windows differ from the stored activations' corpus"
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "windows.npy"), corpus.input_ids)
    t0 = time.perf_counter()
    ns = NS
    if args.results:  # the stored run's own MI table (stage 2 of the same activations) is the n = 16,384 one
        table = pq.read_table(os.path.join(args.results, "mi.parquet"))
        assert set(table.column("method").to_pylist()) == {"smoothed"} and manifest.samples == NS[-1]
        pq.write_table(table, os.path.join(args.out, f"trained-n{NS[-1]}.parquet"))
        ns = NS[:-1]
    tables = mi_tables(lambda b: folder.read_boundary(manifest, b), manifest.num_blocks, manifest.tokens, args.device, ns)
    for n, table in tables.items():
        pq.write_table(table, os.path.join(args.out, f"trained-n{n}.parquet"))
    print(f"trained: {len(tables)} sample sizes in {time.perf_counter() - t0:.0f}s")


def random_copies(args: argparse.Namespace) -> None:
    import pyarrow.parquet as pq

    from ie_flow.models import load_model
    from ie_flow.stages.extract import capture_boundaries

    ids = np.load(args.windows)
    os.makedirs(args.out, exist_ok=True)
    for seed in (1, 2):
        t0 = time.perf_counter()
        loaded = load_model("random:" + args.config, device=args.device, dtype="float32", seed=seed)
        acts = capture_boundaries(loaded, ids[: max(args.ns)], 512, list(range(loaded.num_blocks + 1)))
        acts = {b: v.astype(np.float16).astype(np.float32) for b, v in acts.items()}  # stage 1 stores float16
        t1 = time.perf_counter()
        tables = mi_tables(acts.__getitem__, loaded.num_blocks, ids.shape[1], args.device, args.ns)
        for n, table in tables.items():
            pq.write_table(table, os.path.join(args.out, f"random{seed}-n{n}.parquet"))
        print(f"random seed {seed}: extracted in {t1 - t0:.0f}s, estimated in {time.perf_counter() - t1:.0f}s "
              f"on {args.device}")


def compare(args: argparse.Namespace) -> None:
    import pyarrow.parquet as pq

    from ie_flow.config import EstimateSpec
    from ie_flow.control import compare as differences
    from ie_flow.emergence import emergence_by_variant

    def load(name: str) -> object:
        return pq.read_table(os.path.join(args.out, name))

    for n in NS:
        tm, t1, t2 = (load(f"{side}-n{n}.parquet") for side in ("trained", "random1", "random2"))
        print(f"n = {n}")
        for name, table in (("trained", tm), ("random 1", t1), ("random 2", t2)):
            profile = emergence_by_variant(table)
            print(f"  {name:9s} valid layers per β: " + ", ".join(
                f"{v}: {sum(l.valid for l in p.layers)}/30" for v, p in profile.items()))
        variant, valid, em, ec, rows = differences(EstimateSpec(method="smoothed"), tm, t1)
        ec2 = emergence_by_variant(t2)[variant]  # the second random copy at the same β: the spread between copies
        spread = {a.layer: abs(a.ie - b.ie) for a, b in zip(ec.layers, ec2.layers)}
        ok = [r for r in rows if math.isfinite(r.diff)]
        beyond = [r for r in ok if r.ci_low > 0 or r.ci_high < 0]
        strict = [r for r in ok if abs(r.diff) > 3 * max((r.ci_high - r.ci_low) / 2, spread[r.layer])]
        print(f"  headline {variant} ({'valid in every cell' if valid else 'NOT valid in every cell'}); "
              f"{len(ok)} layers comparable; trained - random: mean {np.mean([r.diff for r in ok]) if ok else math.nan:+.3f}"
              f" bit, range [{min((r.diff for r in ok), default=math.nan):+.3f}, "
              f"{max((r.diff for r in ok), default=math.nan):+.3f}]; {len(beyond)} beyond their 95% interval; "
              f"{len(strict)} beyond 3 x max(half-width, spread of two random copies)")
        # the per-position MI itself, M_beta(t): where the two models differ even when IE does not
        gap, copies = np.abs(em.macro - ec.macro), np.abs(ec.macro - ec2.macro)
        l, t = np.unravel_index(np.nanargmax(gap), gap.shape)
        print(f"  M_β(t) trained vs random 1: mean |difference| {np.nanmean(gap):.3f} bit (two random copies: "
              f"{np.nanmean(copies):.3f}); largest at layer {em.layers[l].layer}, t = {t}: "
              f"{em.macro[l, t]:.3f} vs {ec.macro[l, t]:.3f} bit")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("trained", "random", "compare"))
    ap.add_argument("--activations")
    ap.add_argument("--results", help="trained: the stored run's results folder (its MI table is n = 16,384)")
    ap.add_argument("--windows")
    ap.add_argument("--config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default=None)
    ap.add_argument("--ns", type=lambda v: tuple(int(x) for x in v.split(",")), default=NS,
                    help="random: sample sizes (a quick check: --ns 600)")
    args = ap.parse_args()
    {"trained": trained, "random": random_copies, "compare": compare}[args.mode](args)


if __name__ == "__main__":
    main()
