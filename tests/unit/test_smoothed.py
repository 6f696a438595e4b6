"""Ground-truth tests of the smoothed (resolution-aware) estimator, docs/METHOD.md section 7:
the Gaussian closed form, K separated points, coincident points, shuffled pairs, invariances,
the batched grid against explicit distances, and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ie_flow.estimators import ESTIMATORS, estimate_mi, estimate_mi_many
from ie_flow.estimators.smoothed import SmoothedMI, _draw, _layout, _side, dedup_sides, direct_estimate, layout_rng
from ie_flow.estimators.synthetic import (
    correlated_gaussian,
    discrete_injective,
    linear_gaussian_smoothed,
    shuffled,
    smoothed_gaussian_bits,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def chain(n: int = 600, d: int = 5, layers: int = 3, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A small layer chain (Y of cell l is X of cell l + 1) with one massive coordinate."""
    r = np.random.default_rng(seed)
    h = [r.standard_normal((n, d)).astype(np.float32) * np.array([1, 1, 1, 1, 20], dtype=np.float32)]
    for _ in range(layers):
        mix = r.standard_normal((d, d)).astype(np.float32) * 0.5
        h.append(np.tanh(h[-1] @ mix) + 0.05 * r.standard_normal((n, d)).astype(np.float32))
    return np.stack(h[:-1]), np.stack(h[1:])


# ----------------------------------------------------------------------------- ground truth

def test_gaussian_closed_form_helper_matches_independent_pairs_formula() -> None:
    # d pairs with correlation rho and no smoothing: I = -(d/2) log2(1 - rho^2)
    d, rho = 3, 0.8
    bits = smoothed_gaussian_bits(np.eye(d), np.eye(d), rho * np.eye(d), 0.0, 0.0)
    assert bits == pytest.approx(-(d / 2) * math.log2(1 - rho**2), rel=1e-12)
    # smoothing both sides by sigma: correlation rho / (1 + sigma^2)
    s = 0.5
    assert smoothed_gaussian_bits(np.eye(d), np.eye(d), rho * np.eye(d), s, s) == pytest.approx(
        -(d / 2) * math.log2(1 - (rho / (1 + s**2)) ** 2), rel=1e-12)


@pytest.mark.parametrize("d, beta", [(4, 0.4), (16, 0.6)])
def test_linear_gaussian_meets_closed_form_within_10_percent(d: int, beta: float) -> None:
    x, y, truth = linear_gaussian_smoothed(d, beta, seed=0, n=4000)
    est = estimate_mi(x, y, method="smoothed", beta=beta, queries=4000, bootstrap=50)
    assert est.valid, est.invalid_reason
    assert abs(est.bits - truth) <= 0.1 * truth, (est.bits, truth)
    assert est.ci_low <= truth <= est.ci_high


@pytest.mark.parametrize("beta", [0.4, 0.6])
def test_linear_gaussian_d64_is_flagged_where_the_plug_in_cannot_resolve_it(beta: float) -> None:
    # n = 4000: the LOO value is 27-77% low here (truth 0.35 / 0.078 bit) and the cell says so
    x, y, truth = linear_gaussian_smoothed(64, beta, seed=0, n=4000)
    est = estimate_mi(x, y, method="smoothed", beta=beta, queries=4000, bootstrap=0)
    assert est.bits < 0.9 * truth
    assert not est.valid and "gap" in est.invalid_reason
    assert est.diagnostics["resub_loo_gap_bits"] > 0.4 * est.bits


def test_k_separated_points_give_log2_k_at_small_beta() -> None:
    x, y, truth = discrete_injective(32, seed=0, n=2048, d=16)
    est = estimate_mi(x, y, method="smoothed", beta=0.05, queries=512, bootstrap=50)
    assert truth == 5.0
    assert abs(est.bits - 5.0) <= 0.1
    assert abs(est.diagnostics["resub_bits"] - 5.0) <= 0.1  # every query has copies: LOO = resub
    assert abs(est.diagnostics["resub_loo_gap_bits"]) < 0.05
    assert est.valid, est.invalid_reason


