"""Fast API tests of ie_flow.estimators: validation messages, registry, dims, result type,
closed-form baseline, paper-mode mechanics, batched-vs-single agreement, divergence."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ie_flow.estimators import (
    ESTIMATORS,
    EstimationDiverged,
    MIEstimate,
    apply_dims,
    estimate_mi,
    estimate_mi_many,
    independence_check,
)
from ie_flow.estimators.mine_paper import poly_warmup_lr


pytestmark = pytest.mark.usefixtures("one_torch_thread")


FAST = dict(max_steps=60, eval_every=20, batch_size=256, hidden=32, embed=16)


def gaussian_pairs(d: int, rho: float, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, d))
    y = rho * x + math.sqrt(1 - rho**2) * r.standard_normal((n, d))
    return x, y, -(d / 2) * math.log2(1 - rho**2)


# ----------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def xy() -> tuple[np.ndarray, np.ndarray]:
    x, y, _ = gaussian_pairs(3, 0.5, 400)
    return x, y


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x), y), "x contains non-finite values (1 NaN"),
        (lambda x, y: (x, np.where(np.arange(y.size).reshape(y.shape) == 3, np.inf, y)), "y contains non-finite values (0 NaN, 1 inf"),
        (lambda x, y: (x[:-1], y), "mismatched n"),
        (lambda x, y: (x[:100], y[:100]), "too few samples for the train/held-out split: n=100, need at least 128"),
        (lambda x, y: (np.concatenate([x, np.ones((len(x), 1))], 1), y), "x has 1 constant column(s) (zero variance) at index 3"),
        (lambda x, y: (x, np.column_stack([np.zeros(len(y)), y])), "y has 1 constant column(s) (zero variance) at index 0"),
        (lambda x, y: (x[None], y), "x must be a 2-D array (n, d)"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(xy, mutate, message) -> None:
    x, y = mutate(*xy)
    with pytest.raises(ValueError) as err:
        estimate_mi(x, y, **FAST)
    assert message in str(err.value)


def test_drop_constant_accepts_constant_columns(xy) -> None:
    x, y = xy
    x2 = np.column_stack([np.full(len(x), 3.0), x])  # like position 0 of an LLM
    est = estimate_mi(x2, y, drop_constant=True, **FAST)
    assert math.isfinite(est.bits) and est.settings["drop_constant"] is True


def test_batched_api_checks_shapes(xy) -> None:
    x, y = xy
    with pytest.raises(ValueError, match=r"must be a 3-D array \(P, n, d\)"):
        estimate_mi_many(x, y)
    with pytest.raises(ValueError, match="different numbers of pairs"):
        estimate_mi_many(np.stack([x, x]), y[None])


def test_unknown_estimator_suggests_close_match(xy) -> None:
    with pytest.raises(ValueError, match="did you mean 'infonce'"):
        estimate_mi(*xy, method="infonse")
    with pytest.raises(ValueError, match="did you mean 'mine-paper'"):
        ESTIMATORS["mine_paper"]
    with pytest.raises(ValueError, match="unknown setting 'max_step'.*did you mean 'max_steps'"):
        estimate_mi(*xy, max_step=3)
    with pytest.raises(ValueError, match=r"negatives must be one of \('report', 'heldout', 'all'\)"):
        estimate_mi(*xy, negatives="train")


def test_registry_names_and_lazy_classes() -> None:
    assert set(ESTIMATORS) == {"infonce", "dv", "mine", "smile", "nwj", "gaussian", "mine-paper", "smoothed", "probe"}
    assert "infonce" in ESTIMATORS and "nope" not in ESTIMATORS
    # each name resolves to a class of that name, found from its module's REGISTRY literal
    assert all(ESTIMATORS[name].name == name for name in ESTIMATORS)


# ----------------------------------------------------------------------------- dims

def test_apply_dims_shapes_orthogonality_determinism() -> None:
    x = np.random.default_rng(1).standard_normal((50, 40)).astype(np.float32)
    assert apply_dims(x, "full") is x
    assert np.array_equal(apply_dims(x, "first:8"), x[:, :8])
    p1, p2 = apply_dims(x, "project:8", seed=3), apply_dims(x, "project:8", seed=3)
    assert p1.shape == (50, 8) and p1.dtype == np.float32 and np.array_equal(p1, p2)
    assert not np.allclose(p1, apply_dims(x, "project:8", seed=4))
    from ie_flow.estimators import projection_matrix

    q = projection_matrix(40, 8, 3)
    np.testing.assert_allclose(q.T @ q, np.eye(8), atol=1e-12)
    np.testing.assert_allclose(p1, x @ q.astype(np.float32), rtol=1e-5, atol=1e-5)
    stack = np.stack([x, x])  # leading axes are kept
    assert apply_dims(stack, "project:8", seed=3).shape == (2, 50, 8)
    for bad in ("half", "first:x", "project:0", "first:41"):
        with pytest.raises(ValueError):
            apply_dims(x, bad)


# ----------------------------------------------------------------------------- result type

def test_estimate_carries_its_metadata(xy) -> None:
    est = estimate_mi(*xy, seed=5, **FAST)
    assert isinstance(est, MIEstimate)
    assert est.method == "infonce" and est.seeds == (5,) and est.bits_per_seed == (est.bits,)
    # one seed: the bootstrap over sample ids, centred on the bias-corrected value
    assert est.ci_low < est.diagnostics["corrected_bits"] < est.ci_high
    assert (est.ci_low + est.ci_high) / 2 == pytest.approx(est.diagnostics["corrected_bits"])
    assert est.diagnostics["corrected_bits"] == pytest.approx(
        est.bits + est.pool_gain_bits + est.diagnostics["gap_bits"] / 2)
    assert est.n_train + est.settings["n_select"] + est.n_eval == 400 and est.n_eval == 100
    assert est.ceiling_bits == pytest.approx(math.log2(100))  # negatives="report": the report rows only
    assert est.settings["negatives"] == "report" and est.settings["n_candidates"] == 100
    assert est.valid and est.invalid_reason is None and len(est.replicate_bits) == 200
    assert est.seconds > 0 and not est.diverged
    d = est.to_dict()
    assert d["bits"] == est.bits and d["seeds"] == [5] and len(d["replicate_bits"]) == 200
    with pytest.raises(Exception):
        est.bits = 1.0  # frozen


def test_several_seeds_give_mean_and_interval(xy) -> None:
    est = estimate_mi(*xy, seeds=(0, 1, 2), **FAST)
    assert len(est.bits_per_seed) == 3 and est.bits == pytest.approx(np.mean(est.bits_per_seed))
    assert est.ci_low < est.diagnostics["corrected_bits"] < est.ci_high


def test_heldout_negatives_ceiling(xy) -> None:
    est = estimate_mi(*xy, negatives="heldout", **FAST)  # report + select rows
    assert est.ceiling_bits == pytest.approx(math.log2(est.n_eval + est.settings["n_select"]))
    assert estimate_mi(*xy, negatives="all", **FAST).ceiling_bits == pytest.approx(math.log2(400))


# ----------------------------------------------------------------------------- gaussian baseline

@pytest.mark.parametrize("transform", ["linear", "copula"])
@pytest.mark.parametrize("d, rho", [(1, 0.9), (5, 0.6), (20, 0.3)])
def test_gaussian_closed_form(d: int, rho: float, transform: str) -> None:
    x, y, truth = gaussian_pairs(d, rho, 5000, seed=d)
    est = estimate_mi(x, y, method="gaussian", transform=transform)
    assert est.bits == pytest.approx(truth, rel=0.05, abs=0.03)
    assert est.ceiling_bits is None and not est.saturated and est.seconds < 5


def test_gaussian_flags_deterministic_relations() -> None:
    from ie_flow.estimators.synthetic import discrete_injective

    x, y, _ = discrete_injective(16, seed=1, n=2000)
    est = estimate_mi(x, y, method="gaussian")
    assert est.saturated and est.settings["ridge_limited"]


def test_gaussian_high_dims_are_cut() -> None:
    r = np.random.default_rng(0)
    x = r.standard_normal((300, 200))
    est = estimate_mi(x, r.standard_normal((300, 200)), method="gaussian", max_dims=16)
    assert est.settings["dims_used"] == (16, 16) and abs(est.bits) < 0.3


# ----------------------------------------------------------------------------- paper mode

def test_poly_schedule_matches_reference_shape() -> None:
    assert poly_warmup_lr(0, 105, 1e-4) == 0.0  # HF's scheduler starts at lr 0
    assert poly_warmup_lr(5, 105, 1e-4) == pytest.approx(1e-4)
    assert poly_warmup_lr(105, 105, 1e-4) == pytest.approx(1e-8)
    assert poly_warmup_lr(55, 105, 1e-4) == pytest.approx((1e-4 - 1e-8) * 0.5**3 + 1e-8, rel=1e-9)


def test_mine_paper_reports_max_training_estimate() -> None:
    x, y, _ = gaussian_pairs(2, 0.8, 300)
    est = estimate_mi(x, y, method="mine-paper", steps=15, record_trace=True)
    assert est.ceiling_bits is None and est.saturated is False and est.n_eval == 0 and est.n_train == 300
    assert est.settings["steps"] == 15 and est.settings["reported"].startswith("max")
    trace = est.settings["trace_bits"][0]  # seed 0: training-batch DV estimate of every step, in bits
    assert len(trace) == 15 and est.bits == pytest.approx(max(trace), rel=1e-9)
    # same seed, same numbers
    again = estimate_mi(x, y, method="mine-paper", steps=15)
    assert again.bits == pytest.approx(est.bits, rel=1e-6)


def test_mine_paper_critic_architecture() -> None:
    from ie_flow.estimators.mine_paper import WIDTHS

    assert WIDTHS == (768, 384, 192, 96, 48, 24, 12, 6, 3, 1)


# ----------------------------------------------------------------------------- batched == single

def test_many_matches_single_per_pair() -> None:
    pairs = [gaussian_pairs(4, rho, 1000, seed=i) for i, rho in enumerate((0.3, 0.6, 0.9))]
    xs = np.stack([p[0] for p in pairs]).astype(np.float32)
    ys = np.stack([p[1] for p in pairs]).astype(np.float32)
    settings = dict(max_steps=150, eval_every=25, hidden=32, embed=16)
    many = estimate_mi_many(xs, ys, seeds=(1,), **settings)
    assert len(many) == 3 and all(e.settings["batch_pairs"] == 3 for e in many)
    for p, e in enumerate(many):
        single = estimate_mi(xs[p], ys[p], seed=1, **settings)
        assert single.bits == pytest.approx(e.bits, abs=0.02)
    # and the estimates are ordered like the truths
    assert many[0].bits < many[1].bits < many[2].bits


# ----------------------------------------------------------------------------- divergence / shuffle

def test_divergence_is_reported_not_returned(xy) -> None:
    x, y = xy
    with pytest.raises(EstimationDiverged) as err:
        estimate_mi(x, y, method="dv", lr=1e20, max_steps=200, eval_every=10)
    assert isinstance(err.value, RuntimeError) and "diverged" in str(err.value)
    many = estimate_mi_many(x[None], y[None], method="dv", lr=1e20, max_steps=200, eval_every=10)
    assert many[0].diverged and math.isnan(many[0].bits)


def test_independence_check_is_near_zero(xy) -> None:
    est = independence_check(*xy, **FAST)
    assert abs(est.bits) < 0.1


def test_pairs_near_the_ceiling_stop_early_and_stay_flagged() -> None:
    """stop_near_ceiling: a pair whose held-out bound reaches log2(n_eval) - 0.3 bit stops
    training; it still reports a lower bound flagged saturated, and it ran fewer steps."""
    from ie_flow.estimators.synthetic import correlated_gaussian

    x, y, truth = correlated_gaussian(5, 0.99, seed=99, n=2000)  # 14.1 bits, ceiling log2 2000 = 11
    early = estimate_mi(x, y, seed=0)
    full = estimate_mi(x, y, seed=0, stop_near_ceiling=0)
    assert early.saturated and full.saturated
    assert early.settings["steps_run"][0] < full.settings["steps_run"][0]
    assert early.bits <= early.ceiling_bits < truth


def test_early_stopping_on_a_capped_select_pool_keeps_the_estimate() -> None:
    """select_rows caps the rows early stopping scores (their square per evaluation); under the cap
    nothing changes, to the last bit, and a cap of 1/8 of the select rows still meets ground truth."""
    from ie_flow.estimators.synthetic import correlated_gaussian
    from ie_flow.estimators.trainer import _stopping_rows

    sel = np.arange(10, 5000, 5)
    assert np.array_equal(_stopping_rows(sel, len(sel), 3).numpy(), sel)
    capped = _stopping_rows(sel, 100, 3).numpy()
    assert len(capped) == 100 and np.all(np.diff(capped) > 0) and np.isin(capped, sel).all()
    assert not np.array_equal(capped, _stopping_rows(sel, 100, 4).numpy())

    x, y, truth = correlated_gaussian(2, 0.8, seed=5, n=4000)  # 1.47 bits; 400 select rows
    full = estimate_mi(x, y, seed=0, bootstrap=0)
    assert estimate_mi(x, y, seed=0, bootstrap=0, select_rows=400).bits == full.bits
    small = estimate_mi(x, y, seed=0, bootstrap=0, select_rows=50)
    assert abs(small.bits - truth) < 0.1 and abs(full.bits - truth) < 0.1


def test_report_rows_in_pools_set_the_ceiling_and_keep_the_estimate() -> None:
    """pool_rows: above it the report rows form equal random pools, each its own candidates, so the
    ceiling is log2 of a pool; at or above the report rows (and with 0) nothing changes, to the last
    bit. A strong dependence reads its pool's ceiling (truth 14.1 bits); a weak one keeps its value."""
    from ie_flow.estimators.synthetic import correlated_gaussian

    x, y, _ = correlated_gaussian(5, 0.99, seed=99, n=4000)  # 1,000 report rows
    one = estimate_mi(x, y, seed=0, bootstrap=20)
    for same in (0, 1000):
        again = estimate_mi(x, y, seed=0, bootstrap=20, pool_rows=same)
        assert (again.bits, again.replicate_bits, again.ceiling_bits) == (one.bits, one.replicate_bits, one.ceiling_bits)
    pooled = estimate_mi(x, y, seed=0, bootstrap=20, pool_rows=300)  # 4 pools of 250
    assert one.ceiling_bits == pytest.approx(math.log2(1000)) and pooled.ceiling_bits == pytest.approx(math.log2(250))
    assert pooled.saturated and pooled.ceiling_bits - 0.3 < pooled.bits <= pooled.ceiling_bits
    assert pooled.settings["n_candidates"] == 250

    x, y, truth = correlated_gaussian(2, 0.8, seed=5, n=8000)  # 1.47 bits, 2,000 report rows
    whole, parts = estimate_mi(x, y, seed=0), estimate_mi(x, y, seed=0, pool_rows=500)
    assert abs(parts.bits - whole.bits) < 0.02 and parts.ci_low < truth + 0.05 and abs(parts.bits - truth) < 0.1


