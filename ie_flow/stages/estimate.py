"""Stage 2: per layer group, read boundaries l and l+1 from storage and train the batched MI
estimators for every (layer, position); one Parquet file per layer so a rerun reuses finished ones."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ie_flow import IEFlowError
from ie_flow.emergence import MI_COLUMNS
from ie_flow.storage import MANIFEST, Storage, boundary_file, results_dir

log = logging.getLogger("ie_flow")


def read_boundary(store: Storage, manifest: dict[str, Any], boundary: int, variant: str = "") -> np.ndarray:
    """All shards of one boundary as (samples, positions, d) float32, in sample order."""
    import pyarrow as pa

    from ie_flow.stages.extract import manifest_positions, table_vectors

    tables = [store.read_parquet(boundary_file(boundary, s["shard"], variant)) for s in manifest["shards"]]
    table = pa.concat_tables(tables)
    positions = len(manifest_positions(manifest))
    if table.num_rows != manifest["samples"] * positions:
        raise IEFlowError(
            f"boundary {boundary} has {table.num_rows} rows, manifest says "
            f"{manifest['samples']} x {positions} positions: the activations are damaged; rerun extract --force"
        )
    return table_vectors(table, positions)


def load_manifest(store: Storage) -> dict[str, Any]:
    """A complete manifest, or a clear error saying what is missing and how to finish it."""
    if not store.exists(MANIFEST):
        done = len(store.list("_done"))
        state = f"{done} shard(s) finished, no manifest" if done else "no activations"
        raise IEFlowError(
            f"{store.url()} holds an incomplete extraction ({state}); finish it with `ie-flow extract` first"
        )
    manifest = store.read_json(MANIFEST)
    if not manifest.get("complete"):
        raise IEFlowError(f"manifest {store.url(MANIFEST)} is not marked complete; rerun `ie-flow extract`")
    return manifest


def run_name(spec: Any) -> str:
    """Results folder name: the estimator and a hash of every setting that changes the numbers."""
    keys = {
        "method": spec.method, "seeds": list(spec.seeds), "eval_fraction": spec.eval_fraction,
        "dims": spec.dims, "settings": spec.settings,
    }
    return f"{spec.method}-{hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:8]}"


def layer_file(layer: int) -> str:
    return f"layers/layer={layer:03d}.parquet"


def mi_rows(layer: int, position: int, level: str, est: Any) -> list[dict[str, Any]]:
    """One row per estimator seed (emergence.py computes the spread across seeds)."""
    rows = []
    # closed-form and paper-protocol estimators have no ceiling: never saturated
    ceiling = float("inf") if est.ceiling_bits is None else float(est.ceiling_bits)
    for seed, bits in zip(est.seeds, est.bits_per_seed):
        rows.append({
            "layer": layer, "position": position, "level": level, "method": est.method, "seed": int(seed),
            "bits": float(bits), "ceiling_bits": ceiling,
            # the estimator's own flag also counts its pool test (halving the negatives lowers it)
            "saturated": bool(est.saturated or bits >= ceiling - 0.1), "n_train": int(est.n_train),
            "n_eval": int(est.n_eval),
        })
    return rows


def mi_table(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    schema = pa.schema([
        ("layer", pa.int32()), ("position", pa.int16()), ("level", pa.string()), ("method", pa.string()),
        ("seed", pa.int64()), ("bits", pa.float64()), ("ceiling_bits", pa.float64()), ("saturated", pa.bool_()),
        ("n_train", pa.int64()), ("n_eval", pa.int64()),
    ])
    assert tuple(schema.names) == MI_COLUMNS
    rows = sorted(rows, key=lambda r: (r["layer"], r["level"], r["position"], r["seed"]))
    return pa.Table.from_pylist(rows, schema=schema)


def estimate_layer_group(
    store: Storage, manifest: dict[str, Any], layers: list[int], spec: Any, out: Storage, device: str | None = None,
) -> dict[int, float]:
    """Estimate M_l(t) for `layers` (all positions) as one batched model; write one file per layer.
    Returns {layer: seconds}."""
    from ie_flow.estimators import apply_dims, estimate_mi_many
    from ie_flow.stages.extract import manifest_positions

    t0 = time.perf_counter()
    labels = manifest_positions(manifest)  # stored column t holds token position labels[t]
    positions = len(labels)
    variants = [("", ("macro", "micro") if manifest["micro"] == "in_context" else ("macro",))]
    if manifest["micro"] == "isolated":
        variants.append(("isolated", ("micro",)))
    rows: dict[int, list[dict[str, Any]]] = {l: [] for l in layers}
    for variant, levels in variants:
        cache = {b: read_boundary(store, manifest, b, variant) for b in sorted({b for l in layers for b in (l, l + 1)})}
        # one fixed projection (seed 0) for every model and seed, so comparisons see the same coordinates
        xs = np.stack([apply_dims(cache[l][:, t], spec.dims, 0) for l in layers for t in range(positions)])
        ys = np.stack([apply_dims(cache[l + 1][:, t], spec.dims, 0) for l in layers for t in range(positions)])
        del cache
        estimates = estimate_mi_many(
            xs, ys, method=spec.method, seeds=tuple(spec.seeds), device=device,
            eval_fraction=spec.eval_fraction, drop_constant=True, **spec.settings,
        )
        for k, est in enumerate(estimates):
            layer, position = layers[k // positions], labels[k % positions]
            if est.diverged:
                raise RuntimeError(f"estimator diverged at layer {layer}, position {position}: {est.settings}")
            for level in levels:
                rows[layer].extend(mi_rows(layer, position, level, est))
    seconds = (time.perf_counter() - t0) / len(layers)
    for layer in layers:
        out.write_parquet(layer_file(layer), mi_table(rows[layer]))
    return {l: seconds for l in layers}


@dataclass
class EstimateResult:
    results_uri: str  # .../mi.parquet
    results: Storage  # the run folder
    table: Any  # pyarrow Table
    seconds: float
    reused_layers: int


def layer_groups(layers: list[int], per_task: int) -> list[list[int]]:
    return [layers[i : i + per_task] for i in range(0, len(layers), per_task)]


def run_estimate(job: Any, manifest_store: Storage) -> EstimateResult:
    """Stage 2 on Ray: one task per layer group; finished layers (files present) are reused."""
    import ray
    from tqdm import tqdm

    from ie_flow.estimators import ESTIMATORS  # noqa: F401  (fail on an unknown name before Ray starts)
    from ie_flow.runtime import cluster_resources, init_ray
    from ie_flow.stages.extract import manifest_positions

    t0 = time.perf_counter()
    manifest = load_manifest(manifest_store)
    spec = job.estimate
    _check_estimator(spec.method)
    root = Storage(job.storage.uri, job.storage.endpoint_url)
    out = root.child(results_dir(manifest["model"]["key"], manifest["dataset"]["id"], run_name(spec)))
    boundaries = set(manifest["boundaries"])
    layers = [l for l in range(manifest["num_blocks"]) if l in boundaries and l + 1 in boundaries]
    todo = [l for l in layers if not out.exists(layer_file(l))]
    log.info("stage 2: %s, %d layers x %d positions, %d to estimate -> %s",
             spec.method, len(layers), len(manifest_positions(manifest)), len(todo), out.url())
    if todo:
        init_ray(job.runtime.ray_address)
        res = cluster_resources()
        if res.gpus > 0 and spec.num_gpus_per_task != 0:
            gpus, cpus = spec.num_gpus_per_task or 1.0, 1.0
            per_task = spec.layers_per_task or max(1, -(-len(todo) // max(1, int(res.gpus / gpus))))
        else:
            # batched critics already use every core of a node; tasks queue one per node
            gpus, cpus = 0.0, max(1.0, res.cpus_per_node)
            per_task = spec.layers_per_task or 6
        task = ray.remote(num_cpus=cpus, num_gpus=gpus)(_estimate_task)
        refs = {task.remote(manifest_store, manifest, group, spec, out, int(cpus)): group
                for group in layer_groups(todo, per_task)}
        with tqdm(total=len(todo), unit="layer", desc="stage 2 estimate", disable=None) as bar:
            pending, finished = list(refs), 0
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                ray.get(ready[0])  # re-raises a task's error here
                group = refs[ready[0]]
                finished += len(group)
                bar.update(len(group))
                if bar.disable:  # no terminal (logs, CI): a line per finished group instead of the bar
                    log.info("stage 2: layers %d-%d done (%d of %d) after %.0f s",
                             group[0], group[-1], finished, len(todo), time.perf_counter() - t0)
    import pyarrow as pa

    table = pa.concat_tables([out.read_parquet(layer_file(l)) for l in layers])
    out.write_parquet("mi.parquet", table)
    seconds = time.perf_counter() - t0
    log.info("stage 2: done in %.1f s: %s", seconds, out.url("mi.parquet"))
    return EstimateResult(out.url("mi.parquet"), out, table, seconds, len(layers) - len(todo))


def _check_estimator(method: str) -> None:
    from ie_flow.estimators import ESTIMATORS

    try:
        ESTIMATORS[method]
    except (KeyError, ValueError) as e:
        raise IEFlowError(str(e).strip("'\"")) from None


def _estimate_task(store: Storage, manifest: dict[str, Any], layers: list[int], spec: Any, out: Storage,
                   threads: int) -> dict[int, float]:
    import torch

    torch.set_num_threads(max(1, threads))
    return estimate_layer_group(store, manifest, layers, spec, out)
