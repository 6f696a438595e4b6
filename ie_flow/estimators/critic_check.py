"""The critic-sufficiency check (docs/METHOD.md section 5): which critic resolved a cell, and why
a cell is only a lower bound.

The copula transform makes per-coordinate distortions harmless, but dependence that lives in
joint nonlinear features escapes a linear critic wholly or partly: an identity-dispersion
Student-t reads 0.00 bits of 0.24-0.65, a swiss roll of a 1-D Gaussian pair 0.04 of 0.60, a
spiral 0.06 of 1.47.  A first version asked an MLP only where the linear critic found nothing
(its interval reaching 0), so partly seen dependence came back as a tight interval below the
truth with nothing flagged.  Now every valid cell is checked unless the check cannot matter:

- skipped: a saturated cell (already a lower bound) and a cell at its entropy cap (x or y takes
  few distinct values, and the linear interval reaches the plug-in entropy of those values, which
  no critic can exceed: every cell of a language-model profile over discrete prefixes);
- the MLP critic (``MLP_CRITIC``) on the same split and bootstrap resamples: when its held-out
  bound beats the linear one beyond their paired 95% interval (the difference replicate by
  replicate), the MLP's value is reported; that value is itself a lower bound when its own
  bias-corrected interval lies wholly above it (the fit is still data-limited: a spiral's train /
  held-out gap is 0.56 bit);
- on low-dimensional continuous cells, a critic-free KSG estimate (knn.py): a value above the
  reported interval by more than 1.96 of its se means neither critic represents the dependence
  (y = x + uniform noise: both critics read the Gaussian part), and the cell is a lower bound;
- where both critics found nothing (the interval reaches 0), a permutation test of dependence
  between the squares of x's and y's coordinates (energy_test.py): significant, the cell is a
  lower bound (a 25 + 25-dim spiral: both critics read 0.000 bits of 1.47).

What was decided is in the estimate's settings (``critic``, ``critic_check``, ``lower_bound``)
and diagnostics (``linear_bits`` and its interval, ``mlp_bits``, ``mlp_gain_bits``, ``mlp_gain_se_bits``,
``knn_bits``, ``knn_se_bits``, ``entropy_cap_bits``, ``energy_p_value``)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .base import SATURATION_MARGIN_BITS, MIEstimate
from .energy_test import EnergyTest

MLP_CRITIC = {"hidden": 128, "layers": 1}
MLP_NAME = "mlp (hidden=128, layers=1)"
# the KSG third opinion runs where dx + dy is at most this: its n^2 cost and its downward bias
# grow with the dimension (a 3 + 3 spiral: 0.78 of 1.47 bits, a 5 + 5 one less)
KNN_MAX_DIMS = 8
Z95 = 1.96
# a gain below this is rounding, not information: two critics still at their initial state (T = 0)
# read 0 bits to within 1e-7, and their "paired gain" was seen at 3e-8 with an se of 1e-8
MIN_GAIN_BITS = 1e-3
HASH_BLOCK_VALUES = 1 << 22  # values of a row block converted to float32 at once (16 MiB)


def plugin_entropy_bits(a: np.ndarray) -> float:
    """Plug-in entropy of the distinct rows of (n, d) float32 ``a``: log2 n when no row repeats.
    Rows are told apart by a hash of their bits (their 32-bit words times random odd multipliers,
    summed mod 2^32: 8 ms for a 4,096 x 576 cell, where sorting the rows took 0.5 s).  Two distinct
    rows collide with probability 2^-32; a collision lowers the entropy by about 2/n bit.  Hashed
    in blocks of rows: a float32 copy of a float16 cell of 300,000 x 768 would be 879 MiB, more
    than the stage-2 memory plan allows (measured: a 2,774 MiB peak against 2,331 planned)."""
    mult = np.random.default_rng(0x5EED).integers(0, 2**31, size=a.shape[1], dtype=np.uint32) * 2 + 1
    block = max(1, HASH_BLOCK_VALUES // max(1, a.shape[1]))
    hashes = np.concatenate([np.ascontiguousarray(a[r : r + block], dtype=np.float32).view(np.uint32) @ mult
                             for r in range(0, len(a), block)])
    _, counts = np.unique(hashes, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def entropy_cap(est: MIEstimate, x: np.ndarray, y: np.ndarray) -> float | None:
    """The plug-in entropy of x's or y's distinct rows (no estimate of I(x; y) on these rows can
    exceed either) when the cell's interval reaches it within the saturation margin: nothing is
    left for another critic to find.  None otherwise (y is hashed only when x does not bind)."""
    for side in (x, y):
        cap = plugin_entropy_bits(side)
        if cap < math.log2(len(side)) and est.ci_high >= cap - SATURATION_MARGIN_BITS:
            return cap
    return None


def needs_check(est: MIEstimate) -> bool:
    """A valid, unsaturated cell (the entropy cap is tested separately: it needs the data)."""
    return est.valid and not est.diverged and not est.saturated


def _paired_gain(linear: MIEstimate, mlp: MIEstimate) -> tuple[float, float]:
    """The MLP's bound less the linear one and its se over the shared resamples (nan without)."""
    gain = mlp.bits - linear.bits
    a, b = np.asarray(mlp.replicate_bits), np.asarray(linear.replicate_bits)
    se = float(np.std(a - b, ddof=1)) if len(a) > 1 and len(a) == len(b) else math.nan
    return gain, se


