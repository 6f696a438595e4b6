"""A job's own inputs on its storage, so a cluster can read them: `ie-flow submit` uploads a local
corpus (file or folder) or model (folder or GGUF file) once, to a content-addressed folder

    {root}/inputs/sha256-{digest}/{name}        the file, or the folder's files
    {root}/inputs/sha256-{digest}/_sha256.json  every file's sha256 and size (written last)

and the submitted spec names that URI. A model at an s3:// URI is downloaded into the cache
(`~/.cache/ie-flow/inputs/sha256-{digest}/{name}`) and every file checked against the sha256
recorded beside it before anything runs."""

from __future__ import annotations

import logging
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
    from ie_flow.models import RANDOM_PREFIX

    root = Storage(job.storage.uri, job.storage.endpoint_url)
    tree = job.model_dump(mode="json")
    for dotted, path in inputs.items():
        section, field = dotted.split(".")
        prefix = RANDOM_PREFIX if tree[section][field].startswith(RANDOM_PREFIX) else ""
        tree[section][field] = prefix + upload_input(root, path)
    return type(job).model_validate(tree)  # the job's own class: inputs need not import config