def test_null_rule_is_opt_in_and_flags_a_discrete_table_effect() -> None:
    # K = 32 points at beta = 0.1: the value is exact, but shuffled pairs spread over a 32 x 32
    # table that n = 2048 samples cannot fill, so the LOO null is far below 0
    x, y, _ = discrete_injective(32, seed=0, n=2048, d=16)
    default = estimate_mi(x, y, method="smoothed", beta=0.1, queries=256, bootstrap=0)
    strict = estimate_mi(x, y, method="smoothed", beta=0.1, queries=256, bootstrap=0, null_rule=True)
    assert default.valid and abs(default.bits - 5.0) <= 0.1
    assert default.diagnostics["null_bits"] < -0.5
    assert not strict.valid and strict.invalid_reason.startswith("null")


def test_coincident_points_give_zero() -> None:
    r = np.random.default_rng(0)
    x = np.full((500, 6), 3.25, dtype=np.float32)
    y = r.standard_normal((500, 4)).astype(np.float32)
    for a, b in ((x, y), (y, x), (x, x[:, :2])):
        est = estimate_mi(a, b, method="smoothed", beta=0.3, queries=128)
        assert abs(est.bits) <= 0.05 and est.valid
        assert est.ci_low <= 0.0 <= est.ci_high


def test_shuffled_pairs_give_zero() -> None:
    x, y, _ = correlated_gaussian(4, 0.9, seed=0, n=4000)
    xs, ys, _ = shuffled(x, y, seed=1)
    est = estimate_mi(xs, ys, method="smoothed", beta=0.6, queries=1024, bootstrap=100)
    # within 0.1 bit; not necessarily inside the interval: the LOO value has a small negative
    # bias on independent pairs (-0.01 bit here) and the bootstrap interval covers variability only
    assert abs(est.bits) <= 0.1
    assert est.valid, est.invalid_reason


def test_too_small_beta_on_continuous_data_is_flagged() -> None:
    x, y, _ = correlated_gaussian(8, 0.5, seed=0, n=1000)
    est = estimate_mi(x, y, method="smoothed", beta=0.1, queries=256, bootstrap=0)
    assert not est.valid
    assert est.diagnostics["resub_bits"] - est.diagnostics["loo_bits"] > 1.0


# ----------------------------------------------------------------------------- invariances

def within_mc_error(a, b) -> bool:
    return abs(a.bits - b.bits) <= 3 * math.hypot(a.diagnostics["mc_se_bits"], b.diagnostics["mc_se_bits"])


def test_default_mode_is_invariant_to_scaling_and_rotating_either_side() -> None:
    r = np.random.default_rng(3)
    x, y, _ = correlated_gaussian(6, 0.8, seed=2, n=1500)
    q, _ = np.linalg.qr(r.standard_normal((6, 6)))
    run = lambda a, b: estimate_mi(a, b, method="smoothed", beta=0.5, queries=1500, bootstrap=0)  # noqa: E731
    base = run(x, y)
    # other data -> other noise draws (noise is keyed by content): equal within Monte-Carlo error
    for a, b in ((x * 37.0 + 5.0, y * 1e-3), (x @ q, y), (x, y @ q.T[:, ::-1])):
        assert within_mc_error(run(a, b), base)
    # with the same draws the definition is exactly invariant (sigma scales with the data)
    ids = np.arange(0, 1500, 3)
    zx, zy = r.standard_normal((500, 6)), r.standard_normal((500, 6))
    same = direct_estimate(x * 37.0 + 5.0, y * 1e-3, 0.5, ids, zx, zy)
    assert same == pytest.approx(direct_estimate(x, y, 0.5, ids, zx, zy), abs=1e-9)


def test_standardised_mode_is_labelled_and_invariant_to_per_coordinate_scales() -> None:
    x, y, _ = correlated_gaussian(5, 0.8, seed=4, n=800)
    gains = np.array([1.0, 100.0, 0.01, 3.0, 1e3])
    run = lambda a, **kw: estimate_mi(a, y, method="smoothed", beta=0.4, queries=800, bootstrap=0, **kw)  # noqa: E731
    a, b, raw = run(x, standardise=True), run(x * gains, standardise=True), run(x * gains)
    assert a.settings["mode"] == "standardised" and raw.settings["mode"] == "raw"
    assert within_mc_error(a, b)
    assert raw.bits < 0.5 * a.bits  # raw: the 1e3 coordinate sets sigma and drowns the others


# ----------------------------------------------------------------------------- the batched grid

