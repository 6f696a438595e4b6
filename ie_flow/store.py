"""The only module that knows where ie-flow keeps things on storage, and the typed records it
keeps there (docs/ARCHITECTURE.md, "Data on storage"):

    {root}/activations/{model}/{dataset}-{digest8}/manifest.json
        boundary=BBB/part-SSSSS.parquet    (isolated/boundary=... for micro=isolated)
        target.parquet                     a labelled corpus's label and group per sample_id
        _job.json                          settings a rerun must match to reuse finished shards
        _done/UNIT                         completion marker of one unit of work
    {root}/results/{model}/{dataset}-{digest8}/{run}/mi.parquet, summary.json
        layers/layer=LLL.parquet, _done/UNIT
    {root}/inputs/sha256-{digest}/NAME, _sha256.json   a corpus or model `ie-flow submit` uploaded (inputs.py)
    {root}/reproduction/index.json                 what `ie-flow reproduce` ran, cell by cell
        generated/{name}.jsonl                     model-written corpora it generated

Stages, executors, report, tracking and the CLI go through these classes; none of them builds a
path or reads a manifest key by hand."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from ie_flow import IEFlowError
from ie_flow.memory import return_freed_memory
from ie_flow.storage import Storage

MANIFEST = "manifest.json"
TARGET = "target.parquet"
JOB_SETTINGS = "_job.json"
SUMMARY = "summary.json"
MI_TABLE = "mi.parquet"
DONE = "_done"
INPUT_RECORD = "_sha256.json"  # every file's sha256 and size of an uploaded input
FORMAT = "ie-flow-activations/1"


# --- activation rows: sample_id int64, pos int16, vec fixed_size_list<float16|float32>[d] ---------
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


def table_vectors(table: Any, positions: int) -> np.ndarray:
    """Rows of one boundary back to (samples, positions, d) float32."""
    return table_values(table, positions).astype(np.float32, copy=False)


def table_values(table: Any, positions: int) -> np.ndarray:
    """Rows of one boundary as (samples, positions, d) in the stored dtype (float16 stays float16)."""
    vec = table.column("vec").combine_chunks()
    return vec.values.to_numpy(zero_copy_only=False).reshape(-1, positions, vec.type.list_size)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileInfo(_Record):
    sha256: str
    bytes: int
    rows: int


class ShardInfo(_Record):
    shard: int
    sample_ids: list[int]  # [first, end)
    sequences: int
    files: dict[str, FileInfo]  # path inside the dataset folder -> checksum and size
    # what computed it: shards computed in different dtypes or on different devices are never mixed
    compute_dtype: str | None = None
    device: str | None = None


class ModelInfo(_Record):
    name: str
    key: str  # path-safe folder name
    kind: str
    location: str
    revision: str | None = None
    random_init: bool = False
    fingerprint: str | None = None  # sha256 of the weight files, or the hub commit (models.ModelIdentity)


class DatasetInfo(_Record):
    name: str
    id: str  # {name}-{digest8}
    digest: str
    settings: dict[str, Any]


class TargetInfo(_Record):
    """A labelled corpus's per-sequence target, stored beside the activations (target.parquet)."""

    label_names: list[str]  # class index -> what it means
    entropy_bits: float  # H(s) of the stored labels
    # the exact I(s; prefix_t) per stored position where the corpus knows it (icl-coherence), else None
    ceilings_bits: list[float] | None = None
    token_ceilings_bits: list[float] | None = None  # the exact I(s; x_t) of each token alone, where known
    file: FileInfo


@dataclass(frozen=True)
class Target:
    """The labels (and the groups a probe's splits keep whole) of every sample, in sample order."""

    labels: np.ndarray  # (n,) int64 class indices
    groups: np.ndarray  # (n,) int64
    info: TargetInfo


class Manifest(_Record):
    """What stage 1 wrote: deterministic (no timestamps), so a resumed job writes the same bytes."""

    format: str = FORMAT
    complete: bool = True
    code_version: str
    model: ModelInfo
    tokenizer: dict[str, Any]
    dataset: DatasetInfo
    samples: int
    tokens: int
    num_blocks: int
    hidden_size: int
    boundaries: list[int]
    positions: list[int]  # stored token positions; the last one (the macro variable) always
    storage_dtype: str
    micro: str
    prefix_entropy_bits: list[float]
    shards: list[ShardInfo] = []
    target: TargetInfo | None = None  # a labelled corpus's target (target.parquet)

    @property
    def layers(self) -> list[int]:
        """Blocks whose input and output were both captured."""
        have = set(self.boundaries)
        return [l for l in range(self.num_blocks) if l in have and l + 1 in have]

    def without_shards(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"shards"})

    def sha256(self) -> str:
        """The manifest's identity: sha256 of the bytes `DatasetFolder.write_manifest` writes (positions,
        dtypes, shards and their checksums): stage 2 keys its results folder on it."""
        from ie_flow.storage import json_bytes, sha256

        # an unlabelled corpus's manifest keeps the identity it had before targets existed
        return sha256(json_bytes(self.model_dump(mode="json", exclude={"target"} if self.target is None else None)))


