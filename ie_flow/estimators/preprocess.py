"""Invariant preprocessing: the per-coordinate rank-to-Gaussian (copula) transform.

Mutual information does not change under a strictly monotone map of any coordinate, but a
critic trained on mean/std-standardised inputs does: a heavy-tailed coordinate (an LLM's few
massive activations, Student-t data) or a bent one (x**3, Phi(x), exp(x)) leaves most samples
squeezed into a small range, and a held-out row beyond the training range gets an extreme score.
Replacing every coordinate by the normal score of its rank, Phi^-1(F_train(v)), makes the
critic's input (nearly) the same for all of those distributions (docs/METHOD.md section 5).

The empirical CDF F_train is fitted on the training rows only and applied to every row (select
and report rows by interpolation).  An exact rank transform needs a sort and a binary search per
value (about 10 s per 8 pairs of 4,096 x 576 on one core, 20x the demo's budget), so the CDF is
tabulated on a fine grid instead, which costs a few elementwise passes:
- each column is centred on its median and scaled by its inter-quartile range (from a training
  subsample), then compressed monotonically into (-1, 1) by c = u / (1 + |u|), so heavy tails
  and massive outliers cannot starve the bulk of grid cells;
- the (-1, 1) range is cut into ``bins`` equal cells; the training rows' counts per cell give
  F_train exactly at the cell edges; inside a cell the normal score is interpolated linearly.
With 1,024 cells a 4,096-row column has about 3 training values per cell.  The map is strictly
monotone wherever training values lie, equal values get equal scores (a discrete coordinate
stays injective, a constant one stays constant) and values outside the training range get the
extreme scores +-Phi^-1(1 - 1/(2m)) (about +-3.5 for m = 2,458): bounded.
"""
from __future__ import annotations

import math

import torch

from .train_config import COPULA_BINS, PREPROCESS, check_preprocess  # noqa: F401 - defined with the settings
_ROBUST_ROWS = 256  # training rows used for the median / quartiles of each column


