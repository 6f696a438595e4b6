"""Stage 1: captured activations equal direct calls of each block; storage round trips exactly."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from ie_flow import IEFlowError
from ie_flow.models import BlockCapture, load_model
from ie_flow.stages.extract import capture_boundaries, extract_shard, kept_positions
from ie_flow.storage import Storage
from ie_flow.store import DatasetFolder, table_vectors


def _ids(loaded, n=6, length=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(4, len(loaded.tokenizer), size=(n, length))


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_boundaries_equal_direct_block_calls(arch, request):
    loaded = load_model(str(request.getfixturevalue(arch)))
    ids = torch.tensor(_ids(loaded))
    with torch.inference_mode(), BlockCapture(loaded.blocks) as cap:
        out = loaded.model(input_ids=ids, output_hidden_states=True, use_cache=False)
        bounds = cap.boundaries()
        L = loaded.num_blocks
        assert len(bounds) == L + 1
        for b, block in enumerate(loaded.blocks):
            direct = block(bounds[b], **cap.block_kwargs[b])
            direct = direct[0] if isinstance(direct, tuple) else direct
            assert torch.equal(direct, bounds[b + 1]), f"block {b}"
        # inputs of blocks 0..L-1 are HF's hidden_states 0..L-1; the last boundary is BEFORE the final norm
        for b in range(L):
            assert torch.equal(bounds[b], out.hidden_states[b])
        assert not torch.allclose(bounds[L], out.hidden_states[L])
        final_norm = loaded.model.model.norm if arch == "tiny_llama" else loaded.model.transformer.ln_f
        torch.testing.assert_close(final_norm(bounds[L]), out.hidden_states[L], rtol=0, atol=1e-6)


@pytest.mark.parametrize("storage_dtype", ["float32", "float16"])
def test_shard_round_trip_through_storage(tiny_llama, tmp_path, storage_dtype):
    loaded = load_model(str(tiny_llama))
    ids = _ids(loaded, n=10)
    direct = capture_boundaries(loaded, ids, batch_size=4, boundaries=list(range(3)))
    folder = DatasetFolder(Storage(str(tmp_path)))
    record = extract_shard(loaded, folder, 0, 100, ids, 4, [0, 1, 2], storage_dtype, "in_context")
    assert record["sequences"] == 10 and record["sample_ids"] == [100, 110]
    for b in range(3):
        rel = folder.boundary_file(b, 0)
        assert record["files"][rel]["sha256"] == hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest()
        table = folder.storage.read_parquet(rel)
        assert table.column("sample_id").to_pylist()[:9] == [100] * 8 + [101]
        assert table.column("pos").to_pylist()[:9] == list(range(8)) + [0]
        got = table_vectors(table, 8)
        if storage_dtype == "float32":
            np.testing.assert_array_equal(got, direct[b])  # bit-exact
        else:
            np.testing.assert_array_equal(got, direct[b].astype(np.float16).astype(np.float32))
            assert np.abs(got - direct[b]).max() <= np.abs(direct[b]).max() * 2**-10
    # batching does not change the numbers: batch 4 vs one batch of 10
    whole = capture_boundaries(loaded, ids, batch_size=10, boundaries=[2])
    np.testing.assert_allclose(whole[2], direct[2], rtol=0, atol=1e-5)


def test_isolated_micro_runs_each_token_alone(tiny_llama):
    loaded = load_model(str(tiny_llama))
    ids = _ids(loaded, n=3, length=4)
    iso = capture_boundaries(loaded, ids, batch_size=2, boundaries=[2], isolated=True)[2]
    with torch.inference_mode(), BlockCapture(loaded.blocks) as cap:
        loaded.model(input_ids=torch.tensor([[ids[1, 2]]]), use_cache=False)
        alone = cap.boundaries()[2][0, -1].numpy()
    np.testing.assert_allclose(iso[1, 2], alone, rtol=0, atol=1e-5)
    # position 0 sees only itself in context too, so isolated == in-context there
    ctx = capture_boundaries(loaded, ids, batch_size=2, boundaries=[2])[2]
    np.testing.assert_allclose(iso[:, 0], ctx[:, 0], rtol=0, atol=1e-5)
    assert not np.allclose(iso[:, 3], ctx[:, 3])


def test_position_selection_stores_only_those_positions(tiny_llama, tmp_path):
    loaded = load_model(str(tiny_llama))
    ids = _ids(loaded, n=5)
    direct = capture_boundaries(loaded, ids, batch_size=5, boundaries=[1])[1]
    kept = kept_positions([3, 1], tokens=8)
    assert kept == [1, 3, 7]  # sorted, and the last position (the macro variable) always kept
    folder = DatasetFolder(Storage(str(tmp_path)))
    extract_shard(loaded, folder, 0, 0, ids, 5, [1], "float32", "in_context", kept)
    table = folder.storage.read_parquet(folder.boundary_file(1, 0))
    assert table.num_rows == 5 * 3
    assert table.column("pos").to_pylist()[:4] == [1, 3, 7, 1]
    np.testing.assert_array_equal(table_vectors(table, 3), direct[:, [1, 3, 7]])
    with pytest.raises(IEFlowError, match=r"positions must be in 0\.\.7 .* got \[8\]"):
        kept_positions([0, 8], tokens=8)
