"""Batched training loop: P separable critics trained together, early-stopped per pair.

Protocol (IE_SPEC section 5): standardise with train-split statistics, minibatch training on
the train split, periodic evaluation of the bound on the held-out split, early stopping per
pair on it (patience), then report the held-out bound of each pair's best checkpoint.

Candidate pool of the reported value (setting ``negatives``):
- ``"all"`` (default): each held-out x_r is scored against the y of EVERY sample (train and
  held-out).  The train samples are independent draws from p(y) that are independent of the
  held-out x_r, so this is still a valid InfoNCE lower bound, with ceiling log2(n) instead of
  log2(n_eval).  It matters for discrete x (the LLM case: x is a token prefix): with K equally
  likely values and C candidates the optimal critic reaches only ~log2(C / (1 + (C-1)/K)) because
  same-value candidates cannot be told apart (K=256: 7.7 bits with C=1000, 7.93 with C=5000).
  Early stopping uses the held-out-only pool, so the checkpoint is never chosen for how it
  scores the training y's; the shuffle test guards against a critic that memorises them.
- ``"heldout"``: candidates are the held-out samples only (ceiling log2(n_eval)).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import bounds
from .critics import Params, SeparableCritic


@dataclass(frozen=True)
class TrainConfig:
    bound: str = "infonce"  # infonce | dv | nwj | smile
    ema: float | None = None  # MINE moving-average rate for the partition-term gradient
    clip: float = 5.0  # SMILE clip
    # Default critic is linear (+ the quadratic y term): on the ground-truth suite an MLP
    # (hidden=128, layers=1) overfitted 4,000 training samples long before its linear part
    # converged (d=50 Gaussian: 2.65 vs 3.51 bits of 4) and the linear critic already reaches
    # log2 K on discrete K-valued inputs through a nonlinear injective map.
    hidden: int = 0  # 0: linear d -> embed + 1; > 0: linear d -> hidden, residual MLP, head
    embed: int = 64
    layers: int = 0
    batch_size: int = 256
    lr: float = 3e-3
    scale_lr: float = 0.02  # lr of the per-pair log score scale (see critics.SeparableCritic)
    weight_decay: float = 0.0
    max_steps: int = 1000
    eval_every: int = 25
    patience: int = 5  # evaluations without improvement before a pair stops
    # nats (0.01 bit); smaller held-out gains do not reset patience, so pairs that only creep
    # towards their ceiling stop instead of running to max_steps
    min_delta: float = 0.007
    # bits: an InfoNCE pair whose held-out bound comes this close to the early-stopping pool's own
    # ceiling log2(n_eval) stops: that pool can no longer rank its checkpoints, and the pair is a lower
    # bound anyway.  On SmolLM2's saturated positions the bound crept ~0.01 bit per 25 steps for
    # hundreds of steps (stage 2 of the demo: 525 steps instead of 300).  0 switches it off.
    stop_near_ceiling: float = 0.3
    negatives: str = "all"  # all | heldout (see module docstring)
    pool_check: bool = True  # InfoNCE: also evaluate with half the pool (saturation test)
    chunk_elems: int = 1 << 25  # memory cap (elements) of one evaluation chunk of pairs
    # auto | fp32 | bf16 (autocast of the matmuls).  auto = bf16 on CPUs with native bf16
    # (AMX / AVX512-BF16: the 240-pair profile ran in 189 s instead of 300 s with the same
    # estimates to 3 decimals and the same ground-truth results), fp32 elsewhere
    precision: str = "auto"

    def __post_init__(self) -> None:  # fail before any training, naming the setting
        if self.bound not in bounds.BOUNDS:
            raise ValueError(f"bound must be one of {bounds.BOUNDS}, got {self.bound!r}")
        if self.negatives not in ("all", "heldout"):
            raise ValueError(f"negatives must be 'all' or 'heldout', got {self.negatives!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ValueError(f"ema must be in (0, 1), got {self.ema}")
        for name in ("embed", "batch_size", "max_steps", "eval_every", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.scale_lr < 0:
            raise ValueError("lr must be > 0 and scale_lr >= 0")
        if self.stop_near_ceiling < 0:
            raise ValueError(f"stop_near_ceiling must be >= 0 bits, got {self.stop_near_ceiling}")


@dataclass
class TrainResult:
    nats: np.ndarray  # (P,) reported held-out bound of the best checkpoint
    nats_half: np.ndarray | None  # (P,) same with half the candidate pool (InfoNCE only)
    diverged: np.ndarray  # (P,) bool
    best_step: np.ndarray  # (P,) int
    steps: int  # optimisation steps actually run
    n_candidates: int
    n_candidates_half: int | None
    history: list[tuple[int, np.ndarray]]  # (step, held-out-only bound per pair in nats) per evaluation


def _train_stats(t: torch.Tensor, idx: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair mean and 1/std over the rows ``idx``; zero-variance columns get 1/std = 0,
    which removes them (the ``drop_constant`` behaviour; validation has already refused them
    when dropping was not asked for)."""
    P, _, d = t.shape
    means, inv = [], []
    for s in range(0, P, chunk):
        blk = t[s : s + chunk].index_select(1, idx.to(t.device)).to(torch.float64)
        m = blk.mean(1, keepdim=True)
        sd = blk.std(1, keepdim=True)
        tiny = sd <= 1e-7 * (m.abs() + 1.0)
        means.append(m.float())
        inv.append(torch.where(tiny, torch.zeros_like(sd), 1.0 / sd.clamp_min(1e-300)).float())
    return torch.cat(means), torch.cat(inv)


