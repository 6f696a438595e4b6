"""Stage 2's step: for a group of layers, read boundaries l and l+1 from storage and train the
batched MI estimators of every (layer, position) together; one Parquet file per layer. No Ray
here: an executor decides where groups run, and its completion markers make reruns skip layers."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ie_flow.config import EstimateSpec
from ie_flow.emergence import MI_COLUMNS
from ie_flow.estimators.base import MIEstimate, is_saturated
from ie_flow.executors import WorkUnit
from ie_flow.store import DatasetFolder, Manifest, ResultsFolder


def run_name(spec: EstimateSpec, manifest_sha256: str | None, code_version: str) -> str:
    """Results folder name: the estimator and a hash of what the numbers depend on: every setting
    that changes them, the activations read (the manifest's sha256: positions, dtypes, shards) and
    the code that computes them. None for a manifest stage 1 has still to write."""
    keys = {
        "method": spec.method, "seeds": list(spec.seeds), "eval_fraction": spec.eval_fraction,
        "dims": spec.dims, "settings": spec.settings, "manifest_sha256": manifest_sha256, "code": code_version,
    }
    return f"{spec.method}-{hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:8]}"


# per-cell diagnostics kept as columns of the MI table (NaN where an estimator has none)
DIAGNOSTIC_COLUMNS = ("null_bits", "mc_se_bits", "resub_loo_gap_bits", "stability_bits")


def mi_rows(layer: int, position: int, level: str, est: MIEstimate) -> list[dict[str, Any]]:
    """One row per estimator seed (emergence.py computes the spread across seeds); the interval,
    validity, diagnostics and bootstrap replicates belong to the estimate and repeat on its rows."""
    nan = float("nan")
    # closed-form and paper-protocol estimators have no ceiling: never saturated
    ceiling = float("inf") if est.ceiling_bits is None else float(est.ceiling_bits)
    shared = {
        "layer": layer, "position": position, "level": level, "method": est.method,
        "beta": float(est.diagnostics.get("beta", nan)), "ceiling_bits": ceiling,
        "n_train": int(est.n_train), "n_eval": int(est.n_eval), "ci_low": float(est.ci_low),
        "ci_high": float(est.ci_high), "valid": bool(est.valid), "invalid_reason": est.invalid_reason,
        # the critic check (estimators/critic_check.py): which critic resolved the cell, why it is a lower bound
        "critic": est.settings.get("critic"), "lower_bound": est.settings.get("lower_bound"),
        **{k: float(est.diagnostics.get(k, nan)) for k in DIAGNOSTIC_COLUMNS},
        "replicates": [float(v) for v in est.replicate_bits],
    }
    # the estimator's own flag also counts its pool test (halving the negatives lowers it)
    return [{**shared, "seed": int(seed), "bits": float(bits),
             "saturated": bool(est.saturated or is_saturated(bits, ceiling))}
            for seed, bits in zip(est.seeds, est.bits_per_seed)]


def mi_table(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    f64 = pa.float64()
    schema = pa.schema([
        ("layer", pa.int32()), ("position", pa.int16()), ("level", pa.string()), ("method", pa.string()),
        ("seed", pa.int64()), ("bits", f64), ("ceiling_bits", f64), ("saturated", pa.bool_()),
        ("n_train", pa.int64()), ("n_eval", pa.int64()), ("beta", f64), ("ci_low", f64), ("ci_high", f64),
        ("valid", pa.bool_()), ("invalid_reason", pa.string()), ("critic", pa.string()),
        ("lower_bound", pa.string()), *[(k, f64) for k in DIAGNOSTIC_COLUMNS],
        ("replicates", pa.list_(f64)),
    ])
    assert tuple(schema.names) == MI_COLUMNS
    rows = sorted(rows, key=lambda r: (r["layer"], r["level"], r["beta"] if r["beta"] == r["beta"] else -1.0,
                                       r["position"], r["seed"]))
    return pa.Table.from_pylist(rows, schema=schema)


def estimate_cells(xs: np.ndarray, ys: np.ndarray, spec: EstimateSpec, device: str | None = None
                   ) -> list[list[MIEstimate]]:
    """Every cell's estimates: one per β of the smoothed grid, otherwise one."""
    from ie_flow.estimators import estimate_mi_many, get_estimator

    if spec.method == "smoothed":
        return get_estimator("smoothed", **spec.settings).estimate_grid(xs, ys, seeds=tuple(spec.seeds),
                                                                         device=device)
    return [[e] for e in estimate_mi_many(xs, ys, method=spec.method, seeds=tuple(spec.seeds), device=device,
                                          eval_fraction=spec.eval_fraction, drop_constant=True, **spec.settings)]


def estimate_layer_group(
    folder: DatasetFolder, manifest: Manifest, layers: list[int], spec: EstimateSpec, out: ResultsFolder,
    device: str | None = None,
) -> None:
    """Estimate M_l(t) for `layers` (all stored positions) as one batched model; write one file per layer."""
    from ie_flow.estimators import apply_dims

    labels = manifest.positions  # stored column t holds token position labels[t]
    positions = len(labels)
    variants = [("", ("macro", "micro") if manifest.micro == "in_context" else ("macro",))]
    if manifest.micro == "isolated":
        variants.append(("isolated", ("micro",)))
    rows: dict[int, list[dict[str, Any]]] = {l: [] for l in layers}
    for variant, levels in variants:
        cache = {b: folder.read_boundary(manifest, b, variant) for b in sorted({b for l in layers for b in (l, l + 1)})}
        # one fixed projection (seed 0) for every model and seed, so comparisons see the same coordinates
        xs = np.stack([apply_dims(cache[l][:, t], spec.dims, 0) for l in layers for t in range(positions)])
        ys = np.stack([apply_dims(cache[l + 1][:, t], spec.dims, 0) for l in layers for t in range(positions)])
        del cache
        for k, cell in enumerate(estimate_cells(xs, ys, spec, device)):
            layer, position = layers[k // positions], labels[k % positions]
            for est, level in ((e, lv) for e in cell for lv in levels):
                if est.diverged:
                    raise RuntimeError(f"estimator diverged at layer {layer}, position {position}: {est.settings}")
                rows[layer].extend(mi_rows(layer, position, level, est))
    for layer in layers:
        out.storage.write_parquet(out.layer_file(layer), mi_table(rows[layer]))


def layer_units(layers: list[int]) -> list[WorkUnit]:
    return [WorkUnit(f"layer={l:03d}", {"layer": l}) for l in layers]


@dataclass
class EstimateLayers:
    """The stage 2 step: the layers of one call are estimated together as one batched model."""

    folder: DatasetFolder
    manifest: Manifest
    spec: EstimateSpec
    out: ResultsFolder
    name: str = "stage 2 estimate"
    unit: str = "layer"

    def setup(self) -> None:
        """Nothing to load: the activations a group needs are read per group."""

    def run(self, units: list[WorkUnit]) -> list[dict[str, Any]]:
        layers = [u.payload["layer"] for u in units]
        estimate_layer_group(self.folder, self.manifest, layers, self.spec, self.out)
        return [{"layer": l, "file": self.out.layer_file(l)} for l in layers]
