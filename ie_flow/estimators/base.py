"""Shared pieces of every estimator: the result type, input validation, the seeded
train / select / report split, the saturation and validity rules, bootstrap resamples of the
sample ids and the intervals (docs/METHOD.md section 5)."""
from __future__ import annotations

import dataclasses
import difflib
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

LOG2E = 1.0 / math.log(2.0)  # nats -> bits
SATURATION_MARGIN_BITS = 0.1  # docs/METHOD.md section 5: within 0.1 bit of the ceiling = lower bound only
MIN_TRAIN = 64  # fewer training samples than this cannot fit any critic meaningfully
MIN_EVAL = 32  # fewer held-out samples than this gives a meaningless held-out bound
MIN_SELECT = 32  # fewer selection samples than this cannot rank checkpoints


class EstimationDiverged(RuntimeError):
    """A training run produced a non-finite loss; the estimate is not a number."""


@dataclass(frozen=True)
class MIEstimate:
    """One mutual-information estimate, in bits, with everything needed to judge it."""

    bits: float  # mean over seeds (nan when diverged)
    ceiling_bits: float | None  # largest value this estimator could report (None: no ceiling)
    saturated: bool  # True -> ``bits`` is a lower bound limited by the ceiling, not a measurement
    n_train: int
    n_eval: int
    method: str
    seconds: float
    seeds: tuple[int, ...]
    bits_per_seed: tuple[float, ...]
    # 95% interval for the MI itself: the neural estimators centre it on the bias-corrected value
    # (diagnostics["corrected_bits"]), which can lie above a biased bound; its half-width comes from
    # a bootstrap over sample ids (critic kept fixed) and the t-interval across seeds.  == bits only
    # where no interval could be computed
    ci_low: float
    ci_high: float
    settings: dict[str, Any] = field(default_factory=dict)
    diverged: bool = False
    # how much the held-out bound rose from a half-sized to the full candidate pool
    # (~0 when the ceiling does not bind, up to ~1 bit when it does); None where not computed
    pool_gain_bits: float | None = None
    # a cell that failed its estimator's checks is kept (with its reason) but never averaged into IE
    valid: bool = True
    invalid_reason: str | None = None
    # estimator-specific per-cell figures (e.g. the smoothed estimator's null, MC error, LOO value)
    diagnostics: dict[str, float] = field(default_factory=dict)
    # bits of the estimate on each bootstrap resample of the sample ids (mean over seeds); the
    # resamples depend only on (n, bootstrap seed, replicate), so replicate b of every cell of a
    # run is the same resampled data set and cells can be differenced replicate by replicate
    replicate_bits: tuple[float, ...] = ()
    # the same resamples of the cell's reference part, where the estimator splits its value into a
    # reference and an excess (smoothed: the Gaussian reference G^β, diagnostics["gauss_bits"])
    reference_replicate_bits: tuple[float, ...] = ()
    # which of its estimator's variants this is (Estimator.variants; "" for an estimator with one)
    variant: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        d["bits_per_seed"] = list(self.bits_per_seed)
        d["replicate_bits"] = list(self.replicate_bits)
        d["reference_replicate_bits"] = list(self.reference_replicate_bits)
        return d


# --------------------------------------------------------------------------- validation

def _check_finite(a: np.ndarray, name: str) -> None:
    # pair by pair: the mask of a whole (P, n, d) stack would be P n d bytes
    if not all(np.isfinite(block).all() for block in (a if a.ndim == 3 else [a])):
        bad = ~np.isfinite(a)
        n_nan = int(np.isnan(a).sum())
        n_inf = int(bad.sum()) - n_nan
        first = np.argwhere(bad)[0].tolist()
        raise ValueError(
            f"{name} contains non-finite values ({n_nan} NaN, {n_inf} inf; first at index {first})"
        )


def constant_columns(a: np.ndarray) -> np.ndarray:
    """Indices of columns of a (n, d) array (or (P, n, d): any pair) with zero variance."""
    if a.ndim == 2:
        return np.flatnonzero(np.ptp(a, axis=0) == 0)
    return np.flatnonzero((np.ptp(a, axis=1) == 0).any(axis=0))