def explicit_reference(xs, ys, betas, seed, queries, blocks, standardise=False):
    """Per cell and beta (resub, LOO) bits from explicit float64 distances with the same draws."""
    rng = layout_rng(xs.shape[1], 0)
    arrays, sx, sy, keys = dedup_sides(xs, ys)
    sides = [_side(a, standardise, "cpu") for a in arrays]
    draw = _draw(_layout(xs.shape[1], blocks, rng), queries, seed, sides, keys, "cpu")
    ids = draw.pos_sample[draw.qpos]
    return [[direct_estimate(xs[p], ys[p], b, ids, draw.noise[sx[p]].numpy(), draw.noise[sy[p]].numpy(), standardise)
             for b in betas] for p in range(len(xs))], draw


@pytest.mark.parametrize("standardise", [False, True])
def test_grid_equals_explicit_distances_for_every_cell_and_beta(standardise: bool) -> None:
    xs, ys = chain()
    betas = [0.2, 0.5]
    grid = SmoothedMI(queries=100, blocks=8, chunk=40, standardise=standardise, bootstrap=20).estimate_grid(
        xs, ys, betas=betas, seeds=(3,))
    ref, _ = explicit_reference(xs, ys, betas, 3, 100, 8, standardise)
    for p in range(len(xs)):
        for b in range(len(betas)):
            resub, loo = ref[p][b]
            assert grid[p][b].diagnostics["resub_bits"] == pytest.approx(resub, abs=1e-5)
            assert grid[p][b].diagnostics["loo_bits"] == pytest.approx(loo, abs=1e-5)
            assert grid[p][b].bits == grid[p][b].diagnostics["loo_bits"]  # LOO is the headline


def test_null_equals_the_estimate_on_explicitly_shuffled_pairs() -> None:
    x, y, _ = linear_gaussian_smoothed(3, 0.3, seed=0, n=500)
    est = SmoothedMI(queries=120, blocks=8, beta=0.3).estimate_many(x[None], y[None], seeds=(5,))[0]
    _, draw = explicit_reference(x[None], y[None], [0.3], 5, 120, 8)
    pos = draw.pos_sample
    valid = pos >= 0
    y_null = y.copy()
    y_null[pos[valid]] = y[pos[draw.null_pos[valid]]]
    assert (draw.null_pos[valid] != np.flatnonzero(valid)).all()  # no sample keeps its partner
    _, loo = direct_estimate(x, y_null, 0.3, pos[draw.qpos], draw.noise[0].numpy(), draw.noise[1].numpy()[draw.null_row])
    assert est.diagnostics["null_bits"] == pytest.approx(loo, abs=1e-5)


def test_grid_does_not_depend_on_chunking_and_shares_sides() -> None:
    xs, ys = chain(layers=4)
    whole = SmoothedMI(queries=64, blocks=8).estimate_grid(xs, ys, betas=[0.3, 0.6])
    pieces = SmoothedMI(queries=64, blocks=8, chunk=7).estimate_grid(xs, ys, betas=[0.3, 0.6])
    for a, b in zip(sum(whole, []), sum(pieces, [])):
        # equal up to float32 rounding (each chunk shifts its kernels by its own row maxima)
        assert a.bits == pytest.approx(b.bits, abs=1e-5)
        assert (a.ci_low, a.ci_high) == pytest.approx((b.ci_low, b.ci_high), abs=1e-5)
    sides, sx, sy, keys = dedup_sides(xs, ys)
    assert len(sides) == len(xs) + 1 and (sy[:-1] == sx[1:]).all()  # Y of layer l is X of layer l + 1
    _, sx2, sy2, keys2 = dedup_sides(xs[:1], xs[:1])
    assert sx2[0] != sy2[0] and keys2[0] != keys2[1]  # X == Y still gets independent noise on each side


def test_a_cells_estimate_does_not_depend_on_the_other_cells() -> None:
    # a chain's cells use consecutive sides (batched as slices); shuffled cells go one by one;
    # each side's noise comes from its content, so order and company change nothing
    xs, ys = chain(layers=4)
    order = np.array([2, 0, 3, 1])
    est = SmoothedMI(queries=64, blocks=8, cell_batch=3)
    straight = est.estimate_grid(xs, ys, betas=[0.4])
    shuffled_cells = est.estimate_grid(xs[order], ys[order], betas=[0.4])
    for i, p in enumerate(order):
        assert shuffled_cells[i][0].bits == pytest.approx(straight[p][0].bits, abs=1e-5)
    alone = est.estimate_grid(xs[2:3], ys[2:3], betas=[0.4])
    assert alone[0][0].bits == pytest.approx(straight[2][0].bits, abs=1e-5)


