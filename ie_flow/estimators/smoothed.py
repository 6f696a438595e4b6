"""Resolution-aware MI (docs/METHOD.md section 7): ``M^β = I(X + σx Z1 ; Y + σy Z2)``.

σ = β · sqrt(tr Cov) of that side (its RMS radius about the mean), Z1, Z2 independent standard
normals.  Invariant to scaling, shifting and rotating either side (the estimate: within Monte-Carlo
error where each side's noise draw is keyed by its content; to scaling and shifting exactly, up to
rounding, where the caller names the sides, ``keys``, since the draws then depend on the name and the
seed only); falls as β
grows; between 0 and the entropy of the (distinct) samples.  A cell's estimate depends only on its own data, the seed and
the settings, never on the other cells of the call.  Two modes, both measured by default (setting
``modes``): ``raw``, the sides as they are, and ``standardised``, every coordinate of each side first
scaled to unit variance (so a few massive activation dimensions do not set σ alone; exactly constant
coordinates are dropped).  Each estimate says its mode in ``settings["mode"]``; its variant is
``variant_of(beta, mode)``: "β = 0.6" (raw, the name the MI tables always had) or
"β = 0.6, standardised".  The older setting ``standardise: true / false`` still reads as
``modes: [standardised]`` / ``[raw]``.  HEADLINE_MODE_NOTE says which mode the headline shows and why
(raw; the standardised value at the same β is shown beside it, ``companion_variant``).
A side that is constant gives exactly 0.

Public entry point (the one stage 2 calls for all (layer, position) cells of a layer group)::

    SmoothedMI(queries=512, bootstrap=200).estimate_grid(
        xs,            # (P, n, dx) array: the X side of every cell
        ys,            # (P, n, dy) array: the Y side of every cell
        betas=None,    # None -> the ``betas`` setting, else DEFAULT_BETAS = (0.4, 0.6, 0.8)
        seeds=(0,),    # several: mean over seeds (see "Interval")
        device=None,   # "cpu" / "cuda" / None (CUDA when available)
        keys=None,     # (P, 2) ints naming each cell's X and Y side: draws keyed by name (CRN)
        modes=None,    # None -> the ``modes`` setting (default both)
    ) -> list[list[MIEstimate]]   # [cell][variant]: raw at each β in the order given, then standardised

The modes are computed in turn with the same block resamples, query ids and noise draws (they depend on
n, the seeds and the sides' names or contents, never on the mode), so the raw and standardised values
of a cell, and of a model and its control, are paired replicate by replicate; a call with both modes
returns exactly what two calls with one mode each return.
``estimate_many`` / ``estimate_mi(x, y, method="smoothed", beta=0.6)`` are the one-β case, in the
headline mode.  Bad input (beta <= 0, queries > n, NaN/inf, mismatched shapes) raises ValueError.

Plug-in estimator (the empirical distribution smoothed by Gaussian kernels): draw m query samples
(setting ``queries``, stratified over column units), set x̃ = x_q + σx z, ỹ = y_q + σy z', and
average over queries ``log p(x̃,ỹ) − log p(x̃) − log p(ỹ)``, each density the mean of the Gaussian
kernels of the n samples (normalising constants cancel), nats -> bits.  Two variants:
- resubstitution (``resub_bits``): all n samples; exact in expectation for the *empirical*
  distribution, so it climbs towards log2 n when β is too small for n (each query finds itself);
- leave-one-out (``loo_bits``): the query's own sample dropped from all three densities.  LOO is
  the headline ``bits``: on the Gaussian closed form (n = 4000) resub was 5-300% high wherever
  the two differ (d = 16, β = 0.4: resub 1.02, LOO 0.79, truth 0.86; d = 64, β = 0.4: resub 0.84,
  LOO 0.15, truth 0.35), and on discrete data (the LLM case: values repeat) both agree (K = 32
  separated points: 5.006 / 4.995 bits for log2 K = 5).  LOO errs low when β is too small for n;
  the diagnostics below say when.

How the work is shared (why a β grid, the null, n/2 and the bootstrap cost little extra):
- ||x̃_q − x_i||² = ||x_q − x_i||² + 2σ z_q·(x_q − x_i) + σ²||z_q||²; the terms constant in i
  cancel between the three log-densities, so every kernel logit comes from two Gram matrices per
  side, G = X_q Xᵀ and W = Z Xᵀ (one matmul), computed once for all β (common random numbers).
- Sides are deduplicated by content: in a layer chain Y of cell (l, t) is X of cell (l+1, t), so
  its matmul and marginal kernel sums are done once (it has the same noise in both roles; a cell
  whose X equals its Y still gets independent noise on each side).  Sides of one width are
  processed in groups (one batched matmul), and cells whose sides are consecutive (a chain) in
  runs of slices, ``cell_batch`` at a time: few large operations rather than many small ones.
- Kernels are stored as exp(logit − row max + 36) in float32; a cell's joint kernel is the product
  of its two sides' kernels (no exp per cell).  Columns are streamed in chunks of whole units
  (setting ``chunk``; by default 1 GiB of kernels on CPU, half the free memory on CUDA) and
  reduced to per-block log-sums, so memory is bounded at any n; results do not depend on it.
- The n samples are split into ``blocks`` random groups (depending on n and ``bootstrap_seed``
  only).  Within each unit the queries come first: the shuffled-pair null pairs X of one position
  with Y of the next inside each (unit, queries / others) segment, which is a shifted product of
  the same kernels; the n/2 value uses the first half of the blocks; the bootstrap resamples
  whole blocks (with their queries) with multiplicities.  All from the same per-block log-sums.
Precision: Gram matrices and kernels in float32 (logits are O(1/β²); the fast path agrees with
explicit float64 distances to ~1e-6 bit in the tests); per-block log-sums and all later steps in
float64.  A joint kernel sum that underflows (more than ~159 nats below both sides' maxima, β far
too small) is counted in ``underflow_frac`` and makes the cell invalid.

Diagnostics (``MIEstimate.diagnostics``; bits unless named otherwise; means over seeds):
``beta``; ``sigma_x``, ``sigma_y`` (noise scales in data units, or standardised units);
``resub_bits``, ``loo_bits`` and ``resub_loo_gap_bits`` (resub − LOO: how much the query's own
sample carries the densities; on the Gaussian truth the LOO error was about −0.3..−0.6 x the gap);
``mc_se_bits`` (Monte-Carlo standard error over queries); ``null_bits`` (the headline estimator on
shuffled pairs: its bias for independent data at this n and β.  Reported, never subtracted: the
subtraction over-corrected every Gaussian case measured, e.g. d = 16, β = 0.3: 1.44 − (−0.93) =
2.37 vs truth 1.88, and on discrete data the LOO null is a K×K-table effect, −1.7 bit for K = 32 at
β = 0.1 while the value is exact); ``half_n_bits`` (the value at n/2, from the same queries and
noise) and ``stability_bits`` (value at n − value at n/2); ``boot_ci_low``, ``boot_ci_high``;
``underflow_frac``; ``queries``; ``blocks``.
The bracket ``lower_bits`` / ``upper_bits`` (L = leave-one-out joint − resubstitution marginals,
U = resubstitution joint − leave-one-out marginals: per entropy term resubstitution is low in
expectation and leave-one-out high, so L ≤ I ≤ U in expectation), the Gaussian reference
``gauss_bits`` (G^β: the closed-form MI of the smoothed pair under a Gaussian with the cell's sample
covariances, ``gaussian_reference.py``) and ``excess_bits`` (M^β − G^β: what the geometry beyond the
covariances adds), each with ``*_ci_low`` / ``*_ci_high`` from the same bootstrap resamples (the
excess replicate by replicate).  Setting ``gauss=False`` skips the reference (NaN).

Validity (``valid=False`` keeps the number, with ``invalid_reason``): the cell is invalid when
resub − LOO > max(GAP_LIMIT_BITS, GAP_FRACTION·value) (β too small for n: the query's own sample
carries the densities), or |stability| > max(STABILITY_LIMIT_BITS, STABILITY_FRACTION·value), or a
joint kernel sum underflowed; with ``null_rule=True`` also when |null| > max(NULL_LIMIT_BITS,
NULL_FRACTION·value).  Thresholds and the measurements behind them: next to the constants.

Interval: ``ci_low``/``ci_high`` = the estimate plus the 2.5/97.5% percentiles of the block
bootstrap minus its median (``bootstrap`` replicates of the mean over seeds; centring matters only
where β is too small: resamples hold ~63% distinct samples, which pushes a biased LOO value further
down).  Replicate b is the same block resample for every cell and seed, kept in
``replicate_bits``, so IE can be differenced replicate by replicate.  It covers
sampling and query variability, not bias (e.g. shuffled pairs: LOO −0.01 bit, interval above it
but below 0).  Several seeds (other queries, noise, null pairing) are averaged replicate-wise.
"""
from __future__ import annotations

