"""A killed extraction resumes: finished shards are kept (completion markers), the rest are
extracted, and the result is byte-for-byte the result of an uninterrupted run - same manifest, same
Parquet bytes, every (sample_id, pos) row exactly once. A rerun of a finished job reuses it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from processes import stop_processes

pytestmark = pytest.mark.integration

SAMPLES = 3072
SHARD = 64
SHARDS = SAMPLES // SHARD  # 48
TOKENS = 8  # icl-countries, 4 shots
KILL_AFTER = 6  # markers seen before the SIGKILL


@contextlib.contextmanager
def _background(cmd: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen]:
    """A process in its own process group (and so its own local Ray runtime); SIGKILLed as a
    group if still running at exit, Ray's daemons included (they die with their driver)."""
    import psutil

    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            family = psutil.Process(proc.pid).children(recursive=True)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
            stop_processes(family, grace=0)  # Ray's processes die with their driver; make sure


def _files(folder: Path) -> dict[str, Path]:
    """Relative path -> file, leaving out a killed writer's temporary files (never read by anyone)."""
    return {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file() and ".tmp-" not in p.name}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dataset_folder(root: Path) -> Path:
    found = list(root.glob("activations/*/*"))
    assert len(found) == 1, found
    return found[0]


def test_killed_extraction_resumes_to_identical_bytes(tiny_llama, cli, base_env, ie_flow_bin, tmp_path):
    import psutil

    workflow = tmp_path / "resume.yaml"
    workflow.write_text(f"extract:\n  shard_size: {SHARD}\n  batch_size: 16\n  storage_dtype: float16\n")
    args = ["extract", str(workflow), "--model", str(tiny_llama), "--corpus", "icl-countries",
            "--samples", str(SAMPLES), "--json"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"

    # the uninterrupted reference run goes on meanwhile, into another storage root
    with _background([ie_flow_bin, *args, "--storage", str(clean)], base_env(), tmp_path) as reference_proc:
        # 1. start, wait for some (not all) completion markers, SIGKILL the whole process group
        with _background([ie_flow_bin, *args, "--storage", str(killed)], base_env(), tmp_path) as proc:
            deadline = time.monotonic() + 300
            done: list[Path] = []
            while time.monotonic() < deadline and proc.poll() is None:
                done = list(killed.glob("activations/*/*/_done/part-*"))
                if len(done) >= KILL_AFTER:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, f"extraction ended before it could be killed:\n{proc.communicate()[1][-3000:]}"
            assert len(done) >= KILL_AFTER, "no completion marker appeared within 300 s"
            family = psutil.Process(proc.pid).children(recursive=True)  # Ray's daemons and workers
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
            stop_processes(family, grace=0)

        folder = _dataset_folder(killed)
        markers_before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (folder / "_done").iterdir()}
        assert KILL_AFTER <= len(markers_before) < SHARDS, f"{len(markers_before)} of {SHARDS} shards were done"
        assert not (folder / "manifest.json").exists(), "a killed job must not leave a manifest claiming completeness"
        finished_parts = {rel: p.stat().st_mtime_ns for rel, p in _files(folder).items()
                          if rel.endswith(".parquet") and f"part-{rel.rsplit('part-', 1)[1][:5]}" in markers_before}
        assert len(finished_parts) == 3 * len(markers_before)  # boundaries 0, 1, 2 of every finished shard

        # an incomplete extraction is refused by stage 2 with a clear message
        refused = cli("estimate", str(folder / "manifest.json"), "--estimator", "gaussian", "--no-tracking")
        assert refused.returncode == 2, refused.describe()
        assert len(refused.error_lines()) == 1 and "incomplete" in refused.error_lines()[0], refused.describe()

        # 2. rerun: it finishes, and the shards that were done are not redone
        resumed = cli(*args, "--storage", str(killed), timeout=400).json()
        assert resumed["reused"] is False and resumed["samples"] == SAMPLES
        for name, (mtime, data) in markers_before.items():
            marker = folder / "_done" / name
            assert marker.stat().st_mtime_ns == mtime and marker.read_bytes() == data, f"shard {name} was redone"
        for rel, mtime in finished_parts.items():
            assert (folder / rel).stat().st_mtime_ns == mtime, f"{rel} of a finished shard was rewritten"

        try:
            out, err = reference_proc.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            pytest.fail("the uninterrupted reference extraction ran past 400 s")
        assert reference_proc.returncode == 0, err[-4000:]
        reference = json.loads(out)

    # 3. the uninterrupted run gave the same bytes
    assert reference["corpus_digest"] == resumed["corpus_digest"]
    clean_folder = _dataset_folder(clean)
    assert clean_folder.relative_to(clean) == folder.relative_to(killed)
    assert (folder / "manifest.json").read_bytes() == (clean_folder / "manifest.json").read_bytes()
    ours, theirs = _files(folder), _files(clean_folder)
    assert sorted(ours) == sorted(theirs)
    assert len([rel for rel in ours if rel.endswith(".parquet")]) == 3 * SHARDS
    for rel in sorted(ours):
        assert _sha(ours[rel]) == _sha(theirs[rel]), f"{rel} differs from the uninterrupted run"

    # the manifest's sha256 are those of the files; shards cover the samples once, in order
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] is True and len(manifest["shards"]) == SHARDS
    assert [s["sample_ids"] for s in manifest["shards"]] == [[i, i + SHARD] for i in range(0, SAMPLES, SHARD)]
    for shard in manifest["shards"]:
        for rel, meta in shard["files"].items():
            assert _sha(folder / rel) == meta["sha256"], rel

    # 4. no duplicate and no missing (sample_id, pos) row in any boundary
    for boundary in manifest["boundaries"]:
        parts = sorted(folder.glob(f"boundary={boundary:03d}/part-*.parquet"))
        assert len(parts) == SHARDS
        tables = [pq.read_table(p, columns=["sample_id", "pos"]) for p in parts]
        sample_id = np.concatenate([t.column("sample_id").to_numpy() for t in tables])
        pos = np.concatenate([t.column("pos").to_numpy() for t in tables])
        keys = sample_id.astype(np.int64) * TOKENS + pos
        assert len(keys) == SAMPLES * TOKENS, f"boundary {boundary}: {len(keys)} rows"
        np.testing.assert_array_equal(np.sort(keys), np.arange(SAMPLES * TOKENS))

    # 5. a rerun of the finished job reuses it: quick, nothing rewritten
    before = {rel: (p.stat().st_mtime_ns, p.stat().st_size) for rel, p in _files(folder).items()}
    again = cli(*args, "--storage", str(killed), timeout=120)
    info = again.json()
    assert info["reused"] is True and info["manifest"] == resumed["manifest"]
    assert info["seconds"] < 20 and again.seconds < 60, again.describe()
    assert {rel: (p.stat().st_mtime_ns, p.stat().st_size) for rel, p in _files(folder).items()} == before
