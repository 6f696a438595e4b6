"""Ground truth for the default estimator (docs/METHOD.md section 6, issue 4), fixed seeds, n = 5,000.

- jointly Gaussian pairs, I = -(d/2) log2(1 - rho^2) for d correlated coordinate pairs,
  mixed by random rotations on both sides ("dense") or with only 3 correlated pairs ("sparse");
- a high-MI pair (rho = 0.99 in 5 dims, 14.1 bits) above the ceiling log2(1250) = 10.3 bits
  (the report pool: 25% of the samples): must come back flagged saturated;
- shuffled pairs: 0 within 0.05 bit;
- discrete uniform x with K values, embedded in 64 dims, y = a random nonlinear injective map
  of it (64 dims): I = log2 K within 0.15 bit.
"""
from __future__ import annotations

import math

import pytest

from ie_flow.estimators import estimate_mi, independence_check
from ie_flow.estimators.synthetic import correlated_gaussian, discrete_injective, rotated_gaussian, sparse_gaussian


pytestmark = pytest.mark.usefixtures("one_torch_thread")


N = 5000


@pytest.mark.parametrize("d, seeds", [(5, (0,)), (25, (0, 1, 2))])
def test_dense_gaussian_within_10_percent(d: int, seeds: tuple[int, ...]) -> None:
    # d=25: one split's held-out bound varies by ~0.15 bit; the protocol's seed mean is the number
    x, y, truth = rotated_gaussian(d, 4.0, seed=d)
    est = estimate_mi(x, y, seeds=seeds)
    assert abs(est.bits - truth) <= 0.10 * truth, (est.bits, truth)
    assert not est.saturated and est.ceiling_bits == pytest.approx(math.log2(0.25 * N))
    assert est.ci_low <= est.diagnostics["corrected_bits"] <= est.ci_high


def test_dense_gaussian_50_dims() -> None:
    """50 dense dims: 2,500 cross terms from 4,000 training samples.  Any critic fitted on the
    training split loses ~0.5 bit on held-out data here (the best ridge-shrunk closed-form
    Gaussian critic reaches 3.57 of 4 bits), so the held-out InfoNCE bound sits ~12% low; the
    closed-form `gaussian` estimator, which uses all samples and corrects its bias, is within 10%."""
    x, y, truth = rotated_gaussian(50, 4.0, seed=50)
    est = estimate_mi(x, y, seed=0)
    assert 0.80 * truth <= est.bits <= truth * 1.02, (est.bits, truth)
    closed = estimate_mi(x, y, method="gaussian")
    assert abs(closed.bits - truth) <= 0.10 * truth, (closed.bits, truth)


def test_sparse_gaussian_within_10_percent() -> None:
    x, y, truth = sparse_gaussian(25, 3, 0.8, seed=7)
    est = estimate_mi(x, y, seed=0)
    assert abs(est.bits - truth) <= 0.10 * truth, (est.bits, truth)


def test_high_mi_is_flagged_saturated() -> None:
    x, y, truth = correlated_gaussian(5, 0.99, seed=99)  # 14.13 bits > log2(1250) = 10.29
    est = estimate_mi(x, y, seed=0, max_steps=600)
    assert truth > est.ceiling_bits == pytest.approx(math.log2(0.25 * N))
    assert est.saturated, est
    assert est.bits <= est.ceiling_bits
    # the pool, not the data, limits it: half the candidates give a clearly lower bound
    assert est.pool_gain_bits is not None and est.pool_gain_bits >= 0.3


@pytest.mark.parametrize(
    "make",
    [lambda: rotated_gaussian(25, 4.0, seed=3), lambda: discrete_injective(16, seed=4)],
    ids=["gaussian25", "discrete16"],
)
def test_shuffled_pairs_give_zero(make) -> None:
    x, y, _ = make()
    est = independence_check(x, y, seed=0)
    assert abs(est.bits) <= 0.05, est.bits
    assert not est.saturated


@pytest.mark.parametrize("K", [4, 16, 256])
def test_discrete_injective_map_gives_log2_k(K: int) -> None:
    x, y, truth = discrete_injective(K, seed=K)
    est = estimate_mi(x, y, seed=0)
    assert abs(est.bits - truth) <= 0.15, (est.bits, truth)
    assert not est.saturated
