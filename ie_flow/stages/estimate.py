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
from ie_flow.executors import WorkUnit
from ie_flow.results import estimate_cells, mi_rows, mi_table
from ie_flow.store import DatasetFolder, Manifest, ResultsFolder


def run_name(spec: EstimateSpec) -> str:
    """Results folder name: the estimator and a hash of every setting that changes the numbers."""
    keys = {
        "method": spec.method, "seeds": list(spec.seeds), "eval_fraction": spec.eval_fraction,
        "dims": spec.dims, "settings": spec.settings,
    }
    return f"{spec.method}-{hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:8]}"


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
