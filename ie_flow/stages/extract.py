"""Stage 1's step: run the model over one shard of token windows, capture every block boundary
with forward hooks, and write the shard's Parquet files straight to storage (activations never
travel through Ray's object store). No Ray here: an executor decides where shards run."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ie_flow import IEFlowError
from ie_flow.executors import UnitDone, WorkUnit
from ie_flow.store import DatasetFolder


def kept_positions(selected: list[int] | None, tokens: int) -> list[int]:
    """The positions stage 1 stores: `selected` plus the last one (the macro variable), sorted."""
    if selected is None:
        return list(range(tokens))
    bad = [t for t in selected if not 0 <= t < tokens]
    if bad:
        raise IEFlowError(f"positions must be in 0..{tokens - 1} for {tokens}-token windows, got {bad}")
    return sorted(set(selected) | {tokens - 1})


def capture_boundaries(
    loaded: Any, input_ids: np.ndarray, batch_size: int, boundaries: list[int], isolated: bool = False
) -> dict[int, np.ndarray]:
    """Forward `input_ids` (m, N) in batches; return {boundary: (m, N, d) float32 numpy}.
    With `isolated`, each token runs alone (after BOS where the model uses one): micro=isolated."""
    import torch

    from ie_flow.models import BlockCapture

    device = next(loaded.model.parameters()).device
    body = loaded.model.base_model  # the blocks without the LM head: its logits are never used
    bos = loaded.bos_token_id
    m, n = input_ids.shape
    rows = input_ids.reshape(-1, 1) if isolated else input_ids
    out = {b: np.empty((rows.shape[0], rows.shape[1], loaded.hidden_size), dtype=np.float32) for b in boundaries}
    step = batch_size * (n if isolated else 1)  # same number of tokens per forward either way
    with torch.inference_mode(), BlockCapture(loaded.blocks) as capture:
        for start in range(0, rows.shape[0], step):
            ids = torch.tensor(rows[start : start + step], device=device)
            if bos is not None:  # BOS is context, not a position we measure
                ids = torch.cat([torch.full((ids.shape[0], 1), bos, device=device, dtype=ids.dtype), ids], 1)
            body(input_ids=ids, use_cache=False)
            if start == 0:
                capture.check_plain_stack()
            states = capture.boundaries()
            skip = 1 if bos is not None else 0
            for b in boundaries:
                out[b][start : start + ids.shape[0]] = states[b][:, skip:].float().cpu().numpy()
    return {b: v.reshape(m, n, -1) for b, v in out.items()}


def shard_units(input_ids: np.ndarray, shard_size: int) -> list[WorkUnit]:
    """One unit per shard of `shard_size` sequences; the unit carries its own token ids."""
    return [
        WorkUnit(f"part-{i:05d}", {"shard": i, "start": start, "input_ids": input_ids[start : start + shard_size]},
                 weight=len(input_ids[start : start + shard_size]))
        for i, start in enumerate(range(0, len(input_ids), shard_size))
    ]


def extract_shard(
    loaded: Any, folder: DatasetFolder, shard: int, sample_id_start: int, input_ids: np.ndarray,
    batch_size: int, boundaries: list[int], storage_dtype: str, micro: str, positions: list[int] | None = None,
) -> dict[str, Any]:
    """Capture and write one shard; returns its record (file checksums, model facts). The record is
    deterministic: a resumed job's completion markers equal an uninterrupted job's."""
    files: dict[str, dict[str, Any]] = {}
    variants = [("", False)] + ([("isolated", True)] if micro == "isolated" else [])
    for variant, isolated in variants:
        vectors = capture_boundaries(loaded, input_ids, batch_size, boundaries, isolated)
        for b in boundaries:
            rel = folder.boundary_file(b, shard, variant)
            kept = vectors[b] if positions is None else vectors[b][:, positions]
            files[rel] = folder.write_boundary(rel, kept, sample_id_start, storage_dtype, positions)
    return {
        "shard": shard, "sample_ids": [sample_id_start, sample_id_start + len(input_ids)],
        "sequences": len(input_ids), "files": files,
        "num_blocks": loaded.num_blocks, "hidden_size": loaded.hidden_size, "fingerprint": loaded.fingerprint,
        **loaded.compute,  # compute_dtype, device: a dataset whose shards disagree is refused
    }


@dataclass(frozen=True)
class ShardRun:
    """What extracting one shard took (run statistics, never in its completion marker)."""

    seconds: float
    peak_rss_mb: float  # the actor process's high-water mark so far


@dataclass
class ExtractShards:
    """The stage 1 step: loads the model once per worker (`setup`), then extracts whole shards."""

    model: str
    revision: str | None
    dtype: str
    seed: int  # weights seed of a `random:` model
    folder: DatasetFolder
    batch_size: int
    boundaries: list[int] | None  # None = every boundary of the model
    storage_dtype: str
    micro: str
    positions: list[int] | None  # None = every position
    name: str = "stage 1 extract"
    unit: str = "seq"

    def setup(self) -> None:
        import torch

        from ie_flow.models import load_model

        device = "cuda" if torch.cuda.is_available() else "cpu"
        # a model on storage (s3://) is fetched into this node's cache and verified there
        self.loaded = load_model(self.model, self.revision, device=device, dtype=self.dtype, seed=self.seed,
                                 endpoint_url=self.folder.storage.endpoint_url)

    def run(self, units: list[WorkUnit]) -> list[UnitDone]:
        boundaries = self.boundaries or list(range(self.loaded.num_blocks + 1))
        records = []
        for u in units:
            t0 = time.perf_counter()
            record = extract_shard(self.loaded, self.folder, u.payload["shard"], u.payload["start"],
                                   u.payload["input_ids"], self.batch_size, boundaries, self.storage_dtype,
                                   self.micro, self.positions)
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
            records.append(UnitDone(record, ShardRun(time.perf_counter() - t0, peak_mb)))
        return records


def boundaries_for_layers(layers: list[int] | None, num_blocks: int | None) -> list[int] | None:
    if layers is None:
        return None
    if num_blocks is not None and any(not 0 <= l < num_blocks for l in layers):
        raise IEFlowError(f"layers must be in 0..{num_blocks - 1}, got {layers}")
    return sorted({b for l in layers for b in (l, l + 1)})
