"""Batched sampling from a decoder-only model, written for throughput on CPUs (docs/METHOD.md
section 3.3). It draws from the same distribution as `model.generate(do_sample=True)` with a
repetition penalty, a temperature and top-p, applied in that order, but does less work per token:

- the prompts' common prefix (a chat template's system and instruction lines) is computed once and
  copied to every row, so prefilling costs only what differs between the prompts;
- the key/value cache is allocated once for the whole batch (`generate`'s default cache grows by
  concatenation, which copies it at every step);
- top-p reads the top `PREFILTER` tokens (`generate` sorts the whole vocabulary, per row and step)
  and sorts the rest only for a row whose top tokens hold less than p of the mass, so the kept set
  is exactly top-p's;
- rows that have ended are dropped from the batch.

Rows are laid out as [common prefix][padding][own tokens]: padding is masked and positions are
counted over real tokens only, so each row's logits are those of the model run on that row alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PREFILTER = 256  # tokens read before top-p (their mass is nearly always above p)
COMPACT_EVERY = 8  # drop ended rows once this fraction (1/8) of the batch has ended


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the ids all rows start with, leaving every row at least one token of its own."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(max(n, 0)):
        if any(r[i] != first[i] for r in rows):
            return i
    return max(n, 0)


def next_token_scores(logits: Any, seen: Any, s: Sampling) -> Any:
    """Repetition penalty (on every token a row has read or written), then temperature."""
    import torch

    if s.repetition_penalty != 1.0:
        picked = torch.gather(logits, 1, seen)
        picked = torch.where(picked < 0, picked * s.repetition_penalty, picked / s.repetition_penalty)
        logits = logits.scatter(1, seen, picked)
    return logits / s.temperature


def top_p_mask(scores: Any, top_p: float, prefilter: int = PREFILTER) -> tuple[Any, Any]:
    """(token ids, keep) per row: the tokens top-p keeps are the ids where keep is true. A token is
    kept when the tokens ranked above it hold less than p of the mass (at least one is kept)."""
    import torch

    if top_p >= 1.0:  # nothing is cut (a float cumulative sum can reach 1 before the last token)
        every = torch.arange(scores.shape[-1], device=scores.device).expand_as(scores)
        return every, torch.ones_like(scores, dtype=torch.bool)
    k = min(prefilter, scores.shape[-1])
    top, ids = torch.topk(scores, k, dim=-1)  # sorted, most probable first
    probs = torch.exp(top - torch.logsumexp(scores, dim=-1, keepdim=True))
    above = torch.cumsum(probs, dim=-1) - probs
    keep = above < top_p
    keep[:, 0] = True
    short = (above[:, -1] + probs[:, -1] < top_p).nonzero().flatten()
    if len(short):  # their top k hold less than p: sort those rows in full
        full, full_ids = torch.sort(scores[short], dim=-1, descending=True)
        p = torch.softmax(full, dim=-1)
        full_keep = (torch.cumsum(p, dim=-1) - p) < top_p
        full_keep[:, 0] = True
        width = int(full_keep.sum(-1).max())
        ids = torch.cat([ids, ids.new_zeros(len(ids), max(width - k, 0))], dim=1)
        keep = torch.cat([keep, keep.new_zeros(len(keep), max(width - k, 0))], dim=1)
        ids[short, :width] = full_ids[:, :width]
        keep[short, :width] = full_keep[:, :width]
        keep[short, width:] = False
    return ids, keep


def draw(scores: Any, top_p: float, generator: Any) -> Any:
    """One token per row from softmax(scores) restricted to top-p's set."""
    import torch

    ids, keep = top_p_mask(scores, top_p)
    picked = torch.gather(scores, 1, ids).masked_fill(~keep, float("-inf"))
    choice = torch.multinomial(torch.softmax(picked, dim=-1), 1, generator=generator)
    return torch.gather(ids, 1, choice).squeeze(1)


def sample(model: Any, rows: Sequence[Sequence[int]], s: Sampling, eos: set[int], pad_id: int,
           generator: Any) -> list[list[int]]:
    """New token ids per row, each up to and including its first end-of-sequence token."""
    import torch
    from transformers import StaticCache

    device = model.device
    P = common_prefix(rows)
    own = [list(r[P:]) for r in rows]
    S = max(len(o) for o in own)
    B = len(rows)
    cache = StaticCache(config=model.config, max_cache_len=P + S + s.max_new_tokens)
    prefix = torch.tensor([rows[0][:P]], dtype=torch.long, device=device)
    with torch.inference_mode():
        if P:  # the shared prefix once, then one copy per row
            model(input_ids=prefix, cache=cache, use_cache=True, logits_to_keep=1)
            cache.reorder_cache(torch.zeros(B, dtype=torch.long, device=device))
        ids = torch.tensor([[pad_id] * (S - len(o)) + o for o in own], device=device)
        own_mask = torch.tensor([[0] * (S - len(o)) + [1] * len(o) for o in own], device=device)
        mask = torch.cat([torch.ones(B, P, dtype=torch.long, device=device), own_mask], dim=1)
        position = P + own_mask.cumsum(1) - 1
        # every token a row has read (its padding stands in for its first own token: penalised anyway)
        seen = torch.where(own_mask.bool(), ids, ids[torch.arange(B), S - own_mask.sum(1)][:, None])
        if P:
            seen = torch.cat([prefix.expand(B, P), seen], dim=1)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position.clamp(min=P), cache=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1].float()
        last = position[:, -1]
        out: list[list[int]] = [[] for _ in rows]
        live = torch.arange(B, device=device)  # the original row of each row still in the batch
        ended = torch.zeros(B, dtype=torch.bool, device=device)
        for step in range(s.max_new_tokens):
            token = draw(next_token_scores(logits, seen, s), s.top_p, generator)
            drawn = token.tolist()
            for r, t, done in zip(live.tolist(), drawn, ended.tolist()):
                if not done:
                    out[r].append(t)
            ended |= torch.tensor([t in eos for t in drawn], device=device)
            if bool(ended.all()) or step == s.max_new_tokens - 1:
                break
            if int(ended.sum()) * COMPACT_EVERY >= len(live):
                keep = (~ended).nonzero().flatten()
                cache.reorder_cache(keep)
                live, token, mask, seen, last = live[keep], token[keep], mask[keep], seen[keep], last[keep]
                ended = ended[keep]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            seen = torch.cat([seen, token[:, None]], dim=1)
            last = last + 1
            logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=last[:, None], cache=cache,
                           use_cache=True, logits_to_keep=1).logits[:, -1].float()
    return out