class _Standardised:
    """Rows of a (P, n, d) stack, standardised with train statistics on the fly (no full copy)."""

    def __init__(self, t: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor, device: torch.device):
        self.t, self.inv, self.device = t, inv_std.to(device), device
        self.shift = (-mean * inv_std).to(device)  # (x - m) / s == x * inv + shift: one fused pass

    def rows(self, idx: torch.Tensor, sl: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """Standardised rows ``idx`` of the pairs ``sl`` (a slice, or a LongTensor of pair ids)."""
        idx = idx.to(self.t.device)
        if isinstance(sl, torch.Tensor):  # gather (pairs, rows) at once: no copy of whole pairs
            pairs = sl.to(self.t.device)
            P, n, d = self.t.shape
            if self.t.is_contiguous():  # one index_select on the flat (P*n, d) view: fastest gather
                lin = (pairs[:, None] * n + idx[None, :]).reshape(-1)
                blk = self.t.view(P * n, d).index_select(0, lin).view(pairs.numel(), idx.numel(), d)
            else:
                blk = self.t[pairs[:, None], idx[None, :]]
            sl = sl.to(self.device)
        else:
            blk = self.t[sl].index_select(1, idx)
        blk = blk.to(self.device, torch.float32, non_blocking=True)
        return torch.addcmul(self.shift[sl], blk, self.inv[sl])


def _resident(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The stack on the accelerator when it fits in a third of its free memory, else where it is.
    Gathering each minibatch on the host and copying it over left an H200 mostly idle (240 pairs:
    49 s); resident, every step's gather is a device-side index_select."""
    if device.type != "cuda" or t.device == device:
        return t
    free, _ = torch.cuda.mem_get_info(device)
    return t.to(device) if t.numel() * t.element_size() < free / 3 else t


@functools.lru_cache(maxsize=1)
def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cpu" and _cpu_has_native_bf16() else "fp32"


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def train_batched(
    xs: torch.Tensor,
    ys: torch.Tensor,
    train_idx: np.ndarray,
    eval_idx: np.ndarray,
    cfg: TrainConfig,
    seed: int,
    device: torch.device,
) -> TrainResult:
    """Train P critics on (P, n, dx) / (P, n, dy) stacks and return per-pair held-out bounds."""
    P, n, dx = xs.shape
    dy = ys.shape[2]
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device))
    tr = torch.as_tensor(train_idx, dtype=torch.long)
    ev = torch.as_tensor(eval_idx, dtype=torch.long)
    n_tr, n_ev = tr.numel(), ev.numel()
    stat_chunk = max(1, cfg.chunk_elems // max(1, n_tr * max(dx, dy)))
    xs, ys = _resident(xs, device), _resident(ys, device)
    X = _Standardised(xs, *_train_stats(xs, tr, stat_chunk), device)
    Y = _Standardised(ys, *_train_stats(ys, tr, stat_chunk), device)

    critic = SeparableCritic(P, dx, dy, hidden=cfg.hidden, embed=cfg.embed, layers=cfg.layers, seed=seed, device=device)
    params = critic.parameters()
    groups = [{"params": params}, {"params": [critic.log_scale], "lr": cfg.scale_lr, "weight_decay": 0.0}]
    # fused: one kernel per tensor instead of ~10 passes over all P critics' weights per step
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    params = params + [critic.log_scale]
    best: dict[str, Params] = {s: {k: v.detach().clone() for k, v in p.items()} for s, p in critic.state().items()}
    best_val = torch.full((P,), -math.inf, dtype=torch.float64)
    best_step = np.zeros(P, dtype=np.int64)
    bad_evals = torch.zeros(P, dtype=torch.long)
    diverged = torch.zeros(P, dtype=torch.bool)
    active = torch.ones(P, dtype=torch.bool)
    log_ema = torch.full((P,), math.nan, dtype=torch.float32)  # MINE: per-pair log moving average
    history: list[tuple[int, np.ndarray]] = []

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xBA7C]))
    B = min(cfg.batch_size, n_tr)
    diag = torch.arange(B, device=device)
    order, cursor = rng.permutation(n_tr), 0
    step = 0
    # step 0 only evaluates the initial critic (T == 0: bound exactly 0), so a pair that never
    # beats "no information" reports ~0 instead of a worse training state
    for step in range(0, cfg.max_steps + 1):
        if step > 0:
            if cursor + B > n_tr:  # new epoch: reshuffle (drop the ragged tail)
                order, cursor = rng.permutation(n_tr), 0
            bidx = tr[torch.as_tensor(order[cursor : cursor + B])]
            cursor += B
            # pairs that stopped early drop out of the batch (their best checkpoint is kept);
            # the others' trajectories do not change, since no pair's update depends on another
            act_idx = active.nonzero().squeeze(1)
            sel = None if act_idx.numel() == P else act_idx.to(device)

            def pick(t: torch.Tensor) -> torch.Tensor:
                return t if sel is None else t.index_select(0, sel)

            xp = {k: pick(v) for k, v in critic.x.items()}
            yp = {k: pick(v) for k, v in critic.y.items()}
            with _autocast(device, cfg.precision):
                fx = critic.side_q(xp, X.rows(bidx, slice(None) if sel is None else act_idx), cfg.layers)
                gy = critic.side_q(yp, Y.rows(bidx, slice(None) if sel is None else act_idx), cfg.layers)
                S = critic.scores(fx, gy, pick(critic.log_scale)).float()
            if cfg.ema is not None:
                pos_mean = S.diagonal(dim1=1, dim2=2).mean(-1)
                lme = bounds.neg_logmeanexp(S, diag)
                value = pos_mean - lme
                lme_d = lme.detach()
                prev = log_ema[act_idx].to(device)
                new_ema = torch.where(torch.isnan(prev), lme_d, torch.logaddexp(
                    prev + math.log(1.0 - cfg.ema), lme_d + math.log(cfg.ema)))
                log_ema[act_idx] = new_ema.cpu()
                # d/dθ log E[e^T] = E[∇T e^T] / E[e^T]; MINE divides by a moving average of E[e^T]
                # instead of the minibatch value, which removes most of the minibatch gradient bias.
                objective = pos_mean - lme * torch.exp(lme_d - new_ema)
            elif cfg.bound == "smile":
                # SMILE (Song & Ermon 2020, their reference code): the value is the clipped DV,
                # the gradient comes from the Jensen-Shannon f-GAN bound.  Training on the
                # clipped DV itself is unbounded (E_p[T] is not clipped) and blew up to 1e21 bits.
                value = bounds.smile(S, diag, cfg.clip)
                objective = bounds.js_fgan(S, diag)
            else:
                value = bounds.bound(cfg.bound, S, diag, cfg.clip)
                objective = value
            finite = torch.isfinite(value.detach()).cpu()
            if not finite.all():
                diverged[act_idx[~finite]] = True
                active &= ~diverged
            loss = -torch.where(finite.to(device), objective, torch.zeros((), device=device)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if diverged.any():  # keep dead pairs' NaNs out of their optimiser state
                dmask = diverged.to(device)
                for p_ in params:
                    if p_.grad is not None:
                        p_.grad[dmask] = 0.0
            opt.step()

        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            val = _evaluate(critic, critic.state(), X, Y, ev, ev, torch.arange(n_ev), cfg, device,
                            pairs=active.nonzero().squeeze(1)).double()
            history.append((step, val.numpy().copy()))
            with torch.no_grad():
                bad = ~torch.isfinite(val)
                diverged |= bad & active
                improved = active & ~bad & (val > best_val + cfg.min_delta)
                if improved.any():
                    ii = improved.nonzero().squeeze(1).to(device)
                    for side, p in critic.state().items():
                        for k, v in p.items():
                            best[side][k][ii] = v.detach()[ii]
                    best_val[improved] = val[improved]
                    best_step[improved.numpy()] = step
                bad_evals = torch.where(improved, torch.zeros_like(bad_evals), bad_evals + 1)
                active &= (bad_evals < cfg.patience) & ~diverged
                if cfg.stop_near_ceiling > 0 and cfg.bound == "infonce":  # the DV family has no log n cap
                    active &= ~(best_val >= math.log(n_ev) - cfg.stop_near_ceiling * math.log(2))
            if not active.any():
                break

    # report: best checkpoint, evaluated with the configured candidate pool
    if cfg.negatives == "all":
        cand = torch.arange(n)
        pos = ev
    else:  # "heldout"
        cand = ev
        pos = torch.arange(n_ev)
    keep = None
    if cfg.bound == "infonce" and cfg.ema is None and cfg.pool_check:
        g = torch.Generator().manual_seed(int(seed) + 991)
        keep = torch.zeros(cand.numel(), dtype=torch.bool)
        keep[torch.randperm(cand.numel(), generator=g)[: cand.numel() // 2]] = True
    out = _evaluate(critic, best, X, Y, ev, cand, pos, cfg, device, keep=keep)
    if keep is not None:
        nats, nats_half = out
        nats_half = nats_half.double().numpy()
    else:
        nats, nats_half = out, None
    nats = nats.double().numpy()
    div = diverged.numpy() | ~np.isfinite(nats)
    nats = np.where(div, np.nan, nats)
    if nats_half is not None:
        nats_half = np.where(div, np.nan, nats_half)
    return TrainResult(
        nats=nats,
        nats_half=nats_half,
        diverged=div,
        best_step=best_step,
        steps=step,
        n_candidates=int(cand.numel()),
        n_candidates_half=None if keep is None else int(keep.sum()) + 1,
        history=history,
    )


@torch.no_grad()
def _evaluate(
    critic: SeparableCritic,
    state: dict[str, Params],
    X: _Standardised,
    Y: _Standardised,
    rows: torch.Tensor,
    cand: torch.Tensor,
    pos: torch.Tensor,
    cfg: TrainConfig,
    device: torch.device,
    keep: torch.Tensor | None = None,
    pairs: torch.Tensor | None = None,
) -> Any:
    """Bound (nats, (P,)) of x[rows] against candidates y[cand]; ``pos[r]`` is the column of
    row r's own y.  Chunked over pairs so the (P, R, C) score tensor stays within memory."""
    P = X.t.shape[0]
    R, C = rows.numel(), cand.numel()
    d = max(X.t.shape[2], Y.t.shape[2])
    chunk = max(1, cfg.chunk_elems // max(1, R * C, C * d))
    pos_d = pos.to(device)
    keep_d = None if keep is None else keep.to(device)
    full, half = [], []
    subset = pairs is not None and pairs.numel() < P
    todo = pairs if subset else None
    n_todo = todo.numel() if subset else P
    for s in range(0, n_todo, chunk):
        sl: slice | torch.Tensor = todo[s : s + chunk].to(device) if subset else slice(s, min(P, s + chunk))
        with _autocast(device, cfg.precision):
            fx = critic.side_q(state["x"], X.rows(rows, sl), cfg.layers, sl)
            gy = critic.side_q(state["y"], Y.rows(cand, sl), cfg.layers, sl)
            S = critic.scores(fx, gy, state["s"]["log_scale"][sl]).float()
        if cfg.ema is not None:
            full.append(bounds.dv(S, pos_d).cpu())
        else:
            full.append(bounds.bound(cfg.bound, S, pos_d, cfg.clip).cpu())
        if keep_d is not None:
            half.append(bounds.infonce_subpool(S, pos_d, keep_d).cpu())
    if subset:  # pairs not evaluated (stopped) read as NaN; callers only look at evaluated ones
        out = torch.full((P,), math.nan, dtype=torch.float32)
        if n_todo:
            out[todo] = torch.cat(full).float()
        return out
    if keep is not None:
        return torch.cat(full), torch.cat(half)
    return torch.cat(full)
