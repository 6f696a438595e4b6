"""`icl-coherence`: ICL sequences with a sequence-level label that no single token carries (docs/METHOD.md
section 8). Four distinct names with commas, from the three ICL categories of 16 single-token names.
With probability 1/2 all four names come from one category (label 1: the category uniform, then the
names); otherwise the 4-tuple is uniform over the tuples not all from one category (label 0). Every
name on its own is uniform over the 48 under both labels, so I(s; x_t) = 0 for every token, while the
whole prefix tells more and more: `exact_prefix_information` enumerates I(s; prefix) exactly."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ie_flow import IEFlowError

CATEGORY_ORDER = ("countries", "animals", "colours")
SHOTS = 4


def _falling(a: int, k: int) -> int:
    return math.prod(range(a - k + 1, a + 1)) if k > 0 else 1


def exact_prefix_information(shots: int = SHOTS, categories: int = len(CATEGORY_ORDER), per: int = 16) -> list[float]:
    """I(s; first j names) in bits for j = 1..shots, by enumeration. By symmetry a prefix's likelihood
    under each label depends only on whether its names share one category, so two kinds of prefix
    (same-category, mixed) with their counts give the exact sum."""
    total = _falling(categories * per, shots)
    coherent = categories * _falling(per, shots)
    incoherent = total - coherent  # the label-0 tuples
    out = []
    for j in range(1, shots + 1):
        same = categories * _falling(per, j)  # prefixes whose j names share a category
        mixed = _falling(categories * per, j) - same
        rest = _falling(categories * per - j, shots - j)
        kinds = ((same, 1 / same, (rest - _falling(per - j, shots - j)) / incoherent),
                 (mixed, 0.0, rest / incoherent))
        info = 0.0
        for count, p1, p0 in kinds:
            m = 0.5 * (p1 + p0)  # P(prefix) with the label uniform
            info += count * sum(0.5 * p * math.log2(p / m) for p in (p1, p0) if p > 0)
        out.append(info)
    return out


def position_ceilings(shots: int = SHOTS) -> list[float]:
    """The exact I(s; prefix_t) of each token position t: name j and its comma both follow j+1 names."""
    return [v for v in exact_prefix_information(shots) for _ in (0, 1)]


def oracle_features(corpus: "Corpus", position: int) -> np.ndarray:
    """(n, d) float32 features of the positive control at token `position`: one-hot of every name seen so
    far and, for every pair of them, whether they share a category (the label of a full prefix is the
    AND of its pairs, linearly separable in their sum). What a representation that groups names by
    category makes decodable; a linear probe on it should reach about the exact I(s; prefix_t)."""
    names = corpus.input_ids[:, 0 : position + 1 : 2]  # the names of positions 0, 2, ... up to `position`
    index = {tid: k for k, tid in enumerate(corpus.settings["name_ids"])}
    per = corpus.settings["K"] // len(CATEGORY_ORDER)
    slots = np.vectorize(index.get)(names)  # (n, k) index of each name among the 3 * per
    n, k = slots.shape
    onehot = np.zeros((n, k, corpus.settings["K"]), dtype=np.float32)
    onehot[np.arange(n)[:, None], np.arange(k)[None, :], slots] = 1.0
    category = slots // per
    pairs = [(category[:, i] == category[:, j]).astype(np.float32) for i in range(k) for j in range(i + 1, k)]
    return np.concatenate([onehot.reshape(n, -1), *(p[:, None] for p in pairs)], axis=1)


def _draw(rng: np.random.Generator, labels: np.ndarray, per: int) -> np.ndarray:
    """(n, SHOTS) indices into the 3*per names: label 1 rows from one category, label 0 rows uniform over
    the tuples not all from one category (uniform distinct tuples, those all from one redrawn)."""
    n, k = labels.size, len(CATEGORY_ORDER) * per
    picks = np.argsort(rng.random((n, k)), axis=1)[:, :SHOTS]
    coherent = labels == 1
    category = rng.integers(0, len(CATEGORY_ORDER), size=n)
    within = np.argsort(rng.random((n, per)), axis=1)[:, :SHOTS]
    picks[coherent] = (category[:, None] * per + within)[coherent]
    while True:
        redo = ~coherent & (np.ptp(picks // per, axis=1) == 0)
        if not redo.any():
            return picks
        picks[redo] = np.argsort(rng.random((int(redo.sum()), k)), axis=1)[:, :SHOTS]


def coherence_corpus(tokenizer: Any, samples: int, seed: int, names: int | None = None) -> "Corpus":
    """`samples` labelled sequences (see the module docstring); groups = the set of names, so a probe's
    splits never share a name set."""
    from ie_flow.corpora import Corpus
    from ie_flow.corpora.icl import NAMES_PER_CATEGORY, single_token_names

    per = names or NAMES_PER_CATEGORY
    if per < SHOTS:
        raise IEFlowError(f"icl-coherence needs at least {SHOTS} names per category, got {per}")
    vocab = [pair for cat in CATEGORY_ORDER for pair in single_token_names(cat, tokenizer, per)]
    comma = tokenizer(",", add_special_tokens=False).input_ids[0]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC0DE]))
    labels = (rng.random(samples) < 0.5).astype(np.int64)
    picks = _draw(rng, labels, per)
    ids = np.array([tid for _, tid in vocab], dtype=np.int64)
    seq = np.empty((samples, 2 * SHOTS), dtype=np.int64)
    seq[:, 0::2] = ids[picks]
    seq[:, 1::2] = comma
    name_sets = np.sort(picks, axis=1) @ (len(vocab) ** np.arange(SHOTS, dtype=np.int64))
    settings = {"kind": "icl-coherence", "shots": SHOTS, "samples": samples, "seed": seed,
                "names": [n for n, _ in vocab], "name_ids": ids.tolist(), "K": len(vocab),
                "label": "all four names from one category"}
    return Corpus("icl-coherence", seq, settings, labels=labels, groups=name_sets, target_ceilings=position_ceilings(),
                  token_ceilings=[0.0] * (2 * SHOTS),
                  label_names=["names from several categories", "all four names from one category"])