@dataclass(frozen=True)
class DatasetFolder:
    """activations/{model}/{dataset}: one model's activations on one corpus."""

    storage: Storage

    @property
    def manifest_uri(self) -> str:
        return self.storage.url(MANIFEST)

    @staticmethod
    def boundary_file(boundary: int, shard: int, variant: str = "") -> str:
        """variant "" = in-context activations; "isolated" = each token run alone (micro=isolated)."""
        rel = f"boundary={boundary:03d}/part-{shard:05d}.parquet"
        return posixpath.join(variant, rel) if variant else rel

    def write_boundary(self, rel: str, vectors: np.ndarray, sample_id_start: int, storage_dtype: str,
                       positions: list[int] | None) -> dict[str, Any]:
        """Write (m, P, d) vectors of one boundary and shard; returns the file's checksum record."""
        table = activation_table(vectors, sample_id_start, storage_dtype, positions)
        digest, size = self.storage.write_parquet(rel, table)
        return {"sha256": digest, "bytes": size, "rows": table.num_rows}

    def read_boundary(self, manifest: Manifest, boundary: int, variant: str = "") -> np.ndarray:
        """All shards of one boundary as (samples, positions, d) float32, in sample order."""
        import pyarrow as pa

        table = pa.concat_tables([self.read_verified(rel, s.files[rel].sha256) for s in manifest.shards
                                  for rel in [self.boundary_file(boundary, s.shard, variant)]])
        positions = len(manifest.positions)
        if table.num_rows != manifest.samples * positions:
            raise IEFlowError(
                f"boundary {boundary} has {table.num_rows} rows, manifest says {manifest.samples} x {positions} "
                "positions: the activations are damaged; rerun `ie-flow extract --force`")
        return table_vectors(table, positions)

    def read_cells(self, manifest: Manifest, cells: list[tuple[int, int]], variant: str = "") -> np.ndarray:
        """(len(cells), samples, d) in the stored dtype: cell (boundary, t) is stored column t of
        that boundary. Read shard by shard (each file once, its sha256 checked), so the memory is
        the result plus one shard's table: never a whole boundary, never float32."""
        columns = len(manifest.positions)
        dtype = np.float16 if manifest.storage_dtype == "float16" else np.float32
        out = np.empty((len(cells), manifest.samples, manifest.hidden_size), dtype=dtype)
        for boundary in sorted({b for b, _ in cells}):
            mine = [(k, t) for k, (b, t) in enumerate(cells) if b == boundary]
            start = 0
            for shard in manifest.shards:
                rel = self.boundary_file(boundary, shard.shard, variant)
                block = table_values(self.read_verified(rel, shard.files[rel].sha256), columns)
                if start + len(block) > manifest.samples or block.shape[1:] != (columns, manifest.hidden_size):
                    break
                for k, t in mine:
                    out[k, start : start + len(block)] = block[:, t]
                start += len(block)
                del block
            if start != manifest.samples:
                raise IEFlowError(
                    f"boundary {boundary} does not hold {manifest.samples} x {columns} positions x "
                    f"{manifest.hidden_size} values as the manifest says: the activations are damaged; "
                    "rerun `ie-flow extract --force`")
        return_freed_memory()  # the shards' decoded pages, else kept by the allocators for the whole task
        return out

    def _checksum_problem(self, rel: str, data: bytes, sha256: str) -> str | None:
        from ie_flow.storage import sha256 as digest

        found = digest(data)
        return None if found == sha256 else \
            f"{self.storage.url(rel)} is damaged (sha256 {found[:12]}..., the manifest says {sha256[:12]}...)"

    def file_problem(self, rel: str, sha256: str) -> str | None:
        """Why the file at `rel` is not the one whose checksum is `sha256`, or None when it is."""
        if not self.storage.exists(rel):
            return f"{self.storage.url(rel)} is missing"
        return self._checksum_problem(rel, self.storage.read_bytes(rel), sha256)

    def read_verified(self, rel: str, sha256: str) -> Any:
        """A shard file as a table, after checking its bytes against the manifest's sha256."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        data = self.storage.read_bytes(rel)
        problem = self._checksum_problem(rel, data, sha256)
        if problem:
            raise IEFlowError(f"{problem}; re-extract it with `ie-flow extract --repair` and the job's options")
        return pq.read_table(pa.BufferReader(data))

    def write_target(self, labels: np.ndarray, groups: np.ndarray | None, label_names: list[str],
                     ceilings_bits: list[float] | None, token_ceilings_bits: list[float] | None = None) -> TargetInfo:
        """target.parquet (sample_id, label, group); returns what the manifest records of it."""
        import pyarrow as pa

        from ie_flow.estimators.probe import label_entropy_bits

        n = len(labels)
        groups = np.arange(n, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
        table = pa.table({"sample_id": np.arange(n, dtype=np.int64), "label": np.asarray(labels, dtype=np.int64),
                          "group": groups})
        digest, size = self.storage.write_parquet(TARGET, table)
        return TargetInfo(label_names=label_names, entropy_bits=label_entropy_bits(labels), ceilings_bits=ceilings_bits,
                          token_ceilings_bits=token_ceilings_bits, file=FileInfo(sha256=digest, bytes=size, rows=n))

    def read_target(self, manifest: Manifest) -> Target:
        """The stored target, its sha256 checked; a clear error when the corpus had none."""
        if manifest.target is None:
            raise IEFlowError(f"{self.manifest_uri}: corpus {manifest.dataset.name} has no per-sequence label, "
                              "which a target measure needs (icl-coherence, or a JSONL/Parquet corpus with "
                              "--label-field)")
        table = self.read_verified(TARGET, manifest.target.file.sha256)
        if table.num_rows != manifest.samples:
            raise IEFlowError(f"{self.storage.url(TARGET)} has {table.num_rows} rows, the manifest says "
                              f"{manifest.samples} samples: rerun `ie-flow extract --force`")
        return Target(table.column("label").to_numpy(), table.column("group").to_numpy(), manifest.target)

    def has_manifest(self) -> bool:
        return self.storage.exists(MANIFEST)

    def remove_manifest(self) -> None:
        self.storage.remove(MANIFEST)

    def write_manifest(self, manifest: Manifest) -> None:
        self.storage.write_json(MANIFEST, manifest.model_dump(mode="json"))

    def load_manifest(self) -> Manifest:
        """A complete manifest, or a clear error saying what is missing and how to finish it."""
        if not self.has_manifest():
            done = len(self.storage.list(DONE))
            state = f"{done} shard(s) finished, no manifest" if done else "no activations"
            raise IEFlowError(f"{self.storage.url()} holds an incomplete extraction ({state}); "
                              "finish it with `ie-flow extract` first")
        manifest = Manifest.model_validate(self.storage.read_json(MANIFEST))
        if not manifest.complete:
            raise IEFlowError(f"manifest {self.manifest_uri} is not marked complete; rerun `ie-flow extract`")
        return manifest

    def job_settings(self) -> dict[str, Any] | None:
        return self.storage.read_json(JOB_SETTINGS) if self.storage.exists(JOB_SETTINGS) else None

    def write_job_settings(self, settings: dict[str, Any]) -> None:
        self.storage.write_json(JOB_SETTINGS, settings)

    def clear(self) -> None:
        """Remove everything but the lock of the job that clears it."""
        from ie_flow.locks import LOCK

        for name in self.storage.list(""):
            if name != LOCK:
                self.storage.remove(name)


@dataclass(frozen=True)
class ResultsFolder:
    """results/{model}/{dataset}/{run}: one estimator run on one dataset folder."""

    storage: Storage

    @staticmethod
    def layer_file(layer: int) -> str:
        return f"layers/layer={layer:03d}.parquet"

    @property
    def mi_uri(self) -> str:
        return self.storage.url(MI_TABLE)

    def gather_layers(self, layers: list[int]) -> Any:
        """Concatenate the per-layer tables into mi.parquet; returns the table."""
        import pyarrow as pa

        table = pa.concat_tables([self.storage.read_parquet(self.layer_file(l)) for l in layers])
        self.storage.write_parquet(MI_TABLE, table)
        return table

    def has_summary(self) -> bool:
        return self.storage.exists(SUMMARY)

    def write_summary(self, record: Any) -> None:
        """summary.json from the typed record (results.ResultsRecord)."""
        self.storage.write_json(SUMMARY, record.model_dump(mode="json"))

    def load(self) -> tuple[dict[str, Any], Any]:
        """(summary.json's content, MI table) of a finished run, or a clear error (results.load_results types them)."""
        if not self.has_summary():
            if self.storage.exists("layers"):
                raise IEFlowError(f"{self.storage.url()} is an unfinished stage 2 (no {SUMMARY}); rerun the job")
            raise IEFlowError(f"no ie-flow results at {self.storage.url()} (no {SUMMARY})")
        return self.storage.read_json(SUMMARY), self.storage.read_parquet(MI_TABLE)


class ReproductionEntry(BaseModel):
    """One measurement of a reproduction cell: a results folder and its MLflow run."""

    model_config = ConfigDict(extra="ignore")

    experiment: str
    cell: str
    estimator: str
    tags: dict[str, Any]  # what the report groups cells by (corpus, shots, model, writer...)
    results_uri: str  # mi.parquet of the measurement
    mlflow_run_id: str | None = None
    seconds: float = 0.0
    job_digest: str = ""  # the cell's job settings: a changed workflow reruns the cell


class ReproductionIndex(BaseModel):
    """reproduction/index.json: every measurement `ie-flow reproduce` finished, the generated
    corpora, and the MLflow parent run the cells are children of. Rewritten after each cell, so an
    interrupted reproduction resumes where it stopped."""

    model_config = ConfigDict(extra="ignore")

    parent_run_id: str | None = None
    tracking_uri: str | None = None
    entries: dict[str, ReproductionEntry] = {}  # key: experiment/cell/estimator
    generated: dict[str, dict[str, Any]] = {}  # name: {uri, seconds, metadata}
    failed: dict[str, str] = {}  # experiment/cell: the error of its last attempt
    seconds: dict[str, float] = {}  # wall seconds per experiment, last run


class StorageRoot:
    """A storage root holding activations and results folders."""

    def __init__(self, uri: str, endpoint_url: str | None = None) -> None:
        self.storage = Storage(uri, endpoint_url)

    def load_reproduction(self) -> ReproductionIndex:
        rel = "reproduction/index.json"
        return ReproductionIndex.model_validate(self.storage.read_json(rel)) if self.storage.exists(rel) else ReproductionIndex()

    def save_reproduction(self, index: ReproductionIndex) -> None:
        self.storage.write_json("reproduction/index.json", index.model_dump(mode="json"))

    def relative(self, uri: str) -> str | None:
        """`uri` as a path under this root ("results/MODEL/..."), None when it is not under it: what a
        report records, so it stays true when the root is copied or mounted elsewhere."""
        root = self.storage.url().rstrip("/") + "/"
        return uri[len(root):] if uri.startswith(root) else None

    def generated_corpus_uri(self, name: str) -> str:
        return self.storage.url("reproduction", "generated", f"{name}.jsonl")

    def activations(self, model_key: str, dataset_id: str) -> DatasetFolder:
        return DatasetFolder(self.storage.child("activations", model_key, dataset_id))

    def results(self, model_key: str, dataset_id: str, run: str) -> ResultsFolder:
        return ResultsFolder(self.storage.child("results", model_key, dataset_id, run))

    def latest_results(self) -> ResultsFolder:
        """The most recently finished results folder under this root."""
        fs = self.storage.fs
        found = fs.glob(self.storage.path("results", "*", "*", "*", SUMMARY))
        if not found:
            raise IEFlowError(f"no finished ie-flow job under {self.storage.url()}; run `ie-flow run` first")
        newest = max(found, key=fs.modified)
        folder = posixpath.dirname(newest)
        return ResultsFolder(Storage(("s3://" if self.storage.is_s3 else "") + folder, self.storage.endpoint_url))


def input_folder(root: Storage, digest: str) -> Storage:
    """{root}/inputs/sha256-{digest}: a content-addressed upload of a job's own corpus or model."""
    return root.child("inputs", f"sha256-{digest}")


def dataset_folder(uri: str, endpoint_url: str | None = None) -> tuple[DatasetFolder, str]:
    """The dataset folder a manifest URI (or the folder itself) names, and its storage root URI."""
    folder = uri[: -len("/" + MANIFEST)] if uri.endswith("/" + MANIFEST) else uri.rstrip("/")
    parts = folder.split("/")
    if len(parts) < 4 or parts[-3] != "activations":
        raise IEFlowError(f"{uri!r} is not an activations folder ({{root}}/activations/MODEL/DATASET)")
    return DatasetFolder(Storage(folder, endpoint_url)), "/".join(parts[:-3]) or "/"


def results_folder(uri: str, endpoint_url: str | None = None) -> ResultsFolder:
    """A results folder from its URI, or the URI of its mi.parquet / summary.json."""
    for name in (MI_TABLE, SUMMARY):
        if uri.endswith("/" + name):
            uri = uri[: -len(name) - 1]
    folder = ResultsFolder(Storage(uri, endpoint_url))
    if not folder.storage.exists(""):
        raise IEFlowError(f"{uri!r} is neither an MLflow run id nor a results folder")
    return folder
