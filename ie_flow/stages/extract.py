"""Stage 1: run the model over token windows, capture every block boundary with forward hooks,
write Parquet shards straight to storage (activations never travel through Ray's object store)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ie_flow import IEFlowError, __version__
from ie_flow.storage import (
    JOB_SETTINGS, MANIFEST, Storage, activations_dir, boundary_file, done_marker,
)

log = logging.getLogger("ie_flow")
FORMAT = "ie-flow-activations/1"


def activation_schema(d: int, storage_dtype: str) -> Any:
    import pyarrow as pa

    value = pa.float16() if storage_dtype == "float16" else pa.float32()
    return pa.schema([("sample_id", pa.int64()), ("pos", pa.int16()), ("vec", pa.list_(value, d))])


def activation_table(vectors: np.ndarray, sample_id_start: int, storage_dtype: str,
                     positions: list[int] | None = None) -> Any:
    """(m, P, d) array -> rows (sample_id, pos, vec), sample-major; `positions` labels the P
    columns (default 0..P-1)."""
    import pyarrow as pa

    m, n, d = vectors.shape
    flat = np.ascontiguousarray(vectors, dtype=np.float16 if storage_dtype == "float16" else np.float32)
    # zero-copy view of the numpy buffer (pa.array copies float16 element by element: 67 ms a boundary)
    values = pa.Array.from_buffers(pa.from_numpy_dtype(flat.dtype), flat.size, [None, pa.py_buffer(flat)])
    vec = pa.FixedSizeListArray.from_arrays(values, d)
    sample_id = np.repeat(np.arange(sample_id_start, sample_id_start + m, dtype=np.int64), n)
    pos = np.tile(np.asarray(range(n) if positions is None else positions, dtype=np.int16), m)
    return pa.Table.from_arrays([pa.array(sample_id), pa.array(pos), vec], schema=activation_schema(d, storage_dtype))


def kept_positions(selected: list[int] | None, tokens: int) -> list[int]:
    """The positions stage 1 stores: `selected` plus the last one (the macro variable), sorted."""
    if selected is None:
        return list(range(tokens))
    bad = [t for t in selected if not 0 <= t < tokens]
    if bad:
        raise IEFlowError(f"positions must be in 0..{tokens - 1} for {tokens}-token windows, got {bad}")
    return sorted(set(selected) | {tokens - 1})


def manifest_positions(manifest: dict[str, Any]) -> list[int]:
    """Stored positions of a manifest (manifests from before position selection stored all)."""
    return manifest.get("positions") or list(range(manifest["tokens"]))


def table_vectors(table: Any, positions: int) -> np.ndarray:
    """Rows of one boundary back to (samples, positions, d) float32."""
    vec = table.column("vec").combine_chunks()
    d = vec.type.list_size
    flat = vec.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(-1, positions, d)


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


def extract_shard(
    loaded: Any, storage: Storage, shard: int, sample_id_start: int, input_ids: np.ndarray,
    batch_size: int, boundaries: list[int], storage_dtype: str, micro: str, positions: list[int] | None = None,
) -> dict[str, Any]:
    """Capture and write one shard, then its completion marker (written last: a shard without a
    marker is redone on rerun, so a killed job never leaves a half shard that counts)."""
    t0 = time.perf_counter()
    files: dict[str, dict[str, Any]] = {}
    variants = [("", False)] + ([("isolated", True)] if micro == "isolated" else [])
    for variant, isolated in variants:
        vectors = capture_boundaries(loaded, input_ids, batch_size, boundaries, isolated)
        for b in boundaries:
            rel = boundary_file(b, shard, variant)
            kept = vectors[b] if positions is None else vectors[b][:, positions]
            table = activation_table(kept, sample_id_start, storage_dtype, positions)
            digest, size = storage.write_parquet(rel, table)
            files[rel] = {"sha256": digest, "bytes": size, "rows": table.num_rows}
    marker = {
        "shard": shard, "sample_ids": [sample_id_start, sample_id_start + len(input_ids)],
        "sequences": len(input_ids), "files": files,
        "num_blocks": loaded.num_blocks, "hidden_size": loaded.hidden_size, "fingerprint": loaded.fingerprint,
    }
    storage.write_json(done_marker(shard), marker)
    marker["seconds"] = time.perf_counter() - t0
    return marker


class ActivationExtractor:
    """Ray Data callable class: loads the model once per actor, then extracts whole shards.
    Each input row is (shard, start, stop); each output row is small metadata only."""

    def __init__(
        self, model: str, revision: str | None, dtype: str, storage: Storage, input_ids: np.ndarray,
        batch_size: int, boundaries: list[int] | None, storage_dtype: str, micro: str, torch_threads: int,
        seed: int = 0, positions: list[int] | None = None,
    ) -> None:
        import torch

        from ie_flow.models import load_model

        torch.set_num_threads(torch_threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.loaded = load_model(model, revision, device=device, dtype=dtype, seed=seed)
        self.storage, self.input_ids = storage, input_ids
        self.batch_size, self.storage_dtype, self.micro = batch_size, storage_dtype, micro
        self.positions = positions
        self.boundaries = boundaries or list(range(self.loaded.num_blocks + 1))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seconds, sequences = [], []
        for shard, start, stop in zip(batch["shard"], batch["start"], batch["stop"]):
            marker = extract_shard(
                self.loaded, self.storage, int(shard), int(start), self.input_ids[start:stop],
                self.batch_size, self.boundaries, self.storage_dtype, self.micro, self.positions,
            )
            seconds.append(marker["seconds"])
            sequences.append(marker["sequences"])
        import resource

        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        return {"shard": batch["shard"], "sequences": np.array(sequences), "seconds": np.array(seconds),
                "peak_rss_mb": np.full(len(seconds), peak_mb)}


@dataclass
class ExtractResult:
    manifest_uri: str
    manifest: dict[str, Any]
    storage: Storage  # the dataset folder
    seconds: float
    reused: bool
    input_ids: np.ndarray  # the corpus windows (small: tokens, not activations)
    shard_stats: list[dict[str, Any]] = field(default_factory=list)  # per extracted shard: seconds, peak RSS


def boundaries_for_layers(layers: list[int] | None, num_blocks: int | None) -> list[int] | None:
    if layers is None:
        return None
    if num_blocks is not None and any(not 0 <= l < num_blocks for l in layers):
        raise IEFlowError(f"layers must be in 0..{num_blocks - 1}, got {layers}")
    return sorted({b for l in layers for b in (l, l + 1)})


def build_manifest(job: Any, corpus: Any, source: Any, tokenizer: Any, markers: list[dict[str, Any]],
                   boundaries: list[int], positions: list[int]) -> dict[str, Any]:
    """Deterministic (no timestamps): a resumed job writes the same manifest as an uninterrupted one."""
    first = markers[0]
    return {
        "format": FORMAT,
        "complete": True,
        "code_version": __version__,
        "model": {
            "name": job.model.name, "key": source.key, "kind": source.kind, "location": source.location,
            "revision": source.revision, "random_init": source.random_init, "fingerprint": first.get("fingerprint"),
        },
        "tokenizer": {"class": type(tokenizer).__name__, "name_or_path": str(tokenizer.name_or_path),
                      "vocab_size": len(tokenizer)},
        "dataset": {"name": corpus.name, "id": corpus.dataset_id, "digest": corpus.digest,
                    "settings": corpus.settings},
        "samples": corpus.num_samples,
        "tokens": corpus.num_tokens,
        "num_blocks": first["num_blocks"],
        "hidden_size": first["hidden_size"],
        "boundaries": boundaries,
        "positions": positions,
        "storage_dtype": job.extract.storage_dtype,
        "micro": job.extract.micro,
        "prefix_entropy_bits": corpus.prefix_entropy_bits(),
        "shards": [
            {"shard": m["shard"], "sample_ids": m["sample_ids"], "sequences": m["sequences"], "files": m["files"]}
            for m in sorted(markers, key=lambda m: m["shard"])
        ],
    }


def _job_settings(job: Any, corpus: Any) -> dict[str, Any]:
    """What must match for a rerun to reuse finished shards in the same folder."""
    return {
        "model": job.model.name, "revision": job.model.revision, "dtype": job.model.dtype,
        "corpus_digest": corpus.digest, "storage_dtype": job.extract.storage_dtype,
        "micro": job.extract.micro, "layers": job.extract.layers, "positions": job.extract.positions,
        "shard_size": job.extract.shard_size,
        "seed": job.corpus.seed,
    }


def run_extract(job: Any, force: bool = False) -> ExtractResult:
    """Stage 1 on Ray: pending shards -> ActorPoolStrategy actors -> Parquet + markers -> manifest."""
    from ie_flow.config import split_problem
    from ie_flow.corpora import build_corpus
    from ie_flow.models import load_tokenizer, resolve_model

    t0 = time.perf_counter()
    root = Storage(job.storage.uri, job.storage.endpoint_url)
    root.check_writable()
    source = resolve_model(job.model.name, job.model.revision)
    tokenizer = load_tokenizer(job.model.name, job.model.revision)
    corpus = build_corpus(job.corpus, tokenizer, job.storage.endpoint_url)
    problem = split_problem(corpus.num_samples, job.estimate.eval_fraction)
    if problem:  # a text corpus can give fewer windows than asked for
        raise IEFlowError(f"corpus {job.corpus.name} gave {corpus.num_samples} windows: {problem}")
    positions = kept_positions(job.extract.positions, corpus.num_tokens)  # bad positions fail before any work
    store = root.child(activations_dir(source.key, corpus.dataset_id))
    settings = _job_settings(job, corpus)
    if store.exists(JOB_SETTINGS) and not force:
        differ = {k: v for k, v in store.read_json(JOB_SETTINGS).items() if settings.get(k) != v}
        if differ:  # same model and corpus, other extraction settings: never mix or silently reuse
            raise IEFlowError(
                f"{store.url()} holds activations extracted with other settings "
                f"({', '.join(f'{k}={v}' for k, v in differ.items())}); "
                "use another --storage, or `ie-flow extract --force` to replace them"
            )
    if store.exists(MANIFEST) and not force:
        manifest = store.read_json(MANIFEST)
        log.info("stage 1: reusing complete activations at %s", store.url(MANIFEST))
        return ExtractResult(store.url(MANIFEST), manifest, store, time.perf_counter() - t0, True, corpus.input_ids)
    if force:
        store.remove("")
    store.write_json(JOB_SETTINGS, settings)

    n, size = corpus.num_samples, job.extract.shard_size
    shards = [(i, s, min(s + size, n)) for i, s in enumerate(range(0, n, size))]
    pending = [s for s in shards if not store.exists(done_marker(s[0]))]
    boundaries = boundaries_for_layers(job.extract.layers, None)
    log.info(
        "stage 1: %s on %s (%d sequences x %d tokens): %d of %d shards to extract -> %s",
        job.model.name, corpus.dataset_id, n, corpus.num_tokens, len(pending), len(shards), store.url(),
    )
    stored = None if job.extract.positions is None else positions
    stats = _run_actor_pool(job, store, corpus.input_ids, pending, boundaries, stored) if pending else []
    markers = [store.read_json(done_marker(i)) for i, _, _ in shards]
    num_blocks = markers[0]["num_blocks"]
    boundaries = boundaries_for_layers(job.extract.layers, num_blocks) or list(range(num_blocks + 1))
    manifest = build_manifest(job, corpus, source, tokenizer, markers, boundaries, positions)
    store.write_json(MANIFEST, manifest)
    seconds = time.perf_counter() - t0
    log.info("stage 1: done in %.1f s: %s", seconds, store.url(MANIFEST))
    return ExtractResult(store.url(MANIFEST), manifest, store, seconds, False, corpus.input_ids, stats)


def _run_actor_pool(job: Any, store: Storage, input_ids: np.ndarray, pending: list[tuple[int, int, int]],
                    boundaries: list[int] | None, positions: list[int] | None) -> list[dict[str, Any]]:
    """Extract the pending shards on an actor pool; returns one metadata row per shard."""
    import ray
    from tqdm import tqdm

    from ie_flow.runtime import cluster_resources, init_ray, plan_actors

    init_ray(job.runtime.ray_address)
    plan = plan_actors(cluster_resources(), job.extract.num_actors, job.extract.num_gpus_per_actor,
                       job.extract.num_cpus_per_actor)
    plan_n = min(plan.num_actors, len(pending))
    log.info("stage 1: %d actor(s), %g CPU / %g GPU each, %d torch threads",
             plan_n, plan.num_cpus, plan.num_gpus, plan.torch_threads)
    items = [{"shard": i, "start": s, "stop": e} for i, s, e in pending]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ActivationExtractor,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=plan_n),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
        fn_constructor_kwargs={
            "model": job.model.name, "revision": job.model.revision, "dtype": job.model.dtype,
            "storage": store, "input_ids": input_ids, "batch_size": job.extract.batch_size,
            "boundaries": boundaries, "storage_dtype": job.extract.storage_dtype, "micro": job.extract.micro,
            "torch_threads": plan.torch_threads, "seed": job.corpus.seed, "positions": positions,
        },
    )
    total = sum(e - s for _, s, e in pending)
    t0 = time.perf_counter()
    shard_rows = []
    with tqdm(total=total, unit="seq", desc="stage 1 extract", disable=None) as bar:
        for row in ds.iter_rows():
            shard_rows.append(row)
            bar.update(int(row["sequences"]))
    wall = time.perf_counter() - t0
    busy = sum(float(r["seconds"]) for r in shard_rows)
    log.info("stage 1: %d sequences in %.1f s incl. model load (%.0f seq/s while extracting; "
             "actor peak RSS %.0f MiB)", total, wall, total / max(busy, 1e-9),
             max(float(r["peak_rss_mb"]) for r in shard_rows))
    return shard_rows