def required_samples(eval_fraction: float, select_fraction: float = 0.0) -> int:
    """Smallest n whose split leaves MIN_EVAL report rows and MIN_TRAIN training rows (after
    the select split, which takes at least MIN_SELECT rows when one is asked for)."""
    if eval_fraction <= 0:
        return MIN_TRAIN
    need = max(math.ceil(MIN_EVAL / eval_fraction), math.ceil(MIN_TRAIN / (1.0 - eval_fraction)))
    if select_fraction > 0:
        need = max(need, math.ceil((MIN_TRAIN + MIN_SELECT) / (1.0 - eval_fraction)),
                   math.ceil(MIN_TRAIN / (1.0 - eval_fraction - select_fraction)))
    return need


def split_problem(samples: int, eval_fraction: float, select_fraction: float = 0.1) -> str | None:
    """Why `samples` cannot be split into train / select / report parts, or None when it can."""
    need = required_samples(eval_fraction, select_fraction)
    if samples >= need:
        return None
    return (f"samples={samples} is too few for the train/select/report split with eval_fraction={eval_fraction}: "
            f"need at least {need} samples")


def validate_pairs(
    xs: np.ndarray,
    ys: np.ndarray,
    *,
    eval_fraction: float,
    drop_constant: bool,
    batched: bool,
    select_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Check (P, n, d) stacks (batched) or (n, d) pairs; return float arrays as given.

    Raises ValueError naming the problem: wrong ndim, mismatched n, NaN/inf, too few samples,
    constant columns (unless ``drop_constant``: then the trainer zeroes them, which is
    equivalent to dropping them)."""
    xs = np.asarray(xs)
    ys = np.asarray(ys)
    want = 3 if batched else 2
    shape_hint = "(P, n, d)" if batched else "(n, d)"
    for name, a in (("x", xs), ("y", ys)):
        if a.ndim != want:
            raise ValueError(f"{name} must be a {want}-D array {shape_hint}, got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise ValueError(f"{name} must be a real numeric array, got dtype {a.dtype}")
        if a.shape[-1] == 0:
            raise ValueError(f"{name} has no columns (shape {a.shape})")
    if batched and xs.shape[0] != ys.shape[0]:
        raise ValueError(f"x and y hold different numbers of pairs: {xs.shape[0]} vs {ys.shape[0]}")
    if xs.shape[-2] != ys.shape[-2]:
        raise ValueError(
            f"x and y have different numbers of samples (mismatched n): {xs.shape[-2]} vs {ys.shape[-2]}"
        )
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if not 0.0 <= select_fraction < 1.0 - eval_fraction:
        raise ValueError(f"select_fraction must be in [0, 1 - eval_fraction), got {select_fraction}")
    n = xs.shape[-2]
    need = required_samples(eval_fraction, select_fraction)
    if n < need:
        sel = f", select_fraction={select_fraction}" if select_fraction else ""
        raise ValueError(
            f"too few samples for the train/held-out split: n={n}, need at least {need} "
            f"(eval_fraction={eval_fraction}: >= {MIN_TRAIN} train and >= {MIN_EVAL} held-out{sel})"
        )
    _check_finite(xs, "x")
    _check_finite(ys, "y")
    if not drop_constant:
        for name, a in (("x", xs), ("y", ys)):
            cols = constant_columns(a)
            if cols.size:
                shown = ", ".join(str(int(c)) for c in cols[:10]) + (" ..." if cols.size > 10 else "")
                raise ValueError(
                    f"{name} has {cols.size} constant column(s) (zero variance) at index {shown}; "
                    "remove them or pass drop_constant=True"
                )
    return xs, ys


# --------------------------------------------------------------------------- split / stats

def split_indices(n: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train / held-out split by sample (sorted indices: deterministic, cache friendly)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    perm = rng.permutation(n)
    n_eval = max(MIN_EVAL, int(round(n * eval_fraction)))
    return np.sort(perm[n_eval:]), np.sort(perm[:n_eval])


def split_three(n: int, eval_fraction: float, select_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train / select / report split by sample (sorted indices).

    The critic is fitted on train, its checkpoint is chosen on select, and the value is
    reported on report only: the reported rows never trained the critic nor chose it, so the
    value carries no winner's curse.  The report rows are the same as ``split_indices``'
    held-out rows for the same (n, eval_fraction, seed)."""
    train, report = split_indices(n, eval_fraction, seed)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5E1EC7]))
    n_select = max(MIN_SELECT, int(round(n * select_fraction)))
    pick = rng.permutation(train.size)[:n_select]
    keep = np.ones(train.size, dtype=bool)
    keep[pick] = False
    return train[keep], np.sort(train[pick]), report


