"""A permutation test of dependence between the squares of x's and y's coordinates, used by the
critic check (critic_check.py) where both critics found nothing.

A separable critic, linear or a small MLP, can read 0 bits on a pair whose dependence lives only in
how large the coordinates are together: a spiral that rotates x's plane by an angle set by ||x||^2
in 25 + 25 dims keeps ||x_01|| tied to y's first pair (1.47 bits), yet both critics read 0.000 at
n = 5,000.  The squares of the copula scores carry that tie.  The statistic is n times the sum of
the squared correlations between every x_i^2 and every y_j^2; its null distribution comes from
permuting y's rows, so no distributional assumption is made.  It quantifies nothing in bits: a
significant result only says the reported value is a lower bound."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .knn import copula_ranks

PERMUTATIONS = 200
MAX_ROWS = 5_000  # rows used (the first ones): the test's cost is PERMUTATIONS x rows x dx x dy
P_LIMIT = 0.01


@dataclass(frozen=True)
class EnergyTest:
    statistic: float
    null_mean: float  # the statistic's mean over the permutations (dx x dy when no square varies with another)
    p_value: float  # (1 + permutations at or above the statistic) / (1 + permutations)

    @property
    def dependent(self) -> bool:
        return self.p_value < P_LIMIT


def _squared_scores(a: np.ndarray) -> np.ndarray:
    """Each column's normal scores (the copula), squared and standardised; constant columns give 0."""
    from scipy.special import ndtri

    constant = np.ptp(a, axis=0) == 0
    sq = ndtri(copula_ranks(a)) ** 2
    sq -= sq.mean(0)
    sq /= np.maximum(sq.std(0), 1e-12)
    sq[:, constant] = 0.0
    return sq.astype(np.float32)


def energy_test(x: np.ndarray, y: np.ndarray, seed: int = 0) -> EnergyTest:
    """The test on the first MAX_ROWS rows of the (n, dx) and (n, dy) pair."""
    x, y = np.asarray(x[:MAX_ROWS], dtype=np.float32), np.asarray(y[:MAX_ROWS], dtype=np.float32)
    fx, fy = _squared_scores(x), _squared_scores(y)
    n = len(fx)

    def stat(rows: np.ndarray | None) -> float:
        c = fx.T @ (fy if rows is None else fy[rows]) / n
        return float(n * (c.astype(np.float64) ** 2).sum())

    observed = stat(None)
    rng = np.random.default_rng(seed)
    null = np.array([stat(rng.permutation(n)) for _ in range(PERMUTATIONS)])
    return EnergyTest(observed, float(null.mean()), float((1 + (null >= observed).sum()) / (1 + PERMUTATIONS)))
