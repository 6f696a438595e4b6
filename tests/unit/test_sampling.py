"""The generation loop (ie_flow.corpora.sampling): each row's next-token scores equal those of a direct
model call on that row alone (shared prefix, padding and dropped rows included), top-p keeps exactly
what transformers' TopPLogitsWarper keeps, the penalty and temperature match transformers', and the
draws follow the top-p distribution."""

from __future__ import annotations

import pytest
import torch

from ie_flow.corpora import sampling
from ie_flow.corpora.sampling import Sampling, common_prefix, next_token_scores, top_p_mask

SETTINGS = Sampling(max_new_tokens=7, temperature=0.7, top_p=0.9, repetition_penalty=1.3)


def _tiny_gemma3():
    import transformers

    config = transformers.Gemma3TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, sliding_window=32)
    torch.manual_seed(0)
    return transformers.Gemma3ForCausalLM(config).eval()


@pytest.fixture(params=["llama", "gpt2", "gemma3"])
def model(request, tiny_llama, tiny_gpt2):
    import transformers

    if request.param == "gemma3":
        return _tiny_gemma3()
    path = {"llama": tiny_llama, "gpt2": tiny_gpt2}[request.param]
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _greedy_alone(model, row, eos, steps):
    """(tokens, scores per step) of the model run on the row alone, the whole sequence each step."""
    seq, tokens, scores = list(row), [], []
    for _ in range(steps):
        with torch.inference_mode():
            logits = model(torch.tensor([seq])).logits[:, -1].float()
        s = next_token_scores(logits, torch.tensor([seq]), SETTINGS)[0]
        tokens.append(int(s.argmax()))
        scores.append(s)
        seq.append(tokens[-1])
        if tokens[-1] in eos:
            break
    return tokens, scores


def test_every_row_reads_what_the_model_reads_on_that_row_alone(model, monkeypatch, one_torch_thread):
    prefix = [5, 9, 4, 11]
    rows = [prefix + [7, 3], prefix + [8], prefix + [12, 6, 13, 2], prefix + [3, 3, 10]]
    assert common_prefix(rows) == 4
    reference = [_greedy_alone(model, r, set(), SETTINGS.max_new_tokens) for r in rows]
    # an end-of-sequence token that ends rows at different steps, so ended rows are dropped mid-batch
    eos = {reference[1][0][2]}
    reference = [_greedy_alone(model, r, eos, SETTINGS.max_new_tokens) for r in rows]
    assert len({len(t) for t, _ in reference}) > 1, "the rows should end at different steps"

    seen_scores: list[torch.Tensor] = []

    def greedy(scores, top_p, generator):
        seen_scores.append(scores.clone())
        return scores.argmax(-1)

    monkeypatch.setattr(sampling, "draw", greedy)
    out = sampling.sample(model, rows, SETTINGS, eos, pad_id=0, generator=None)
    assert out == [t for t, _ in reference]
    # every row still generating at a step has its direct-call scores in that step's batch
    assert len(seen_scores[-1]) < len(rows)  # ended rows were dropped
    for step, batch_scores in enumerate(seen_scores):
        for tokens, scores in reference:
            if len(tokens) > step:
                assert any(torch.allclose(b, scores[step], atol=1e-4) for b in batch_scores)


def test_scores_row_by_row_with_no_row_dropped(tiny_llama, monkeypatch, one_torch_thread):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    rows = [[5, 9, 4, 7, 3], [5, 9, 4, 8], [5, 9, 4, 12, 6, 13, 2]]
    reference = [_greedy_alone(model, r, set(), SETTINGS.max_new_tokens) for r in rows]
    seen_scores = []
    monkeypatch.setattr(sampling, "draw", lambda s, p, g: (seen_scores.append(s.clone()), s.argmax(-1))[1])
    out = sampling.sample(model, rows, SETTINGS, set(), pad_id=0, generator=None)
    assert out == [t for t, _ in reference]
    for step, scores in enumerate(seen_scores):
        for i in range(len(rows)):
            assert torch.allclose(scores[i], reference[i][1][step], atol=1e-5)


def test_top_p_keeps_what_transformers_keeps():
    from transformers.generation.logits_process import TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    # peaked rows (the top 256 hold more than p) and flat rows (they do not: sorted in full)
    scores = torch.cat([torch.randn(4, 5000, generator=g) * 6, torch.randn(4, 5000, generator=g) * 0.5])
    for top_p in (0.5, 0.9, 0.99, 1.0):
        ids, keep = top_p_mask(scores, top_p)
        ours = [set(ids[r][keep[r]].tolist()) for r in range(len(scores))]
        warped = TopPLogitsWarper(top_p)(None, scores.clone())
        theirs = [set(torch.isfinite(warped[r]).nonzero().flatten().tolist()) for r in range(len(scores))]
        assert ours == theirs
    assert len(ours[-1]) > 256  # a flat row went past the prefilter


def test_penalty_and_temperature_match_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 50, generator=g) * 3
    seen = torch.tensor([[1, 4, 4, 9], [0, 2, 3, 5], [7, 7, 7, 7]])
    theirs = TemperatureLogitsWarper(0.7)(seen, RepetitionPenaltyLogitsProcessor(1.3)(seen, logits.clone()))
    assert torch.allclose(next_token_scores(logits, seen, SETTINGS), theirs)


def test_draws_follow_the_top_p_distribution():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.15, 0.1, 0.05]]))
    g = torch.Generator().manual_seed(2)
    draws = torch.stack([sampling.draw(logits.expand(1000, 5), 0.8, g) for _ in range(40)]).flatten()
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    # top-p 0.8 keeps 0.4, 0.3, 0.15 (those above each hold less than 0.8), renormalised over 0.85
    expected = torch.tensor([0.4, 0.3, 0.15, 0, 0]) / 0.85
    assert torch.allclose(freq, expected, atol=0.01)
