"""Closed-form Gaussian (linear) MI baseline: I = 0.5 * log2(det Sx * det Sy / det S).

Exact for jointly Gaussian data and a lower-bound-like "linear information" otherwise; the
Gaussian-copula variant (``transform="copula"``) first maps every column to normal scores of its
ranks, which makes it invariant to monotone per-coordinate distortions (e.g. outlier features).
Costs milliseconds for small d.  It measures linear (Gaussian) information only: for a
deterministic map of a discrete x (the LLM case) the joint covariance is singular, the value is
set by ``ridge`` and comes back ``saturated=True`` (settings["ridge_limited"]).  Guards for high dimensions versus few samples:
- ``max_dims``: each side is cut to its top principal components when wider (PCA on the data);
- ``ridge``: added to the diagonal of the correlation matrices (keeps det > 0 for collinear or
  dropped constant columns);
- ``bias_correction``: the small-sample bias of log det of a sample covariance of Gaussian data
  is known exactly (E log det S_hat = log det S + sum_i psi((n-i)/2) + d log(2/(n-1))), so the
  plug-in's upward bias (about dx*dy/(2n) nats) is removed.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import numpy as np

from .base import LOG2E, Estimator, MIEstimate, validate_pairs

# registry names of this module's estimators (read by estimators/__init__.py without importing it)
REGISTRY = {"gaussian": "GaussianMI"}


def _logdet_bias(d: int, n: int) -> float:
    """E[log det S_hat] - log det S for a d-dim Gaussian sample covariance with n samples."""
    import torch

    i = torch.arange(1, d + 1, dtype=torch.float64)
    return float(torch.special.digamma((n - i) / 2.0).sum()) + d * math.log(2.0 / (n - 1))


def _normal_scores(a: np.ndarray) -> np.ndarray:
    from scipy.special import ndtri  # scipy is present with the stack; fall back below

    ranks = a.argsort(0).argsort(0).astype(np.float64)
    return ndtri((ranks + 1.0) / (a.shape[0] + 1.0))


def _prepare(a: np.ndarray, transform: str, max_dims: int | None) -> np.ndarray:
    a = a.astype(np.float64)
    if transform == "copula":
        try:
            a = _normal_scores(a)
        except ImportError:  # pragma: no cover - scipy missing
            import torch

            ranks = a.argsort(0).argsort(0).astype(np.float64)
            a = torch.special.ndtri(torch.from_numpy((ranks + 1.0) / (a.shape[0] + 1.0))).numpy()
    a = a - a.mean(0)
    sd = a.std(0)
    a = a[:, sd > 0] / sd[sd > 0]  # constant columns carry no information: drop them
    if max_dims is not None and a.shape[1] > max_dims:
        # top principal components (by data variance): cheap and keeps the strongest structure
        _, _, vt = np.linalg.svd(a, full_matrices=False)
        a = a @ vt[:max_dims].T
        a = a / a.std(0)
    return a


def _dims_problem(dx: int, dy: int, n: int) -> str | None:
    """The joint covariance of dx + dy dimensions needs more samples than dimensions + 1."""
    if dx + dy < n - 1:
        return None
    return f"{dx}+{dy} dimensions need more than {dx + dy + 1} samples (n={n}); lower max_dims"


class GaussianMI(Estimator):
    name = "gaussian"
    checks_dims = True  # the joint covariance needs more samples than dimensions
    defaults: ClassVar[dict[str, Any]] = {
        "transform": "linear",  # linear | copula
        "ridge": 1e-6,
        "max_dims": 128,  # per side; None = never cut
        "bias_correction": True,
        "eval_fraction": 0.2,  # only for the common sample-count check; no split is used
        "drop_constant": False,
    }

    def check(self, n: int, dims: tuple[int, int] | None = None) -> str | None:
        split = super().check(n, dims)
        if split or dims is None:
            return split
        cap = self.settings["max_dims"] or max(dims)
        return _dims_problem(min(dims[0], cap), min(dims[1], cap), n)

    def estimate_many(
        self, xs: np.ndarray, ys: np.ndarray, seeds: Sequence[int] = (0,), device: Any = None
    ) -> list[MIEstimate]:
        seeds = self._check_seeds(seeds)
        s = self.settings
        if s["transform"] not in ("linear", "copula"):
            raise ValueError(f"gaussian transform must be 'linear' or 'copula', got {s['transform']!r}")
        xs, ys = validate_pairs(xs, ys, eval_fraction=s["eval_fraction"], drop_constant=s["drop_constant"], batched=True)
        P, n = xs.shape[0], xs.shape[1]
        out: list[MIEstimate] = []
        for p in range(P):
            t1 = self._clock()
            a = _prepare(xs[p], s["transform"], s["max_dims"])
            b = _prepare(ys[p], s["transform"], s["max_dims"])
            dx, dy = a.shape[1], b.shape[1]
            if _dims_problem(dx, dy, n):
                raise ValueError(f"gaussian: {_dims_problem(dx, dy, n)}")
            joint = np.concatenate([a, b], axis=1)
            C = np.cov(joint, rowvar=False) + s["ridge"] * np.eye(dx + dy)
            ld = lambda m: np.linalg.slogdet(m)[1]  # noqa: E731
            nats = 0.5 * (ld(C[:dx, :dx]) + ld(C[dx:, dx:]) - ld(C))
            if s["bias_correction"]:
                nats -= 0.5 * (_logdet_bias(dx, n) + _logdet_bias(dy, n) - _logdet_bias(dx + dy, n))
            bits = float(nats * LOG2E)
            # an exact (numerically) linear relation, e.g. y = f(x) on a few discrete x values,
            # has infinite Gaussian MI; the ridge then decides the number, so flag it as a
            # lower-bound-style, ceiling-limited value rather than a measurement
            ridge_limited = bool(np.linalg.eigvalsh(C)[0] < 10.0 * s["ridge"])
            out.append(
                MIEstimate(
                    bits=bits,
                    ceiling_bits=None,
                    saturated=ridge_limited,
                    n_train=n,
                    n_eval=0,
                    method=self.name,
                    seconds=self._clock() - t1,
                    seeds=seeds,
                    bits_per_seed=tuple(bits for _ in seeds),  # deterministic: seeds change nothing
                    ci_low=bits,
                    ci_high=bits,
                    settings={**s, "dims_used": (dx, dy), "batch_pairs": P, "ridge_limited": ridge_limited},
                    diverged=False,
                )
            )
        return out
