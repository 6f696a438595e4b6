"""Results never come from stale data: stage 1 reuses activations only of the same weights (sha256
of the files, not the model's name) computed in one dtype on one kind of device; stage 2 reuses a
results folder only of the same manifest (its sha256) and the same estimator code."""

from __future__ import annotations

import json
import logging
import shutil

import pyarrow.parquet as pq
import pytest

JOB = ("--samples", "256", "--estimator", "gaussian", "--seeds", "0,1", "--executor", "serial", "--no-tracking")


def _run(ie_flow, model, storage, *extra: str) -> dict:
    result = ie_flow("run", "--model", model, *JOB, "--storage", storage, *extra, "--json")
    assert result.code == 0, result.err[-3000:]
    return json.loads(result.out)


def _manifest(out: dict) -> dict:
    return json.loads(open(out["manifest"]).read())


def _table(out: dict):
    return pq.read_table(out["results"]).to_pandas()  # pandas: NaN equals NaN


def _retrain_in_place(folder) -> None:
    """What a training run that saves to the same folder leaves: other weights, same path and names."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(folder)


def test_checkpoint_retrained_in_place_gives_new_activations_and_numbers(tiny_llama, ie_flow, tmp_path, caplog):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_llama, ckpt)
    first = _run(ie_flow, ckpt, tmp_path / "data")
    old = _manifest(first)
    _retrain_in_place(ckpt)
    with caplog.at_level(logging.INFO, logger="ie_flow"):
        second = _run(ie_flow, ckpt, tmp_path / "data")
    assert "reusing complete activations" not in caplog.text
    assert "changed since" in caplog.text and "extracting again" in caplog.text
    assert second["manifest"] == first["manifest"]  # the same folder, extracted again
    new = _manifest(second)
    assert new["model"]["fingerprint"] != old["model"]["fingerprint"]
    assert new["shards"] != old["shards"]  # other activation bytes
    assert second["layers"] != first["layers"]
    # ground truth: what a first run of the retrained checkpoint, on empty storage, gives
    fresh = _run(ie_flow, ckpt, tmp_path / "fresh")
    assert _manifest(fresh)["shards"] == new["shards"]
    assert fresh["layers"] == second["layers"]
    assert _table(fresh).equals(_table(second))


def test_extract_force_with_other_positions_then_estimate_gives_those_positions(tiny_llama, ie_flow, tmp_path):
    data = tmp_path / "data"
    full = _run(ie_flow, tiny_llama, data)
    assert {r["position"] for r in pq.read_table(full["results"]).to_pylist()} == set(range(8))
    ex = ie_flow("extract", "--model", tiny_llama, "--samples", "256", "--executor", "serial", "--positions", "0",
                 "--force", "--storage", data, "--json")
    assert ex.code == 0, ex.err[-3000:]
    manifest = json.loads(ex.out)["manifest"]
    assert manifest == full["manifest"]
    workflow = tmp_path / "estimate.yaml"
    workflow.write_text("estimate: {method: gaussian, seeds: [0, 1]}\nruntime: {executor: serial}\n")
    est = ie_flow("estimate", manifest, "--workflow", workflow, "--no-tracking", "--json")
    assert est.code == 0, est.err[-3000:]
    out = json.loads(est.out)
    table = pq.read_table(out["results"])
    assert {r["position"] for r in table.to_pylist()} == {0, 7}
    assert out["results"] != full["results"]
    # ground truth: the same positions run from scratch
    fresh = _run(ie_flow, tiny_llama, tmp_path / "fresh", "--positions", "0")
    assert _table(fresh).equals(table.to_pandas())
    assert fresh["layers"] == out["layers"]


def test_results_written_by_another_code_version_are_not_reused(tiny_llama, ie_flow, tmp_path, caplog,
                                                                monkeypatch):
    import ie_flow as package

    with monkeypatch.context() as m:
        m.setattr(package, "__version__", "0.1.0-older")
        older = _run(ie_flow, tiny_llama, tmp_path / "data")
    with caplog.at_level(logging.INFO, logger="ie_flow"):
        now = _run(ie_flow, tiny_llama, tmp_path / "data")
    assert now["results"] != older["results"]
    assert "reusing complete activations" in caplog.text  # the activations are the same ...
    assert "finished layers" not in caplog.text and "stage 2 estimate: 2 of 2 units to do" in caplog.text
    summary = json.loads(open(now["results"].replace("mi.parquet", "summary.json")).read())
    assert summary["code_version"].startswith(package.__version__ + "+est.")
    assert now["layers"] == older["layers"]  # ... and this code computes what the other did
    with caplog.at_level(logging.INFO, logger="ie_flow"):
        again = _run(ie_flow, tiny_llama, tmp_path / "data")
    assert again["results"] == now["results"] and "reusing 2 finished layers from" in caplog.text


def test_estimator_source_digest_follows_the_estimator_code(tmp_path):
    from pathlib import Path

    import ie_flow
    from ie_flow.provenance import estimator_source_digest

    package = Path(ie_flow.__file__).parent
    copies = []
    for name in ("a", "b"):
        copy = tmp_path / name
        shutil.copytree(package / "estimators", copy / "estimators")
        (copy / "stages").mkdir()
        shutil.copy(package / "stages" / "estimate.py", copy / "stages" / "estimate.py")
        copies.append(copy)
    assert estimator_source_digest(str(copies[0])) == estimator_source_digest(str(package))
    with open(copies[1] / "estimators" / "gaussian.py", "a") as f:
        f.write("\n# changed\n")
    assert estimator_source_digest(str(copies[1])) != estimator_source_digest(str(copies[0]))


def test_file_sha256_is_cached_and_follows_a_rewrite(tmp_path, monkeypatch):
    import hashlib
    import os

    from ie_flow.provenance import file_sha256

    monkeypatch.setenv("IE_FLOW_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    assert file_sha256(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert len(list((tmp_path / "cache" / "sha256").iterdir())) == 1
    f.write_bytes(b"b" * 1000)  # same size, rewritten in place
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1_000_000))
    assert file_sha256(f) == hashlib.sha256(b"b" * 1000).hexdigest()


def _extract_two_shards(ie_flow, tiny_llama, tmp_path, json_out: bool = True):
    workflow = tmp_path / "shards.yaml"
    workflow.write_text("extract: {shard_size: 128}\n")
    return ie_flow("extract", workflow, "--model", tiny_llama, "--samples", "256", "--executor", "serial",
                   "--storage", tmp_path / "data", *(["--json"] if json_out else []))


def _two_shards(ie_flow, tiny_llama, tmp_path) -> dict:
    ex = _extract_two_shards(ie_flow, tiny_llama, tmp_path)
    assert ex.code == 0, ex.err[-3000:]
    return json.loads(ex.out)


def _resumed_elsewhere(manifest_uri: str):
    """The folder as a job leaves it that computed shard 1 in bfloat16 on a GPU and was stopped
    before shard 0 and the manifest: the next run resumes it (here, on a CPU)."""
    from pathlib import Path

    folder = Path(manifest_uri).parent
    marker = folder / "_done" / "part-00001"
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps({**record, "compute_dtype": "bfloat16", "device": "cuda"}))
    (folder / "_done" / "part-00000").unlink()
    (folder / "manifest.json").unlink()
    return folder


def test_mixed_compute_dtypes_are_refused_with_one_line(tiny_llama, ie_flow, tmp_path):
    out = _two_shards(ie_flow, tiny_llama, tmp_path)
    shards = json.loads(open(out["manifest"]).read())["shards"]
    folder = _resumed_elsewhere(out["manifest"])
    again = _extract_two_shards(ie_flow, tiny_llama, tmp_path, json_out=False)
    again.assert_one_error("finished shards were computed in bfloat16 on cuda and this job would compute in "
                           "float32 on cpu")
    assert not (folder / "_done" / "part-00000").exists()  # refused before any work
    assert [(s.get("compute_dtype"), s.get("device")) for s in shards] == [("float32", "cpu")] * 2


def test_shards_found_to_disagree_while_running_are_refused(tiny_llama, ie_flow, tmp_path, monkeypatch):
    """A driver that could not tell what the workers compute in (a GPU it does not see): the check
    after the work refuses the dataset, exit 1, and writes no manifest."""
    from ie_flow import jobs

    out = _two_shards(ie_flow, tiny_llama, tmp_path)
    folder = _resumed_elsewhere(out["manifest"])
    monkeypatch.setattr(jobs, "check_finished_compute", lambda *a: None)
    again = _extract_two_shards(ie_flow, tiny_llama, tmp_path, json_out=False)
    assert again.code == 1 and len(again.error_lines) == 1, again.err[-2000:]
    assert again.error_lines[0].startswith("error: refused: ")
    assert "shards were computed in bfloat16 on cuda and float32 on cpu" in again.error_lines[0]
    assert (folder / "_done" / "part-00000").exists() and not (folder / "manifest.json").exists()


def test_hub_model_is_keyed_on_its_resolved_commit(tmp_path, monkeypatch):
    """Offline, a hub id without --revision is the commit its cached `main` ref names: when the
    repository moves (the ref names another commit), the identity moves with it."""
    from huggingface_hub import constants

    from ie_flow.models import ModelSource, model_identity

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo = tmp_path / "hub" / "models--org--tiny"
    source = ModelSource("org/tiny", "hub", "org/tiny")
    identities = []
    for commit in ("1" * 40, "2" * 40):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        identities.append(model_identity(source))
    assert [i.fingerprint for i in identities] == [i.revision for i in identities] == ["1" * 40, "2" * 40]
    pinned = ModelSource("org/tiny", "hub", "org/tiny", revision="1" * 40)
    assert model_identity(pinned).revision == "1" * 40
