"""The per-cell validity rule (docs/METHOD.md section 5): a cell whose estimate fails one of
these checks is not a measurement; the estimator retries it once with a safer setting and
otherwise returns it with ``valid=False`` and the reason (IE must not average it in).

- non-finite value (training diverged);
- held-out bound below ``NEGATIVE_LIMIT_BITS``: every bound here is >= 0 in expectation for the
  optimal critic and the critic starts at exactly 0, so a clearly negative value means the
  critic scores unseen rows worse than "no information" (it memorised the training rows or the
  held-out rows lie outside what it saw, e.g. massive activations without preprocessing);
- train/held-out gap: the same checkpoint's bound on as many training rows exceeds the reported
  one by more than ``gap_limit_bits`` (default GAP_LIMIT_BITS): overfitting on that scale makes
  the held-out value a poor bound;
- instability across seeds (two or more): the seeds' values spread (max - min) by more than
  max(``spread_limit_bits``, SPREAD_LIMIT_FRACTION x |mean|).
"""
from __future__ import annotations

import math
from typing import Sequence

NEGATIVE_LIMIT_BITS = -0.1
# On the ground-truth suite (n = 5,000, default settings) the gap stayed below 0.7 bit (dense
# Gaussian, 50 dims: the hardest generalisation case); memorising critics reach several bits
GAP_LIMIT_BITS = 1.5
SPREAD_LIMIT_BITS = 0.5
SPREAD_LIMIT_FRACTION = 0.25


def invalid_reason(
    bits: float,
    per_seed: Sequence[float],
    train_bits: float | None,
    *,
    gap_limit_bits: float = GAP_LIMIT_BITS,
    spread_limit_bits: float = SPREAD_LIMIT_BITS,
) -> str | None:
    """None for a valid cell, else a one-line reason naming the check and its numbers."""
    vals = [float(v) for v in per_seed]
    if not math.isfinite(bits) or not all(math.isfinite(v) for v in vals):
        return "non-finite estimate (training diverged)"
    low = min(vals)
    if low < NEGATIVE_LIMIT_BITS:
        return f"held-out bound {low:.2f} bits is below {NEGATIVE_LIMIT_BITS} bit: the critic does not generalise"
    if train_bits is not None and math.isfinite(train_bits) and train_bits - bits > gap_limit_bits:
        return (f"train/held-out gap {train_bits - bits:.2f} bits > {gap_limit_bits} bits "
                f"(train {train_bits:.2f}, held-out {bits:.2f}): the critic overfits")
    if len(vals) > 1:
        spread = max(vals) - min(vals)
        limit = max(spread_limit_bits, SPREAD_LIMIT_FRACTION * abs(bits))
        if spread > limit:
            return f"seeds disagree: spread {spread:.2f} bits > {limit:.2f} bits"
    return None
