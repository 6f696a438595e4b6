"""A measure defined outside ie_flow, as a user would add one: this file is all it takes (the contract
test registers it and runs it through a job). The Gaussian MI of the first k coordinates of each
side, in closed form, one variant per k, with the first coordinates' correlation as its own
diagnostic."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import numpy as np

from ie_flow.estimators import Estimator, MIEstimate


def gaussian_bits(x: np.ndarray, y: np.ndarray) -> float:
    """I(x; y) of a Gaussian with the sample covariances of (n, dx) and (n, dy), in bits; constant
    columns carry nothing (a first token's embedding is the same in every window)."""
    x, y = x[:, x.std(0) > 0], y[:, y.std(0) > 0]
    if not (x.shape[1] and y.shape[1]):
        return 0.0
    joint = np.cov(np.hstack([x, y]).T, bias=True).reshape(x.shape[1] + y.shape[1], -1)
    dx = x.shape[1]
    logdet = lambda m: np.linalg.slogdet(m)[1]  # noqa: E731
    return float(0.5 * (logdet(joint[:dx, :dx]) + logdet(joint[dx:, dx:]) - logdet(joint)) / math.log(2))


class FirstCoordinates(Estimator):
    name = "first-coordinates"
    defaults: ClassVar[dict[str, Any]] = {"ks": (1, 2)}
    diagnostics = ("first_correlation",)

    def variants(self) -> tuple[str, ...]:
        return tuple(f"k={k}" for k in self.settings["ks"])

    def check(self, n: int, dims: tuple[int, int] | None = None) -> str | None:
        need = 2 * max(self.settings["ks"]) + 2
        return None if n >= need else f"first-coordinates needs at least {need} samples, got {n}"

    def estimate_many(self, xs: np.ndarray, ys: np.ndarray, seeds: Sequence[int] = (0,), device: Any = None
                      ) -> list[MIEstimate]:
        return [cell[0] for cell in self.estimate_cells(xs, ys, seeds, device)]

    def estimate_cells(self, xs: np.ndarray, ys: np.ndarray, seeds: Sequence[int] = (0,), device: Any = None
                       ) -> list[list[MIEstimate]]:
        seeds = self._check_seeds(seeds)
        return [[self._one(np.asarray(x, np.float64), np.asarray(y, np.float64), k, seeds) for k in self.settings["ks"]]
                for x, y in zip(xs, ys)]

    def _one(self, x: np.ndarray, y: np.ndarray, k: int, seeds: tuple[int, ...]) -> MIEstimate:
        bits = gaussian_bits(x[:, :k], y[:, :k])
        return MIEstimate(bits=bits, ceiling_bits=None, saturated=False, n_train=len(x), n_eval=len(x),
                          method=self.name, seconds=0.0, seeds=seeds, bits_per_seed=(bits,) * len(seeds),
                          ci_low=bits, ci_high=bits, variant=f"k={k}",
                          diagnostics={"first_correlation": first_correlation(x, y)})


def first_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """The correlation of the first coordinates (0 where either is constant)."""
    return float(np.corrcoef(x[:, 0], y[:, 0])[0, 1]) if x[:, 0].std() > 0 and y[:, 0].std() > 0 else 0.0