def test_estimate_carries_diagnostics_interval_and_seeds() -> None:
    xs, ys = chain()
    ests = estimate_mi_many(xs, ys, method="smoothed", seeds=(0, 1), beta=0.5, queries=100, bootstrap=50)
    e = ests[0]
    assert e.method == "smoothed" and e.seeds == (0, 1) and len(e.bits_per_seed) == 2
    assert e.bits == pytest.approx(np.mean(e.bits_per_seed))
    assert len(e.replicate_bits) == 50
    spread = np.percentile(e.replicate_bits, [2.5, 97.5]) - np.median(e.replicate_bits)
    assert (e.ci_low, e.ci_high) == pytest.approx(tuple(e.bits + spread))
    assert e.ci_low < e.bits < e.ci_high
    assert (e.diagnostics["boot_ci_low"], e.diagnostics["boot_ci_high"]) == (e.ci_low, e.ci_high)
    for key in ("resub_bits", "loo_bits", "resub_loo_gap_bits", "mc_se_bits", "null_bits", "half_n_bits",
                "stability_bits", "beta", "sigma_x", "sigma_y"):
        assert math.isfinite(e.diagnostics[key]), key
    assert e.diagnostics["half_n_bits"] + e.diagnostics["stability_bits"] == pytest.approx(e.bits)
    assert ESTIMATORS["smoothed"] is SmoothedMI


def test_a_resample_missing_a_querys_only_neighbour_leaves_the_query_out() -> None:
    """200 tight pairs at β = 0.05: each query's kernel holds only its partner, so a resample that
    did not draw the partner's block has an empty kernel sum for it. The estimate is valid; its
    replicates and interval must stay finite (they were all infinite, the interval NaN)."""
    r = np.random.default_rng(0)
    x = np.repeat(r.standard_normal((200, 4)), 2, axis=0) + 0.02 * r.standard_normal((400, 4))
    y = x @ r.standard_normal((4, 4)) + 0.02 * r.standard_normal((400, 4))
    e = estimate_mi(x.astype(np.float32), y.astype(np.float32), method="smoothed", beta=0.05, bootstrap=100)
    assert e.valid
    assert len(e.replicate_bits) == 100 and np.isfinite(e.replicate_bits).all()
    assert e.ci_low < e.bits < e.ci_high


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    "settings, message",
    [
        ({"beta": 0.0}, "beta must be a finite number > 0"),
        ({"beta": -0.3}, "beta must be a finite number > 0"),
        ({"beta": float("nan")}, "beta must be a finite number > 0"),
        ({"queries": 401}, "queries=401 exceeds the number of samples n=400"),
        ({"betas": [0.3, 0.6]}, "call SmoothedMI.estimate_grid"),
        ({"bets": 0.3}, "unknown setting 'bets' for estimator 'smoothed'; did you mean 'beta"),
    ],
)
def test_bad_settings_raise_value_error(settings: dict, message: str) -> None:
    x, y, _ = correlated_gaussian(3, 0.5, seed=0, n=400)
    with pytest.raises(ValueError) as err:
        estimate_mi(x, y, method="smoothed", **{"queries": 100, **settings})
    assert message in str(err.value)


def test_default_queries_fit_a_small_sample() -> None:
    """Unset, m is min(512, n): 300 samples use all 300 as queries (an explicit 512 is refused above)."""
    x, y, _ = correlated_gaussian(3, 0.5, seed=0, n=300)
    est = estimate_mi(x, y, method="smoothed", bootstrap=0)
    assert est.n_eval == 300 and est.diagnostics["queries"] == 300.0
    assert estimate_mi(*correlated_gaussian(3, 0.5, seed=0, n=2000)[:2], method="smoothed", bootstrap=0).n_eval == 512


def test_nan_input_raises_value_error() -> None:
    x, y, _ = correlated_gaussian(3, 0.5, seed=0, n=400)
    x[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"x contains non-finite values \(1 NaN"):
        estimate_mi(x, y, method="smoothed", beta=0.4, queries=100)


# ----------------------------------------------------------------------------- common random numbers