import hashlib
import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from .base import LOG2E, Estimator, MIEstimate, _check_finite, resolve_device
from .gaussian_reference import gaussian_reference

# registry names of this module's estimators (read by estimators/__init__.py without importing it)
REGISTRY = {"smoothed": "SmoothedMI"}

# The bracket [L, U] and the Gaussian reference G^β with the excess M^β − G^β, each with its 95%
# interval from the same bootstrap resamples (MIEstimate.diagnostics; the MI table carries them)
REFERENCE_DIAGNOSTICS = tuple(f"{name}_{part}" for name in ("lower", "upper", "gauss", "excess")
                              for part in ("bits", "ci_low", "ci_high"))
# Default β grid (estimate_grid without betas) and single β (estimate_many / estimate_mi).
# Measured on SmolLM2-135M activations (ICL countries, 4 shots, n = 4096, d = 576, layers 0, 1, 8,
# 15, 22, 29, all 8 positions; benchmarks/bench_smoothed.py --activations DIR): β = 0.6 and 0.8 were
# valid in every cell in both modes; β = 0.4 in every cell of positions 0-4 and 6 (raw) but in only
# 2 (raw) / 1 (standardised) of 5 layers at the last position; β <= 0.3 invalid at the last
# position in every layer.  0.4 is the resolution frontier at this n (more samples make it valid).
DEFAULT_BETAS = (0.4, 0.6, 0.8)
# The headline β of a job, fixed in advance per corpus family (corpora.corpus_family), the same in
# every run and cell of it: the β valid in every cell at the sizes benchmarks/RESULTS.md measured
# (in-context corpora from n = 4,096 at β = 0.6; prose only at β = 0.8, from n = 16,384).
HEADLINE_BETA_BY_FAMILY = {"icl": 0.6, "text": 0.8}
# Headline: leave-one-out (measurements in the module docstring).
HEADLINE_VARIANT = "loo"
# The modes (setting ``modes``, both by default, in this order), and the one a job's headline shows
MODES = ("raw", "standardised")
HEADLINE_MODE = "raw"
HEADLINE_MODE_NOTE = (
    "The headline is the raw mode: the noise is isotropic in the model's own units, so the measure sees the "
    "geometry the model computes with, its massive coordinates included; the standardised mode gives every "
    "coordinate equal weight, so the two side by side show how much of a result rides on a few high-variance "
    "coordinates.")
# Validity thresholds (bits): a cell is invalid when a figure exceeds max(LIMIT, FRACTION * value).
# Measured (benchmarks/bench_smoothed.py --truth --n 4000 --queries 4000: linear Gaussian): the LOO
# error is about -(0.3..0.6) x the resub-LOO gap (d = 64, beta = 0.6: gap 43-51% of the value, error
# -14..-27%; d = 16, beta = 0.6: gap 8-9%, error +5/-13% with 6% MC error).  On SmolLM2 (see
# DEFAULT_BETAS) cells passing the gap rule had |stability| <= 0.03 bit, so the stability rule only
# catches what the gap misses.  Floors of 0.02 bit keep MC noise on near-zero values from flagging.
# The null is not in the default rule (setting null_rule): it is the bias for *independent* pairs.
# Every cell it flagged beyond the gap rule was accurate where the truth is known (Gaussian d = 4,
# beta = 0.2: null -1.2 bit, error -0.5%; K = 32 points, beta = 0.1: null -1.7 bit, value exact),
# and on SmolLM2 it alone flagged 25 (raw) / 34 (standardised) of 240 cells, all at positions whose
# prefixes repeat (gap ~0), at beta <= 0.4.
NULL_LIMIT_BITS = 0.02
NULL_FRACTION = 0.1
GAP_LIMIT_BITS = 0.02
GAP_FRACTION = 0.1
STABILITY_LIMIT_BITS = 0.03
STABILITY_FRACTION = 0.05
# exp(logit - row max + OFFSET): kernels up to e^36 so that a product of two sides reaches
# e^72 (< float32 max / 3e5 columns) and underflows only 159 nats below both maxima
_OFFSET = 36.0
_CPU_KERNEL_BYTES = 1 << 30  # kernel store per column chunk on CPU (1 GiB)
_CUDA_FREE_FRACTION = 0.5  # share of free GPU memory the column chunk may use
UNIT_MAX = 2048  # columns per unit at most (a chunk holds at least one unit, whatever the budget)


# --------------------------------------------------------------------------- input preparation

DEFAULT_QUERIES = 512


def query_count(setting: Any, n: int) -> int:
    """The number of query samples m: the setting, or min(DEFAULT_QUERIES, n) when it is not set (a
    small corpus then uses every sample as a query instead of being refused)."""
    return min(DEFAULT_QUERIES, n) if setting is None else int(setting)


