"""Neural variational estimators (robust mode, docs/METHOD.md section 5): InfoNCE, DV, MINE,
SMILE, NWJ.

All share the batched separable critic and trainer; they differ only in the bound.  Each
estimate comes with a 95% interval (bootstrap over the report rows' sample ids, critic fixed,
combined with the t-interval over seeds), its ceiling and saturation flag, and the validity
verdict of validity.py (a failed cell is retried once with ``safer_settings``); critic_check.py
says which critic resolved each cell and which cells are only lower bounds."""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np

from .base import (
    LOG2E,
    Estimator,
    MIEstimate,
    bootstrap_weights,
    detection_limit_bits,
    estimate_interval,
    is_saturated,
    resolve_device,
    split_three,
)
from .train_config import COPULA_BINS, TrainConfig
from .critic_check import (
    KNN_MAX_DIMS,
    MLP_CRITIC,
    energy_opinion,
    entropy_cap,
    found_nothing,
    knn_opinion,
    needs_check,
    resolved_at_cap,
    second_opinion,
)
from .energy_test import energy_test
from .knn import ksg_bits
from .validity import GAP_LIMIT_BITS, SPREAD_LIMIT_BITS, invalid_reason

# registry names of this module's estimators (read by estimators/__init__.py without importing it)
REGISTRY = {"infonce": "InfoNCE", "dv": "DonskerVaradhan", "mine": "MINE", "smile": "SMILE", "nwj": "NWJ"}

_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"bound", "ema"}
_COMMON: dict[str, Any] = {
    # train / select / report split (docs/METHOD.md section 5): the value is reported on the
    # eval_fraction rows, the checkpoint chosen on the select_fraction rows, the rest trains
    "eval_fraction": 0.25,
    "select_fraction": 0.1,
    "drop_constant": False,
    # InfoNCE: the estimate also counts as saturated when halving the candidate pool lowers
    # it by at least this much (the pool, not the data, is limiting it); see MIEstimate.pool_gain_bits
    "saturation_pool_gain": 0.3,
    # bootstrap resamples of the sample ids (critic kept fixed; 0 switches it off) and their seed,
    # shared by every cell of a run so that cells can be differenced replicate by replicate
    "bootstrap": 200,
    "bootstrap_seed": 0,
    # validity rule (validity.py) and the one retry of a failed cell with safer settings
    "gap_limit_bits": GAP_LIMIT_BITS,
    "spread_limit_bits": SPREAD_LIMIT_BITS,
    "retry": True,
    # critic_check.py: valid, unsaturated cells below their entropy cap get an MLP second opinion
    # and, in a few dimensions, a KSG third one; where all find nothing, a test on the squares of x
    # and y (energy_test.py) says whether 0 is only a lower bound (none of it when the critic is an MLP)
    "nonlinear_check": True,
    # CPU threads for this call (None: leave torch's setting).  On a busy 2-core machine two
    # OpenMP threads fighting other processes ran 5-10x slower than one thread.
    "threads": None,
    **{f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in _TRAIN_FIELDS},
}


def _as_float_tensor(a: np.ndarray):
    import torch

    # float16 or float32 C-contiguous input is shared with numpy (no copy of a multi-GB stack):
    # the trainer converts only the rows it reads, exactly (float16 -> float32 loses nothing)
    if a.dtype not in (np.float16, np.float32) or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=np.float32)
    return torch.from_numpy(a)


# rows swapped at a time when pairs are moved in place: a buffer of this many bytes, never a pair
_SWAP_BYTES = 32 * 2**20