def test_named_sides_draw_the_same_noise_in_every_call_whatever_their_content() -> None:
    model, _ = chain(layers=2)
    control, _ = chain(layers=2, seed=7)  # other content, same shapes
    keys = np.array([[0, 1], [1, 2]])
    layout = _layout(600, 8, layout_rng(600, 0))
    draws = []
    for xs in (model, control):
        for named in (keys, None):
            sides, sx, sy, noise_keys = dedup_sides(xs, xs[::-1].copy(), named)
            draws.append(_draw(layout, 64, 0, [_side(a, False, "cpu") for a in sides], noise_keys, "cpu"))
    (m_named, m_content), (c_named, c_content) = draws[:2], draws[2:]
    assert all(np.array_equal(a, b) for a, b in zip(m_named.noise, c_named.noise))  # common random numbers
    assert not np.array_equal(m_content.noise[0], c_content.noise[0])  # keyed by content: independent
    assert np.array_equal(m_named.qpos, c_named.qpos)  # the same query ids either way
    with pytest.raises(ValueError, match="alike"):
        dedup_sides(model, control, np.array([[0, 0], [1, 2]]))


def test_named_sides_make_the_estimate_exactly_invariant_to_scaling_and_shifting() -> None:
    x, y, _ = correlated_gaussian(6, 0.8, seed=2, n=1500)
    est = SmoothedMI(queries=300, bootstrap=0, gauss=False)
    keys = np.array([[0, 1]])
    base = est.estimate_grid(x[None], y[None], betas=[0.5], keys=keys)[0][0]
    moved = est.estimate_grid((x * 37.0 + 5.0)[None], (y * 1e-3)[None], betas=[0.5], keys=keys)[0][0]
    assert moved.bits == pytest.approx(base.bits, abs=1e-4)


def test_a_named_cells_estimate_does_not_depend_on_the_other_cells() -> None:
    xs, ys = chain(layers=4)
    keys = np.array([[l, l + 1] for l in range(4)])
    est = SmoothedMI(queries=64, blocks=8, cell_batch=3, gauss=False)
    straight = est.estimate_grid(xs, ys, betas=[0.4], keys=keys)
    alone = est.estimate_grid(xs[2:3], ys[2:3], betas=[0.4], keys=keys[2:3])
    assert alone[0][0].bits == pytest.approx(straight[2][0].bits, abs=1e-5)


def test_common_random_numbers_narrow_the_interval_of_a_paired_difference() -> None:
    # a "model" and a "control" that differs a little on the same samples: with shared query ids
    # and draws their per-query values move together, and the difference's interval is narrower
    x, y, _ = correlated_gaussian(4, 0.8, seed=0, n=2000)
    y2 = y + 0.2 * np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    est = SmoothedMI(queries=500, bootstrap=100, gauss=False)
    width = {}
    for how, keys in (("crn", np.array([[0, 1]])), ("independent", None)):
        a = est.estimate_grid(x[None], y[None], betas=[0.5], keys=keys)[0][0]
        b = est.estimate_grid(x[None], y2[None], betas=[0.5], keys=keys)[0][0]
        diff = np.array(a.replicate_bits) - np.array(b.replicate_bits)
        width[how] = float(np.subtract(*np.percentile(diff, [97.5, 2.5])))
    assert width["crn"] < 0.5 * width["independent"], width


def test_a_headline_beta_fixed_in_advance_is_shown_whatever_the_validity_and_never_replaced() -> None:
    from types import SimpleNamespace

    def profile(valid_at: dict[str, list[bool]]) -> dict:
        return {v: SimpleNamespace(layers=[SimpleNamespace(valid=ok) for ok in flags]) for v, flags in valid_at.items()}

    model = profile({"β = 0.4": [True, False], "β = 0.6": [True, True], "β = 0.8": [True, True]})
    control = profile({"β = 0.4": [True, True], "β = 0.6": [True, True], "β = 0.8": [True, True]})
    assert SmoothedMI().choose_headline(model, control) == ("β = 0.6", True)  # the smallest valid everywhere
    assert SmoothedMI(headline_beta=0.8).choose_headline(model, control) == ("β = 0.8", True)
    assert SmoothedMI(headline_beta=0.4).choose_headline(model, control) == ("β = 0.4", False)  # flagged, kept
    with pytest.raises(ValueError, match="no 'β = 0.8'"):
        SmoothedMI(headline_beta=0.8).choose_headline(model, profile({"β = 0.4": [True, True]}))
    with pytest.raises(ValueError, match="not in the beta grid"):
        SmoothedMI(headline_beta=0.5)