def bootstrap_weights(n: int, replicates: int, seed: int) -> np.ndarray:
    """(replicates, n) integer counts: replicate b draws n sample ids with replacement.

    Depends only on (n, replicates, seed), never on the estimator seed or the pair, so every
    cell of a run and every estimator seed sees the same resampled data sets (a quantity built
    from several cells, e.g. IE, can be bootstrapped by differencing replicates)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), n, 0xB007]))
    # small counts as uint8 (a fourth of float32: 60 MB for 200 resamples of 300,000 ids), one
    # replicate's ids at a time (the same draws as all at once)
    out = np.empty((replicates, n), dtype=np.uint8)
    for b in range(replicates):
        counts = np.bincount(rng.integers(0, n, size=n), minlength=n)
        if counts.max() > 255:  # never seen; kept exact if it happens
            out = out.astype(np.uint16)
        out[b] = counts
    return out


# --------------------------------------------------------------------------- aggregation

# two-sided 97.5% Student-t quantiles for df = 1..30 (no scipy dependency)
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def seed_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval of the mean across seeds; (v, v, v) for one seed."""
    v = np.asarray(values, dtype=float)
    if v.size == 0 or not np.isfinite(v).all():
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if v.size == 1:
        return m, m, m
    t = _T975[v.size - 2] if v.size - 1 <= len(_T975) else 1.96
    half = t * float(v.std(ddof=1)) / math.sqrt(v.size)
    return m, m - half, m + half


def estimate_interval(per_seed: Sequence[float], replicates: np.ndarray | None,
                      spurious_variance: float = 0.0) -> tuple[float, float, float]:
    """Mean over seeds and a 95% interval combining both sources of spread.

    ``replicates`` (B,) are the mean-over-seeds value on B bootstrap resamples of the sample ids
    (the critics kept fixed): the sampling error of the rows it was computed on, less
    ``spurious_variance``, the share that resampling adds but the data do not have.  Resampling
    overstates the variance of a U-statistic by at most a factor 2 (its degenerate part twice
    over), so no more than half is removed.  The t-interval over seeds adds what resampling
    cannot see (split and training randomness).  The two half-widths add in quadrature; with
    one seed and no replicates the interval is the point."""
    mean, lo, hi = seed_interval(per_seed)
    if not math.isfinite(mean):
        return mean, lo, hi
    half_seed = (hi - lo) / 2
    half_boot = 0.0
    if replicates is not None and replicates.size > 1 and np.isfinite(replicates).all():
        var = float(np.var(replicates, ddof=1))
        half_boot = 1.96 * math.sqrt(max(var / 2, var - max(0.0, spurious_variance)))
    half = math.hypot(half_seed, half_boot)
    return mean, mean - half, mean + half


def detection_limit_bits(n_select: int, min_delta_nats: float, z: float = 1.96) -> float:
    """Smallest MI (bits) the early stopping would have told from 0: a cell whose critic never beat
    its all-zero start ("nothing found") has an interval up to here, not the point {0}.  For weak
    dependence the log density ratio has mean I and variance about 2I (chi-square ~ 2 KL), so the
    select rows' bound has sd sqrt(2I / n_select); the start is beaten when it exceeds min_delta,
    which fails in at most 2.5% of draws once I - z sqrt(2I / n_select) >= min_delta."""
    a = z * math.sqrt(2.0 / max(1, n_select))
    root = (a + math.sqrt(a * a + 4.0 * max(0.0, min_delta_nats))) / 2.0
    return root * root * LOG2E


