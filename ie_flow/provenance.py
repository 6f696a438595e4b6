"""What a result was computed from, as digests: the code that computes MI (`code_version`) and the
bytes of files (`file_sha256`, `files_digest`: weights, uploaded inputs). Stage 1 keys its reuse on
the weights' digest, stage 2 its results folder on the manifest's digest and the code version."""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import ie_flow

# the sources whose change can change an MI number: every estimator and the stage-2 step
ESTIMATOR_SOURCES = ("estimators", "stages/estimate.py")
CHUNK = 1 << 20


@lru_cache(maxsize=None)
def estimator_source_digest(package: str | None = None) -> str:
    """sha256 over the estimator sources (path and bytes of each .py file, in name order), computed
    once per process: a results folder written by other estimator code is never reused."""
    root = Path(package or Path(ie_flow.__file__).parent)
    files: list[Path] = []
    for rel in ESTIMATOR_SOURCES:
        p = root / rel
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def code_version() -> str:
    """The package version plus the estimator sources' digest, e.g. "0.2.0+est.1a2b3c4d5e6f"."""
    return f"{ie_flow.__version__}+est.{estimator_source_digest()[:12]}"


def _cache_file(path: Path, st: os.stat_result) -> Path:
    from ie_flow.gguf_packages import cache_dir

    key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    return cache_dir() / "sha256" / key


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, cached by (path, size, mtime): a 500 MB GGUF is hashed once, and a file
    rewritten in place (a checkpoint retrained at the same path) is hashed again."""
    p = Path(path).resolve()
    st = p.stat()
    cached = _cache_file(p, st)
    if cached.is_file():
        return cached.read_text().strip()
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    digest = h.hexdigest()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
        tmp.write_text(digest + "\n")
        os.replace(tmp, cached)
    except OSError:  # a read-only cache only costs the hash again next time
        pass
    return digest


def files_digest(sha256_by_name: dict[str, str]) -> str:
    """One digest for a set of files: sha256 of their sorted names and sha256s."""
    return hashlib.sha256(json.dumps(sorted(sha256_by_name.items())).encode()).hexdigest()