def test_the_headline_beta_is_fixed_per_corpus_family() -> None:
    """Every corpus maps to a family; a job running the smoothed measure gets its family's headline β
    (in-context 0.6, text 0.8) before validation, as its own estimator, a control's or a
    reproduction's `also`; a β the job names wins, and a grid named without the family's β gets it."""
    from ie_flow.config import family_settings, load_job
    from ie_flow.corpora import ICL_CORPORA, corpus_family
    from ie_flow.estimators.smoothed import HEADLINE_BETA_BY_FAMILY
    from ie_flow.stages.estimate import run_name

    assert HEADLINE_BETA_BY_FAMILY == {"icl": 0.6, "text": 0.8}
    assert {corpus_family(c) for c in ICL_CORPORA} == {"icl"}
    for name in ("python-docs", "fortunes", "data/windows.jsonl", "s3://bucket/docs.parquet", "generated:x"):
        assert corpus_family(name) == "text", name
    assert family_settings("smoothed", {}, "icl-animals") == {"headline_beta": 0.6}
    assert family_settings("smoothed", {}, "generated:x") == {"headline_beta": 0.8}
    assert family_settings("infonce", {"max_steps": 5}, "python-docs") == {"max_steps": 5}  # nothing to fix

    icl = load_job(None, {"estimate.method": "smoothed"})  # the default corpus, icl-countries
    assert icl.estimate.settings == {"headline_beta": 0.6} and icl.estimate.estimator().settings["headline_beta"] == 0.6
    assert "headline_beta: 0.6" in icl.to_yaml()  # the resolved job shows it, and the results key hashes it
    assert run_name(icl.estimate, "m", "c") != run_name(icl.estimate.model_copy(update={"settings": {}}), "m", "c")
    text = load_job(None, {"estimate.method": "smoothed", "corpus.name": "python-docs", "control.kind": "shuffled"})
    assert text.estimate.settings == text.control.settings == {"headline_beta": 0.8}
    grid = load_job(None, {"estimate.method": "smoothed", "corpus.name": "corpus.jsonl",
                           "estimate.settings": {"betas": [0.4, 0.6]}})
    assert grid.estimate.settings == {"betas": [0.4, 0.6, 0.8], "headline_beta": 0.8}
    assert grid.estimate.estimator().variants() == ("β = 0.4", "β = 0.6", "β = 0.8", "β = 0.4, standardised",
                                                    "β = 0.6, standardised", "β = 0.8, standardised")
    own = load_job(None, {"estimate.method": "smoothed", "corpus.name": "fortunes",
                          "estimate.settings": {"headline_beta": 0.4, "betas": [0.4]}})
    assert own.estimate.settings == {"headline_beta": 0.4, "betas": [0.4]}  # named: left alone
    # the random control of an InfoNCE job is smoothed; a control that is off is not run, so not filled
    random = load_job(None, {"control.kind": "random"})
    assert random.estimate.settings == {} and random.control.settings == {"headline_beta": 0.6}
    assert load_job(None, {}).control.settings == {}


# ----------------------------------------------------------------------------- both modes

def test_one_call_measures_both_modes_exactly_as_one_call_per_mode() -> None:
    """By default every cell is measured raw and standardised, in variants order (raw β, then standardised
    β), with the same resamples, queries and noise: each value, interval, replicate and diagnostic equals
    what a call measuring that mode alone returns, the older `standardise` setting included."""
    xs, ys = chain()  # one coordinate 20 x the others: the two modes differ
    keys = np.array([[l, l + 1] for l in range(len(xs))])
    settings = {"queries": 64, "blocks": 8, "bootstrap": 20}
    both = SmoothedMI(**settings).estimate_grid(xs, ys, betas=[0.4, 0.8], keys=keys)
    raw = SmoothedMI(**settings, modes=["raw"]).estimate_grid(xs, ys, betas=[0.4, 0.8], keys=keys)
    std = SmoothedMI(**settings, standardise=True).estimate_grid(xs, ys, betas=[0.4, 0.8], keys=keys)
    names = ["β = 0.4", "β = 0.8", "β = 0.4, standardised", "β = 0.8, standardised"]
    assert SmoothedMI(betas=[0.4, 0.8]).variants() == tuple(names)
    for p in range(len(xs)):
        assert [e.variant for e in both[p]] == names
        assert [e.settings["mode"] for e in both[p]] == ["raw", "raw", "standardised", "standardised"]
        for got, alone in zip(both[p], raw[p] + std[p]):
            assert (got.variant, got.bits, got.ci_low, got.ci_high) == (alone.variant, alone.bits, alone.ci_low,
                                                                       alone.ci_high)
            assert got.replicate_bits == alone.replicate_bits and len(got.replicate_bits) == 20
            assert got.reference_replicate_bits == alone.reference_replicate_bits
            assert got.diagnostics == alone.diagnostics and got.valid == alone.valid
    assert all(abs(both[p][0].bits - both[p][2].bits) > 0.01 for p in range(len(xs)))  # not one value twice