def test_fused_infonce_row_terms_equal_their_definitions() -> None:
    """The final evaluation's one-pass terms (S overwritten) against the definitions on the same
    scores: the full-pool terms (infonce_rows) to the last bit; the half pool (a masked
    log-sum-exp over the kept columns plus the row's positive) and the pool noise (C times the
    softmax's sum of squares, less 1) to float32 rounding; a row whose positive is outside the kept
    half included. Each bound class is there for each name TrainConfig accepts."""
    import torch

    from ie_flow.estimators import bounds
    from ie_flow.estimators.train_config import BOUNDS

    assert set(bounds.BOUND_CLASSES) == set(BOUNDS)
    g = torch.Generator().manual_seed(0)
    S = torch.randn(3, 40, 200, generator=g) * 4
    pos = torch.randperm(200, generator=g)[:40]
    keep = torch.zeros(200, dtype=torch.bool)
    keep[torch.randperm(200, generator=g)[:100]] = True
    assert (~keep[pos]).any() and keep[pos].any()
    full, half, noise = bounds.infonce_row_terms(S.clone(), pos, keep, pool_noise=True)
    assert torch.equal(full, bounds.infonce_rows(S, pos))
    mask = keep.view(1, 200).expand(40, 200).clone()
    mask[torch.arange(40), pos] = True
    own = S.gather(-1, pos.view(1, 40, 1).expand(3, 40, 1)).squeeze(-1)
    subpool = own - S.masked_fill(~mask, float("-inf")).logsumexp(-1) + torch.log(mask.sum(-1).float())
    torch.testing.assert_close(half, subpool, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(noise, (200 * S.softmax(-1).square().sum(-1) - 1.0).clamp_min(0.0), rtol=1e-5, atol=1e-5)
    assert len(bounds.infonce_row_terms(S.clone(), pos)) == 1
