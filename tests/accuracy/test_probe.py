"""The target measure (docs/METHOD.md section 8): usable information of a linear-softmax probe about a
per-sequence label, against ground truth. H = delta * s * u + N(0, I_576), s a fair bit: the Bayes
posterior is linear-softmax in h, so the family's usable information is I(s; h) itself, known by 1-D
quadrature. Shuffled labels carry nothing. `benchmarks/bench_probe.py` runs the same tasks over 200
data sets each."""

from __future__ import annotations

import numpy as np
import pytest

from ie_flow.estimators.probe import UsableInformation, check_labels, split_by_group
from ie_flow.estimators.synthetic import bits_of_shift, shift_for_bits, shifted_gaussian_labels


def test_quadrature_matches_the_closed_forms():
    assert bits_of_shift(0.0) == pytest.approx(0.0, abs=1e-9)
    assert bits_of_shift(40.0) == pytest.approx(1.0, abs=1e-6)  # separated: H(s)
    for target in (0.1, 0.5, 0.9):
        assert bits_of_shift(shift_for_bits(target)) == pytest.approx(target, abs=1e-9)


@pytest.mark.parametrize("truth", [0.1, 0.5, 0.9])
def test_usable_information_of_a_shifted_gaussian(truth, one_torch_thread):
    """The held-out value is a lower bound; the bracket (report to the all-rows refit) holds the truth;
    the midpoint's mean is within [truth - 0.05, truth + 0.01]."""
    xs, labels = shifted_gaussian_labels(truth, n=4096, d=576, sets=8, seed=11)
    res = [UsableInformation().estimate_targets(xs[k:k + 1], labels[k])[0] for k in range(len(xs))]
    bits = np.array([r.bits for r in res])
    centre = np.array([r.diagnostics["corrected_bits"] for r in res])
    assert bits.mean() <= truth + 0.01
    assert truth - 0.05 <= centre.mean() <= truth + 0.01, centre
    assert sum(r.ci_low <= truth <= r.ci_high for r in res) >= 7, [(r.ci_low, r.ci_high) for r in res]
    # refitted on every row, the upper side is less optimistic than the fit split's own in-sample value
    assert all(bits[k] < r.diagnostics["refit_bits"] < r.diagnostics["fit_bits"] for k, r in enumerate(res))
    assert all(r.ceiling_bits == pytest.approx(1.0, abs=0.01) and r.diagnostics["above_ceiling_bits"] == 0 for r in res)


def test_shuffled_labels_give_nothing(one_torch_thread):
    xs, labels = shifted_gaussian_labels(0.5, n=4096, d=576, sets=8, seed=12)
    rng = np.random.default_rng(0)
    res = [UsableInformation().estimate_targets(xs[k:k + 1], rng.permutation(labels[k]))[0] for k in range(len(xs))]
    assert abs(np.mean([r.bits for r in res])) <= 0.01
    assert sum(r.ci_low <= 0.0 <= r.ci_high for r in res) >= 7


def test_cells_are_independent_when_batched(one_torch_thread):
    xs, labels = shifted_gaussian_labels(0.5, n=1024, d=32, sets=3, seed=13)
    labels = labels[0]  # one target for every cell, as a layer's positions share it
    batched = UsableInformation(cells_per_batch=3).estimate_targets(xs, labels)
    for k in range(3):
        alone = UsableInformation().estimate_targets(xs[k:k + 1], labels)[0]
        assert alone.bits == pytest.approx(batched[k].bits, abs=1e-5)
        assert alone.ci_high == pytest.approx(batched[k].ci_high, abs=1e-5)


def test_splits_keep_groups_whole_and_disjoint():
    groups = np.repeat(np.arange(500), 4)
    s = split_by_group(groups, 0.25, 0.15, seed=3)
    parts = [set(groups[r]) for r in (s.fit, s.tune, s.report)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sorted(np.concatenate([s.fit, s.tune, s.report]).tolist()) == list(range(groups.size))
    assert abs(s.report.size / groups.size - 0.25) < 0.01 and abs(s.tune.size / groups.size - 0.15) < 0.01


def test_bad_labels_say_what_is_wrong():
    with pytest.raises(ValueError, match="the label is constant"):
        check_labels(np.zeros(100), None, 0.25, 0.15, (0,))
    rare = np.zeros(400, dtype=int)
    rare[:12] = 1  # 12 rows of class 1: some split gets fewer than 8
    with pytest.raises(ValueError, match="label class 1 has .* rows in the .* split"):
        check_labels(rare, None, 0.25, 0.15, (0,))
    with pytest.raises(ValueError, match="one entry per label"):
        check_labels(np.arange(10) % 2, np.arange(9), 0.25, 0.15, (0,))


def test_oracle_features_reach_the_exact_ceilings(tiny_llama, one_torch_thread):
    """The positive control on icl-coherence (n = 4,096): features that group names by category make the
    label decodable up to the exact I(s; prefix_t), about 1 bit once all four names are seen."""
    from ie_flow.corpora.coherence import coherence_corpus, oracle_features, position_ceilings
    from ie_flow.models import load_tokenizer

    corpus = coherence_corpus(load_tokenizer(str(tiny_llama)), samples=4096, seed=0)
    ceilings = position_ceilings()
    for t in (0, 2, 4, 6):
        est = UsableInformation().estimate_targets(oracle_features(corpus, t)[None], corpus.labels, corpus.groups,
                                                   ceilings=[ceilings[t]])[0]
        assert abs(est.diagnostics["corrected_bits"] - ceilings[t]) <= 0.05, (t, est.bits, ceilings[t])
    assert est.bits >= 0.95  # position 6: all four names seen