def test_the_older_standardise_setting_still_names_one_mode() -> None:
    assert SmoothedMI(standardise=True).settings["modes"] == ("standardised",)
    assert SmoothedMI(standardise=False).variants() == ("β = 0.4", "β = 0.6", "β = 0.8")
    assert SmoothedMI(standardise=True, betas=[0.6]).variants() == ("β = 0.6, standardised",)
    assert SmoothedMI().settings["modes"] == SmoothedMI(modes=["standardised", "raw"]).settings["modes"] == (
        "raw", "standardised")  # always in this order
    assert SmoothedMI(modes="standardised").settings["modes"] == ("standardised",)
    with pytest.raises(ValueError, match="disagree: name the modes only"):
        SmoothedMI(standardise=True, modes=["raw"])
    assert SmoothedMI(standardise=True, modes=["standardised"]).settings["modes"] == ("standardised",)  # agreeing
    with pytest.raises(ValueError, match="modes must name one or both of raw, standardised"):
        SmoothedMI(modes=["whitened"])
    from ie_flow.config import load_job

    job = load_job(None, {"estimate.method": "smoothed", "estimate.settings": {"standardise": True}})
    assert job.estimate.estimator().variants() == ("β = 0.4, standardised", "β = 0.6, standardised",
                                                   "β = 0.8, standardised")


def test_the_headline_is_raw_and_the_standardised_value_at_its_beta_is_beside_it() -> None:
    from types import SimpleNamespace

    from ie_flow.estimators import get_estimator
    from ie_flow.estimators.smoothed import HEADLINE_MODE_NOTE, variant_of, variant_parts

    assert variant_of(0.6) == "β = 0.6" and variant_of(0.6, "standardised") == "β = 0.6, standardised"
    assert variant_parts("β = 0.6, standardised") == (0.6, "standardised") and variant_parts("β = 0.8") == (0.8, "raw")
    assert variant_parts("k=1") is None and variant_parts("β = 0.6, whitened") is None
    assert SmoothedMI().companion_variant("β = 0.6") == "β = 0.6, standardised"
    assert SmoothedMI().companion_variant("β = 0.6, standardised") is None
    assert SmoothedMI(modes=["raw"]).companion_variant("β = 0.6") is None
    assert get_estimator("infonce").companion_variant("") is None  # the contract's default: nothing beside
    assert SmoothedMI.headline_note == HEADLINE_MODE_NOTE and "raw" in HEADLINE_MODE_NOTE

    def profile(valid_at: dict[str, list[bool]]) -> dict:
        return {v: SimpleNamespace(layers=[SimpleNamespace(valid=ok) for ok in flags]) for v, flags in valid_at.items()}

    # only the standardised mode is valid everywhere: the headline stays raw (the most valid layers, flagged)
    model = profile({"β = 0.4": [True, False], "β = 0.6": [False, False],
                     "β = 0.4, standardised": [True, True], "β = 0.6, standardised": [True, True]})
    assert SmoothedMI(betas=[0.4, 0.6]).choose_headline(model) == ("β = 0.4", False)
    assert SmoothedMI(betas=[0.4, 0.6], headline_beta=0.6).choose_headline(model) == ("β = 0.6", False)
    # one mode measured: its own headline, nothing beside
    assert SmoothedMI(betas=[0.4, 0.6], standardise=True).choose_headline(model) == ("β = 0.4, standardised", True)