def _mlp_wins(linear: MIEstimate, mlp: MIEstimate, gain: float, se: float) -> bool:
    if not mlp.valid:
        return False
    if math.isnan(se):  # no resamples: the intervals must not overlap
        return mlp.ci_low > linear.ci_high
    return gain - Z95 * se > 0 and gain > MIN_GAIN_BITS


def second_opinion(linear: MIEstimate, mlp: MIEstimate) -> MIEstimate:
    """The cell after the MLP's second opinion (see the module docstring)."""
    gain, se = _paired_gain(linear, mlp)
    diag = {**linear.diagnostics, "linear_bits": linear.bits, "linear_ci_low": linear.ci_low,
            "linear_ci_high": linear.ci_high, "mlp_bits": mlp.bits, "mlp_gain_bits": gain, "mlp_gain_se_bits": se}
    said = (f"linear critic {linear.bits:.2f} bits [{linear.ci_low:.2f}, {linear.ci_high:.2f}], "
            f"MLP critic {mlp.bits:.2f} bits [{mlp.ci_low:.2f}, {mlp.ci_high:.2f}], "
            f"paired gain {gain:+.3f} bit (se {se:.3f})")
    seconds = linear.seconds + mlp.seconds
    if not _mlp_wins(linear, mlp, gain, se):
        settings = {**linear.settings, "critic": "linear", "critic_check": f"the MLP critic does not find more: {said}"}
        return dataclasses.replace(linear, settings=settings, diagnostics=diag, seconds=seconds)
    kept = {k: linear.settings[k] for k in ("nonlinear_check", "retried_because") if k in linear.settings}
    settings = {**mlp.settings, **kept, "critic": MLP_NAME,
                "critic_check": f"not resolvable by the linear critic: {said}; the value is the MLP's"}
    if mlp.ci_low > mlp.bits:
        settings["lower_bound"] = (f"the MLP critic's bias-corrected interval [{mlp.ci_low:.2f}, {mlp.ci_high:.2f}] "
                                   f"lies above its bound {mlp.bits:.2f} (train/held-out gap "
                                   f"{mlp.diagnostics.get('gap_bits', math.nan):.2f} bits): a richer critic or more "
                                   f"samples may find more; {said}")
    return dataclasses.replace(mlp, settings=settings, diagnostics={**mlp.diagnostics, **diag}, seconds=seconds)


def knn_opinion(est: MIEstimate, knn_bits: float, knn_se_bits: float) -> MIEstimate:
    """The cell after the KSG third opinion: a lower bound when KSG's value less 1.96 of its se
    lies above the reported interval (both opinions' noise counted)."""
    diag = {**est.diagnostics, "knn_bits": knn_bits, "knn_se_bits": knn_se_bits}
    settings = dict(est.settings)
    if knn_bits - Z95 * knn_se_bits > est.ci_high:
        why = (f"a k-nearest-neighbour (KSG) estimate reads {knn_bits:.2f} bits (se {knn_se_bits:.3f}), above the "
               f"{settings.get('critic', 'critic')} critic's interval [{est.ci_low:.2f}, {est.ci_high:.2f}]: "
               f"neither critic represents the dependence")
        settings["lower_bound"] = f"{settings['lower_bound']}; {why}" if settings.get("lower_bound") else why
    return dataclasses.replace(est, settings=settings, diagnostics=diag)


def found_nothing(est: MIEstimate) -> bool:
    """Both critics' verdict is "no dependence seen": the interval reaches 0 and no flag says more."""
    return est.ci_low <= 0.0 and not est.settings.get("lower_bound")


def energy_opinion(est: MIEstimate, test: EnergyTest) -> MIEstimate:
    """The cell after the test on the squares: a lower bound when it finds dependence."""
    settings = dict(est.settings)
    if test.dependent:
        settings["lower_bound"] = (
            f"the critics find nothing [{est.ci_low:.2f}, {est.ci_high:.2f}], but the squares of x's and y's "
            f"coordinates are dependent (permutation test p = {test.p_value:.3f}, statistic {test.statistic:.0f} "
            f"against {test.null_mean:.0f} under independence): dependence neither critic resolves")
    return dataclasses.replace(est, settings=settings, diagnostics={**est.diagnostics, "energy_p_value": test.p_value})


def resolved_at_cap(est: MIEstimate, cap: float) -> MIEstimate:
    settings = {**est.settings, "critic": "linear",
                "critic_check": f"at the entropy cap: x or y takes few distinct values (min entropy {cap:.2f} bits) "
                                f"and the interval reaches it; no critic can find more"}
    return dataclasses.replace(est, settings=settings, diagnostics={**est.diagnostics, "entropy_cap_bits": cap})
