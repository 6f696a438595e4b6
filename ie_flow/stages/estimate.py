"""Stage 2's step: for a group of layers, read boundaries l and l+1 from storage and train the
batched MI estimators of every (layer, position) together; one Parquet file per layer. No Ray
here: an executor decides where groups run, and its completion markers make reruns skip layers."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ie_flow import IEFlowError
from ie_flow.config import EstimateSpec
from ie_flow.executors import UnitDone, WorkUnit
from ie_flow.memory import PeakRSS
from ie_flow.results import estimate_cells, mi_rows, mi_table
from ie_flow.store import DatasetFolder, Manifest, ResultsFolder

log = logging.getLogger("ie_flow")


def run_name(spec: EstimateSpec, manifest_sha256: str | None, code_version: str) -> str:
    """Results folder name: the estimator and a hash of what the numbers depend on: every setting
    that changes them, the activations read (the manifest's sha256: positions, dtypes, shards) and
    the code that computes them. None for a manifest stage 1 has still to write."""
    keys = {
        "method": spec.method, "seeds": list(spec.seeds), "eval_fraction": spec.eval_fraction,
        "dims": spec.dims, "settings": spec.settings, "manifest_sha256": manifest_sha256, "code": code_version,
    }
    return f"{spec.method}-{hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:8]}"


# a stage-2 worker's resident memory before it reads anything (torch, pyarrow, Ray's worker):
# measured at the start of its first task (benchmarks/bench_scale.py), rounded up
WORKER_BYTES = 768 * 2**20


@dataclass(frozen=True)
class BatchRun:
    """One batch of cells a stage-2 task estimated at once: its planned bytes beside its measured peak."""

    activations: str  # "" (in context) or "isolated": the stored activations it read
    cells: int
    layers: list[int]
    first_cell: tuple[int, int]  # (layer, stored column): names the batch
    planned_bytes: int
    budget_bytes: int | None
    peak_rss_bytes: int = 0


@dataclass(frozen=True)
class TaskPlan:
    """Planned bytes of a stage-2 task: the worker, what the estimator holds on the cells'
    ((layer, position) pairs') x and y stacks, and the stored stacks a conversion is made from
    (docs/ARCHITECTURE.md, "Stage 2 memory")."""

    estimator: Any
    samples: int
    width: int  # d after `estimate.dims`
    cell_itemsize: int  # bytes per value handed to the estimator (2: the stored float16 as is)
    eval_fraction: float
    read_per_cell: int  # the stored stacks alive while a converted or narrowed copy is made

    def bytes(self, cells: int) -> int:
        held = self.estimator.memory_plan(cells, self.samples, self.width, self.width, self.cell_itemsize,
                                          self.eval_fraction)
        return WORKER_BYTES + held + cells * self.read_per_cell

    def cells_within(self, budget: int | None, total: int) -> int:
        """How many cells a task estimates at once under `budget` (all of them without one)."""
        if budget is None:
            return total
        if self.bytes(1) > budget:
            raise IEFlowError(
                f"estimate.memory_budget {budget / 2**30:.2f} GiB is too small for one cell: one (layer, position) "
                f"pair of {self.samples} samples x d={self.width} needs {self.bytes(1) / 2**30:.2f} GiB "
                f"(of which {WORKER_BYTES / 2**30:.2f} GiB is the worker itself); raise --memory-budget, "
                "or use fewer samples or `estimate.dims`")
        fit = 1
        while fit < total and self.bytes(fit + 1) <= budget:
            fit += 1
        return fit


def task_plan(spec: EstimateSpec, samples: int, d: int, storage_dtype: str) -> TaskPlan:
    """The planned bytes of a task estimating `spec` on `samples` x `d` activations."""
    from ie_flow.estimators import get_estimator, parse_dims

    est = get_estimator(spec.method, **spec.settings)
    kind, k = parse_dims(spec.dims)
    width = d if kind == "full" else min(int(k or d), d)
    stored = 2 if storage_dtype == "float16" else 4
    itemsize = stored if type(est).takes_float16 and kind != "project" else 4
    read = 0 if (kind == "full" and itemsize == stored) else samples * 2 * d * stored
    return TaskPlan(est, samples, width, itemsize, spec.eval_fraction, read)


def check_memory_budget(spec: EstimateSpec, samples: int, d: int, storage_dtype: str) -> None:
    """Fail before any work when the budget cannot hold one cell."""
    if spec.memory_budget is not None:
        task_plan(spec, samples, d, storage_dtype).cells_within(spec.memory_budget, 1)


def read_cell_stacks(folder: DatasetFolder, manifest: Manifest, cells: list[tuple[int, int]], spec: EstimateSpec,
                     variant: str, itemsize: int) -> tuple[np.ndarray, np.ndarray]:
    """(P, n, d) x and y stacks of `cells` ((layer, stored column) pairs) as the estimator takes
    them: boundaries l and l + 1, straight from the Parquet shards; float16 stays float16 where it can."""
    xs = read_boundary_stacks(folder, manifest, cells, spec, variant, itemsize)
    ys = read_boundary_stacks(folder, manifest, [(l + 1, t) for l, t in cells], spec, variant, itemsize)
    return xs, ys


def read_boundary_stacks(folder: DatasetFolder, manifest: Manifest, cells: list[tuple[int, int]],
                         spec: EstimateSpec, variant: str, itemsize: int) -> np.ndarray:
    """(P, n, d) stack of `cells` ((boundary, stored column) pairs) after `estimate.dims`."""
    from ie_flow.estimators import apply_dims

    stack = folder.read_cells(manifest, cells, variant)
    if spec.dims != "full" or stack.dtype.itemsize != itemsize:
        # one fixed projection (seed 0) for every model and seed, so comparisons see the same coordinates
        dtype = np.float32 if itemsize == 4 else stack.dtype
        first = apply_dims(stack[0].astype(dtype, copy=False), spec.dims, 0)
        narrow = np.empty((len(stack), *first.shape), dtype=first.dtype)  # filled cell by cell: one copy
        narrow[0] = first
        for k in range(1, len(stack)):
            narrow[k] = apply_dims(stack[k].astype(dtype, copy=False), spec.dims, 0)
        stack = narrow
    return stack


def side_keys(cells: list[tuple[int, int]], variant: str) -> np.ndarray:
    """(cells, 2) names of each cell's X and Y side: (variant, boundary, stored column), so that a model
    and its control measured on the same windows draw the same noise for the same side (common
    random numbers: their difference is then free of the draw's variability)."""
    code = lambda boundary, t: (int(variant == "isolated") << 40) | (boundary << 20) | t  # noqa: E731
    return np.array([[code(l, t), code(l + 1, t)] for l, t in cells], dtype=np.int64)


def estimate_layer_group(
    folder: DatasetFolder, manifest: Manifest, layers: list[int], spec: EstimateSpec, out: ResultsFolder,
    device: str | None = None, budget: int | None = None,
) -> list[BatchRun]:
    """Estimate M_l(t) for `layers` (all stored positions) and write one file per layer. The
    cells (layer, position) go to the estimator in batches that fit `budget` (one batched model
    each; all of them in one when it allows, as without a budget), each read from storage
    just before and freed after. Returns the planned and measured peak bytes of every batch."""
    if spec.estimator().measures_target:
        return estimate_target_group(folder, manifest, layers, spec, out, device, budget)
    labels = manifest.positions  # stored column t holds token position labels[t]
    variants = [("", ("macro", "micro") if manifest.micro == "in_context" else ("macro",))]
    if manifest.micro == "isolated":
        variants.append(("isolated", ("micro",)))
    plan = task_plan(spec, manifest.samples, manifest.hidden_size, manifest.storage_dtype)
    cells = [(l, t) for l in layers for t in range(len(labels))]
    size = plan.cells_within(budget, len(cells))
    rows: dict[int, list[dict[str, Any]]] = {l: [] for l in layers}
    batches = []
    for variant, levels in variants:
        for batch in (cells[i : i + size] for i in range(0, len(cells), size)):
            with PeakRSS() as peak:
                xs, ys = read_cell_stacks(folder, manifest, batch, spec, variant, plan.cell_itemsize)
                estimates = estimate_cells(xs, ys, spec, device, side_keys(batch, variant))
                del xs, ys
            run = BatchRun(variant, len(batch), sorted({l for l, _ in batch}), batch[0], plan.bytes(len(batch)),
                           budget, peak.bytes)
            batches.append(run)
            log.info("stage 2 task: layers %s, %d cell(s)%s: planned %.0f MiB, peak RSS %.0f MiB%s", run.layers,
                     len(batch), f" ({variant})" if variant else "", run.planned_bytes / 2**20,
                     peak.bytes / 2**20, "" if budget is None else f" (budget {budget / 2**20:.0f} MiB)")
            for (layer, t), cell in zip(batch, estimates):
                for est, level in ((e, lv) for e in cell for lv in levels):
                    if est.diverged:
                        raise RuntimeError(f"estimator diverged at layer {layer}, position {labels[t]}: {est.settings}")
                    rows[layer].extend(mi_rows(layer, labels[t], level, est))
    for layer in layers:
        out.storage.write_parquet(out.layer_file(layer), mi_table(rows[layer]))
    return batches


def estimate_target_group(
    folder: DatasetFolder, manifest: Manifest, layers: list[int], spec: EstimateSpec, out: ResultsFolder,
    device: str | None = None, budget: int | None = None,
) -> list[BatchRun]:
    """A target measure's layers (docs/METHOD.md section 8): layer l's macro row at position t is the
    measure at boundary l + 1 (block l's output), and its micro row at t the measure at boundary 0
    (token t's embedding, which depends on that token alone), estimated once per call and the same
    in every layer. Batches and files as `estimate_layer_group`."""
    if 0 not in manifest.boundaries:
        raise IEFlowError(f"{manifest.model.name} on {manifest.dataset.id}: a target measure needs boundary 0 "
                          "(the embeddings, its micro term): extract with block 0 among --layers")
    est, target, positions = spec.estimator(), folder.read_target(manifest), manifest.positions
    plan = task_plan(spec, manifest.samples, manifest.hidden_size, manifest.storage_dtype)
    cells = [(0, t) for t in range(len(positions))] + [(l + 1, t) for l in layers for t in range(len(positions))]
    # what a cell can hold at most: boundary 0 sees its token alone, later boundaries the prefix
    token_ceilings, prefix_ceilings = target.info.token_ceilings_bits, target.info.ceilings_bits
    size = plan.cells_within(budget, len(cells))
    found: dict[tuple[int, int], list[Any]] = {}
    batches = []
    for batch in (cells[i : i + size] for i in range(0, len(cells), size)):
        with PeakRSS() as peak:
            xs = read_boundary_stacks(folder, manifest, batch, spec, "", plan.cell_itemsize)
            estimates = est.estimate_target_cells(xs, target.labels, target.groups,
                                                  [_ceiling(token_ceilings if b == 0 else prefix_ceilings, t)
                                                   for b, t in batch],
                                                  seeds=tuple(spec.seeds), device=device)
            del xs
        batches.append(BatchRun("", len(batch), sorted({max(b - 1, 0) for b, _ in batch} & set(layers)), batch[0],
                                plan.bytes(len(batch)), budget, peak.bytes))
        log.info("stage 2 task (%s): boundaries %s, %d cell(s): planned %.0f MiB, peak RSS %.0f MiB", spec.method,
                 sorted({b for b, _ in batch}), len(batch), batches[-1].planned_bytes / 2**20, peak.bytes / 2**20)
        found.update(zip(batch, estimates))
    for layer in layers:
        rows = [row for t in range(len(positions)) for level, boundary in (("macro", layer + 1), ("micro", 0))
                for e in found[(boundary, t)] for row in mi_rows(layer, positions[t], level, e)]
        out.storage.write_parquet(out.layer_file(layer), mi_table(rows))
    return batches


def _ceiling(per_column: list[float] | None, t: int) -> float | None:
    return None if per_column is None else per_column[t]


def layer_units(layers: list[int]) -> list[WorkUnit]:
    return [WorkUnit(f"layer={l:03d}", {"layer": l}) for l in layers]


@dataclass
class EstimateLayers:
    """The stage 2 step: the layers of one call are estimated together, as one batched model
    when `budget` (bytes per worker; None: no limit) allows, else in batches of cells that fit it.
    A layer stays the unit of completion, so a rerun skips the layers already written."""

    folder: DatasetFolder
    manifest: Manifest
    spec: EstimateSpec
    out: ResultsFolder
    budget: int | None = None
    name: str = "stage 2 estimate"
    unit: str = "layer"

    def setup(self) -> None:
        """Nothing to load: the activations a group needs are read per batch of cells."""

    def run(self, units: list[WorkUnit]) -> list[UnitDone]:
        layers = [u.payload["layer"] for u in units]
        batches = estimate_layer_group(self.folder, self.manifest, layers, self.spec, self.out, budget=self.budget)
        # a layer's statistics: the batches that estimated its cells (a batch may span layers)
        return [UnitDone({"layer": l, "file": self.out.layer_file(l)}, [b for b in batches if l in b.layers])
                for l in layers]
