"""Synthetic in-context-learning sequences (docs/METHOD.md section 3.1): `name,name,...` from one
category, from all three (`mixed`), or from a mixed pool of the one-category corpora's size K
(`mixed-matched`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ie_flow import IEFlowError

# Candidates in order of preference; the first K that are single tokens in the model's tokenizer are used.
CATEGORIES: dict[str, list[str]] = {
    "countries": [
        "France", "Spain", "Italy", "Egypt", "China", "India", "Japan", "Germany", "Canada", "Brazil",
        "Mexico", "Russia", "Peru", "Chile", "Kenya", "Greece", "Norway", "Sweden", "Poland", "Iran",
        "Iraq", "Cuba", "Israel", "Turkey", "Ireland", "Australia", "Argentina", "Portugal", "Nigeria",
        "Vietnam", "Thailand", "Korea", "Pakistan", "Hungary", "England", "Denmark", "Finland", "Austria",
    ],
    "animals": [
        "dog", "cat", "horse", "cow", "pig", "sheep", "lion", "tiger", "bear", "wolf", "fox", "deer",
        "rabbit", "mouse", "rat", "duck", "goat", "bird", "fish", "snake", "frog", "whale", "shark",
        "eagle", "owl", "monkey", "elephant", "zebra", "camel", "bee", "ant", "chicken",
    ],
    "colours": [
        "red", "blue", "green", "yellow", "black", "white", "orange", "purple", "pink", "brown",
        "gray", "gold", "silver", "violet", "cyan", "magenta", "beige", "navy", "olive",
        "maroon", "teal", "crimson", "ivory", "amber", "indigo", "lime", "coral", "azure", "rose", "tan",
        "turquoise", "grey",
    ],
}
NAMES_PER_CATEGORY = 16
# the categories' variants: one category, all 3 x K names, or K names spread over the three
MIXED, MATCHED = "mixed", "mixed-matched"


def single_token_names(category: str, tokenizer: Any, k: int = NAMES_PER_CATEGORY) -> list[tuple[str, int]]:
    """The first k names of a category that are one token alone and between commas."""
    comma = tokenizer(",", add_special_tokens=False).input_ids
    if len(comma) != 1:
        raise IEFlowError("this tokenizer does not encode ',' as one token; ICL corpora need it")
    picked: list[tuple[str, int]] = []
    for name in CATEGORIES[category]:
        alone = tokenizer(name, add_special_tokens=False).input_ids
        framed = tokenizer(f",{name},", add_special_tokens=False).input_ids
        if len(alone) == 1 and framed == [comma[0], alone[0], comma[0]]:
            picked.append((name, alone[0]))
        if len(picked) == k:
            return picked
    raise IEFlowError(
        f"only {len(picked)} {category} names are single tokens in this tokenizer; {k} are needed"
    )


def matched_mixed_names(tokenizer: Any, k: int = NAMES_PER_CATEGORY) -> list[tuple[str, int]]:
    """K names spread over the three categories (round robin over each one's first names: 6 + 5 + 5
    for K = 16), so a mixed sequence is drawn from a pool as large as a one-category corpus's and its
    prefixes have the same entropy at every position; the difference left is which names share a
    sequence. The names are a subset of the one-category corpora's."""
    per_category = [single_token_names(cat, tokenizer, -(-k // len(CATEGORIES))) for cat in CATEGORIES]
    return [pool[i] for i in range(len(per_category[0])) for pool in per_category if i < len(pool)][:k]


def icl_corpus(
    category: str, tokenizer: Any, shots: int, samples: int, seed: int, names: int | None = None
) -> "Corpus":
    """`samples` sequences of `shots` distinct names, each followed by a comma (2*shots tokens).
    Names are drawn uniformly without replacement, so position 0 carries log2 K bits, position 2
    log2 K(K-1), ... (docs/METHOD.md section 6). `mixed-matched` draws the same indices as a
    one-category corpus at the same seed (same K, same generator): its prefixes' plug-in entropy
    is the one-category corpora's exactly."""
    from ie_flow.corpora import Corpus

    k = names or NAMES_PER_CATEGORY
    if category == MIXED:
        vocab = [pair for cat in CATEGORIES for pair in single_token_names(cat, tokenizer, k)]
    elif category == MATCHED:
        vocab = matched_mixed_names(tokenizer, k)
    elif category in CATEGORIES:
        vocab = single_token_names(category, tokenizer, k)
    else:
        raise IEFlowError(f"unknown ICL category {category!r}; choose from {', '.join([*CATEGORIES, MIXED, MATCHED])}")
    if shots > len(vocab):
        raise IEFlowError(f"{shots} shots need {shots} distinct names; only {len(vocab)} available")
    comma = tokenizer(",", add_special_tokens=False).input_ids[0]
    ids = np.array([tid for _, tid in vocab], dtype=np.int64)
    rng = np.random.default_rng(seed)
    # argsort of uniform noise = one independent permutation per row, vectorised
    picks = np.argsort(rng.random((samples, len(vocab))), axis=1)[:, :shots]
    seq = np.empty((samples, 2 * shots), dtype=np.int64)
    seq[:, 0::2] = ids[picks]
    seq[:, 1::2] = comma
    settings = {
        "kind": "icl", "category": category, "shots": shots, "samples": samples, "seed": seed,
        "names": [n for n, _ in vocab], "K": len(vocab),
    }
    if category == MATCHED:  # which category each name is from (the test of mixing reads it)
        settings["name_categories"] = [next(c for c in CATEGORIES if n in CATEGORIES[c]) for n, _ in vocab]
    return Corpus(f"icl-{category}-{shots}shot", seq, settings)
