"""A job's own inputs on its storage, so a cluster can read them: `ie-flow submit` uploads a local
corpus (file or folder) or model (folder or GGUF file) once, to a content-addressed folder

    {root}/inputs/sha256-{digest}/{name}        the file, or the folder's files
    {root}/inputs/sha256-{digest}/_sha256.json  every file's sha256 and size (written last)

and the submitted spec names that URI. A model at an s3:// URI is downloaded into the cache
(`~/.cache/ie-flow/inputs/sha256-{digest}/{name}`) and every file checked against the sha256
recorded beside it before anything runs."""

from __future__ import annotations

import logging
import os
import posixpath
from pathlib import Path
from typing import Any

from ie_flow import IEFlowError, first_line
from ie_flow.storage import Storage
from ie_flow.store import INPUT_RECORD as RECORD
from ie_flow.store import input_folder

log = logging.getLogger("ie_flow")


def _local_files(path: Path) -> dict[str, Path]:
    """Path inside the inputs folder -> local file: `name` for a file, `name/rel` for a folder's files."""
    if path.is_file():
        return {path.name: path}
    return {f"{path.name}/{p.relative_to(path).as_posix()}": p for p in sorted(path.rglob("*")) if p.is_file()}


def upload_input(root: Storage, path: Path) -> str:
    """Copy a local file or folder to `{root}/inputs/sha256-{digest}/{name}` unless it is already
    there (its record exists); returns that URI."""
    from ie_flow.provenance import file_sha256, files_digest

    files = _local_files(path)
    if not files:
        raise IEFlowError(f"{path} is an empty folder: nothing to upload")
    sums = {rel: file_sha256(p) for rel, p in files.items()}
    digest = files_digest(sums)
    folder = input_folder(root, digest)
    uri = folder.url(path.name)
    try:
        if folder.exists(RECORD):
            log.info("input %s: already on storage at %s", path, uri)
            return uri
        for rel, p in files.items():
            folder.upload_file(rel, p)
        record = {"sha256": digest, "files": {rel: {"sha256": sums[rel], "bytes": files[rel].stat().st_size}
                                              for rel in files}}
        folder.write_json(RECORD, record)  # last: an upload cut short has no record and is done again
    except IEFlowError:
        raise
    except Exception as e:  # noqa: BLE001 - any storage error: one line, before anything is submitted
        raise IEFlowError(f"cannot upload {path} to {folder.url()}: {first_line(e)}") from None
    log.info("input %s: uploaded %d file(s) to %s", path, len(files), uri)
    return uri


def local_corpus(name: str) -> Path | None:
    """The local file or folder a corpus name is, None for a built-in or a URI; a path that does
    not exist is an error (the cluster could not read it either)."""
    from ie_flow.corpora import ICL_CORPORA, check_corpus_name
    from ie_flow.corpora.builtin import BUILTIN_TEXT_CORPORA

    if "://" in name or name in (*ICL_CORPORA, *BUILTIN_TEXT_CORPORA):
        return None
    check_corpus_name(name)
    p = Path(name).expanduser()
    if p.exists():
        return p
    raise IEFlowError(f"corpus not found: {name} (not a built-in name, file or folder on this machine)")


def local_model(name: str) -> Path | None:
    """The local folder or GGUF file a model name (after `random:`) is, None for an alias, hub id or URI."""
    from ie_flow.models import RANDOM_PREFIX

    base = name.removeprefix(RANDOM_PREFIX)
    if "://" in base:
        return None
    p = Path(base).expanduser()
    if p.is_dir() or (p.is_file() and p.suffix == ".gguf"):
        return p
    if base.startswith((".", "/", "~")) or base.endswith(".gguf"):
        raise IEFlowError(f"model path not found: {base}")
    return None


def local_inputs(job: Any) -> dict[str, Path]:
    """What of a job lives on this machine only: {"corpus.name" | "model.name": path}. Checks only."""
    found = {"corpus.name": local_corpus(job.corpus.name), "model.name": local_model(job.model.name)}
    return {k: v for k, v in found.items() if v is not None}


def carry_inputs(job: Any, inputs: dict[str, Path]) -> Any:
    """The job with each local input uploaded to its storage and named by its URI there."""
    from ie_flow.config import JobSpec
    from ie_flow.models import RANDOM_PREFIX

    root = Storage(job.storage.uri, job.storage.endpoint_url)
    tree = job.model_dump(mode="json")
    for dotted, path in inputs.items():
        section, field = dotted.split(".")
        prefix = RANDOM_PREFIX if tree[section][field].startswith(RANDOM_PREFIX) else ""
        tree[section][field] = prefix + upload_input(root, path)
    return JobSpec.model_validate(tree)


def fetch_model(uri: str, endpoint_url: str | None = None) -> Path:
    """A model folder or file at `{folder}/{name}` on storage, as a verified local copy in the cache.
    Every file must match the sha256 its folder's record gives (one line, exit 2, otherwise)."""
    from ie_flow.gguf_packages import cache_dir
    from ie_flow.provenance import files_digest

    parent, name = posixpath.split(uri.rstrip("/"))
    folder = Storage(parent, endpoint_url)
    try:
        record = folder.read_json(RECORD) if folder.exists(RECORD) else None
    except Exception as e:  # noqa: BLE001 - network, credentials
        raise IEFlowError(f"cannot read model {uri}: {first_line(e)}") from None
    if record is None:
        raise IEFlowError(f"model {uri} has no {RECORD} beside it recording its checksums: upload the local "
                          "folder with `ie-flow submit --model PATH`, which records them")
    files = {rel: info for rel, info in record["files"].items() if rel == name or rel.startswith(f"{name}/")}
    address = posixpath.basename(parent)  # sha256-{digest} when ie-flow uploaded it: the record is checked too
    digest = files_digest({rel: info["sha256"] for rel, info in record["files"].items()})
    if not files or (address.startswith("sha256-") and address != f"sha256-{digest}"):
        raise IEFlowError(f"model {uri}: its {RECORD} lists no such file or does not match the folder's "
                          f"content address {address}; upload the model again")
    local = cache_dir() / "inputs" / f"sha256-{digest}"
    for rel, info in files.items():
        _fetch_verified(folder, rel, info["sha256"], local / rel, uri)
    return local / name


def _fetch_verified(folder: Storage, rel: str, sha256: str, dest: Path, uri: str) -> None:
    """Download one file unless the cache holds it with this sha256; a mismatch is an error."""
    from ie_flow.provenance import file_sha256

    if dest.is_file() and file_sha256(dest) == sha256:
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f"{dest.name}.partial-{os.getpid()}")
    try:
        folder.download_file(rel, partial)
    except Exception as e:  # noqa: BLE001 - network, credentials, a missing file
        partial.unlink(missing_ok=True)
        raise IEFlowError(f"cannot download {folder.url(rel)} (model {uri}): {first_line(e)}") from None
    found = file_sha256(partial)
    if found != sha256:
        partial.unlink()
        raise IEFlowError(f"model {uri}: {rel} has sha256 {found[:12]}..., its record says {sha256[:12]}...: "
                          "the copy on storage is damaged; upload the model again")
    os.replace(partial, dest)