def is_saturated(bits: float, ceiling_bits: float | None, pool_gain_bits: float | None = None,
                 pool_gain_limit: float = 0.3) -> bool:
    """The one saturation rule: the value is a lower bound limited by the estimator, not a
    measurement, when it lies within SATURATION_MARGIN_BITS of ``ceiling_bits`` (the largest
    value the reported bound can take with its candidate pool: log2 of the report pool for
    InfoNCE) or when halving that pool lowers it by ``pool_gain_limit`` bits or more."""
    if not math.isfinite(bits):
        return False
    if pool_gain_bits is not None and math.isfinite(pool_gain_bits) and pool_gain_bits >= pool_gain_limit:
        return True
    if ceiling_bits is None or not math.isfinite(ceiling_bits):
        return False
    return bits >= ceiling_bits - SATURATION_MARGIN_BITS


# --------------------------------------------------------------------------- estimator base

def close_match_hint(name: str, choices: Sequence[str]) -> str:
    m = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f"; did you mean {m[0]!r}?" if m else ""


def resolve_device(device: Any) -> Any:
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Estimator:
    """Base class: holds validated settings; subclasses implement ``estimate_many``.

    The measurement contract (what the pipeline asks of every estimator, and nothing else): its
    ``variants`` (several values per cell, e.g. one per resolution), the ``diagnostics`` it
    reports per cell, ``check`` (enough samples?), ``estimate_cells``, ``family_settings`` (what it fixes
    in advance per corpus family), ``choose_headline`` (which variant a job's headline shows) and
    ``companion_variant`` (the variant shown beside it, with ``headline_note`` saying why); a
    target measure (``measures_target``) implements ``estimate_target_cells`` and ``check_target``
    instead of ``estimate_cells``. Stage 2, emergence, tracking, report, plots, the control and the
    reproduction make the same calls for every estimator."""

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    # per-cell figures (MIEstimate.diagnostics keys) kept in the MI table's diagnostics map and shown
    # per layer (the headline cell's) in report, compare and the MLflow run
    diagnostics: ClassVar[tuple[str, ...]] = ()
    # estimate_many takes float16 stacks as they are (else stage 2 hands it float32 copies)
    takes_float16: ClassVar[bool] = False
    # estimate_cells takes ``side_keys`` ((cells, 2) ints naming each cell's X and Y side: boundary and
    # position), so that calls naming a side alike can share its random draws (a model and its control)
    takes_side_keys: ClassVar[bool] = False

    def memory_plan(self, pairs: int, n: int, dx: int, dy: int, itemsize: int, eval_fraction: float) -> int:
        """Bytes ``estimate_many`` holds on (pairs, n, d) stacks of ``itemsize``-byte values: here
        the stacks alone (this estimator's own working memory is not modelled; the neural
        estimators' is, and checked against measurement by benchmarks/bench_scale.py)."""
        return pairs * n * (dx + dy) * itemsize
    checks_dims: ClassVar[bool] = False  # whether `check` needs the dimensions too (a job then reads them)

    def __init__(self, **settings: Any) -> None:
        unknown = [k for k in settings if k not in self.defaults]
        if unknown:
            k = unknown[0]
            raise ValueError(
                f"unknown setting {k!r} for estimator {self.name!r}{close_match_hint(k, list(self.defaults))} "
                f"(known: {', '.join(sorted(self.defaults))})"
            )
        self.settings: dict[str, Any] = {**self.defaults, **settings}

    def estimate_many(
        self, xs: np.ndarray, ys: np.ndarray, seeds: Sequence[int] = (0,), device: Any = None
    ) -> list[MIEstimate]:
        raise NotImplementedError

    def variants(self) -> tuple[str, ...]:
        """The variants each cell is estimated at, in the order a headline prefers them."""
        return ("",)

    def estimate_cells(self, xs: np.ndarray, ys: np.ndarray, seeds: Sequence[int] = (0,), device: Any = None
                       ) -> list[list[MIEstimate]]:
        """Every cell's estimates, one per variant: [cell][variant]."""
        return [[e] for e in self.estimate_many(xs, ys, seeds=seeds, device=device)]

    # a value at the estimator's ceiling is a lower bound held down by it (InfoNCE's log2 N); an
    # estimator whose ceiling is the exact information available (a target measure's) does not saturate
    saturates: ClassVar[bool] = True
    # a target measure: information about the corpus's per-sequence label at one boundary
    # (estimate_target_cells), not between two boundaries (estimate_cells)
    measures_target: ClassVar[bool] = False

    def estimate_target_cells(self, xs: np.ndarray, labels: np.ndarray, groups: np.ndarray | None,
                              ceilings: Sequence[float | None] | None = None, seeds: Sequence[int] = (0,),
                              device: Any = None) -> list[list[MIEstimate]]:
        """A target measure's estimates of every cell, one per variant: [cell][variant]. xs (P, n, d):
        one representation per cell; labels and groups (n,); ceilings (P,): the exact information
        each cell can hold about the label, where the corpus knows it."""
        raise NotImplementedError(f"estimator {self.name!r} measures pairs of boundaries, not a target")

    def check_target(self, labels: np.ndarray, groups: np.ndarray | None, seeds: Sequence[int] = (0,)) -> str | None:
        """Why these labels cannot be measured (constant, a class too small for the splits), or None."""
        return None

    @classmethod
    def family_settings(cls, settings: dict[str, Any], family: str) -> dict[str, Any]:
        """The settings a job on a corpus of `family` (corpora.corpus_family) runs this estimator with:
        `settings` and what it fixes in advance per family (the smoothed measure: its headline variant),
        filled into the job before validation so that the resolved job and the results key show it."""
        return dict(settings)

    def choose_headline(self, *profiles: Mapping[str, Any]) -> tuple[str, bool]:
        """The variant a job's headline shows, and whether every layer is valid there. `profiles`
        (a model's, and its control's when there is one) map each variant found to its
        emergence.Emergence. The first variant (in ``variants`` order) valid in every layer of every
        profile; else the one with the most such layers (the earlier on a tie), flagged. An estimator
        without variants has no choice to flag."""
        common = [v for v in self.variants() if all(v in p for p in profiles)]
        common += sorted(v for v in set.intersection(*(set(p) for p in profiles)) if v not in common)
        if common == [""]:
            return "", True
        valid = {v: sum(all(p[v].layers[i].valid for p in profiles) for i in range(len(profiles[0][v].layers)))
                 for v in common}
        best = max(common, key=lambda v: (valid[v], -common.index(v)))
        return best, valid[best] == len(profiles[0][best].layers)

    # one sentence on which variant the headline shows and why, printed where a companion is beside it
    headline_note: ClassVar[str] = ""

    def companion_variant(self, variant: str) -> str | None:
        """The variant shown side by side with the headline `variant` wherever the headline is shown
        (its IE per layer and mean, a control's difference), or None: none (the default)."""
        return None

    def check(self, n: int, dims: tuple[int, int] | None = None) -> str | None:
        """Why `n` sample pairs (of `dims` = (dx, dy) dimensions, when known) are too few for this
        estimator, or None when they are enough: a job asks before any work. This default is the
        train / select / report split of the estimators that have one."""
        s = self.settings
        if "eval_fraction" not in s:
            return None
        return split_problem(n, s["eval_fraction"], s.get("select_fraction", 0.1))

    # helpers shared by subclasses
    @staticmethod
    def _check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
        seeds = tuple(int(s) for s in (seeds if isinstance(seeds, (list, tuple, range, np.ndarray)) else (seeds,)))
        if not seeds:
            raise ValueError("seeds must name at least one seed")
        return seeds

    @staticmethod
    def _clock() -> float:
        return time.perf_counter()

    def _start(self, xs: np.ndarray, ys: np.ndarray, seeds: Sequence[int], **checks: Any
               ) -> tuple[float, tuple[int, ...], np.ndarray, np.ndarray]:
        """How every estimate_many begins: the clock, the seeds and the validated (P, n, d) stacks."""
        t0 = self._clock()
        seeds = self._check_seeds(seeds)
        xs, ys = validate_pairs(xs, ys, batched=True, **checks)
        return t0, seeds, xs, ys