def _check_inputs(xs: np.ndarray, ys: np.ndarray, m: int, betas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    bad = [b for b in betas if not (isinstance(b, numbers.Real) and math.isfinite(b) and b > 0)]
    if bad or not betas:
        raise ValueError(f"beta must be a finite number > 0 (the noise scale relative to the data's RMS radius), got {bad or list(betas)}")
    xs, ys = np.asarray(xs), np.asarray(ys)
    for name, a in (("x", xs), ("y", ys)):
        if a.ndim != 3:
            raise ValueError(f"{name} must be a 3-D array (P, n, d), got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise ValueError(f"{name} must be a real numeric array, got dtype {a.dtype}")
        if a.shape[-1] == 0:
            raise ValueError(f"{name} has no columns (shape {a.shape})")
    if xs.shape[0] != ys.shape[0]:
        raise ValueError(f"x and y hold different numbers of pairs: {xs.shape[0]} vs {ys.shape[0]}")
    if xs.shape[1] != ys.shape[1]:
        raise ValueError(f"x and y have different numbers of samples (mismatched n): {xs.shape[1]} vs {ys.shape[1]}")
    n = xs.shape[1]
    if n < 8:
        raise ValueError(f"smoothed needs at least 8 samples, got n={n}")
    if m > n:
        raise ValueError(f"queries={m} exceeds the number of samples n={n}: lower queries to at most n")
    if m < 2:
        raise ValueError(f"queries must be at least 2, got {m}")
    _check_finite(xs, "x")
    _check_finite(ys, "y")
    return xs, ys


def _fingerprint(a: np.ndarray) -> tuple:
    flat = a.reshape(-1)
    sample = np.ascontiguousarray(flat[:: max(1, flat.size // 4096)])
    return a.shape, a.dtype.str, hashlib.blake2b(sample.tobytes(), digest_size=8).hexdigest()


def dedup_sides(xs: np.ndarray, ys: np.ndarray, keys: np.ndarray | None = None
                ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, list[tuple[int, ...]]]:
    """Distinct side arrays, per cell the index of its X and Y side, and per side a noise key.

    Equal content -> one side (a layer chain shares Y of (l, t) with X of (l+1, t)).  A cell whose
    two sides are equal still gets two entries: X and Y noise must be independent.  Without ``keys``
    the noise key comes from the content (fingerprint, and how many earlier sides share it), so a
    cell's noise and hence its estimate do not depend on the other cells of the call or their order.
    ``keys`` ((P, 2) non-negative ints: a name for each cell's X and Y side, e.g. its boundary and
    position) key the noise by name instead: sides of equal name and content are one, and two calls
    naming a side alike draw the same standard normals for it, whatever its content (common random
    numbers: a model and its control on the same windows share their noise, so their difference
    is free of the noise draw's variability).  A cell whose two sides share a name is an error."""
    sides: list[np.ndarray] = []
    noise_keys: list[tuple[int, ...]] = []
    by_key: dict[tuple, list[int]] = {}
    if keys is not None:
        keys = np.asarray(keys, dtype=np.int64)
        if keys.shape != (xs.shape[0], 2) or (keys < 0).any():
            raise ValueError(f"keys must be (cells, 2) non-negative ints naming each cell's X and Y side, got shape {keys.shape}")
        same = np.flatnonzero(keys[:, 0] == keys[:, 1])
        if same.size:
            raise ValueError(f"cell {int(same[0])} names its X and Y side alike ({int(keys[same[0], 0])}): "
                             "their noise must be independent")

    def index_of(a: np.ndarray, name: int | None, avoid: int = -1) -> int:
        key = (_fingerprint(a), name)
        for i in by_key.get(key, []):
            if i != avoid and np.array_equal(sides[i], a):
                return i
        sides.append(a)
        if name is None:
            noise_keys.append((int(key[0][2], 16) + len(by_key.get(key, [])),))
        else:
            noise_keys.append((1, name))  # by name: 2 entries, never equal to a content key's 1
        by_key.setdefault(key, []).append(len(sides) - 1)
        return len(sides) - 1

    name = (lambda p, side: None) if keys is None else (lambda p, side: int(keys[p, side]))  # noqa: E731
    sx = np.array([index_of(xs[p], name(p, 0)) for p in range(xs.shape[0])], dtype=np.int64)
    sy = np.array([index_of(ys[p], name(p, 1), avoid=int(sx[p])) for p in range(ys.shape[0])], dtype=np.int64)
    return sides, sx, sy, noise_keys


@dataclass
class _Side:
    data: Any  # (n, d) float32 tensor on the device
    mean: Any  # (d,)
    scale: Any  # (d,) 1/sd (standardised; 0 for constant coordinates) or None (raw)
    radius: float  # sqrt(tr Cov) after scaling; sigma = beta * radius


def _exactly_constant(t: Any, mean: Any, var: Any) -> Any:
    """Columns whose values are all equal (their computed variance is rounding error only)."""
    import torch

    suspect = var <= 1e-10 * mean.double().square() + 1e-300
    constant = torch.zeros(var.shape, dtype=torch.bool, device=var.device)
    if bool(suspect.any()):
        cols = suspect.nonzero().flatten()
        constant[cols] = (t[:, cols] == t[0, cols]).all(0)
    return constant


def _side(a: np.ndarray, standardise: bool, device: Any) -> _Side:
    import torch

    arr = a if a.dtype == np.float32 and a.flags.c_contiguous else np.ascontiguousarray(a, dtype=np.float32)
    t = torch.from_numpy(arr).to(device)
    mean = t.mean(0)
    centred = t - mean
    if standardise:
        var = centred.square_().mean(0).double()
        constant = _exactly_constant(t, mean, var)
        scale = torch.where(constant, 0.0, 1.0 / var.sqrt().clamp_min(1e-300)).float()
        tr = float((~constant).sum())  # unit variance per kept coordinate
    else:  # only tr Cov is needed; a side whose values never change has radius 0 exactly
        tr = float(torch.linalg.vector_norm(centred).double().square()) / t.shape[0]
        if tr <= 1e-10 * float(mean.double().square().sum()) + 1e-300 and bool((t == t[0]).all()):
            tr = 0.0
        scale = None
    return _Side(t, mean, scale, math.sqrt(max(tr, 0.0)))


# --------------------------------------------------------------------------- layout and draws

@dataclass
class _Layout:
    """Seed-independent column layout: the n samples in random blocks (bootstrap groups), each
    block cut into units of at most UNIT_MAX columns (padded); depends on n and blocks only."""

    n: int
    blocks: int  # bootstrap groups (even: the first half is the n/2 subset)
    per_block: int  # units per block
    unit: int  # columns per unit
    pos_sample: np.ndarray  # (n_pad,) sample id at each column position, -1 = padding
    block_counts: np.ndarray  # (blocks,) real samples per block
    chunk_units: int = 1  # units per column chunk (a multiple of per_block, or 1)

    @property
    def n_pad(self) -> int:
        return self.pos_sample.size

    @property
    def block_width(self) -> int:
        return self.per_block * self.unit


def layout_rng(n: int, bootstrap_seed: int) -> np.random.Generator:
    """The generator of the blocks and of their bootstrap resamples: (n, bootstrap_seed) only, so
    replicate b is the same resampled data set for every cell, call and estimator seed."""
    return np.random.default_rng(np.random.SeedSequence([int(bootstrap_seed), int(n), 0xB10C]))


def _layout(n: int, blocks: int, rng: np.random.Generator) -> _Layout:
    k = max(2, min(int(blocks), n // 4) // 2 * 2)
    groups = np.array_split(rng.permutation(n), k)
    per_block = math.ceil(math.ceil(n / k) / UNIT_MAX)
    unit = math.ceil(math.ceil(n / k) / per_block)
    pos = np.full((k * per_block, unit), -1, dtype=np.int64)
    for b, g in enumerate(groups):
        for i, part in enumerate(np.array_split(g, per_block)):
            pos[b * per_block + i, : part.size] = part
    return _Layout(n, k, per_block, unit, pos.reshape(-1), np.array([g.size for g in groups]))


def _with_chunk(layout: _Layout, budget_cols: int) -> _Layout:
    """Units per chunk: whole blocks when the budget allows, else one unit (never less)."""
    blocks = budget_cols // layout.block_width
    layout.chunk_units = layout.per_block * min(blocks, layout.blocks) if blocks else 1
    return layout


def _query_counts(m: int, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Queries per unit: as even as possible (stratified sampling), never exactly one (the null
    rolls queries inside a unit, and a lone query would be paired with itself)."""
    units = valid.size
    counts = np.zeros(units, dtype=np.int64)
    if m >= 2 * units:
        counts[:] = m // units
        counts[rng.permutation(units)[: m % units]] += 1
    else:
        chosen = rng.choice(units, size=m // 2, replace=False)
        counts[chosen] = 2
        counts[chosen[0]] += m % 2
    counts = np.minimum(counts, valid)
    for u in rng.permutation(np.flatnonzero(valid > counts)):  # m close to n: fill units with room
        counts[u] += min(valid[u] - counts[u], m - counts.sum())
    return counts


@dataclass
class _Draw:
    """One seed's random choices.  Each unit lists its queries first, then its other samples,
    then padding; the null pairing rolls each of those segments by one position."""

    pos_sample: np.ndarray  # (n_pad,) this seed's order of the samples inside each unit
    qpos: np.ndarray  # (m,) column positions of the queries (sorted)
    seg_start: np.ndarray  # first and last position of every (unit, queries / others) segment
    seg_end: np.ndarray
    null_pos: np.ndarray  # (n_pad,) the null partner (Y side) of each column position
    null_row: np.ndarray  # (m,) query row whose Y the null pairs with query j's X
    noise: list  # per side: (m, d) float32 tensor


def _draw(layout: _Layout, m: int, seed: int, sides: list[_Side], noise_keys: list[tuple[int, ...]],
          device: Any) -> _Draw:
    import torch

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5300]))
    units = layout.pos_sample.reshape(-1, layout.unit)
    valid = (units >= 0).sum(1)
    counts = _query_counts(m, valid, rng)
    key = np.where(units >= 0, rng.random(units.shape), 2.0)  # random order, padding last
    pos = np.take_along_axis(units, np.argsort(key, axis=1), axis=1).reshape(-1)
    first = np.arange(units.shape[0]) * layout.unit
    qpos = np.concatenate([f + np.arange(c) for f, c in zip(first, counts)])
    starts = np.concatenate([first, first + counts])
    ends = np.concatenate([first + counts, first + valid]) - 1
    keep = ends >= starts
    starts, ends = starts[keep], ends[keep]
    null_pos = np.arange(pos.size) + 1
    null_pos[ends] = starts
    null_pos[pos < 0] = np.flatnonzero(pos < 0)  # padding pairs with itself (masked anyway)
    qindex = np.full(pos.size, -1, dtype=np.int64)
    qindex[qpos] = np.arange(m)
    noise = []
    for side, key in zip(sides, noise_keys):  # drawn on CPU: the same noise on any device
        state = np.random.SeedSequence([int(seed), *key, 0x5301]).generate_state(1, np.uint64)[0]
        gen = torch.Generator().manual_seed(int(state) >> 1)
        noise.append(torch.randn((m, side.data.shape[1]), generator=gen).to(device))
    return _Draw(pos, qpos, starts, ends, null_pos, qindex[null_pos[qpos]], noise)


# --------------------------------------------------------------------------- kernel sums per column chunk

@dataclass
class _Sums:
    """Per-block log kernel sums of one seed (float64), the query's own sample left out."""

    marg: Any  # (sides, betas, m, blocks)
    self_logit: Any  # (sides, betas, m): log kernel of each query against its own sample
    joint: Any  # (cells, betas, m, blocks)
    null: Any  # (cells, betas, m, blocks)


def _accumulate(acc: Any, unit_logs: Any, layout: _Layout, u0: int) -> None:
    """Put the chunk's per-unit log-sums (…, units) into the per-block accumulator."""
    import torch

    k = layout.per_block
    if unit_logs.shape[-1] >= k:  # whole blocks
        b0 = u0 // k
        per_block = unit_logs.reshape(*unit_logs.shape[:-1], -1, k)
        acc[..., b0:b0 + per_block.shape[-2]] = torch.logsumexp(per_block, -1) if k > 1 else per_block[..., 0]
    else:  # one unit of a block
        acc[..., u0 // k] = torch.logaddexp(acc[..., u0 // k], unit_logs[..., 0])


@dataclass
class _Chunk:
    """One column chunk of one seed: which samples, which are padding, where the queries' own
    columns and the null segments' ends are (positions local to the chunk)."""

    u0: int
    cols: Any  # (c,) sample ids (padding clamped to 0)
    pad: Any  # (c,) bool
    own_rows: Any  # queries whose own column is in this chunk ...
    own_cols: Any  # ... and that column
    seg_start: Any
    seg_end: Any


def _runs(first: np.ndarray, second: np.ndarray | None, limit: int) -> list[tuple[int, int]]:
    """[start, end) runs of consecutive items whose indices (in ``first`` and ``second``) both go
    up by one, at most ``limit`` long: such a run is a slice of the kernel store, not a copy."""
    runs, start = [], 0
    for i in range(1, first.size + 1):
        step = i < first.size and first[i] == first[i - 1] + 1 and (second is None or second[i] == second[i - 1] + 1)
        if not step or i - start == limit:
            runs.append((start, i))
            start = i
    return runs


def _group_kernels(group: list[_Side], lhs: Any, chunk: _Chunk, sigmas: Any, out: Any) -> tuple:
    """Fill ``out`` (sides, betas, m, c) with exp(logit − row max + OFFSET) of every query against the
    chunk's columns, for a group of sides of one width; return the row maxima and the queries' own
    logits (sides, betas, …).  ``lhs`` (sides, 2m, d): prepared query rows, then the noise.

    Logit of query j, column i (terms constant in i dropped; they cancel between the densities):
    (x_q·x_i − ||x_i||²/2)/σ² + z_j·x_i/σ.  The own column is masked (left out)."""
    import torch

    m = lhs.shape[1] // 2
    cols = torch.empty((len(group), chunk.cols.numel(), lhs.shape[2]), dtype=lhs.dtype, device=lhs.device)
    for g, side in enumerate(group):
        torch.index_select(side.data, 0, chunk.cols, out=cols[g])
    cols.sub_(torch.stack([s.mean for s in group])[:, None])
    if group[0].scale is not None:
        cols.mul_(torch.stack([s.scale for s in group])[:, None])
    gram = torch.bmm(lhs, cols.transpose(1, 2))  # (sides, 2m, c): X_q Xᵀ and Z Xᵀ
    half_sq = 0.5 * cols.square().sum(-1)
    half_sq[:, chunk.pad] = math.inf  # padding columns: kernel 0
    base = gram[:, :m] - half_sq[:, None]
    row_max, selfs = [], []
    for b in range(sigmas.shape[1]):
        sigma = sigmas[:, b, None, None]
        logit = torch.addcmul(base, gram[:, m:], sigma).div_(sigma.square())
        selfs.append(logit[:, chunk.own_rows, chunk.own_cols])
        logit[:, chunk.own_rows, chunk.own_cols] = -math.inf
        rmax = logit.amax(-1)
        rmax = torch.where(torch.isfinite(rmax), rmax, torch.zeros_like(rmax))
        torch.exp(logit.sub_((rmax - _OFFSET)[..., None]), out=out[:, b])
        row_max.append(rmax)
    return torch.stack(row_max, 1), torch.stack(selfs, 1)


def _unit_logs(sums: Any, shift: Any) -> Any:
    """log of per-unit kernel sums, back on the logit scale (float64)."""
    return sums.log().double() + shift.double()[..., None]


def _cell_unit_logs(ex: Any, ey: Any, rx: Any, ry: Any, null_row: Any, chunk: _Chunk, unit: int, buf: Any) -> tuple:
    """Per-unit log-sums of the joint kernels and of the shuffled-pair joint kernels of a run of
    cells (ex, ey: (cells, betas, m, c) kernels of their X and Y sides; rx, ry: row shifts).

    Joint kernel = product of the two sides' kernels (their row shifts add).  The null pairs
    query j's X with query null_row[j]'s Y and column i's X with column i+1's Y inside each
    segment (the segment's end wraps to its start): a shifted product plus the wrap terms."""
    import torch

    shape = (*ex.shape[:-1], ex.shape[-1] // unit, unit)
    joint = torch.linalg.vecdot(ex.view(shape), ey.view(shape))
    eyr = ey.index_select(2, null_row)
    torch.mul(ex[..., :-1], eyr[..., 1:], out=buf[..., :-1])
    buf[..., -1] = 0.0
    buf[..., chunk.seg_end] = ex[..., chunk.seg_end] * eyr[..., chunk.seg_start]
    null = buf.view(shape).sum(-1)
    return _unit_logs(joint, rx + ry - 2 * _OFFSET), _unit_logs(null, rx + ry[..., null_row] - 2 * _OFFSET)


def _chunks(layout: _Layout, draw: _Draw, device: Any):
    """The column chunks of one seed (whole units), with their local bookkeeping."""
    import torch

    width = layout.chunk_units * layout.unit
    for u0 in range(0, layout.n_pad // layout.unit, layout.chunk_units):
        c0 = u0 * layout.unit
        ids = torch.as_tensor(draw.pos_sample[c0:c0 + width], device=device)
        inside = np.flatnonzero((draw.qpos >= c0) & (draw.qpos < c0 + width))
        segs = (draw.seg_start >= c0) & (draw.seg_start < c0 + width)
        as_t = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
        yield _Chunk(u0, ids.clamp_min(0), ids < 0, as_t(inside), as_t(draw.qpos[inside] - c0),
                     as_t(draw.seg_start[segs] - c0), as_t(draw.seg_end[segs] - c0))


def _group_rows(sides: list[_Side], groups: list[tuple[int, int]], draw: _Draw, device: Any) -> list:
    """Per side group: (sides, 2m, d) prepared query rows stacked on the noise (once per seed)."""
    import torch

    qrows = torch.as_tensor(draw.pos_sample[draw.qpos], device=device)
    out = []
    for g0, g1 in groups:
        rows = torch.stack([s.data.index_select(0, qrows) - s.mean for s in sides[g0:g1]])
        if sides[g0].scale is not None:
            rows.mul_(torch.stack([s.scale for s in sides[g0:g1]])[:, None])
        out.append(torch.cat([rows, torch.stack(draw.noise[g0:g1])], 1))
    return out


def _sums_for_seed(sides: list[_Side], sx: np.ndarray, sy: np.ndarray, layout: _Layout, draw: _Draw,
                   betas: list[float], batch: int, device: Any) -> _Sums:
    import torch

    m, nb, P, S, K = draw.qpos.size, len(betas), sx.size, len(sides), layout.blocks
    acc = lambda lead: torch.full((lead, nb, m, K), -math.inf, dtype=torch.float64, device=device)  # noqa: E731
    sums = _Sums(acc(S), torch.zeros((S, nb, m), dtype=torch.float64, device=device), acc(P), acc(P))
    null_row = torch.as_tensor(draw.null_row, device=device)
    sigmas = torch.tensor([[b * s.radius if s.radius > 0 else 1.0 for b in betas] for s in sides], device=device)
    widths = np.array([s.data.shape[1] for s in sides])
    groups = _runs(np.arange(S), widths + np.arange(S), batch)  # consecutive sides of one width
    lhs = _group_rows(sides, groups, draw, device)
    cell_runs = _runs(sx, sy, batch)
    for chunk in _chunks(layout, draw, device):
        c, shape = chunk.cols.numel(), (nb, m, chunk.cols.numel() // layout.unit, layout.unit)
        store = torch.empty((S, nb, m, c), dtype=torch.float32, device=device)
        row_max = torch.empty((S, nb, m), dtype=torch.float32, device=device)
        for (g0, g1), rows in zip(groups, lhs):
            row_max[g0:g1], selfs = _group_kernels(sides[g0:g1], rows, chunk, sigmas[g0:g1], store[g0:g1])
            sums.self_logit[g0:g1, :, chunk.own_rows] = selfs.double()
            unit_sums = store[g0:g1].view(g1 - g0, *shape).sum(-1)
            _accumulate(sums.marg[g0:g1], _unit_logs(unit_sums, row_max[g0:g1] - _OFFSET), layout, chunk.u0)
        buf = torch.empty((batch, nb, m, c), dtype=torch.float32, device=device)
        for p0, p1 in cell_runs:
            x, y, k = slice(sx[p0], sx[p0] + p1 - p0), slice(sy[p0], sy[p0] + p1 - p0), p1 - p0
            joint, null = _cell_unit_logs(store[x], store[y], row_max[x], row_max[y], null_row, chunk,
                                          layout.unit, buf[:k])
            _accumulate(sums.joint[p0:p1], joint, layout, chunk.u0)
            _accumulate(sums.null[p0:p1], null, layout, chunk.u0)
        del store, buf
    return sums


# --------------------------------------------------------------------------- per-query values, null, n/2, bootstrap

def _per_query(l_j: Any, l_a: Any, l_b: Any, s_a: Any, s_b: Any, count: Any, loo: bool) -> Any:
    """log p(x̃,ỹ) − log p(x̃) − log p(ỹ) per query (nats) from the left-out log kernel sums
    (l_*) and the query's own log kernels (s_*), over ``count`` samples."""
    import torch

    if loo:
        return l_j - l_a - l_b + torch.log(count - 1.0)
    add = torch.logaddexp
    return add(l_j, s_a + s_b) - add(l_a, s_a) - add(l_b, s_b) + torch.log(count)


def _weighted_logsum(t: Any, weights: Any) -> Any:
    """log Σ_k w_bk exp(t_…k) for every bootstrap row b: (…, m, K) x (B, K) -> (…, m, B)."""
    import torch

    top = t.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    # float32 matmul: the kernel weights are in [0, 1] and the sums' logs need ~1e-6 only
    return ((t - top).float().exp_() @ weights.T).log_().double() + top


def _bootstrap(parts: dict, layout_t: dict, loo: bool) -> dict[str, Any]:
    """Block-bootstrap replicates of the mean per-query value and of the bracket's two ends (each
    (cells, B)): blocks resampled with multiplicities; a query counts as often as its block. A query
    whose kernel sums are empty in a resample (its only near neighbours were not drawn) is left out of
    that replicate, as the estimate leaves out an underflowing query, instead of making the replicate
    infinite. The weighted kernel sums are shared by the three."""
    import torch

    w32, qblock = layout_t["weights"], layout_t["qblock"]
    w = w32.double()
    wq = w[:, qblock].T  # (m, B)
    total = w @ layout_t["counts"]  # (B,)
    lj, la, lb = (_weighted_logsum(parts[k], w32) for k in ("J", "A", "B"))
    lw = torch.log(wq)
    add = torch.logaddexp
    sa, sb = parts["sA"][..., None], parts["sB"][..., None]
    ra, rb = add(la, lw + sa), add(lb, lw + sb)  # resubstitution marginals (own sample in, weight wq)
    log_loo, log_all = torch.log((total - wq).clamp_min(1.0)), torch.log(total)
    loo_v = lj - la - lb + log_loo
    res_v = add(lj, lw + sa + sb) - ra - rb + log_all
    values = {
        "boot": loo_v if loo else res_v,
        "boot_lower": lj - ra - rb + 2 * log_all - log_loo,
        "boot_upper": add(lj, lw + sa + sb) - la - lb + 2 * log_loo - log_all,
    }
    out = {}
    for key, v in values.items():
        counted = torch.where((wq > 0) & torch.isfinite(v), wq.expand_as(v), torch.zeros_like(v))
        v = torch.where(counted > 0, v, torch.zeros_like(v))
        out[key] = (v * counted).sum(-2) / counted.sum(-2).clamp_min(1.0)
    return out


def _cell_figures(parts: dict, layout_t: dict, null_row: Any, loo: bool) -> dict[str, Any]:
    """Per-cell figures (nats) for one seed and one β, for a batch of cells."""
    import torch

    lse = torch.logsumexp
    n, half = layout_t["n"], layout_t["half_blocks"]
    J, A, B, N, sA, sB = (parts[k] for k in ("J", "A", "B", "N", "sA", "sB"))
    lj, la, lb = lse(J, -1), lse(A, -1), lse(B, -1)
    v_loo = _per_query(lj, la, lb, sA, sB, n, True)
    v_res = _per_query(lj, la, lb, sA, sB, n, False)
    v = v_loo if loo else v_res
    lbr, sbr = lb[:, null_row], sB[:, null_row]
    v_null = _per_query(lse(N, -1), la, lbr, sA, sbr, n, loo)
    hq = layout_t["half_queries"]
    lh = [lse(T[:, hq, :half], -1) for T in (J, A, B)]
    v_half = _per_query(*lh, sA[:, hq], sB[:, hq], layout_t["n_half"], loo)
    lower, upper = _bracket_per_query(lj, la, lb, sA, sB, n)
    finite = torch.isfinite(v)
    m = v.shape[-1]
    mean_finite = lambda t: torch.where(finite, t, torch.zeros_like(t)).sum(-1) / finite.sum(-1).clamp_min(1)  # noqa: E731
    return {
        "head": mean_finite(v),
        "loo": v_loo.mean(-1),
        "resub": v_res.mean(-1),
        "null": v_null.mean(-1),
        "stability": (v[:, hq] - v_half).mean(-1),
        "mc_se": v.std(-1) / math.sqrt(m),
        "underflow": 1.0 - finite.double().mean(-1),
        "lower": mean_finite(lower),
        "upper": mean_finite(upper),
        **_bootstrap(parts, layout_t, loo),
    }


def _bracket_per_query(lj: Any, la: Any, lb: Any, sA: Any, sB: Any, n: Any) -> tuple[Any, Any]:
    """The bracket's two ends per query (nats).  Per entropy term the resubstitution value is low in
    expectation (the smoothed empirical distribution has less entropy than the smoothed truth:
    concavity) and the leave-one-out value high (Jensen: E log p̂₋ᵢ ≤ log p), so
    L = leave-one-out joint − resubstitution marginals ≤ I ≤ U = resubstitution joint − leave-one-out
    marginals, in expectation.  Each density carries its own normaliser (n or n − 1)."""
    import torch

    add = torch.logaddexp
    log_n, log_n1 = torch.log(n), torch.log(n - 1.0)
    lower = lj - log_n1 - (add(la, sA) - log_n) - (add(lb, sB) - log_n)
    upper = add(lj, sA + sB) - log_n - (la - log_n1) - (lb - log_n1)
    return lower, upper


# --------------------------------------------------------------------------- validity and results

def validity(bits: float, diag: dict[str, float], null_rule: bool = False) -> tuple[bool, str | None]:
    """The validity rule of the module docstring: (valid, reason); ``null_rule`` adds |null|."""
    if not math.isfinite(bits) or diag["underflow_frac"] > 0:
        return False, f"joint kernel underflow in {diag['underflow_frac']:.0%} of queries: beta too small"
    gap, limit = diag["resub_loo_gap_bits"], max(GAP_LIMIT_BITS, GAP_FRACTION * bits)
    if gap > limit:
        return False, f"resub-LOO gap {gap:.2f} bit > limit {limit:.2f}: own samples carry the density, beta too small for n"
    stab, limit = diag["stability_bits"], max(STABILITY_LIMIT_BITS, STABILITY_FRACTION * bits)
    if abs(stab) > limit:
        return False, f"unstable: n/2->n changed {stab:+.2f} bit (limit {limit:.2f})"
    null, limit = diag["null_bits"], max(NULL_LIMIT_BITS, NULL_FRACTION * bits)
    if null_rule and abs(null) > limit:
        return False, f"null {null:+.2f} bit, |null| > limit {limit:.2f}: beta too small for n"
    return True, None


def _chunk_budget(setting: int | None, per_col_bytes: float, device: Any) -> int:
    """Columns per chunk: the setting, else what fits 1 GiB on CPU / half the free GPU memory."""
    import torch

    if setting:
        return int(setting)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, int(free * _CUDA_FREE_FRACTION // per_col_bytes))
    return max(1, int(_CPU_KERNEL_BYTES // per_col_bytes))


def _layout_tensors(layout: _Layout, draw: _Draw, weights: Any, device: Any) -> dict[str, Any]:
    import torch

    qblock = draw.qpos // layout.block_width
    half = layout.blocks // 2
    return {
        "n": torch.tensor(float(layout.n), dtype=torch.float64, device=device),
        "n_half": torch.tensor(float(layout.block_counts[:half].sum()), dtype=torch.float64, device=device),
        "half_blocks": half,
        "half_queries": torch.as_tensor(np.flatnonzero(qblock < half), device=device),
        "qblock": torch.as_tensor(qblock, device=device),
        "counts": torch.as_tensor(layout.block_counts, dtype=torch.float64, device=device),
        "weights": weights.float(),
    }


def _figures_for_seed(sums: _Sums, sx: Any, sy: Any, layout_t: dict, null_row: Any, n_betas: int,
                      cell_batch: int) -> dict[str, np.ndarray]:
    """Figures of every cell and β (nats): key -> (cells, betas) or (cells, betas, B)."""
    P = sx.numel()
    out: dict[str, list] = {}
    for start in range(0, P, cell_batch):
        cells = slice(start, min(P, start + cell_batch))
        cols: dict[str, list] = {}
        for b in range(n_betas):
            parts = {
                "J": sums.joint[cells, b], "N": sums.null[cells, b],
                "A": sums.marg[sx[cells], b], "B": sums.marg[sy[cells], b],
                "sA": sums.self_logit[sx[cells], b], "sB": sums.self_logit[sy[cells], b],
            }
            for k, v in _cell_figures(parts, layout_t, null_row, HEADLINE_VARIANT == "loo").items():
                cols.setdefault(k, []).append(v.cpu().numpy())
        for k, v in cols.items():
            out.setdefault(k, []).append(np.stack(v, axis=1))
    return {k: np.concatenate(v, axis=0) for k, v in out.items()}


def variant_of(beta: float, mode: str = "raw") -> str:
    """The variant name of the estimates at resolution β in `mode` (the MI table's variant column):
    "β = 0.6" in the raw mode (the name stored tables have), "β = 0.6, standardised"."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return f"β = {beta:g}" + ("" if mode == "raw" else f", {mode}")


def variant_parts(variant: str) -> tuple[float, str] | None:
    """(β, mode) of a variant name `variant_of` made; None for any other name."""
    found = re.fullmatch(r"β = ([^,]+?)(?:, (\w+))?", variant)
    mode = (found.group(2) or "raw") if found else None
    if found is None or mode not in MODES:
        return None
    try:
        return float(found.group(1)), mode
    except ValueError:
        return None


def upgrade_legacy_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row of an MI table written before variants existed (a `beta` column, NaN for other
    estimators, and the smoothed measure's diagnostics as columns) in today's shape."""
    beta = row.pop("beta", None)
    found = {k: row.pop(k) for k in SmoothedMI.diagnostics if k in row}
    row["variant"] = "" if beta is None or beta != beta else variant_of(float(beta))
    row["diagnostics"] = {k: v for k, v in found.items() if v == v} if row["variant"] else {}
    return row


class SmoothedMI(Estimator):
    """Plug-in estimate of the Gaussian-smoothed MI at resolution β (see the module docstring).
    Its variants are each mode at each β of the grid; a job's headline is the raw mode at its corpus
    family's β, fixed in advance, with the standardised mode at that β beside it."""

    name = "smoothed"
    takes_side_keys = True  # stage 2 names each cell's sides: a model and its control share their noise
    diagnostics = ("null_bits", "mc_se_bits", "resub_loo_gap_bits", "stability_bits",
                   *REFERENCE_DIAGNOSTICS)
    defaults: ClassVar[dict[str, Any]] = {
        "beta": 0.6,  # noise scale relative to each side's RMS radius (estimate_many / estimate_mi)
        "betas": None,  # grid of estimate_grid (None: DEFAULT_BETAS)
        "queries": None,  # m query samples: None = min(DEFAULT_QUERIES, n); an explicit m must be <= n
        # raw: the sides as they are; standardised: per-coordinate unit variance on each side before
        # smoothing. Computed in turn with the same resamples, queries and noise
        "modes": MODES,
        "standardise": None,  # the older setting: true = modes [standardised], false = modes [raw]
        "bootstrap": 200,  # block-bootstrap replicates for the 95% interval (0: none)
        "bootstrap_seed": 0,  # blocks and resamples depend on (n, bootstrap_seed) only: shared by all cells
        "null_rule": False,  # True: |null| above its limit also invalidates (stricter; see NULL_LIMIT_BITS)
        "blocks": 64,  # bootstrap groups of samples (capped at n/4; even: the first half is n/2)
        "chunk": None,  # columns per chunk (None: from memory, 1 GiB on CPU, half the free GPU memory)
        "cell_batch": 16,  # sides / cells whose kernels and figures are formed at once (one op each)
        "threads": None,  # CPU threads for this call (None: leave torch's setting)
        "gauss": True,  # the Gaussian reference G^β and the excess M^β - G^β (gaussian_reference.py)
        # the β a job's headline shows, fixed in advance (a β of the grid; a job without one gets its corpus
        # family's, HEADLINE_BETA_BY_FAMILY); None: the smallest β valid in every layer of every profile,
        # else the one with the most such layers, flagged
        "headline_beta": None,
    }

    headline_note = HEADLINE_MODE_NOTE

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.settings["modes"] = self._modes(settings)
        betas = [self.settings["beta"], *(self.settings["betas"] or [])]
        if any(not (isinstance(b, numbers.Real) and math.isfinite(b) and b > 0) for b in betas):
            raise ValueError(f"every beta must be a finite number > 0 (the noise scale relative to the data's "
                             f"RMS radius), got {betas}")
        fixed = self.settings["headline_beta"]
        if fixed is not None and float(fixed) not in self.grid():
            raise ValueError(f"headline_beta={fixed} is not in the beta grid {self.grid()}: add it to betas")

    def memory_plan(self, pairs: int, n: int, dx: int, dy: int, itemsize: int, eval_fraction: float) -> int:
        """The float32 stacks, a float32 copy of each side made when it is centred (the sides are
        deduplicated first, so this is at most one per cell side), and the kernel chunks (1 GiB on a
        CPU). On the demo's 48-cell batch (n = 4,096, d = 576) the peak was 3,421 MiB against
        2,064 planned without the last two terms, 3,952 with them. The Gaussian reference runs after
        the kernel chunks are freed and holds less than one (per-block second moments of the sides
        still to be used and one cell): on 48 cells (n = 4,096, d = 576, one thread, one mode) the peak
        RSS was 2,289 MiB with it and 2,571 without, so it adds no term. Both modes (the standardised
        moments formed per cell from the raw ones), 48 cells, two threads: peak RSS 2,732 MiB against
        2,752 planned (2,483 with each mode's reference computed on its own). The modes' kernels are
        formed in turn: each forms its side copies and kernel chunks and frees them before the next,
        keeping only its figures (a few numbers per cell, β and replicate), so measuring both does not
        double the peak (it doubles the time)."""
        s = self.settings
        per_column = 4 * query_count(s["queries"], n) * len(self.grid()) * (2 * pairs + 2 * int(s["cell_batch"]))
        kernels = int(s["chunk"]) * per_column if s["chunk"] else _CPU_KERNEL_BYTES  # as _chunk_budget sizes them
        return super().memory_plan(pairs, n, dx, dy, itemsize, eval_fraction) + pairs * n * (dx + dy) * 4 + kernels

    @classmethod
    def family_settings(cls, settings: dict[str, Any], family: str) -> dict[str, Any]:
        """``headline_beta`` of the corpus family (HEADLINE_BETA_BY_FAMILY) unless the settings fix one."""
        if settings.get("headline_beta") is not None:
            return dict(settings)
        beta = HEADLINE_BETA_BY_FAMILY[family]
        grid = settings.get("betas") or DEFAULT_BETAS
        usable = isinstance(grid, (list, tuple)) and all(isinstance(b, numbers.Real) and b > 0 for b in grid)
        if usable and beta not in [float(b) for b in grid]:  # (__init__ names what is wrong with another grid)
            # the family's β joins a grid named without it, rather than refusing a job that never named a headline
            return {**settings, "betas": sorted({*map(float, grid), beta}), "headline_beta": beta}
        return {**settings, "headline_beta": beta}

    @staticmethod
    def _modes(settings: dict[str, Any]) -> tuple[str, ...]:
        """The modes measured, in MODES order: the ``modes`` setting, or the older ``standardise``."""
        modes = settings.get("modes", MODES)
        modes = (modes,) if isinstance(modes, str) else modes
        if settings.get("standardise") is not None:
            one = ("standardised",) if settings["standardise"] else ("raw",)
            if "modes" in settings and tuple(modes) != one:
                raise ValueError(f"modes={list(modes)} and the older standardise={settings['standardise']} disagree: "
                                 "name the modes only")
            modes = one
        if not isinstance(modes, (list, tuple)) or not modes or any(m not in MODES for m in modes):
            raise ValueError(f"modes must name one or both of {', '.join(MODES)}, got {modes!r}")
        return tuple(m for m in MODES if m in modes)

    def grid(self) -> list[float]:
        return [float(b) for b in (self.settings["betas"] or DEFAULT_BETAS)]

    def variants(self) -> tuple[str, ...]:
        """Each mode at each β: the raw β first (the headline's mode), then the standardised."""
        return tuple(variant_of(b, mode) for mode in self.settings["modes"] for b in self.grid())

    def headline_mode(self) -> str:
        """The mode a headline shows: raw (HEADLINE_MODE_NOTE says why), unless only the other is measured."""
        modes = self.settings["modes"]
        return HEADLINE_MODE if HEADLINE_MODE in modes else modes[0]

    def companion_variant(self, variant: str) -> str | None:
        """The standardised mode at the β of a raw `variant`, where it is measured: shown beside the headline."""
        parts = variant_parts(variant)
        if parts is None or parts[1] != HEADLINE_MODE or "standardised" not in self.settings["modes"]:
            return None
        return variant_of(parts[0], "standardised")

    def choose_headline(self, *profiles: Any) -> tuple[str, bool]:
        """The headline mode at ``headline_beta`` when it is set (an error where a profile lacks it: never
        another β or mode), and whether every layer of every profile is valid there; else the base
        rule among the headline mode's variants."""
        fixed, mode = self.settings["headline_beta"], self.headline_mode()
        if fixed is None:
            own = [{v: e for v, e in p.items() if (variant_parts(v) or (0.0, ""))[1] == mode} for p in profiles]
            if not all(own):
                raise ValueError(f"a profile has no variant in the {mode} mode (it has {', '.join(map(repr, profiles[0]))})")
            return super().choose_headline(*own)
        variant = variant_of(float(fixed), mode)
        for p in profiles:
            if variant not in p:
                raise ValueError(f"headline_beta={fixed}: a profile has no {variant!r} (it has {', '.join(map(repr, p))})")
        return variant, all(l.valid for p in profiles for l in p[variant].layers)

    def estimate_cells(self, xs: np.ndarray, ys: np.ndarray, seeds: Sequence[int] = (0,), device: Any = None,
                       side_keys: np.ndarray | None = None) -> list[list[MIEstimate]]:
        return self.estimate_grid(xs, ys, seeds=seeds, device=device, keys=side_keys)

    def check(self, n: int, dims: tuple[int, int] | None = None) -> str | None:
        """No split: 8 samples, and at least as many as an explicit number of queries."""
        if n < 8:
            return f"smoothed needs at least 8 samples, got {n}"
        queries = self.settings["queries"]
        if queries is not None and int(queries) > n:
            return f"queries={queries} exceeds the {n} samples; lower settings.queries"
        return None

    def estimate_many(
        self, xs: np.ndarray, ys: np.ndarray, seeds: Sequence[int] = (0,), device: Any = None
    ) -> list[MIEstimate]:
        """One estimate per cell at ``beta`` (or at the single value of ``betas``), in the headline mode."""
        betas = self.settings["betas"]
        if betas is not None and len(betas) != 1:
            raise ValueError(
                f"estimate_many returns one estimate per cell but betas has {len(betas)} values; "
                "call SmoothedMI.estimate_grid for a beta grid"
            )
        grid = self.estimate_grid(xs, ys, betas=betas or [self.settings["beta"]], seeds=seeds, device=device,
                                  modes=(self.headline_mode(),))
        return [row[0] for row in grid]

    def estimate_grid(
        self,
        xs: np.ndarray,
        ys: np.ndarray,
        betas: Sequence[float] | None = None,
        seeds: Sequence[int] = (0,),
        device: Any = None,
        keys: np.ndarray | None = None,
        modes: Sequence[str] | None = None,
    ) -> list[list[MIEstimate]]:
        """Estimates of every cell of (P, n, dx) / (P, n, dy) stacks in every mode at every β:
        [cell][variant], each mode's β in turn (``variants`` order).  ``keys`` ((P, 2) ints) name each
        cell's sides and key their noise by name (``dedup_sides``); ``modes``: None -> the setting."""
        import torch

        seeds = self._check_seeds(seeds)
        s = self.settings
        modes = self.settings["modes"] if modes is None else self._modes({"modes": modes})
        betas = [float(b) if isinstance(b, numbers.Real) else b
                 for b in (betas if betas is not None else (s["betas"] or DEFAULT_BETAS))]
        if int(s["bootstrap"]) < 0 or int(s["blocks"]) < 2:
            raise ValueError(f"bootstrap must be >= 0 and blocks >= 2, got {s['bootstrap']} and {s['blocks']}")
        xs, ys = _check_inputs(xs, ys, query_count(s["queries"], len(xs[0])), betas)
        dev = resolve_device(device)
        prev_threads = torch.get_num_threads()
        if s["threads"] and dev.type == "cpu":
            torch.set_num_threads(int(s["threads"]))
        out: list[list[MIEstimate]] = [[] for _ in range(xs.shape[0])]
        try:
            sides = dedup_sides(xs, ys, keys)  # once: the modes share the sides, their names and noise keys
            runs = []
            for mode in modes:  # in turn: one mode's kernels are freed before the next mode's are formed
                t0 = self._clock()
                with torch.no_grad():
                    runs.append((*self._run(sides, xs.shape[1], betas, seeds, dev, mode == "standardised"),
                                 self._clock() - t0))
            t0 = self._clock()
            gauss: list = [None] * len(modes)
            if s["gauss"]:  # the same resamples as the kernel figures, so M - G is bootstrapped replicate by
                # replicate; every mode's at once: they share the second moments (gaussian_reference)
                side_arrays, sx_np, sy_np, _ = sides
                layout, weights = runs[0][2], runs[0][3]
                gauss = gaussian_reference(side_arrays, sx_np, sy_np, betas, [m == "standardised" for m in modes],
                                           sample_blocks(layout), weights, layout.block_counts, dev)
            shared = (self._clock() - t0) / len(modes)
            for mode, (figs, radii, layout, _, seconds), g in zip(modes, runs, gauss):
                for row, more in zip(out, self._estimates(figs, radii, layout, g, betas, seeds, dev,
                                                          seconds + shared, mode)):
                    row += more
        finally:
            torch.set_num_threads(prev_threads)
        return out

    def _run(self, deduped: tuple, n: int, betas: list[float], seeds: tuple[int, ...], dev: Any,
             standardise: bool) -> tuple:
        """One mode's kernel figures of every cell and β, the sides' radii, the layout and the bootstrap
        resamples' block multiplicities (the Gaussian reference reads the same ones)."""
        import torch

        s = self.settings
        m = query_count(s["queries"], n)
        side_arrays, sx_np, sy_np, noise_keys = deduped
        sides = [_side(a, standardise, dev) for a in side_arrays]
        per_col = 4.0 * m * len(betas) * (len(sides) + 2 * int(s["cell_batch"]))  # kernel store + temporaries
        rng = layout_rng(n, int(s["bootstrap_seed"]))
        layout = _with_chunk(_layout(n, int(s["blocks"]), rng), _chunk_budget(s["chunk"], per_col, dev))
        weights = torch.as_tensor(
            rng.multinomial(layout.blocks, np.full(layout.blocks, 1.0 / layout.blocks), size=int(s["bootstrap"])),
            dtype=torch.float64, device=dev,
        )
        sx, sy = torch.as_tensor(sx_np, device=dev), torch.as_tensor(sy_np, device=dev)
        per_seed = []
        for seed in seeds:
            draw = _draw(layout, m, seed, sides, noise_keys, dev)
            sums = _sums_for_seed(sides, sx_np, sy_np, layout, draw, betas, int(s["cell_batch"]), dev)
            layout_t = _layout_tensors(layout, draw, weights, dev)
            null_row = torch.as_tensor(draw.null_row, device=dev)
            per_seed.append(_figures_for_seed(sums, sx, sy, layout_t, null_row, len(betas), int(s["cell_batch"])))
            del sums
        figs = {k: np.stack([f[k] for f in per_seed]) for k in per_seed[0]}  # (seeds, cells, betas[, B])
        radii = np.array([[sides[i].radius for i in sx_np], [sides[i].radius for i in sy_np]])
        return figs, radii, layout, weights.cpu().numpy()

    def _estimates(self, figs: dict[str, np.ndarray], radii: np.ndarray, layout: _Layout, gauss: tuple | None,
                   betas: list[float], seeds: tuple[int, ...], dev: Any, elapsed: float, mode: str
                   ) -> list[list[MIEstimate]]:
        s = self.settings
        P = radii.shape[1]
        bits = {k: v * LOG2E for k, v in figs.items() if k != "underflow"}
        settings = {
            **s, "betas": list(betas), "mode": mode,
            "headline": HEADLINE_VARIANT, "blocks_used": layout.blocks, "device": str(dev),
            "batch_pairs": P, "batch_seconds": elapsed,
        }
        out = []
        for p in range(P):
            constant = bool((radii[:, p] == 0).any())  # a constant side carries no information
            row = []
            for b, beta in enumerate(betas):
                per_seed = np.zeros(len(seeds)) if constant else bits["head"][:, p, b]
                value = float(per_seed.mean())
                boot = bits["boot"][:, p, b].mean(0) if bits["boot"].shape[-1] and not constant else np.array([value])
                lo, hi = centred_interval(value, boot)
                diag = self._diagnostics(bits, figs["underflow"], p, b, constant, len(seeds))
                diag.update(self._reference(bits, gauss, p, b, constant, value, boot))
                diag.update(beta=beta, sigma_x=float(beta * radii[0, p]), sigma_y=float(beta * radii[1, p]), boot_ci_low=lo,
                            boot_ci_high=hi, half_n_bits=value - diag["stability_bits"],
                            queries=float(query_count(s["queries"], layout.n)),
                            blocks=float(layout.blocks))
                valid, reason = validity(value, diag, bool(s["null_rule"]))
                row.append(MIEstimate(
                    bits=value, ceiling_bits=math.log2(layout.n), saturated=value >= math.log2(layout.n) - 0.1,
                    n_train=layout.n, n_eval=query_count(s["queries"], layout.n), method=self.name,
                    seconds=elapsed / (P * len(betas)),
                    seeds=seeds, bits_per_seed=tuple(float(v) for v in per_seed), ci_low=lo, ci_high=hi,
                    settings={**settings, "beta": beta}, valid=valid, invalid_reason=reason, diagnostics=diag,
                    replicate_bits=tuple(float(v) for v in boot) if bits["boot"].shape[-1] else (),
                    reference_replicate_bits=self._reference_replicates(gauss, p, b, constant, len(boot)),
                    variant=variant_of(beta, mode),
                ))
            out.append(row)
        return out

    @staticmethod
    def _reference_replicates(gauss: tuple | None, p: int, b: int, constant: bool, replicates: int
                              ) -> tuple[float, ...]:
        """G^β on the same resamples as ``replicate_bits`` (0 on each for a constant side)."""
        if gauss is None or gauss[1].shape[-1] == 0:
            return ()
        return (0.0,) * replicates if constant else tuple(float(v) for v in gauss[1][p, b])

    @staticmethod
    def _reference(bits: dict, gauss: tuple | None, p: int, b: int, constant: bool, value: float,
                   boot: np.ndarray) -> dict[str, float]:
        """The bracket and the Gaussian reference of one cell and β, each with its 95% interval from
        the same resamples (the excess replicate by replicate: M_b − G_b)."""
        out: dict[str, float] = {}
        has_boot = bits["boot"].shape[-1] > 0 and not constant

        def put(name: str, point: float, reps: np.ndarray | None) -> None:
            low, high = centred_interval(point, reps) if reps is not None else (point, point)
            out.update({f"{name}_bits": point, f"{name}_ci_low": low, f"{name}_ci_high": high})

        for end in ("lower", "upper"):
            point = 0.0 if constant else float(bits[end][:, p, b].mean())
            put(end, point, bits[f"boot_{end}"][:, p, b].mean(0) if has_boot else None)
        if gauss is None:
            for name in ("gauss", "excess"):
                put(name, math.nan, None)
            return out
        g, g_reps = float(gauss[0][p, b]), gauss[1][p, b]
        put("gauss", g, g_reps if has_boot else None)
        put("excess", value - g, boot - g_reps if has_boot else None)
        return out

    @staticmethod
    def _diagnostics(bits: dict, underflow: np.ndarray, p: int, b: int, constant: bool, n_seeds: int) -> dict[str, float]:
        if constant:
            names = ("resub_bits", "loo_bits", "resub_loo_gap_bits", "mc_se_bits", "null_bits", "stability_bits")
            return {**dict.fromkeys(names, 0.0), "underflow_frac": 0.0}
        se = bits["mc_se"][:, p, b]
        return {
            "resub_bits": float(bits["resub"][:, p, b].mean()),
            "loo_bits": float(bits["loo"][:, p, b].mean()),
            "resub_loo_gap_bits": float((bits["resub"][:, p, b] - bits["loo"][:, p, b]).mean()),
            "mc_se_bits": float(math.sqrt(float((se**2).mean()) / n_seeds)),
            "null_bits": float(bits["null"][:, p, b].mean()),
            "stability_bits": float(bits["stability"][:, p, b].mean()),
            "underflow_frac": float(underflow[:, p, b].mean()),
        }


def centred_interval(value: float, replicates: np.ndarray) -> tuple[float, float]:
    """95% interval: the replicates' 2.5/97.5% percentiles minus their median, around ``value``
    (resamples hold ~63% distinct samples, which shifts a biased (too small β) LOO value further
    down; their spread is what counts)."""
    reps = replicates[np.isfinite(replicates)]
    if reps.size == 0:
        return value, value
    q_lo, q_mid, q_hi = np.percentile(reps, [2.5, 50.0, 97.5])
    return value + float(q_lo - q_mid), value + float(q_hi - q_mid)


def sample_blocks(layout: _Layout) -> np.ndarray:
    """(n,) the bootstrap block of every sample."""
    out = np.empty(layout.n, dtype=np.int64)
    real = layout.pos_sample >= 0
    out[layout.pos_sample[real]] = np.flatnonzero(real) // layout.block_width
    return out


def direct_estimate(x: np.ndarray, y: np.ndarray, beta: float, query_ids: np.ndarray, zx: np.ndarray,
                    zy: np.ndarray, standardise: bool = False) -> tuple[float, float]:
    """(resub, LOO) bits of one cell at one β from explicit distances, in float64: the
    straightforward one-cell-one-β computation (reference for tests and the benchmark baseline)."""
    import torch

    def prep(a: np.ndarray) -> tuple[Any, float]:
        t = torch.as_tensor(np.asarray(a, dtype=np.float64))
        t = t - t.mean(0)
        sd = t.std(0, unbiased=False)
        if standardise:
            t = torch.where(sd > 0, t / sd.clamp_min(1e-300), torch.zeros_like(t))
            return t, math.sqrt(float((sd > 0).sum()))
        return t, math.sqrt(float(sd.square().sum()))

    (tx, rx), (ty, ry) = prep(x), prep(y)
    q = torch.as_tensor(query_ids)
    n = tx.shape[0]
    logits = []
    for t, r, z in ((tx, rx, zx), (ty, ry, zy)):
        sigma = beta * r
        noisy = t[q] + sigma * torch.as_tensor(np.asarray(z, dtype=np.float64))
        logits.append(-torch.cdist(noisy, t).square() / (2 * sigma**2))
    a, b = logits
    own = torch.zeros_like(a, dtype=torch.bool)
    own[torch.arange(q.numel()), q] = True
    out = []
    for loo in (False, True):
        mask = (lambda t: t.masked_fill(own, -math.inf)) if loo else (lambda t: t)
        lse = lambda t: torch.logsumexp(mask(t), 1)  # noqa: E731
        v = lse(a + b) - lse(a) - lse(b) + math.log(n - 1 if loo else n)
        out.append(float(v.mean()) * LOG2E)
    return out[0], out[1]
