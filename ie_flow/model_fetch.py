"""A model at an `s3://` URI that `ie-flow submit` uploaded (ie_flow/inputs.py): fetched into the local
cache on each node that loads it, every file checked against the sha256 its record holds. Apart from
inputs.py so that models.py can call it without importing what inputs.py needs (corpora, models)."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from ie_flow import IEFlowError, first_line
from ie_flow.storage import Storage
from ie_flow.store import INPUT_RECORD as RECORD


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
