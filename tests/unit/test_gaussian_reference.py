"""The smoothed measure's Gaussian reference G^β and its bracket [L, U] against ground truth
(docs/METHOD.md section 7): G^β equals the closed form on the sample covariances, its linearised
bootstrap replicates follow the exact reweighted ones, M^β ≈ G^β on Gaussian data, and on K
separated atoms G^β is far from M^β while the bracket holds log2 K."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ie_flow.estimators import estimate_mi
from ie_flow.estimators.gaussian_reference import gaussian_reference
from ie_flow.estimators.synthetic import discrete_injective, linear_gaussian_smoothed, smoothed_gaussian_bits

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sample_covariances(x: np.ndarray, y: np.ndarray, weights: np.ndarray, standardise: bool) -> tuple:
    """Weighted (population) covariances of x, y and their cross-covariance, optionally standardised."""
    w = weights / weights.sum()
    xc, yc = x - w @ x, y - w @ y
    cx, cy, cxy = (xc * w[:, None]).T @ xc, (yc * w[:, None]).T @ yc, (xc * w[:, None]).T @ yc
    if standardise:
        sx, sy = np.sqrt(np.diag(cx)), np.sqrt(np.diag(cy))
        cx, cy, cxy = cx / np.outer(sx, sx), cy / np.outer(sy, sy), cxy / np.outer(sx, sy)
    return cx, cy, cxy


def exact_g(x: np.ndarray, y: np.ndarray, beta: float, weights: np.ndarray, standardise: bool) -> float:
    cx, cy, cxy = sample_covariances(x.astype(np.float64), y.astype(np.float64), weights, standardise)
    return smoothed_gaussian_bits(cx, cy, cxy, beta * math.sqrt(np.trace(cx)), beta * math.sqrt(np.trace(cy)))


@pytest.mark.parametrize("standardise", [False, True])
def test_value_is_the_closed_form_and_replicates_follow_the_reweighted_closed_form(standardise: bool) -> None:
    x, y, _ = linear_gaussian_smoothed(4, 0.4, seed=0, n=2000)
    x[:, 0] *= 30.0  # unequal coordinate scales: raw and standardised differ
    blocks = np.arange(len(x)) % 8
    w = np.random.default_rng(0).multinomial(8, np.full(8, 1 / 8), size=40)
    [(value, reps)] = gaussian_reference([x, y], np.array([0]), np.array([1]), [0.4, 0.8], [standardise], blocks, w,
                                         np.bincount(blocks))
    for b, beta in enumerate((0.4, 0.8)):
        assert value[0, b] == pytest.approx(exact_g(x, y, beta, np.ones(len(x)), standardise), abs=1e-5)
        exact = np.array([exact_g(x, y, beta, w[r][blocks].astype(float), standardise) for r in range(len(w))])
        # first-order agreement: the spread of the replicates (what the centred interval uses) within
        # 10%, and each replicate about its median within a third of that spread of the exact one's
        lin, ref = reps[0, b] - np.median(reps[0, b]), exact - np.median(exact)
        assert np.std(lin) == pytest.approx(np.std(ref), rel=0.1)
        assert np.abs(lin - ref).max() < 0.33 * np.std(ref)


def test_gaussian_data_reads_m_equal_to_g_within_monte_carlo_error() -> None:
    x, y, truth = linear_gaussian_smoothed(4, 0.4, seed=0, n=4000)
    est = estimate_mi(x, y, method="smoothed", beta=0.4, queries=2000, bootstrap=100)
    d = est.diagnostics
    assert est.valid
    assert d["gauss_bits"] == pytest.approx(truth, abs=0.01)  # plug-in covariances, n = 4000, d = 4 + 4
    assert abs(est.bits - d["gauss_bits"]) <= 3 * d["mc_se_bits"]
    assert d["excess_bits"] == pytest.approx(est.bits - d["gauss_bits"])
    assert d["excess_ci_low"] <= 0.0 <= d["excess_ci_high"]
    assert d["gauss_ci_low"] < d["gauss_bits"] < d["gauss_ci_high"]
    assert d["lower_ci_low"] <= truth <= d["upper_ci_high"]


def test_separated_atoms_read_g_far_from_m_and_the_bracket_holds_log2_k() -> None:
    x, y, truth = discrete_injective(32, seed=0, n=2048, d=16)
    est = estimate_mi(x, y, method="smoothed", beta=0.05, queries=512, bootstrap=50)
    d = est.diagnostics
    assert truth == 5.0
    assert abs(d["gauss_bits"] - est.bits) > 2.0  # the covariances say nothing about 32 separated atoms
    assert d["excess_ci_high"] < -2.0 or d["excess_ci_low"] > 2.0
    assert d["lower_bits"] <= 5.0 <= d["upper_bits"]
    assert d["lower_ci_low"] < d["lower_bits"] < d["lower_ci_high"]
    assert d["upper_bits"] - d["lower_bits"] < 0.2


def test_a_constant_side_has_a_zero_reference() -> None:
    r = np.random.default_rng(0)
    x = np.full((400, 3), 2.0, dtype=np.float32)
    y = r.standard_normal((400, 3)).astype(np.float32)
    est = estimate_mi(x, y, method="smoothed", beta=0.5, queries=100, bootstrap=20)
    assert est.diagnostics["gauss_bits"] == 0.0 and est.diagnostics["excess_bits"] == 0.0
    assert est.diagnostics["lower_bits"] == 0.0 == est.diagnostics["upper_bits"]


def test_the_mi_table_carries_the_reference_into_ie_its_parts_and_the_report() -> None:
    from ie_flow.emergence import information_emergence
    from ie_flow.results import mi_rows, mi_table, table_rows

    r = np.random.default_rng(0)
    h = [r.standard_normal((600, 4)).astype(np.float32) for _ in range(3)]  # boundary 0, positions 0..2
    layers = [h]
    for _ in range(2):  # two blocks: each position mixes in the previous one
        prev = layers[-1]
        mix = r.standard_normal((4, 4)).astype(np.float32)
        layers.append([np.tanh(prev[t] + (prev[t - 1] @ mix if t else 0.0)) for t in range(3)])
    cells = [(l, t) for l in range(2) for t in range(3)]
    grid = SmoothedMIForTest().estimate_grid(np.stack([layers[l][t] for l, t in cells]),
                                             np.stack([layers[l + 1][t] for l, t in cells]), betas=[0.6])
    rows = [row for (l, t), cell in zip(cells, grid) for level in ("macro", "micro")
            for row in mi_rows(l, t, level, cell[0])]
    table = mi_table(rows)
    assert len(table_rows(table)[0]["reference_replicates"]) == 40
    em = information_emergence(table, variant="β = 0.6")
    assert em.has_reference and any(layer.valid for layer in em.layers)
    for layer in (layer for layer in em.layers if not layer.valid):
        assert math.isnan(layer.reference_ie)  # as IE: an invalid cell is never averaged in
    for layer in (layer for layer in em.layers if layer.valid):
        g = [row["diagnostics"]["gauss_bits"] for row in rows if row["layer"] == layer.layer and row["level"] == "macro"]
        assert layer.reference_ie == pytest.approx(g[-1] - np.mean(g))
        assert layer.excess_ie == pytest.approx(layer.ie - layer.reference_ie)
        assert layer.reference_ie_ci_low <= layer.reference_ie <= layer.reference_ie_ci_high
        assert layer.excess_ie_ci_low <= layer.excess_ie <= layer.excess_ie_ci_high


def SmoothedMIForTest():  # noqa: N802
    from ie_flow.estimators.smoothed import SmoothedMI

    return SmoothedMI(queries=100, bootstrap=40, blocks=8)


def test_fewer_samples_than_dimensions_still_give_the_closed_form() -> None:
    # n = 40 < d = 64: the sample covariances are singular, Σ + σ²I is not
    r = np.random.default_rng(3)
    x = r.standard_normal((40, 64)).astype(np.float32)
    y = (x @ r.standard_normal((64, 64)) + r.standard_normal((40, 64))).astype(np.float32)
    blocks = np.arange(40) % 4
    w = r.multinomial(4, np.full(4, 0.25), size=10)
    [(value, reps)] = gaussian_reference([x, y], np.array([0]), np.array([1]), [0.6], [False], blocks, w,
                                         np.bincount(blocks))
    assert value[0, 0] == pytest.approx(exact_g(x, y, 0.6, np.ones(40), False), abs=1e-5)
    assert np.isfinite(reps).all()


def test_both_modes_in_one_call_share_their_second_moments_and_equal_one_call_each() -> None:
    """The standardised frame is the raw one rescaled: one call for both modes gives exactly what a call
    per mode gives, and the standardised value is still the closed form of the standardised covariances."""
    x, y, _ = linear_gaussian_smoothed(4, 0.4, seed=1, n=1000)
    x[:, 0] *= 30.0
    y[:, 2] *= 0.001  # a coordinate the raw mode hardly sees
    blocks = np.arange(len(x)) % 8
    w = np.random.default_rng(1).multinomial(8, np.full(8, 1 / 8), size=20)
    args = ([x, y], np.array([0]), np.array([1]), [0.4, 0.8])
    both = gaussian_reference(*args, [False, True], blocks, w, np.bincount(blocks))
    for k, standardise in enumerate((False, True)):
        [(value, reps)] = gaussian_reference(*args, [standardise], blocks, w, np.bincount(blocks))
        np.testing.assert_array_equal(both[k][0], value)
        np.testing.assert_array_equal(both[k][1], reps)
        assert value[0, 0] == pytest.approx(exact_g(x, y, 0.4, np.ones(len(x)), standardise), abs=1e-5)
    assert abs(both[0][0][0, 0] - both[1][0][0, 0]) > 0.01  # the modes differ here
