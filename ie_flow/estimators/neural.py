"""Neural variational estimators (robust mode, IE_SPEC section 5): InfoNCE, DV, MINE, SMILE, NWJ.

All share the batched separable critic and trainer; they differ only in the bound."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Sequence

import numpy as np

from .base import (
    LOG2E,
    Estimator,
    MIEstimate,
    is_saturated,
    resolve_device,
    seed_interval,
    split_indices,
    validate_pairs,
)
from .trainer import TrainConfig, resolve_precision, train_batched

_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"bound", "ema"}
_COMMON: dict[str, Any] = {
    "eval_fraction": 0.2,
    "drop_constant": False,
    # InfoNCE: the estimate also counts as saturated when halving the candidate pool lowers
    # it by at least this much (the pool, not the data, is limiting it); see MIEstimate.pool_gain_bits
    "saturation_pool_gain": 0.3,
    # CPU threads for this call (None: leave torch's setting).  On a busy 2-core machine two
    # OpenMP threads fighting other processes ran 5-10x slower than one thread.
    "threads": None,
    **{f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in _TRAIN_FIELDS},
}


def _as_float_tensor(a: np.ndarray):
    import torch

    # float32 C-contiguous input is shared with numpy (no copy of a multi-GB stack)
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=np.float32)
    return torch.from_numpy(a)


class NeuralEstimator(Estimator):
    bound: ClassVar[str] = "infonce"
    defaults: ClassVar[dict[str, Any]] = dict(_COMMON)

    def _config(self) -> TrainConfig:
        kw = {k: self.settings[k] for k in _TRAIN_FIELDS}
        return TrainConfig(bound=self.bound, ema=self._ema(), **kw)

    def _ema(self) -> float | None:
        return None

    def estimate_many(
        self, xs: np.ndarray, ys: np.ndarray, seeds: Sequence[int] = (0,), device: Any = None
    ) -> list[MIEstimate]:
        import torch

        t0 = self._clock()
        seeds = self._check_seeds(seeds)
        s = self.settings
        xs, ys = validate_pairs(xs, ys, eval_fraction=s["eval_fraction"], drop_constant=s["drop_constant"], batched=True)
        cfg = self._config()
        dev = resolve_device(device)
        P, n = xs.shape[0], xs.shape[1]
        X, Y = _as_float_tensor(xs), _as_float_tensor(ys)
        prev_threads = torch.get_num_threads()
        if s["threads"] and dev.type == "cpu":
            torch.set_num_threads(int(s["threads"]))
        try:
            per_seed, half_seed, div_seed, steps, n_cand, n_tr, n_ev = self._run_seeds(X, Y, n, seeds, cfg, dev)
        finally:
            torch.set_num_threads(prev_threads)
        return self._aggregate(per_seed, half_seed, div_seed, steps, n_cand, n_tr, n_ev, seeds, cfg, dev, P, t0)

    def _run_seeds(self, X: Any, Y: Any, n: int, seeds: tuple[int, ...], cfg: TrainConfig, dev: Any) -> tuple:
        import torch

        s = self.settings
        per_seed, half_seed, div_seed, steps = [], [], [], []
        n_cand = n_tr = n_ev = 0
        for seed in seeds:
            tr, ev = split_indices(n, s["eval_fraction"], seed)
            torch.manual_seed(seed)  # nothing should draw from the global RNG, but be safe
            res = train_batched(X, Y, tr, ev, cfg, seed, dev)
            per_seed.append(res.nats * LOG2E)
            half_seed.append(None if res.nats_half is None else res.nats_half * LOG2E)
            div_seed.append(res.diverged)
            steps.append(res.steps)
            n_cand, n_tr, n_ev = res.n_candidates, len(tr), len(ev)
        return per_seed, half_seed, div_seed, steps, n_cand, n_tr, n_ev

    def _aggregate(self, per_seed: list, half_seed: list, div_seed: list, steps: list, n_cand: int, n_tr: int,
                   n_ev: int, seeds: tuple[int, ...], cfg: TrainConfig, dev: Any, P: int, t0: float) -> list[MIEstimate]:
        s = self.settings
        elapsed = self._clock() - t0
        ceiling = math.log2(n_cand)
        settings = {
            **s,
            "bound": self.bound,
            "ema": cfg.ema,
            "device": str(dev),
            "precision": resolve_precision(cfg.precision, dev),
            "n_candidates": n_cand,
            "ceiling": f"log2(n_candidates) with negatives={cfg.negatives!r}",
            "steps_run": steps,
            "batch_pairs": P,
            "batch_seconds": elapsed,
        }
        out = []
        bits_mat = np.stack(per_seed, axis=1)  # (P, S)
        div_mat = np.stack(div_seed, axis=1)
        for p in range(P):
            vals = tuple(float(v) for v in bits_mat[p])
            diverged = bool(div_mat[p].any())
            mean, lo, hi = seed_interval(vals) if not diverged else (math.nan,) * 3
            gain = None
            if half_seed[0] is not None and not diverged:
                gain = float(np.mean([bits_mat[p, i] - half_seed[i][p] for i in range(len(seeds))]))
            sat = is_saturated(mean, ceiling) or (gain is not None and gain >= s["saturation_pool_gain"])
            out.append(
                MIEstimate(
                    bits=mean,
                    ceiling_bits=ceiling,
                    saturated=bool(sat),
                    n_train=n_tr,
                    n_eval=n_ev,
                    method=self.name,
                    seconds=elapsed / P,
                    seeds=seeds,
                    bits_per_seed=vals,
                    ci_low=lo,
                    ci_high=hi,
                    settings=dict(settings),
                    diverged=diverged,
                    pool_gain_bits=gain,
                )
            )
        return out


class InfoNCE(NeuralEstimator):
    """Separable critic f(x).g(y), all in-batch negatives; ceiling log2(n_candidates)."""

    name = "infonce"
    bound = "infonce"


class DonskerVaradhan(NeuralEstimator):
    """DV bound E_p[T] - log E_q[e^T] with a stable log-mean-exp."""

    name = "dv"
    bound = "dv"


class MINE(NeuralEstimator):
    """DV bound trained with MINE's moving-average correction of the partition-term gradient
    (setting ``ema``: the moving-average rate; 0 or None switches it off = plain DV)."""

    name = "mine"
    bound = "dv"
    defaults = {**_COMMON, "ema": 0.01}

    def _ema(self) -> float | None:
        e = self.settings["ema"]
        return float(e) if e else None


class SMILE(NeuralEstimator):
    """DV with the partition term on clip(T, -clip, clip) (clip=5 by default)."""

    name = "smile"
    bound = "smile"


class NWJ(NeuralEstimator):
    """Nguyen-Wainwright-Jordan bound E_p[T] - E_q[e^(T-1)]."""

    name = "nwj"
    bound = "nwj"
