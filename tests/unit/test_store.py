"""The store: the layout on storage and its typed records, through a real (tiny) stage 1 and 2."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from ie_flow import IEFlowError
from ie_flow.config import load_job
from ie_flow.estimators.base import split_problem
from ie_flow.jobs import estimate_mi, extract_activations, plan_extract
from ie_flow.storage import Storage
from ie_flow.store import (
    DatasetFolder, Manifest, ResultsFolder, StorageRoot, dataset_folder, results_folder, table_vectors,
)


@pytest.fixture(scope="module")
def extracted(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    job = load_job(None, {"model.name": str(tiny_llama), "corpus.samples": 320, "extract.shard_size": 128,
                          "estimate.method": "gaussian", "storage.uri": str(root), "runtime.executor": "serial",
                          "tracking.enabled": False})
    return job, extract_activations(job)


def test_manifest_lists_every_shard_with_checksums(extracted):
    job, ex = extracted
    m = ex.manifest
    assert [s.sample_ids for s in m.shards] == [[0, 128], [128, 256], [256, 320]]
    assert m.boundaries == [0, 1, 2] and m.layers == [0, 1] and m.positions == list(range(8))
    assert m.samples == 320 and m.num_blocks == 2 and m.hidden_size == 32
    assert ex.folder.storage.url().endswith(m.dataset.digest[:8])
    on_disk = json.loads(open(ex.folder.manifest_uri).read())
    assert Manifest.model_validate(on_disk) == m  # typed record <-> JSON round trip
    for shard in m.shards:
        for rel, info in shard.files.items():
            assert Storage(ex.folder.storage.url()).read_parquet(rel).num_rows == info.rows == shard.sequences * 8


def test_plan_extract_builds_the_folder_name_from_model_and_corpus(extracted):
    job, ex = extracted
    plan = plan_extract(job)
    assert plan.folder.storage.url() == ex.folder.storage.url()
    assert ex.folder.storage.url().endswith(f"activations/tiny-llama/{plan.corpus.dataset_id}")
    assert plan.corpus.dataset_id.endswith(ex.manifest.dataset.digest[:8])


def test_read_boundary_in_sample_order_and_damage_is_named(extracted, tmp_path):
    _, ex = extracted
    x = ex.folder.read_boundary(ex.manifest, 1)
    assert x.shape == (320, 8, 32) and x.dtype == np.float32
    first = ex.folder.storage.read_parquet(ex.folder.boundary_file(1, 0))
    np.testing.assert_array_equal(table_vectors(first, 8), x[:128])
    short = ex.manifest.model_copy(update={"samples": 321})
    with pytest.raises(IEFlowError, match="boundary 1 has 2560 rows, manifest says 321 x 8"):
        ex.folder.read_boundary(short, 1)


def test_dataset_and_results_folders_from_uris(extracted, tmp_path):
    _, ex = extracted
    folder, root = dataset_folder(ex.folder.manifest_uri)
    assert folder.storage.url() == ex.folder.storage.url() and root == ex.folder.storage.url().split("/activations/")[0]
    with pytest.raises(IEFlowError, match="is not an activations folder"):
        dataset_folder(str(tmp_path / "elsewhere"))
    with pytest.raises(IEFlowError, match="neither an MLflow run id nor a results folder"):
        results_folder(str(tmp_path / "missing"))
    with pytest.raises(IEFlowError, match="incomplete extraction \\(no activations\\)"):
        DatasetFolder(Storage(str(tmp_path / "empty"))).load_manifest()


def test_stage_2_writes_one_file_per_layer_and_the_table(extracted):
    job, ex = extracted
    est = estimate_mi(job, ex.folder)
    rows = est.table.to_pylist()
    assert {(r["layer"], r["level"]) for r in rows} == {(l, lv) for l in (0, 1) for lv in ("macro", "micro")}
    assert len(rows) == 2 * 8 * 2
    for layer in (0, 1):
        part = est.results.storage.read_parquet(est.results.layer_file(layer)).to_pylist()
        assert json.dumps(part) == json.dumps([r for r in rows if r["layer"] == layer])  # NaN-safe
    assert json.dumps(est.results.storage.read_parquet("mi.parquet").to_pylist()) == json.dumps(rows)
    again = estimate_mi(job, ex.folder)  # markers: nothing redone
    assert again.reused_layers == 2 and json.dumps(again.table.to_pylist()) == json.dumps(rows)


def test_latest_results_is_the_newest_summary(tmp_path):
    root = StorageRoot(str(tmp_path))
    with pytest.raises(IEFlowError, match="no finished ie-flow job"):
        root.latest_results()
    for i, name in enumerate(("a", "b")):
        folder = root.results("m", "d-12345678", name)
        folder.storage.write_json("summary.json", {})
        t = time.time() - 100 + i * 50
        os.utime(folder.storage.path("summary.json"), (t, t))
    assert root.latest_results().storage.url().endswith("/results/m/d-12345678/b")
    assert isinstance(root.latest_results(), ResultsFolder)


def test_split_problem_names_the_samples_needed():
    assert split_problem(4096, 0.25) is None
    assert split_problem(100, 0.25) == ("samples=100 is too few for the train/select/report split with "
                                        "eval_fraction=0.25: need at least 128 samples")