@contextlib.contextmanager
def _pairs_in_front(xs: np.ndarray, ys: np.ndarray, idx: list[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The pairs ``idx`` (ascending) of both stacks, in that order, as views: where they are when
    consecutive, else moved to the front in place (pairs swapped in blocks of rows) and moved back
    on exit. The retry and the second opinion read their pairs so: the same values in the same
    order as a copy of them, without the copy (a 65,536-row pair at d = 768 is 200 MB a side).
    A read-only stack is copied."""
    if idx == list(range(idx[0], idx[-1] + 1)):
        yield xs[idx[0] : idx[-1] + 1], ys[idx[0] : idx[-1] + 1]
        return
    if not (xs.flags.writeable and ys.flags.writeable):
        yield xs[idx], ys[idx]
        return
    swaps = [(k, p) for k, p in enumerate(idx) if k != p]  # p >= k, and p is untouched by earlier swaps
    for a in (xs, ys):
        for k, p in swaps:
            _swap_pairs(a, k, p)
    try:
        yield xs[: len(idx)], ys[: len(idx)]
    finally:
        for a in (xs, ys):
            for k, p in reversed(swaps):
                _swap_pairs(a, k, p)


def _swap_pairs(a: np.ndarray, i: int, j: int) -> None:
    rows = max(1, _SWAP_BYTES // max(1, a[0, 0].nbytes))
    for r in range(0, a.shape[1], rows):
        held = a[i, r : r + rows].copy()
        a[i, r : r + rows] = a[j, r : r + rows]
        a[j, r : r + rows] = held


def safer_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The retry of a failed cell: copula preprocessing, a linear critic, a third of the
    learning rates and some weight decay (all of which shrink what a critic can memorise)."""
    return {**settings, "preprocess": "copula", "hidden": 0, "layers": 0, "lr": settings["lr"] / 3,
            "scale_lr": settings["scale_lr"] / 3, "weight_decay": max(settings["weight_decay"], 1e-2),
            "retry": False, "nonlinear_check": False}  # the caller checks the critic of the retried cells


def _bias_corrected(bound: np.ndarray, half: np.ndarray | None, train: np.ndarray) -> np.ndarray:
    """The bound plus its half-pool gain (InfoNCE; none without a half pool) plus half the
    train/held-out gap: the centre of the interval for I (docs/METHOD.md section 5)."""
    gain = 0.0 if half is None else bound - half
    return bound + gain + (train - bound) / 2


def _corrected_replicates(res: Any) -> np.ndarray | None:
    """(P, B) bits: the bias-corrected value recomputed on every bootstrap resample, so its
    spread includes the noise of both corrections and their covariance with the bound."""
    if res.nats_replicates is None:
        return None
    return _bias_corrected(res.nats_replicates, res.nats_half_replicates, res.nats_train_replicates) * LOG2E


def _spurious_variance(res: Any) -> np.ndarray | None:
    """(P,) bits²: the share of the corrected replicates' variance that resampling the rows adds
    but the data do not have.  The bootstrap treats each row's pool error (its log-partition
    from finitely many candidates) as independent from row to row.  Where the pool is shared
    by rows that score alike (a uniform discrete input, where the plug-in entropy sits at its
    maximum) half of that is real: variance (K-1)/(2C²) against the bootstrap's (K-1)/C².  The
    corrected value is 1.5 E - E_half + 0.5 E_train and the half pool is a subset of the pool,
    so the pool adds (2.25 - 3 + 2) = 1.25 times the report rows' pool variance, plus 0.25
    times the train rows'."""
    if res.pool_noise is None:
        return None
    report, train = res.pool_noise
    return 0.5 * (1.25 * report + 0.25 * train) * LOG2E ** 2


@dataclasses.dataclass
class _SeedRuns:
    """Per-seed results of one batched call: arrays are (P,) per seed, replicates (P, B)."""

    bits: list = dataclasses.field(default_factory=list)
    half: list = dataclasses.field(default_factory=list)
    train: list = dataclasses.field(default_factory=list)
    replicates: list = dataclasses.field(default_factory=list)
    corrected: list = dataclasses.field(default_factory=list)  # (P, B) the bias-corrected value per resample
    spurious: list = dataclasses.field(default_factory=list)  # (P,) what resampling adds to its variance
    diverged: list = dataclasses.field(default_factory=list)
    steps: list = dataclasses.field(default_factory=list)
    never_left_zero: list = dataclasses.field(default_factory=list)  # (P,) the all-zero start was kept
    n_cand: int = 0
    n_tr: int = 0
    n_sel: int = 0
    n_ev: int = 0


# score chunks of ``chunk_elems`` float32 values alive at once in an evaluation. InfoNCE streams
# its rows and takes a block's terms from one in-place pass (bounds.infonce_row_terms): a block's
# scores, the next one's and the critic sum's temporaries. Measured at n = 300,000 (d = 768, one
# cell per task, the Ray worker): peaks of 2,014-2,125 MiB, 2,203 MiB planned with 3 (before that
# pass an evaluation held about 6.5, and 7 were planned). The other bounds take every row at once
# and keep that margin.
SCORE_CHUNKS = {"streamed": 3, "whole": 7}


# float32 values per column of a pair that training holds besides the stacks: the copula map's bin
# edges and about this many copies of a batch's rows (gathered, transformed, activations, gradients).
# Measured on the n = 16,384 bench's 16-cell batch (d = 768): 35 MiB per cell above its stacks
# before the final evaluation; the plan books 30 (the rest is the allocator's, within the score term).
BATCH_COPIES = 16


class NeuralEstimator(Estimator):
    bound: ClassVar[str] = "infonce"
    defaults: ClassVar[dict[str, Any]] = dict(_COMMON)
    takes_float16 = True

    def memory_plan(self, pairs: int, n: int, dx: int, dy: int, itemsize: int, eval_fraction: float) -> int:
        """The input stacks (the trainer transforms the rows it reads, never a copy of the stack;
        the retry and the second opinion read their pairs in place, through a swap buffer), the
        training state per pair, the bootstrap counts (one byte per resample and sample), the report
        and train rows' weights (float32) and the score chunks (the report rows against their
        candidates, for all pairs at once up to ``chunk_elems``)."""
        s = self.settings
        boot, report = int(s["bootstrap"]), round(n * eval_fraction)
        candidates = {"report": min(report, int(s["pool_rows"]) or report),
                      "heldout": report + round(n * s["select_fraction"])}.get(s["negatives"], n)
        weights = boot * n + (2 * (boot + 1) * report * 4 if boot else 0)
        chunks = SCORE_CHUNKS["streamed" if self.bound == "infonce" and self._ema() is None else "whole"]
        scores = chunks * 4 * min(int(s["chunk_elems"]), pairs * report * candidates)
        training = pairs * (dx + dy) * (COPULA_BINS + 1 + BATCH_COPIES * int(s["batch_size"])) * 4
        return pairs * n * (dx + dy) * itemsize + _SWAP_BYTES + training + weights + scores

    def _config(self) -> TrainConfig:
        kw = {k: self.settings[k] for k in _TRAIN_FIELDS}
        return TrainConfig(bound=self.bound, ema=self._ema(), **kw)

    def _ema(self) -> float | None:
        return None

    def estimate_many(
        self, xs: np.ndarray, ys: np.ndarray, seeds: Sequence[int] = (0,), device: Any = None
    ) -> list[MIEstimate]:
        import torch

        s = self.settings
        t0, seeds, xs, ys = self._start(xs, ys, seeds, eval_fraction=s["eval_fraction"],
                                        drop_constant=s["drop_constant"], select_fraction=s["select_fraction"])
        cfg = self._config()
        dev = resolve_device(device)
        P, n = xs.shape[0], xs.shape[1]
        X, Y = _as_float_tensor(xs), _as_float_tensor(ys)
        prev_threads = torch.get_num_threads()
        if s["threads"] and dev.type == "cpu":
            torch.set_num_threads(int(s["threads"]))
        try:
            runs = self._run_seeds(X, Y, n, seeds, cfg, dev)
        finally:
            torch.set_num_threads(prev_threads)
        out = self._aggregate(runs, seeds, cfg, dev, P, t0)
        out = self._retry_failed(xs, ys, out, seeds, device) if s["retry"] else out
        return self._check_critic(xs, ys, out, seeds, device)

    def _check_critic(self, xs: np.ndarray, ys: np.ndarray, out: list[MIEstimate], seeds: tuple[int, ...],
                      device: Any) -> list[MIEstimate]:
        """Which critic resolves each cell, and which cells are lower bounds (critic_check.py)."""
        s = self.settings
        if s["hidden"] or s["layers"] or not s["nonlinear_check"]:
            return out
        todo = []
        for p in (p for p, e in enumerate(out) if needs_check(e)):
            cap = entropy_cap(out[p], xs[p], ys[p])
            if cap is not None:
                out[p] = resolved_at_cap(out[p], cap)
            else:
                todo.append(p)
        if not todo:
            return out
        mlp = type(self)(**{**s, **MLP_CRITIC, "retry": False, "nonlinear_check": False})
        with _pairs_in_front(xs, ys, todo) as (x_todo, y_todo):
            opinions = mlp.estimate_many(x_todo, y_todo, seeds, device)
        for p, e in zip(todo, opinions):  # the stacks are as given again: xs[p] is pair p
            out[p] = second_opinion(out[p], e)
            if xs.shape[2] + ys.shape[2] <= KNN_MAX_DIMS:  # rows are distinct here (the cap did not bind)
                out[p] = knn_opinion(out[p], *ksg_bits(xs[p], ys[p]))
            if found_nothing(out[p]):
                out[p] = energy_opinion(out[p], energy_test(xs[p], ys[p]))
        return out

    def _retry_failed(self, xs: np.ndarray, ys: np.ndarray, out: list[MIEstimate], seeds: tuple[int, ...],
                      device: Any) -> list[MIEstimate]:
        """Re-estimate the cells that failed the validity rule once, with safer settings; a cell
        that fails again stays invalid with both reasons."""
        failed = [p for p, e in enumerate(out) if not e.valid and not e.diverged]
        if not failed:
            return out
        with _pairs_in_front(xs, ys, failed) as (x_failed, y_failed):
            again = type(self)(**safer_settings(self.settings)).estimate_many(x_failed, y_failed, seeds, device)
        for p, e in zip(failed, again):
            first = out[p].invalid_reason
            settings = {**e.settings, "retried_because": first}
            reason = e.invalid_reason if e.valid else f"{first}; after a retry with safer settings: {e.invalid_reason}"
            out[p] = dataclasses.replace(e, settings=settings, invalid_reason=None if e.valid else reason)
        return out

    def _run_seeds(self, X: Any, Y: Any, n: int, seeds: tuple[int, ...], cfg: TrainConfig, dev: Any) -> _SeedRuns:
        import torch

        from .trainer import train_batched  # torch: imported when an estimate is made, not with the defaults

        s = self.settings
        boot = bootstrap_weights(n, int(s["bootstrap"]), int(s["bootstrap_seed"])) if s["bootstrap"] else None
        runs = _SeedRuns()
        for seed in seeds:
            tr, sel, ev = split_three(n, s["eval_fraction"], s["select_fraction"], seed)
            torch.manual_seed(seed)  # nothing should draw from the global RNG, but be safe
            res = train_batched(X, Y, tr, sel, ev, cfg, seed, dev, boot_weights=boot)
            runs.bits.append(res.nats * LOG2E)
            runs.half.append(None if res.nats_half is None else res.nats_half * LOG2E)
            runs.train.append(res.nats_train * LOG2E)
            runs.replicates.append(None if res.nats_replicates is None else res.nats_replicates * LOG2E)
            runs.corrected.append(_corrected_replicates(res))
            runs.spurious.append(_spurious_variance(res))
            runs.diverged.append(res.diverged)
            runs.steps.append(res.steps)
            runs.never_left_zero.append(res.best_step == 0)
            runs.n_cand, runs.n_tr, runs.n_sel, runs.n_ev = res.n_candidates, len(tr), len(sel), len(ev)
        return runs

    def _aggregate(self, runs: _SeedRuns, seeds: tuple[int, ...], cfg: TrainConfig, dev: Any, P: int,
                   t0: float) -> list[MIEstimate]:
        from .trainer import resolve_precision

        s = self.settings
        elapsed = self._clock() - t0
        ceiling = math.log2(runs.n_cand)
        settings = {
            **s,
            "bound": self.bound,
            "ema": cfg.ema,
            "device": str(dev),
            "precision": resolve_precision(cfg.precision, dev),
            "n_candidates": runs.n_cand,
            "n_select": runs.n_sel,
            "ceiling": f"log2(n_candidates): the report pool with negatives={cfg.negatives!r}",
            "bootstrap_resamples": "sample ids: report, half-pool and train rows reweighted (pools and critic fixed)",
            "interval": "centred on diagnostics['corrected_bits'] (bound + pool gain + gap / 2), for I itself",
            "steps_run": runs.steps,
            "batch_pairs": P,
            "batch_seconds": elapsed,
        }
        m = _Matrices.of(runs, len(seeds))
        return [self._one(p, m, runs, seeds, ceiling, settings, elapsed / P) for p in range(P)]

    def _one(self, p: int, m: "_Matrices", runs: _SeedRuns, seeds: tuple[int, ...], ceiling: float,
             settings: dict[str, Any], seconds: float) -> MIEstimate:
        s = self.settings
        vals = tuple(float(v) for v in m.bits[p])
        diverged = bool(m.diverged[p].any())
        rep = None if m.replicates is None or diverged else m.replicates[p]
        gain = None if m.gain is None or diverged else float(np.mean(m.gain[p]))
        mean = float(np.mean(vals)) if not diverged else math.nan
        train_bits = float(np.mean(m.train[p])) if not diverged else math.nan
        # the interval is for I: centred on the seeds' bias-corrected values, its spread from the
        # same correction recomputed on every resample (docs/METHOD.md section 5)
        boot = None if m.corrected is None or diverged else m.corrected[p]
        spurious = 0.0 if m.spurious is None else float(m.spurious[p])
        corrected_bits, lo, hi = estimate_interval(m.centre[p], boot, spurious) if not diverged else (math.nan,) * 3
        if not diverged and all(z[p] for z in runs.never_left_zero):  # nothing found: up to what was detectable
            lo, hi = min(lo, 0.0), max(hi, detection_limit_bits(runs.n_sel, self.settings["min_delta"]))
        reason = invalid_reason(mean, vals, train_bits, gap_limit_bits=s["gap_limit_bits"],
                                spread_limit_bits=s["spread_limit_bits"])
        diagnostics = {"train_bits": train_bits, "gap_bits": train_bits - mean, "corrected_bits": corrected_bits}
        if rep is not None:
            diagnostics["bootstrap_se_bits"] = float(np.std(rep, ddof=1))
            diagnostics["corrected_se_bits"] = float(np.std(boot, ddof=1))
            diagnostics["spurious_variance_bits2"] = spurious
        return MIEstimate(
            bits=mean, ceiling_bits=ceiling, saturated=is_saturated(mean, ceiling, gain, s["saturation_pool_gain"]),
            n_train=runs.n_tr, n_eval=runs.n_ev, method=self.name, seconds=seconds, seeds=seeds,
            bits_per_seed=vals, ci_low=lo, ci_high=hi, settings=dict(settings), diverged=diverged,
            pool_gain_bits=gain, valid=reason is None, invalid_reason=reason, diagnostics=diagnostics,
            replicate_bits=() if rep is None else tuple(float(v) for v in rep),
        )


@dataclasses.dataclass
class _Matrices:
    """One batched call's per-pair values: (P, S) per seed, (P, B) per resample (mean over seeds)."""

    bits: np.ndarray
    diverged: np.ndarray
    train: np.ndarray
    gain: np.ndarray | None  # half-pool gain (InfoNCE only)
    centre: np.ndarray  # the bias-corrected value (``_bias_corrected``)
    replicates: np.ndarray | None  # the bound
    corrected: np.ndarray | None  # the bias-corrected value
    spurious: np.ndarray | None  # (P,) the share of ``corrected``'s variance that resampling adds

    @classmethod
    def of(cls, runs: _SeedRuns, n_seeds: int) -> "_Matrices":
        def mean_over_seeds(arrays: list) -> np.ndarray | None:
            return None if arrays[0] is None else np.mean(np.stack(arrays), axis=0)

        bits, train = np.stack(runs.bits, axis=1), np.stack(runs.train, axis=1)
        half = None if runs.half[0] is None else np.stack(runs.half, axis=1)
        spurious = mean_over_seeds(runs.spurious)
        return cls(bits=bits, diverged=np.stack(runs.diverged, axis=1), train=train,
                   gain=None if half is None else bits - half, centre=_bias_corrected(bits, half, train),
                   replicates=mean_over_seeds(runs.replicates), corrected=mean_over_seeds(runs.corrected),
                   # the seeds' splits draw their pools independently: the mean's share is 1/S of theirs
                   spurious=None if spurious is None else spurious / n_seeds)


class MINE(NeuralEstimator):
    """DV bound trained with MINE's moving-average correction of the partition-term gradient
    (setting ``ema``: the moving-average rate; 0 or None switches it off = plain DV)."""

    name = "mine"
    bound = "dv"
    defaults = {**_COMMON, "ema": 0.01}

    def _ema(self) -> float | None:
        e = self.settings["ema"]
        return float(e) if e else None


class InfoNCE(NeuralEstimator):
    """Separable critic f(x).g(y), all in-batch negatives; ceiling log2(n_candidates). The default
    estimator: its value is a mean of per-row terms, so it streams over rows and forms report pools
    (bounds.InfoNCEBound)."""

    name = bound = "infonce"


class DonskerVaradhan(NeuralEstimator):
    """DV bound E_p[T] - log E_q[e^T] with a stable log-mean-exp."""

    name = bound = "dv"


class SMILE(NeuralEstimator):
    """DV with the partition term on clip(T, -clip, clip) (clip=5 by default), trained on the
    Jensen-Shannon bound (bounds.SMILEBound)."""

    name = bound = "smile"


class NWJ(NeuralEstimator):
    """Nguyen-Wainwright-Jordan bound E_p[T] - E_q[e^(T-1)]."""

    name = bound = "nwj"
