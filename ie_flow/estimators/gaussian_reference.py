"""The Gaussian reference of the smoothed measure (docs/METHOD.md section 7).

For a cell with sample covariances Σx, Σy, Σxy and noise scales σx, σy the smoothed pair of a
Gaussian with those covariances has the closed-form MI

    G^β = ½ log2 [det(Σx + σx²I) det(Σy + σy²I) / det(Σ + diag(σx²I, σy²I))],

which is what M^β would read if the cell's dependence were all linear (second moments).  The excess
M^β − G^β is what the geometry beyond the covariances adds (clusters, curvature); on Gaussian data it
is 0 within the Monte-Carlo error, on K separated atoms it is most of M^β.

Computation, in each side's normalised frame (the estimator's raw or standardised side divided by
its RMS radius r, so tr Cov = 1 and σ = β): with A = Σ̃x + β²I = Lx Lxᵀ, K = Lx⁻¹ Σ̃xy and the Schur
complement Sc = Σ̃y + β²I − KᵀK = Lc Lcᵀ, det(joint) = det(A) det(Sc), so

    G^β = ½ (log det(Σ̃y + β²I) − log det Sc)  (nats),

one d×d Cholesky per side and β (shared by every cell that uses the side) and one per cell and β.
The second moments (per side, and a cell's cross moments) are formed once, in the raw frame; the
standardised frame is the raw one rescaled coordinate by coordinate, so its moments are the raw
ones times the outer product of the factors, and measuring both modes costs one pass over the samples.

Interval: the same block-bootstrap resamples as M^β, linearised.  G is a smooth function of the
second moments, so a resample that reweights sample i by w_i moves it by Σ w_i ψ_i / Σ w_i to first
order, with ψ_i the influence of sample i (the derivative of G along x_i x_iᵀ − Σ, radius included):

    ψ_i = wᵢᵀΓwᵢ − tr(ΓΣ̃) − Σ_j g_j (e_ij − 1),   Γ = (A⁻¹ ⊕ (Σ̃y+β²I)⁻¹) − S⁻¹,

wᵢ = (uᵢ, vᵢ) the normalised sample, g = diag(ΓΣ̃) = β² (diag S⁻¹ − diag(A⁻¹ ⊕ (Σ̃y+β²I)⁻¹)) and
e_ij the sample's share of the normaliser (raw: ‖uᵢ‖² for every coordinate of its side;
standardised: u_ij²/Σ̃_jj).  Recomputing G from reweighted covariances would cost a Cholesky per
replicate; the linearised replicates agree with it (tests/unit/test_gaussian_reference.py), and
replicate b is the same resample as M^β's, so M^β − G^β is bootstrapped replicate by replicate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

LN2 = math.log(2.0)


@dataclass
class _Blocks:
    """The bootstrap blocks: the samples grouped by block (padded to one length) and their counts."""

    index: Any  # (K, width) sample ids, -1 = padding
    counts: Any  # (K,) float64

    def stack(self, a: Any) -> Any:
        """(K, width, d) rows of ``a`` per block, zero on padding."""
        out = a[self.index.clamp_min(0)]
        out[self.index < 0] = 0.0
        return out


def _blocks(sample_block: np.ndarray, blocks: int, device: Any) -> _Blocks:
    import torch

    order = np.argsort(sample_block, kind="stable")
    counts = np.bincount(sample_block, minlength=blocks)
    index = np.full((blocks, max(1, int(counts.max()))), -1, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for k in range(blocks):
        index[k, : counts[k]] = order[starts[k]: starts[k] + counts[k]]
    return _Blocks(torch.as_tensor(index, device=device), torch.as_tensor(counts, dtype=torch.float64, device=device))


@dataclass
class _Frame:
    """One side in its normalised frame (centred, tr Cov = 1) with its second moments per block."""

    rows: Any  # (K, width, d) float32: the normalised samples grouped by block (raw frames only)
    moments: Any  # (K, d, d) float32: Σ_{i in block} u_i u_iᵀ (a standardised frame's: formed per cell)
    cov: Any  # (d, d) float64: Cov of u (divided by n)
    scale: Any  # (d,) float64 normaliser weights: g_j enters ψ as g_j (e_ij − 1), see _share
    standardised: bool
    constant: bool
    # (d,) float32: this frame's coordinates are the raw frame's times these (raw: ones), so its second
    # and cross moments are the raw ones times their outer products
    factor: Any = None
    per_resolution: dict = field(default_factory=dict)  # resolution -> (L, log det, L⁻¹, (Σ̃ + β²I)⁻¹ in float32)


def _frame(a: np.ndarray, blocks: _Blocks) -> _Frame:
    """The raw frame: centred and divided by the RMS radius (tr Cov = 1)."""
    import torch

    t = torch.as_tensor(np.asarray(a)).to(blocks.counts.device).double()
    n, d = t.shape
    t = t - t.mean(0)
    tr = float(t.square().mean(0).sum())
    u = t / math.sqrt(tr) if tr > 0.0 else t
    rows = blocks.stack(u.float())
    moments = torch.bmm(rows.transpose(1, 2), rows)
    ones = torch.ones(d, dtype=torch.float64, device=t.device)
    return _Frame(rows, moments, moments.sum(0).double() / n, ones, False, tr == 0.0, ones.float())


def _standardised(raw: _Frame) -> _Frame:
    """The same side with every coordinate at unit variance (constant ones dropped), then tr Cov = 1:
    the raw frame rescaled coordinate by coordinate, u_j · s_j with s_j = 1 / sqrt(kept · Var u_j),
    so its second moments (and a cell's cross moments) are the raw ones times outer products of s and
    cost no pass over the samples. Its per-block moments are formed for each cell (`_moments`), not
    kept: a side stays alive for many cells, and two sets of them would double what the frames hold."""
    import torch

    var = raw.cov.diagonal()
    keep = var > 1e-20 * var.max().clamp_min(1e-300)
    kept = int(keep.sum())
    factor = torch.where(keep, 1.0 / (var.clamp_min(1e-300) * max(kept, 1)).sqrt(), torch.zeros_like(var))
    # e_ij = u_ij² / Σ̃_jj = kept · u_ij² on a kept coordinate
    return _Frame(None, None, raw.cov * (factor[:, None] * factor[None, :]), keep.double() * kept, True, kept == 0,
                  factor.float())


def _moments(frame: _Frame, raw: _Frame) -> _Frame:
    """`frame` with its per-block second moments (a standardised frame's, from its raw frame's)."""
    if frame.moments is not None:
        return frame
    return replace(frame, moments=raw.moments * (frame.factor[:, None] * frame.factor[None, :]))


def _factor(frame: _Frame, resolution: float) -> tuple:
    """Cholesky factor L of Σ̃ + β²I, its log det, L⁻¹ (float64) and the inverse (float32)."""
    import torch

    if resolution not in frame.per_resolution:
        eye = torch.eye(frame.cov.shape[0], dtype=frame.cov.dtype, device=frame.cov.device)
        chol = torch.linalg.cholesky(frame.cov + resolution**2 * eye)
        inv = torch.linalg.solve_triangular(chol, eye, upper=False)
        inv32 = inv.float()
        frame.per_resolution[resolution] = (chol, 2.0 * chol.diagonal().log().sum(), inv, inv32.T @ inv32)
    return frame.per_resolution[resolution]


def _share(frame: _Frame, g: Any, blocks: _Blocks) -> Any:
    """Per block Σ_i Σ_j g_j (e_ij − 1): the samples' share of the normaliser, weighted by g."""
    diag = frame.moments.diagonal(dim1=1, dim2=2).double()  # (K, d): Σ_i u_ij² per block
    if frame.standardised:
        return diag @ (g * frame.scale) - blocks.counts * float((g * frame.scale.clamp_max(1.0)).sum())
    return (diag.sum(1) - blocks.counts) * float(g.sum())  # e_ij = ‖u_i‖² on every coordinate


def _cell(fx: _Frame, fy: _Frame, cross: Any, cross_cov: Any, resolution: float, blocks: _Blocks) -> tuple[float, Any]:
    """G (bits) of one cell at one β and its influence summed per block (bits, (K,))."""
    import torch

    _, _, lx_inv, _ = _factor(fx, resolution)
    _, ld_y, ly_inv, ay_inv = _factor(fy, resolution)
    dy = fy.cov.shape[0]
    k = lx_inv @ cross_cov  # Lx⁻¹ Σ̃xy
    eye = torch.eye(dy, dtype=k.dtype, device=k.device)
    lc = torch.linalg.cholesky(fy.cov + resolution**2 * eye - k.T @ k)  # Schur complement
    g = 0.5 * float(ld_y - 2.0 * lc.diagonal().log().sum())
    lc_inv = torch.linalg.solve_triangular(lc, eye, upper=False)
    # Γ = (A⁻¹ ⊕ Ay⁻¹) − S⁻¹ by blocks, with P = A⁻¹ Σ̃xy Lc⁻ᵀ: Γxx = −PPᵀ, Γxy = P Lc⁻¹,
    # Γyy = Ay⁻¹ − Sc⁻¹; per block Σ_i wᵢᵀΓwᵢ = ⟨Γ, block moments⟩ (float32: an interval's spread)
    lc_inv32 = lc_inv.float()
    p = lx_inv.float().T @ k.float() @ lc_inv32.T
    gamma_xx, gamma_xy = -(p @ p.T), p @ lc_inv32
    gamma_yy = ay_inv - lc_inv32.T @ lc_inv32
    quad = sum(torch.mv(m.view(m.shape[0], -1), gm.reshape(-1)).double()
               for m, gm in ((fx.moments, gamma_xx), (cross, 2.0 * gamma_xy), (fy.moments, gamma_yy)))
    # g = diag(ΓΣ̃) = β² (diag S⁻¹ − diag(A⁻¹ ⊕ Ay⁻¹)): the normalisers' share of the influence
    gx = resolution**2 * p.double().square().sum(1)
    gy = resolution**2 * (lc_inv.square().sum(0) - ly_inv.square().sum(0))
    n = float(blocks.counts.sum())
    psi = quad - blocks.counts * float(quad.sum()) / n - _share(fx, gx, blocks) - _share(fy, gy, blocks)
    return g / LN2, 0.5 * psi / LN2  # G = ½ f, f = log det A + log det Ay − log det S, ∇f = Γ


def gaussian_reference(side_arrays: Sequence[np.ndarray], sx: np.ndarray, sy: np.ndarray, resolutions: Sequence[float],
                       modes: Sequence[bool], sample_block: np.ndarray, weights: np.ndarray,
                       counts: np.ndarray, device: Any = "cpu") -> list[tuple[np.ndarray, np.ndarray]]:
    """Per mode (``modes``: standardised or not, e.g. [False, True]), G^β of every cell and β (bits,
    (cells, resolutions)) and its block-bootstrap replicates ((cells, resolutions, B)); ``sample_block``
    (n,) is each sample's bootstrap block, ``weights`` (B, blocks) the resamples' multiplicities and
    ``counts`` (blocks,) the samples per block; on ``device``. The second moments are formed once, in
    the raw frame, and rescaled for the standardised one (``_standardised``): a second mode costs the
    per-β work only."""
    import torch

    P, nb, B = len(sx), len(resolutions), weights.shape[0]
    out = [(np.zeros((P, nb)), np.zeros((P, nb, B))) for _ in modes]
    blocks = _blocks(np.asarray(sample_block), len(counts), device)
    n = float(blocks.counts.sum())
    w = torch.as_tensor(weights, dtype=torch.float64, device=device)
    total = w @ blocks.counts
    last_use = {int(s): p for p, pair in enumerate(zip(sx, sy)) for s in pair}
    frames: dict[int, dict[bool, _Frame]] = {}  # side -> mode -> frame
    with torch.no_grad():
        for p in range(P):
            for i in (int(sx[p]), int(sy[p])):
                if i not in frames:
                    raw = _frame(side_arrays[i], blocks)
                    frames[i] = {False: raw, **({True: _standardised(raw)} if any(modes) else {})}
            side_x, side_y = frames[int(sx[p])], frames[int(sy[p])]
            raw_cross = None
            for (value, reps), standardise in zip(out, modes):
                fx, fy = side_x[bool(standardise)], side_y[bool(standardise)]
                if fx.constant or fy.constant:
                    continue
                fx, fy = _moments(fx, side_x[False]), _moments(fy, side_y[False])
                if raw_cross is None:  # (K, dx, dy) per-block cross moments, in the raw frames
                    raw_cross = torch.bmm(side_x[False].rows.transpose(1, 2), side_y[False].rows)
                cross = raw_cross * (fx.factor[:, None] * fy.factor[None, :]) if standardise else raw_cross
                cross_cov = cross.sum(0).double() / n
                for b, resolution in enumerate(resolutions):
                    value[p, b], psi = _cell(fx, fy, cross, cross_cov, float(resolution), blocks)
                    reps[p, b] = value[p, b] + ((w @ psi) / total).cpu().numpy()
                del cross
            del raw_cross
            for i in (int(sx[p]), int(sy[p])):
                if last_use[i] == p:
                    frames.pop(i, None)
    return out
