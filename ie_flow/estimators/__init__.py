"""Mutual-information estimators for ie-flow (numpy / torch only).

Public API::

    est = estimate_mi(x, y, method="infonce", seed=0, **settings)        # -> MIEstimate
    ests = estimate_mi_many(xs, ys, method="infonce", seeds=(0,), device=None, **settings)
    x2 = apply_dims(x, "project:64", seed=0)
    ESTIMATORS["infonce"]                                                 # -> estimator class
    register(MyEstimator)                       # a measure defined elsewhere, under its `name`

``estimate_mi_many`` trains the critics of all P pairs of a (P, n, d) stack together, as one
batched model (one set of batched matmuls per step), on CPU or CUDA.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path
from collections.abc import Iterator, Mapping
from typing import Any, Sequence

import numpy as np

from .base import EstimationDiverged, Estimator, MIEstimate, close_match_hint
from .dims import apply_dims, parse_dims, projection_matrix

__all__ = [
    "ESTIMATORS",
    "DEFAULT_METHOD",
    "EstimationDiverged",
    "Estimator",
    "MIEstimate",
    "UnknownEstimatorError",
    "apply_dims",
    "parse_dims",
    "projection_matrix",
    "register",
    "unregister",
    "estimate_mi",
    "estimate_mi_many",
    "get_estimator",
    "independence_check",
]

DEFAULT_METHOD = "infonce"


class UnknownEstimatorError(ValueError, KeyError):
    """Unknown registry name (a ValueError, and a KeyError so Mapping semantics hold)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class EstimatorRegistry(Mapping):
    """Name -> estimator class, imported only when first looked up (keeps imports light)."""

    def __init__(self, paths: dict[str, str]) -> None:
        self._paths = dict(paths)
        self._loaded: dict[str, type[Estimator]] = {}

    def __getitem__(self, name: str) -> type[Estimator]:
        if name not in self._paths:
            raise UnknownEstimatorError(
                f"unknown estimator {name!r}{close_match_hint(name, list(self._paths))} "
                f"(known: {', '.join(self._paths)})"
            )
        if name not in self._loaded:
            module, _, attr = self._paths[name].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module, __name__), attr)
        return self._loaded[name]

    def add(self, cls: type[Estimator]) -> None:
        self._paths[cls.name] = f"{cls.__module__}:{cls.__qualname__}"
        self._loaded[cls.name] = cls

    def remove(self, name: str) -> None:
        self._paths.pop(name, None)
        self._loaded.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._paths

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def _discover() -> dict[str, str]:
    """name -> ".module:Class" from each module's literal `REGISTRY = {"name": "Class"}`, read with
    `ast` so that looking up a name imports nothing heavy: adding an estimator is one new module."""
    found: dict[str, str] = {}
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        tree = ast.parse((Path(__file__).parent / f"{module.name}.py").read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "REGISTRY":
                found.update({name: f".{module.name}:{cls}" for name, cls in ast.literal_eval(node.value).items()})
    return found


ESTIMATORS = EstimatorRegistry(_discover())


def register(cls: type[Estimator]) -> type[Estimator]:
    """Make an estimator class defined outside this package known under its ``name`` (usable as a
    decorator): jobs, stage 2, report, tracking and compare then take it like a built-in one.
    Stage 2 on Ray imports it in each worker, so its module must be importable there too."""
    if not (isinstance(cls, type) and issubclass(cls, Estimator) and cls.name):
        raise TypeError(f"register takes an Estimator subclass with a name, got {cls!r}")
    ESTIMATORS.add(cls)
    return cls


def unregister(name: str) -> None:
    """Forget an estimator ``register`` made known (a plugin's or a test's; built-in ones come back
    only with a new process)."""
    ESTIMATORS.remove(name)


def get_estimator(method: str = DEFAULT_METHOD, **settings: Any) -> Estimator:
    """An estimator instance with validated settings (unknown names/settings -> ValueError)."""
    return ESTIMATORS[method](**settings)


def estimate_mi_many(
    xs: np.ndarray,
    ys: np.ndarray,
    method: str = DEFAULT_METHOD,
    seeds: Sequence[int] = (0,),
    device: Any = None,
    **settings: Any,
) -> list[MIEstimate]:
    """Estimate I(xs[p]; ys[p]) for every p of (P, n, dx) / (P, n, dy) stacks, trained together.

    Returns P estimates aggregated over ``seeds``.  A pair whose training diverged comes back
    with ``diverged=True`` and ``bits=nan`` (the others are unaffected)."""
    return get_estimator(method, **settings).estimate_many(xs, ys, seeds=seeds, device=device)


def estimate_mi(
    x: np.ndarray,
    y: np.ndarray,
    method: str = DEFAULT_METHOD,
    seed: int = 0,
    *,
    seeds: Sequence[int] | None = None,
    device: Any = None,
    **settings: Any,
) -> MIEstimate:
    """Estimate I(x; y) in bits for (n, dx) and (n, dy) arrays (1-D arrays are one column).

    Raises ValueError for bad input and EstimationDiverged (a RuntimeError) when training
    diverged: a diverged run is reported, never returned as a number."""
    x, y = np.asarray(x), np.asarray(y)
    x = x[:, None] if x.ndim == 1 else x
    y = y[:, None] if y.ndim == 1 else y
    if x.ndim != 2 or y.ndim != 2:
        bad, a = ("x", x) if x.ndim != 2 else ("y", y)
        raise ValueError(f"{bad} must be a 2-D array (n, d), got shape {a.shape}")
    est = get_estimator(method, **settings)  # unknown names/settings fail before any work
    res = est.estimate_many(x[None], y[None], seeds=(seed,) if seeds is None else seeds, device=device)[0]
    if res.diverged:
        raise EstimationDiverged(
            f"{method} training diverged (non-finite loss) for seeds {res.seeds}; "
            "try a lower lr or another estimator"
        )
    return res


def independence_check(
    x: np.ndarray,
    y: np.ndarray,
    method: str = DEFAULT_METHOD,
    seed: int = 0,
    **settings: Any,
) -> MIEstimate:
    """Shuffle check: the estimate on (x, permuted y), whose true MI is 0.

    An estimator that reports clearly more than 0 here is overfitting or biased, so its
    numbers on the real pairs cannot be trusted."""
    y = np.asarray(y)
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5AF1E])).permutation(len(y))
    return estimate_mi(x, y[perm], method=method, seed=seed, **settings)