def _robust_scale(blk: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column median and 1 / spread (IQR, else range / 4, else 1) of ``blk[:, rows]``."""
    s = blk.index_select(1, rows).sort(1).values  # (p, r, d)
    r = s.shape[1]
    q = lambda f: s[:, int(round(f * (r - 1)))]  # noqa: E731
    med, iqr, rng = q(0.5), q(0.75) - q(0.25), (s[:, -1] - s[:, 0]) / 4
    spread = torch.where(iqr > 0, iqr, torch.where(rng > 0, rng, torch.ones_like(rng)))
    return med.unsqueeze(1), (1.0 / spread).unsqueeze(1)


def _grid_position(blk: torch.Tensor, med: torch.Tensor, inv: torch.Tensor, bins: int) -> torch.Tensor:
    """Monotone map of every value into [0, bins): the cell index plus the position inside it."""
    u = (blk - med).mul_(inv)
    c = u.div_(u.abs().add_(1.0))  # (-1, 1)
    return c.add_(1.0).mul_(0.5 * bins).clamp_(0.0, bins - 1e-3)


class CopulaMap:
    """The fitted transform of every column of a (P, n, d) stack: each column's median and 1 /
    spread and its table of normal scores at the grid's cell edges.  ``apply`` maps any rows of
    any pairs, value by value, so a training step or an evaluation transforms only the rows it
    reads: the (P, n, d) float32 stack is never materialised (docs/ARCHITECTURE.md, stage 2 memory)."""

    def __init__(self, med: torch.Tensor, inv: torch.Tensor, edge: torch.Tensor, bins: int) -> None:
        self.med, self.inv, self.bins = med, inv, bins  # (P, 1, d) each
        P, _, d = med.shape
        self.edge = edge  # (P * d * (bins + 1),): column c of pair p at [(p * d + c) * (bins + 1) ...]
        self.slope = edge.roll(-1) - edge
        self.offsets = torch.arange(P * d, dtype=torch.int32, device=edge.device).view(P, 1, d) * (bins + 1)

    @torch.no_grad()
    def apply(self, blk: torch.Tensor, pairs: slice | torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """Normal scores of float32 rows ``blk`` (p, r, d) of the pairs ``pairs``."""
        def pick(t: torch.Tensor) -> torch.Tensor:
            return t[pairs] if isinstance(pairs, slice) else t.index_select(0, pairs)

        t = _grid_position(blk, pick(self.med), pick(self.inv), self.bins)
        cell = t.int()  # int32 halves the memory traffic of the index passes
        frac = t.sub_(cell)
        flat = cell.add_(pick(self.offsets)).view(-1)
        z = torch.addcmul(self.edge.index_select(0, flat), frac.view(-1), self.slope.index_select(0, flat))
        return z.view(blk.shape).to(out_dtype)


@torch.no_grad()
def _fit_block(train_rows: torch.Tensor, sub: torch.Tensor, bins: int, m: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(median, 1 / spread, edge scores (p * d * (bins + 1),)) of float32 train rows (p, m, d);
    ``sub`` indexes the rows the robust scale is taken from."""
    p, _, d = train_rows.shape
    med, inv = _robust_scale(train_rows, sub)
    cell = _grid_position(train_rows, med, inv, bins).int()
    cell.add_(torch.arange(p * d, dtype=torch.int32, device=cell.device).view(p, 1, d) * (bins + 1))
    counts = torch.bincount(cell.reshape(-1), minlength=p * d * (bins + 1))
    # training values strictly below each cell's left edge (cumulative counts, shifted by one)
    below = counts.view(p * d, bins + 1).cumsum(1).roll(1, dims=1)
    below[:, 0] = 0
    # normal score at each edge: Phi^-1 of the empirical CDF, kept inside the training ranks'
    # scores (a quarter rank beyond the extremes): values outside the training range stay bounded
    ranks = torch.arange(m + 1, dtype=torch.float64, device=cell.device)
    score_of_count = torch.special.ndtri(((ranks).clamp(0.25, m - 0.25)) / m).float()
    return med, inv, score_of_count.index_select(0, below.view(-1)).view(p, d, bins + 1)


@torch.no_grad()
def fit_copula(t: torch.Tensor, train_idx: torch.Tensor, *, bins: int = COPULA_BINS,
               chunk_elems: int = 1 << 21) -> CopulaMap:
    """The copula transform of every column of a (P, n, d) stack (any float dtype), fitted on
    rows ``train_idx``, in blocks of pairs and columns of about ``chunk_elems`` training values
    (columns are independent, so the blocks do not change a value)."""
    P, _, d = t.shape
    idx = train_idx.to(t.device)
    m = idx.numel()
    # the train rows the median and quartiles come from (positions among the train rows)
    sub = torch.randperm(m, generator=torch.Generator().manual_seed(0xC0))[:_ROBUST_ROWS].to(t.device)
    pairs = max(1, chunk_elems // max(1, m * d))
    cols = d if pairs > 1 or m * d <= chunk_elems else max(1, chunk_elems // max(1, m))
    med, inv = torch.empty(P, 1, d, device=t.device), torch.empty(P, 1, d, device=t.device)
    edge = torch.empty(P, d, bins + 1, device=t.device)
    for s in range(0, P, pairs):
        for c in range(0, d, cols):
            rows = t[s : s + pairs, :, c : c + cols].index_select(1, idx).to(torch.float32)
            med[s : s + pairs, :, c : c + cols], inv[s : s + pairs, :, c : c + cols], \
                edge[s : s + pairs, c : c + cols] = _fit_block(rows, sub, bins, m)
    return CopulaMap(med, inv, edge.view(-1), bins)


@torch.no_grad()
def copula_transform(
    t: torch.Tensor, train_idx: torch.Tensor, *, bins: int = COPULA_BINS,
    out_dtype: torch.dtype = torch.float32, chunk_elems: int = 1 << 21,
) -> torch.Tensor:
    """Copula transform of every column of a (P, n, d) stack, fitted on rows ``train_idx``:
    a new (P, n, d) tensor of ``out_dtype`` on ``t``'s device (``fit_copula`` and ``apply`` in
    blocks, so the temporaries stay bounded)."""
    P, n, d = t.shape
    fitted = fit_copula(t, train_idx, bins=bins, chunk_elems=chunk_elems)
    out = torch.empty((P, n, d), dtype=out_dtype, device=t.device)
    step = max(1, chunk_elems // max(1, n * d))
    rows = max(1, chunk_elems // max(1, d))
    for s in range(0, P, step):
        for r in range(0, n, rows):
            out[s : s + step, r : r + rows] = fitted.apply(t[s : s + step, r : r + rows].to(torch.float32),
                                                           slice(s, s + step), out_dtype)
    return out


def score_range(m: int) -> float:
    """Largest |normal score| the transform gives with m training rows."""
    return -float(torch.special.ndtri(torch.tensor(0.25 / m, dtype=torch.float64))) if m else math.inf
