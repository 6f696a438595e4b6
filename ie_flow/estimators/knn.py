"""The Kraskov-Stögbauer-Grassberger k-nearest-neighbour MI estimate (KSG, algorithm 1), used
by the critic check (critic_check.py) as a critic-free third opinion on low-dimensional
continuous cells.

A separable critic can miss dependence that neither a linear nor an MLP critic represents
(y = x + uniform noise: both read the Gaussian part, 1.00 bit of 1.25); KSG needs no critic and
is accurate in a few dimensions, but its cost grows with n^2 and its bias with the dimension, so
it only runs where dx + dy is small.  Computed on the rank (copula) scores of each column, on
all n rows (it is an estimate, not a held-out bound)."""
from __future__ import annotations

import math

import numpy as np


def copula_ranks(a: np.ndarray) -> np.ndarray:
    """Each column replaced by its rank scaled into (0, 1), (rank + 0.5) / n: the copula of the
    sample (KSG here; its normal scores in energy_test.py)."""
    order = np.argsort(a, axis=0, kind="stable")
    out = np.empty(a.shape, dtype=np.float64)
    np.put_along_axis(out, order, (np.arange(len(a), dtype=np.float64)[:, None] + 0.5) / len(a), axis=0)
    return out


def _digamma(v: np.ndarray) -> np.ndarray:
    """psi(v) for v >= 1 (integers here): the recurrence up to 6, then the asymptotic series."""
    v = np.asarray(v, dtype=np.float64)
    shift = np.zeros_like(v)
    while (v < 6).any():
        small = v < 6
        shift[small] -= 1.0 / v[small]
        v = np.where(small, v + 1.0, v)
    inv2 = 1.0 / (v * v)
    return shift + np.log(v) - 0.5 / v - inv2 * (1 / 12 - inv2 * (1 / 120 - inv2 / 252))


def ksg_bits(x: np.ndarray, y: np.ndarray, k: int = 3, chunk: int = 256) -> tuple[float, float]:
    """KSG estimate of I(x; y) in bits for (n, dx) and (n, dy) rows with no repeated values, and
    its standard error: psi(k) + psi(n) - mean(psi(n_x + 1) + psi(n_y + 1)), with n_x, n_y the
    marginal neighbours strictly closer (max-norm) than each row's k-th joint neighbour; the se is
    that of the mean of the per-row terms (rows share neighbours, so it is approximate)."""
    import torch

    X, Y = (torch.from_numpy(copula_ranks(a)) for a in (x, y))
    n = len(X)
    terms = np.empty(n)
    for s in range(0, n, chunk):
        dx = torch.cdist(X[s : s + chunk], X, p=math.inf)
        dy = torch.cdist(Y[s : s + chunk], Y, p=math.inf)
        joint = torch.maximum(dx, dy)
        rows = torch.arange(joint.shape[0])
        joint[rows, rows + s] = math.inf  # a row is not its own neighbour
        eps = joint.kthvalue(k, dim=1).values[:, None]
        nx = (dx < eps).sum(1) - 1  # less the row itself (distance 0)
        ny = (dy < eps).sum(1) - 1
        terms[s : s + chunk] = _digamma(nx.numpy() + 1.0) + _digamma(ny.numpy() + 1.0)
    nats = float(_digamma(np.array([k]))[0] + _digamma(np.array([n]))[0] - terms.mean())
    return nats / math.log(2.0), float(terms.std(ddof=1) / math.sqrt(n)) / math.log(2.0)
