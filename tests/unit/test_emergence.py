"""IE from an MI table (docs/METHOD.md section 2), checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from ie_flow.emergence import emergence_by_variant, information_emergence
from ie_flow.estimators import get_estimator


def _rows(values: dict[tuple[int, int, int], float], ceiling: float = 10.0, micro: dict | None = None):
    """values[(seed, layer, pos)] = bits; micro rows copy macro rows unless given (in-context)."""
    rows = []
    for (seed, layer, pos), bits in values.items():
        for level, b in (("macro", bits), ("micro", (micro or values)[(seed, layer, pos)])):
            rows.append({"layer": layer, "position": pos, "level": level, "method": "x", "seed": seed,
                         "bits": b, "ceiling_bits": ceiling, "saturated": b >= ceiling - 0.1,
                         "n_train": 80, "n_eval": 20})
    return rows


def test_ie_mean_and_sum_reduce():
    # one layer, positions 0..2 with M = 1, 2, 6
    rows = _rows({(0, 0, 0): 1.0, (0, 0, 1): 2.0, (0, 0, 2): 6.0})
    em = information_emergence(rows, "mean")
    assert em.layers[0].ie == pytest.approx(6 - 3)
    assert em.layers[0].mi_macro == 6 and em.layers[0].mi_micro == pytest.approx(3)
    # E_l(t) = M_l(t) - mean_{i<=t} M_l^mi_i
    np.testing.assert_allclose(em.token_curves[0], [1 - 1, 2 - 1.5, 6 - 3])
    assert information_emergence(rows, "sum").layers[0].ie == pytest.approx(6 - 9)


def test_isolated_micro_rows_are_used():
    macro = {(0, 0, 0): 1.0, (0, 0, 1): 5.0}
    micro = {(0, 0, 0): 1.0, (0, 0, 1): 1.0}
    em = information_emergence(_rows(macro, micro=micro))
    assert em.layers[0].ie == pytest.approx(5 - 1)


def test_seeds_give_spread_and_summary():
    vals = {}
    for seed, shift in ((0, 0.0), (1, 1.0)):
        for layer in range(3):
            vals[(seed, layer, 0)] = 1.0
            vals[(seed, layer, 1)] = 3.0 + layer + shift
    em = information_emergence(_rows(vals))
    ie = [l.ie for l in em.layers]
    # IE_l per seed = M(1) - (M(0)+M(1))/2 = (M(1)-1)/2
    np.testing.assert_allclose(ie, [(3 + l + 0.5 - 1) / 2 for l in range(3)])
    assert em.layers[0].ie_std_seeds == pytest.approx(np.std([1.0, 1.5], ddof=1))
    assert em.layers[0].ie_ci_low < em.layers[0].ie < em.layers[0].ie_ci_high
    s = em.summary
    assert s.ie_mean == pytest.approx(np.mean(ie)) and s.ie_max == pytest.approx(max(ie))
    assert s.ie_argmax_layer == 2 and s.ie_std_layers == pytest.approx(np.std(ie, ddof=1))
    assert s.ie_std_seeds == pytest.approx(np.std([np.mean([1, 1.5, 2]), np.mean([1.5, 2, 2.5])], ddof=1))


def test_saturation_is_reported():
    em = information_emergence(_rows({(0, 0, 0): 2.0, (0, 0, 1): 9.95}, ceiling=10.0))
    assert em.layers[0].macro_saturated and em.layers[0].micro_saturated == 1
    assert em.summary.saturated_layers == 1
    assert em.saturated[0].tolist() == [False, True]


def test_bad_tables():
    with pytest.raises(ValueError, match="empty"):
        information_emergence([])
    with pytest.raises(ValueError, match="micro_reduce"):
        information_emergence(_rows({(0, 0, 0): 1.0}), "median")


def _cell(layer, pos, bits, variant="", valid=True, reps=(), reason=None):
    return [{"layer": layer, "position": pos, "level": level, "method": "smoothed", "seed": 0, "bits": bits,
             "ceiling_bits": float("inf"), "saturated": False, "n_train": 100, "n_eval": 100, "variant": variant,
             "valid": valid, "invalid_reason": reason, "replicates": list(reps)} for level in ("macro", "micro")]


def test_an_invalid_cell_is_never_averaged_in():
    rows = _cell(0, 0, 1.0) + _cell(0, 1, 3.0) + _cell(1, 0, 1.0, valid=False, reason="null 0.6 bit") + _cell(1, 1, 5.0)
    em = information_emergence(rows)
    assert em.layers[0].valid and em.layers[0].ie == pytest.approx(3 - 2)
    assert not em.layers[1].valid and np.isnan(em.layers[1].ie) and "null 0.6 bit" in em.layers[1].invalid_reason
    assert em.summary.ie_mean == pytest.approx(1.0) and em.summary.invalid_layers == 1
    assert np.isnan(em.token_curves[1, 0]) and em.invalid[1].tolist() == [True, False]


def test_intervals_come_from_shared_bootstrap_replicates():
    # replicate b of every cell is the same resample: IE_b = M_b(1) - mean(M_b(0), M_b(1));
    # the replicates sit below the estimate as a whole (a biased estimator on resamples)
    m0 = np.linspace(0.8, 1.2, 41)
    m1 = np.linspace(1.6, 3.2, 41) ** 1.1
    rows = _cell(0, 0, 1.0, reps=m0) + _cell(0, 1, 3.0, reps=m1)
    em = information_emergence(rows)
    ie_reps = m1 - (m0 + m1) / 2
    lo, mid, hi = np.percentile(ie_reps, [2.5, 50, 97.5])
    assert em.layers[0].ie == pytest.approx(1.0)
    # centred on the estimate: the replicates' spread around their median, placed around IE
    assert em.layers[0].ie_ci_low == pytest.approx(1.0 - (mid - lo)) and em.layers[0].ie_ci_high == pytest.approx(1.0 + (hi - mid))
    e_lo, e_mid, e_hi = np.percentile(m1 - (m0 + m1) / 2, [2.5, 50, 97.5])
    np.testing.assert_allclose(em.token_ci[:, 0, 1], [1.0 - (e_mid - e_lo), 1.0 + (e_hi - e_mid)])


def test_variant_profiles_and_the_estimators_headline():
    """A table of several variants (the smoothed measure's β grid) gives one profile per variant, in
    variant order; the headline is the estimator's choice: the first variant valid in every layer of
    the model and its control, else the one with the most layers valid in both, flagged."""
    grid = {0.3: "β = 0.3", 0.4: "β = 0.4", 0.6: "β = 0.6"}
    smoothed = get_estimator("smoothed", betas=list(grid))
    assert smoothed.variants() == (*grid.values(), *(f"{v}, standardised" for v in grid.values()))  # both modes
    rows = []
    for beta, valid_last in ((0.3, False), (0.4, True), (0.6, True)):
        for layer in (0, 1):
            rows += _cell(layer, 0, 1.0 / beta, grid[beta]) + _cell(layer, 1, 2.0 / beta, grid[beta],
                                                                    valid=valid_last or layer == 0)
    with pytest.raises(ValueError, match="several variants"):
        information_emergence(rows)
    with pytest.raises(ValueError, match="no variant 'β = 0.5'"):  # never another variant instead
        information_emergence(rows, variant="β = 0.5")
    profiles = emergence_by_variant(rows)
    assert list(profiles) == list(grid.values())
    assert profiles["β = 0.4"].variant == "β = 0.4"
    assert profiles["β = 0.4"].layers[1].ie == pytest.approx(2 / 0.4 - 1.5 / 0.4)
    assert smoothed.choose_headline(profiles) == ("β = 0.4", True)

    def profiles_where(valid):
        return {v: information_emergence([{**r, "valid": valid(b, r)} for r in rows], variant=v) for b, v in grid.items()}

    control = profiles_where(lambda b, r: r["variant"] != "β = 0.4" or r["layer"] == 0)
    assert smoothed.choose_headline(profiles, control) == ("β = 0.6", True)  # the same β for a model and its control
    nowhere = profiles_where(lambda b, r: b == 0.6 and r["layer"] == 0)
    assert smoothed.choose_headline(profiles, nowhere) == ("β = 0.6", False)  # one layer valid in both at 0.6
    tied = profiles_where(lambda b, r: r["layer"] == 0)
    assert smoothed.choose_headline(profiles, tied) == ("β = 0.3", False)  # every β ties at one layer: the first
    single = {"": information_emergence(_cell(0, 0, 1.0) + _cell(0, 1, 2.0, valid=False))}
    assert get_estimator("infonce").choose_headline(single) == ("", True)  # no variants: nothing to choose


def test_a_fixed_headline_stays_where_another_variant_is_valid_in_more_layers():
    """The headline β fixed in advance is the headline even where another β is valid in every layer
    and it is not: its invalid layers stay flagged and out of the model's IE mean, never read at
    another β (the rule without a fixed β would move to 0.8)."""
    from ie_flow.emergence import headline

    rows = []
    for beta, last in ((0.6, (3.0, 5.0, 4.0)), (0.8, (2.0, 3.0, 2.5))):
        for layer in (0, 1, 2):  # layer 1 invalid at β = 0.6 only
            rows += _cell(layer, 0, 1.0, f"β = {beta:g}") + _cell(layer, 1, last[layer], f"β = {beta:g}",
                                                                 valid=beta != 0.6 or layer != 1, reason="gap")
    profiles = emergence_by_variant(rows)
    assert get_estimator("smoothed").choose_headline(profiles) == ("β = 0.8", True)  # the moving rule
    fixed = get_estimator("smoothed", headline_beta=0.6)
    assert fixed.choose_headline(profiles) == ("β = 0.6", False)
    variant, valid, (em,) = headline(fixed, "mean", rows)
    assert (variant, valid, em.variant) == ("β = 0.6", False, "β = 0.6")
    assert [l.valid for l in em.layers] == [True, False, True] and np.isnan(em.layers[1].ie)
    # IE = (M(1) - M(0)) / 2 at layers 0 and 2 only: (1 + 1.5) / 2
    assert em.summary.ie_mean == pytest.approx(1.25) and em.summary.invalid_layers == 1


def test_a_table_written_before_variants_is_read_in_todays_shape():
    """MI tables of the previous release had the smoothed measure's β and diagnostics as columns
    (β NaN for other estimators): they are read with the same variants and values as today's."""
    import pyarrow as pa

    def legacy(rows, beta):
        return [{**{k: v for k, v in r.items() if k != "variant"}, "beta": beta, "null_bits": 0.01,
                 "mc_se_bits": 0.02} for r in rows]

    smoothed = []
    for beta in (0.4, 0.6):
        smoothed += legacy(_cell(0, 0, 1.0 / beta) + _cell(0, 1, 2.0 / beta), beta)
    old = emergence_by_variant(pa.Table.from_pylist(smoothed))
    assert list(old) == ["β = 0.4", "β = 0.6"]
    assert old["β = 0.6"].layers[0].ie == pytest.approx(2 / 0.6 - 1.5 / 0.6)
    assert old["β = 0.4"].layers[0].diagnostics == {"null_bits": 0.01, "mc_se_bits": 0.02}
    other = emergence_by_variant(pa.Table.from_pylist(legacy(_cell(0, 0, 1.0) + _cell(0, 1, 3.0), float("nan"))))
    assert list(other) == [""] and other[""].layers[0].ie == pytest.approx(1.0) and other[""].layers[0].diagnostics == {}


def test_the_companion_profile_rides_beside_the_headline_with_its_own_values():
    """Both modes measured: the headline is raw at the fixed β, and the standardised profile at that β
    rides beside it: its IE per layer and interval in every layer, and its mean (over its own valid
    layers) in the summary, exactly the standardised profile's own; read back from a record alike."""
    from ie_flow.emergence import headline, recorded_headline

    reps = np.linspace(0.8, 1.2, 41)
    rows = []
    for variant, scale in (("β = 0.6", 1.0), ("β = 0.6, standardised", 0.5), ("β = 0.8", 0.7),
                           ("β = 0.8, standardised", 0.3)):
        for layer in (0, 1, 2):
            last, ok = (2.0 + layer) * scale + 1.0, variant != "β = 0.6, standardised" or layer != 2
            rows += _cell(layer, 0, 1.0, variant, reps=reps) + _cell(layer, 1, last, variant, valid=ok,
                                                                     reps=reps * last, reason=None if ok else "gap")
    variant, valid, (em,) = headline(get_estimator("smoothed", headline_beta=0.6), "mean", rows)
    std = information_emergence(rows, variant="β = 0.6, standardised")
    assert (variant, valid, em.companion.variant) == ("β = 0.6", True, "β = 0.6, standardised")
    assert [l.ie for l in em.layers] == pytest.approx([1.0, 1.5, 2.0])  # raw: (M(1) - M(0)) / 2
    np.testing.assert_array_equal([[l.companion_ie, l.companion_ie_ci_low, l.companion_ie_ci_high] for l in em.layers],
                                  [[l.ie, l.ie_ci_low, l.ie_ci_high] for l in std.layers])
    assert [l.companion_ie for l in em.layers[:2]] == pytest.approx([0.5, 0.75]) and np.isnan(em.layers[2].companion_ie)
    assert em.layers[0].companion_ie_ci_low < 0.5 < em.layers[0].companion_ie_ci_high
    s = em.summary
    assert s.companion_variant == "β = 0.6, standardised" and s.invalid_layers == 0 and s.companion_invalid_layers == 1
    assert (s.companion_ie_mean, s.companion_ie_mean_ci_low, s.companion_ie_mean_ci_high) == (
        std.summary.ie_mean, std.summary.ie_mean_ci_low, std.summary.ie_mean_ci_high)
    assert s.companion_ie_mean == pytest.approx(0.625) and s.ie_mean == pytest.approx(1.5)
    assert [r.companion_ie for r in em.layer_rows()[:2]] == [l.ie for l in std.layers[:2]]
    again = recorded_headline(rows, "mean", "β = 0.6", s.companion_variant)
    assert again.summary.model_dump_json() == s.model_dump_json()  # (NaN != NaN: compared as stored)
    assert [r.model_dump_json() for r in again.layer_rows()] == [r.model_dump_json() for r in em.layer_rows()]
    # one mode measured, or an estimator without a companion: nothing beside, NaN in the layers
    raw_only = [r for r in rows if "standardised" not in r["variant"]]
    for table, estimator in ((raw_only, get_estimator("smoothed", headline_beta=0.6)),
                             (rows, get_estimator("smoothed", headline_beta=0.6, modes=["raw"]))):
        _, _, (alone,) = headline(estimator, "mean", table)
        assert alone.companion is None and alone.summary.companion_variant is None
        assert np.isnan(alone.layers[0].companion_ie) and np.isnan(alone.summary.companion_ie_mean)
