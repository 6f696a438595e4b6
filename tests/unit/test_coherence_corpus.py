"""`icl-coherence` (docs/METHOD.md section 8): the exact I(s; prefix) by enumeration, and a generated
corpus whose single names carry nothing about the label while the prefixes carry the exact amounts."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from ie_flow.corpora.coherence import coherence_corpus, exact_prefix_information, position_ceilings
from ie_flow.corpora.icl import NAMES_PER_CATEGORY


def plug_in_mi_bits(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in I(a; b) of two discrete 1-D arrays."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1.0)
    joint /= joint.sum()
    outer = joint.sum(1, keepdims=True) @ joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / outer[nz])).sum())


def test_exact_prefix_information_is_0_0494_0811_1_bit():
    assert exact_prefix_information() == pytest.approx([0.0, 0.494, 0.811, 1.0], abs=5e-4)
    assert position_ceilings() == pytest.approx([0, 0, 0.494, 0.494, 0.811, 0.811, 1, 1], abs=5e-4)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture(scope="module")
def corpus(tokenizer):
    return coherence_corpus(tokenizer, samples=40_000, seed=0)


@pytest.fixture(scope="module")
def categories(corpus, tokenizer) -> np.ndarray:
    """(n, 4): the category (0, 1, 2) of each name; settings list the 48 names category by category."""
    category = {tokenizer.convert_tokens_to_ids(name): k // NAMES_PER_CATEGORY
                for k, name in enumerate(corpus.settings["names"])}
    return np.vectorize(category.get)(corpus.input_ids[:, 0::2])


def test_labels_follow_the_definition(corpus, categories):
    assert np.array_equal(np.ptp(categories, axis=1) == 0, corpus.labels == 1)
    assert abs(corpus.labels.mean() - 0.5) < 0.01
    assert len(np.unique(corpus.input_ids[:, 1::2])) == 1  # every odd position is the comma
    names = corpus.input_ids[:, 0::2]
    assert (np.sort(names, axis=1)[:, 1:] != np.sort(names, axis=1)[:, :-1]).all()  # distinct names


def test_no_single_name_carries_the_label_and_prefixes_carry_the_exact_amount(corpus, categories):
    names = corpus.input_ids[:, 0::2]
    bias = (48 - 1) / (2 * np.log(2) * len(names))  # the plug-in's small-sample bias at 0 bits
    for j in range(4):
        assert plug_in_mi_bits(corpus.labels, names[:, j]) < 3 * bias
    # whether the first j names share a category is sufficient for the label: its MI is the exact value
    exact = exact_prefix_information()
    for j in range(1, 4):
        same = (np.ptp(categories[:, : j + 1], axis=1) == 0).astype(int)
        assert plug_in_mi_bits(corpus.labels, same) == pytest.approx(exact[j], abs=0.01)


def test_groups_are_name_sets_and_the_digest_covers_the_labels(corpus, tokenizer):
    names = corpus.input_ids[:, 0::2]
    sets = [tuple(sorted(r)) for r in names]
    first = {}
    for s, g in zip(sets, corpus.groups):
        assert first.setdefault(s, g) == g  # one group per name set ...
    assert len(set(first.values())) == len(first)  # ... and one name set per group
    again = coherence_corpus(tokenizer, samples=40_000, seed=0)
    assert again.digest == corpus.digest and np.array_equal(again.labels, corpus.labels)
    assert coherence_corpus(tokenizer, samples=40_000, seed=1).digest != corpus.digest
