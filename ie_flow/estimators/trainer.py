"""Batched training loop: P separable critics trained together, early-stopped per pair.

Protocol (docs/METHOD.md section 5):
- preprocessing fitted on the train rows: the copula transform (``preprocess="copula"``, the
  default; see preprocess.py) or mean/std standardisation (``"none"``), computed once for the
  whole stack, so each training step only gathers rows;
- minibatch training on the train rows;
- periodic evaluation of the bound on the SELECT rows (candidates: the select rows, at most
  ``select_rows`` of them), early stopping per pair on it (patience), keeping each pair's best
  checkpoint;
- the reported value: that checkpoint's bound on the REPORT rows, which neither trained the
  critic nor chose it (no winner's curse).

Candidate pool of the reported value (setting ``negatives``), which sets the ceiling:
- ``"report"`` (default): the report rows only.  Every negative is a sample the critic never
  trained on and never selected on, so the value is a strict InfoNCE lower bound; ceiling
  log2(n_report).  Above ``pool_rows`` report rows, InfoNCE's rows form equal pools of at most
  that many, each its own candidates (the cost is linear in n, not its square); ceiling log2 of
  a pool.
- ``"heldout"``: report + select rows (never trained on; the select rows only chose among
  checkpoints); ceiling log2(n_report + n_select).
- ``"all"``: every sample, training rows included (the protocol before the three-way split).
  Training rows are not independent of the critic, so this is NOT a strict bound; kept for
  comparison.  Ceiling log2(n).
The pool matters for discrete x (the LLM case): with K equally likely values and C candidates the
optimal critic reaches only ~log2(C / (1 + (C-1)/K)) because same-value candidates cannot be told
apart.

Also computed per pair: the bound with half the report pool (the pool-gain saturation test),
the bound on as many TRAIN rows (the train/held-out gap of the validity check) and, when asked
for, the bound on bootstrap resamples of the report rows (critic fixed).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ie_flow.hardware import cpu_has_native_bfloat16

from . import bounds
from .critics import Params, SeparableCritic
from .preprocess import fit_copula
from .train_config import NEGATIVES, TrainConfig  # noqa: F401 - re-exported

@dataclass
class TrainResult:
    nats: np.ndarray  # (P,) reported bound of the best checkpoint on the report rows
    nats_half: np.ndarray | None  # (P,) same with half the candidate pool (InfoNCE only)
    nats_train: np.ndarray  # (P,) same checkpoint's bound on as many train rows (train/held-out gap)
    nats_replicates: np.ndarray | None  # (P, B) reported bound on B bootstrap reweightings of the report rows
    nats_half_replicates: np.ndarray | None  # (P, B) the half-pool bound on the same reweightings
    nats_train_replicates: np.ndarray | None  # (P, B) the train-rows bound on the same resamples
    pool_noise: tuple[np.ndarray, np.ndarray] | None  # InfoNCE: (P,) nats² each, report and train rows
    diverged: np.ndarray  # (P,) bool
    best_step: np.ndarray  # (P,) int
    steps: int  # optimisation steps actually run
    n_candidates: int
    n_candidates_half: int | None
    history: list[tuple[int, np.ndarray]]  # (step, held-out-only bound per pair in nats) per evaluation


def _train_stats(t: torch.Tensor, idx: torch.Tensor, chunk_elems: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair mean and 1/std over the rows ``idx``, in blocks of pairs and columns of about
    ``chunk_elems`` values (columns are independent); zero-variance columns get 1/std = 0,
    which removes them (the ``drop_constant`` behaviour; validation has already refused them
    when dropping was not asked for)."""
    P, _, d = t.shape
    n_tr = idx.numel()
    pairs = max(1, chunk_elems // max(1, n_tr * d))
    cols = d if n_tr * d <= chunk_elems else max(1, chunk_elems // max(1, n_tr))
    means, inv = torch.empty(P, 1, d, device=t.device), torch.empty(P, 1, d, device=t.device)
    for s in range(0, P, pairs):
        for c in range(0, d, cols):
            blk = t[s : s + pairs, :, c : c + cols].index_select(1, idx.to(t.device)).to(torch.float64)
            m = blk.mean(1, keepdim=True)
            sd = blk.std(1, keepdim=True)
            tiny = sd <= 1e-7 * (m.abs() + 1.0)
            means[s : s + pairs, :, c : c + cols] = m.float()
            inv[s : s + pairs, :, c : c + cols] = torch.where(tiny, torch.zeros_like(sd), 1.0 / sd.clamp_min(1e-300)).float()
    return means, inv


class _Standardise:
    """(x - mean) / std with train-row statistics, applied to the rows a step reads."""

    def __init__(self, t: torch.Tensor, idx: torch.Tensor, chunk_elems: int) -> None:
        mean, self.inv = _train_stats(t, idx, chunk_elems)
        self.shift = -mean * self.inv

    def apply(self, blk: torch.Tensor, pairs: slice | torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        def pick(a: torch.Tensor) -> torch.Tensor:
            return a[pairs] if isinstance(pairs, slice) else a.index_select(0, pairs)

        return torch.addcmul(pick(self.shift), blk, pick(self.inv)).to(out_dtype)


class _Prepared:
    """Rows of a (P, n, d) stack after preprocessing.  The preprocessing (copula transform or
    standardisation) is fitted once on the train rows; the stack stays as given (float16
    activations stay float16) and each read converts and transforms only the rows it gathers,
    value by value, so the numbers are those of transforming the whole stack first while the
    memory is the input's alone (a float32 copy of a 300,000-row pair is 1.8 GB)."""

    def __init__(self, t: torch.Tensor, train_idx: torch.Tensor, cfg: "TrainConfig", device: torch.device):
        self.dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        self.t, self.device = _resident(t, device), device
        idx = train_idx.to(self.t.device)
        if cfg.preprocess == "copula":
            self.map: Any = fit_copula(self.t, idx, chunk_elems=cfg.chunk_elems >> 4)
        else:
            self.map = _Standardise(self.t, idx, cfg.chunk_elems)

    @property
    def shape(self) -> torch.Size:
        return self.t.shape

    def rows(self, idx: torch.Tensor, sl: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """Prepared rows ``idx`` of the pairs ``sl`` (a slice, or a LongTensor of pair ids)."""
        idx = idx.to(self.t.device)
        if isinstance(sl, torch.Tensor):  # gather (pairs, rows) at once: no copy of whole pairs
            pairs = sl.to(self.t.device)
            P, n, d = self.t.shape
            lin = (pairs[:, None] * n + idx[None, :]).reshape(-1)  # one index_select on the flat view
            blk = self.t.view(P * n, d).index_select(0, lin).view(pairs.numel(), idx.numel(), d)
        else:
            pairs = sl
            blk = self.t[sl].index_select(1, idx)
        return self.map.apply(blk.to(torch.float32), pairs, self.dtype).to(self.device, non_blocking=True)


def _resident(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The stack on the accelerator when it fits in a third of its free memory, else where it is.
    Gathering each minibatch on the host and copying it over left an H200 mostly idle (240 pairs:
    49 s); resident, every step's gather is a device-side index_select."""
    if device.type != "cuda" or t.device == device:
        return t
    free, _ = torch.cuda.mem_get_info(device)
    return t.to(device) if t.numel() * t.element_size() < free / 3 else t


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cpu" and cpu_has_native_bfloat16() else "fp32"


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


@dataclass
class _Run:
    """What training tracks per pair: the best checkpoint on the select rows and whether it goes on."""

    best: dict[str, Params]
    best_val: torch.Tensor  # (P,) float64, nats
    best_step: np.ndarray
    bad_evals: torch.Tensor
    diverged: torch.Tensor
    active: torch.Tensor
    history: list[tuple[int, np.ndarray]]

    @classmethod
    def start(cls, critic: SeparableCritic, P: int) -> "_Run":
        best = {s: {k: v.detach().clone() for k, v in p.items()} for s, p in critic.state().items()}
        return cls(best, torch.full((P,), -math.inf, dtype=torch.float64), np.zeros(P, dtype=np.int64),
                   torch.zeros(P, dtype=torch.long), torch.zeros(P, dtype=torch.bool), torch.ones(P, dtype=torch.bool),
                   [])


def train_batched(
    xs: torch.Tensor,
    ys: torch.Tensor,
    train_idx: np.ndarray,
    select_idx: np.ndarray,
    report_idx: np.ndarray,
    cfg: TrainConfig,
    seed: int,
    device: torch.device,
    boot_weights: np.ndarray | None = None,
) -> TrainResult:
    """Train P critics on (P, n, dx) / (P, n, dy) stacks on the train rows, early-stop each on
    the select rows and return its bound on the report rows (see the module docstring).
    ``boot_weights`` (B, n): weights of each sample id in B bootstrap resamples."""
    from ie_flow.progress import Progress

    training = Training(xs, ys, train_idx, select_idx, cfg, seed, device)
    step = 0
    # step 0 only evaluates the initial critic (T == 0: bound exactly 0), so a pair that never
    # beats "no information" reports ~0 instead of a worse training state
    # a line every five minutes, only when training is long: it runs under the stage's own progress bar
    with Progress(f"training {xs.shape[0]} critics", cfg.max_steps, "step", terminal=False, every_s=300,
                  closing_line=False) as progress:
        for step in range(0, cfg.max_steps + 1):
            if step > 0:
                training.step()
                progress.update(1)
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                training.early_stop(step)
                if not training.run.active.any():
                    break
    return training.result(training.final_evaluation(torch.as_tensor(report_idx, dtype=torch.long), boot_weights),
                           step)


def _stopping_rows(select_idx: np.ndarray, cap: int, seed: int) -> torch.Tensor:
    """The select rows early stopping scores: all of them, or a seeded random `cap` of them (their
    pool costs its square at every evaluation)."""
    if len(select_idx) > cap:
        select_idx = np.sort(np.random.default_rng(seed).choice(select_idx, cap, replace=False))
    return torch.as_tensor(select_idx, dtype=torch.long)


class _Batches:
    """Minibatches of training rows, reshuffled each epoch (the ragged tail dropped)."""

    def __init__(self, tr: torch.Tensor, size: int, seed: int) -> None:
        self.tr, self.size = tr, size
        self.rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xBA7C]))
        self.order, self.cursor = self.rng.permutation(tr.numel()), 0

    def next(self) -> torch.Tensor:
        if self.cursor + self.size > self.tr.numel():
            self.order, self.cursor = self.rng.permutation(self.tr.numel()), 0
        rows = self.tr[torch.as_tensor(self.order[self.cursor : self.cursor + self.size])]
        self.cursor += self.size
        return rows


class Training:
    """One batched training of P critics: the prepared stacks, the critics and their optimiser,
    the bound (bounds.Bound), the per-pair run state; its step, early stopping, final evaluation
    and result as methods."""

    def __init__(self, xs: torch.Tensor, ys: torch.Tensor, train_idx: np.ndarray, select_idx: np.ndarray,
                 cfg: TrainConfig, seed: int, device: torch.device) -> None:
        P, _, dx = xs.shape
        self.cfg = cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device))
        self.seed, self.device = seed, device
        self.tr = torch.as_tensor(train_idx, dtype=torch.long)
        self.sel = torch.as_tensor(select_idx, dtype=torch.long)  # in the report pool when negatives="heldout"
        self.stop_rows = _stopping_rows(select_idx, cfg.select_rows, seed)  # early stopping runs on these
        self.X, self.Y = _Prepared(xs, self.tr, cfg, device), _Prepared(ys, self.tr, cfg, device)
        self.critic = critic = SeparableCritic(P, dx, ys.shape[2], hidden=cfg.hidden, embed=cfg.embed,
                                               layers=cfg.layers, seed=seed, device=device)
        params = critic.parameters()
        groups = [{"params": params}, {"params": [critic.log_scale], "lr": cfg.scale_lr, "weight_decay": 0.0}]
        # fused: one kernel per tensor instead of ~10 passes over all P critics' weights per step
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        self.params = params + [critic.log_scale]
        self.run = _Run.start(critic, P)
        self.batches = _Batches(self.tr, min(cfg.batch_size, self.tr.numel()), seed)
        self.bound = bounds.bound_for(cfg.bound, cfg.ema, P, cfg.clip)

    def step(self) -> None:
        """One optimiser step of the pairs still active; a pair whose value is not finite is diverged."""
        critic, run, device = self.critic, self.run, self.device
        P = run.active.numel()
        # pairs that stopped early drop out of the batch (their best checkpoint is kept);
        # the others' trajectories do not change, since no pair's update depends on another
        act_idx = run.active.nonzero().squeeze(1)
        sel = None if act_idx.numel() == P else act_idx.to(device)

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t if sel is None else t.index_select(0, sel)

        bidx = self.batches.next()
        xp = {k: pick(v) for k, v in critic.x.items()}
        yp = {k: pick(v) for k, v in critic.y.items()}
        with _autocast(device, self.cfg.precision):
            fx = critic.side_q(xp, self.X.rows(bidx, slice(None) if sel is None else act_idx), self.cfg.layers)
            gy = critic.side_q(yp, self.Y.rows(bidx, slice(None) if sel is None else act_idx), self.cfg.layers)
            S = critic.scores(fx, gy, pick(critic.log_scale)).float()
        value, objective = self.bound.training(S, torch.arange(S.shape[1], device=device), act_idx)
        finite = torch.isfinite(value.detach()).cpu()
        if not finite.all():
            run.diverged[act_idx[~finite]] = True
            run.active &= ~run.diverged
        loss = -torch.where(finite.to(device), objective, torch.zeros((), device=device)).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if run.diverged.any():  # keep dead pairs' NaNs out of their optimiser state
            dmask = run.diverged.to(device)
            for p_ in self.params:
                if p_.grad is not None:
                    p_.grad[dmask] = 0.0
        self.opt.step()

    def early_stop(self, step: int) -> None:
        """Evaluate on the select rows; keep each pair's best checkpoint; stop pairs that stopped improving."""
        critic, run, cfg, ev = self.critic, self.run, self.cfg, self.stop_rows
        n_ev = ev.numel()
        val = self.evaluate(critic.state(), ev, ev, torch.arange(n_ev), pairs=run.active.nonzero().squeeze(1)).double()
        run.history.append((step, val.numpy().copy()))
        with torch.no_grad():
            bad = ~torch.isfinite(val)
            run.diverged |= bad & run.active
            improved = run.active & ~bad & (val > run.best_val + cfg.min_delta)
            if improved.any():
                ii = improved.nonzero().squeeze(1).to(self.device)
                for side, p in critic.state().items():
                    for k, v in p.items():
                        run.best[side][k][ii] = v.detach()[ii]
                run.best_val[improved] = val[improved]
                run.best_step[improved.numpy()] = step
            run.bad_evals = torch.where(improved, torch.zeros_like(run.bad_evals), run.bad_evals + 1)
            run.active &= (run.bad_evals < cfg.patience) & ~run.diverged
            if cfg.stop_near_ceiling > 0 and self.bound.capped_by_pool:  # the DV family has no log n cap
                run.active &= ~(run.best_val >= math.log(n_ev) - cfg.stop_near_ceiling * math.log(2))

    def result(self, report: dict[str, Any], steps: int) -> TrainResult:
        run = self.run
        div = run.diverged.numpy() | ~np.isfinite(report["nats"])

        def masked(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.where(div.reshape((-1,) + (1,) * (a.ndim - 1)), np.nan, a)

        return TrainResult(
            nats=masked(report["nats"]), nats_half=masked(report["half"]), nats_train=masked(report["train"]),
            nats_replicates=masked(report["replicates"]), nats_half_replicates=masked(report["half_replicates"]),
            nats_train_replicates=masked(report["train_replicates"]), pool_noise=report["pool_noise"],
            diverged=div, best_step=run.best_step, steps=steps,
            n_candidates=report["n_candidates"], n_candidates_half=report["n_candidates_half"], history=run.history,
        )

    @torch.no_grad()
    def final_evaluation(self, rep: torch.Tensor, boot_weights: np.ndarray | None) -> dict[str, Any]:
        """The best checkpoints' bound on the report rows (per-row terms, so the bootstrap
        replicates come from the same scores), with half the pool, and on as many train rows."""
        cfg, seed, device, tr = self.cfg, self.seed, self.device, self.tr
        cand = _report_pool(cfg, tr, self.sel, rep)
        pools = _pools(rep.numel(), cfg) if self.bound.per_row and cfg.negatives == "report" else None
        if pools is not None and len(pools) > 1:  # pools of random rows: the ids are sorted, and neighbours alike
            cand = rep = rep[torch.randperm(rep.numel(), generator=torch.Generator().manual_seed(int(seed) + 7919))]
        keep = None
        if self.bound.per_row and cfg.pool_check:
            g = torch.Generator().manual_seed(int(seed) + 991)
            keep = torch.zeros(cand.numel(), dtype=torch.bool)
            keep[torch.randperm(cand.numel(), generator=g)[: cand.numel() // 2]] = True
        # the pool-noise share of the bootstrap is derived for a pool made of the rows themselves
        shared_pool = keep is not None and cfg.negatives == "report"
        values, half, noise = self._reduce(rep, cand, _row_weights(boot_weights, rep, device), keep, shared_pool, pools)
        g = torch.Generator().manual_seed(int(seed) + 4099)
        sub = tr[torch.randperm(tr.numel(), generator=g)[: min(tr.numel(), cand.numel())]]
        # the train/held-out gap's other half: the same bound on a train subset as large as the report
        # pool, on the same resamples (one resample reweights every row set of the data it redraws)
        train, _, train_noise = self._reduce(sub, sub, _row_weights(boot_weights, sub, device), None, shared_pool,
                                             pools and _pools(sub.numel(), cfg))
        resampled = boot_weights is not None
        return {
            "nats": values[:, 0],
            "half": None if half is None else half[:, 0],
            "train": train[:, 0],
            "replicates": values[:, 1:] if resampled else None,
            "half_replicates": half[:, 1:] if resampled and half is not None else None,
            "train_replicates": train[:, 1:] if resampled else None,
            # the pool's share of the bootstrap variance of the report and train values (nats²)
            "pool_noise": (noise, train_noise) if shared_pool else None,
            "n_candidates": int(cand.numel()) if pools is None else max(p.stop - p.start for p in pools),
            "n_candidates_half": None if keep is None else int(keep.sum()) // len(pools or [0]) + 1,
        }

    def _reduce(self, rows: torch.Tensor, cand: torch.Tensor, w_rows: torch.Tensor, keep: torch.Tensor | None,
                pool_noise: bool, pools: list[slice] | None = None,
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(P, 1 + B) bound of the best checkpoints, x[rows] against y[cand] (row r's own y in column
        r), on each row weighting, the same with the pool cut to ``keep`` (a per-row bound), and the
        pool noise (P,). A per-row bound's scores are streamed over the rows when one pair's would
        exceed ``chunk_elems``; with ``pools`` (ranges of rows, cand = rows) each row is scored against
        its own pool only. The other bounds take every row at once."""
        best, values, half, noise = self.run.best, [], [], []
        if not self.bound.per_row:
            for _, _, _, S in self.score_chunks(best, rows, cand):
                values.append(self._weighted(S, w_rows))
            return torch.cat(values).numpy(), None, None
        pos, keep_d = torch.arange(rows.numel(), device=self.device), None if keep is None else keep.to(self.device)

        def terms(S: torch.Tensor, rs: slice, pool: slice) -> list[torch.Tensor]:  # S: rows rs against the pool's
            return bounds.infonce_row_terms(S, pos[rs] - pool.start, None if keep_d is None else keep_d[pool], pool_noise)

        pools = pools or [slice(0, cand.numel())]
        R, C = rows.numel(), cand.numel() / len(pools)  # C: candidates per pool (equal to within one)
        for _, per_row in _row_terms(self.score_chunks(best, rows, cand, split_rows=True, pools=pools), terms):
            values.append(bounds.reweighted_mean(per_row[0].double(), w_rows).double().cpu())
            if keep_d is not None:
                half.append(bounds.reweighted_mean(per_row[1].double(), w_rows).cpu())
            if pool_noise:
                noise.append((per_row[-1].mean(-1) / (C * R)).double().cpu())
        cat = lambda parts: torch.cat(parts).numpy() if parts else None  # noqa: E731
        return cat(values), cat(half), cat(noise)

    def _weighted(self, S: torch.Tensor, w_rows: torch.Tensor) -> torch.Tensor:
        """(p, 1 + B) bound of the rows of S against all its columns, on each row weighting; the
        candidate pool is kept as drawn.  For a near-optimal critic a candidate's first-order
        influence on the bound is constant (E_x[p(y|x)/p(y)] = 1), so resampling the pool adds only
        second-order noise, which the bootstrap inflates: on uniform discrete K = 4 and 16 it doubled
        the spread (0.006 and 0.014 bit against 0.003 and 0.008 across data draws)."""
        pos = torch.arange(S.shape[-2], device=S.device)
        return self.bound.weighted(S, pos, w_rows).double().cpu()

    def score_chunks(self, state: dict[str, Params], rows: torch.Tensor, cand: torch.Tensor,
                     todo: torch.Tensor | None = None, split_rows: bool = False, pools: list[slice] | None = None):
        """Yield (pair selection, row slice, candidate slice, (p, r, c) float32 critic scores) chunk
        by chunk over the pairs (all pairs, or the pair ids ``todo``), so the score tensor stays
        within ``chunk_elems``; with ``split_rows``, a pair whose R x C scores alone exceed it comes
        in blocks of rows (its candidates' features computed once, in blocks too). With ``pools``
        (ranges of rows; cand = rows), each range of rows is scored against its own candidates."""
        critic, cfg, device, X, Y = self.critic, self.cfg, self.device, self.X, self.Y
        P = X.shape[0]
        pools = pools or [slice(0, cand.numel())]
        R, C = rows.numel(), max(p.stop - p.start for p in pools)
        rows_of = (lambda pool: rows) if len(pools) == 1 else (lambda pool: rows[pool])  # noqa: E731
        d = max(X.shape[2], Y.shape[2])
        chunk = max(1, cfg.chunk_elems // max(1, R * C // len(pools), C * d))
        stream = split_rows and max(R * C // len(pools), C * d) > cfg.chunk_elems
        n_todo = P if todo is None else todo.numel()
        for s in range(0, n_todo, chunk):
            sl: slice | torch.Tensor = slice(s, min(P, s + chunk)) if todo is None else todo[s : s + chunk].to(device)
            for pool in pools:
                mine, their = rows_of(pool), cand[pool]
                if stream:
                    gy = self._features(state["y"], Y, their, sl)
                    block = max(1, cfg.chunk_elems // max(their.numel(), d))
                    for a in range(0, mine.numel(), block):
                        fx = self._features(state["x"], X, mine[a : a + block], sl)
                        with _autocast(device, cfg.precision):
                            S = critic.scores(fx, gy, state["s"]["log_scale"][sl]).float()
                        yield sl, slice(pool.start + a, pool.start + min(mine.numel(), a + block)), pool, S
                    continue
                with _autocast(device, cfg.precision):
                    fx = critic.side_q(state["x"], X.rows(mine, sl), cfg.layers, sl)
                    gy = critic.side_q(state["y"], Y.rows(their, sl), cfg.layers, sl)
                    S = critic.scores(fx, gy, state["s"]["log_scale"][sl]).float()
                yield sl, slice(pool.start, pool.start + mine.numel()), pool, S

    def _features(self, side: Params, Z: _Prepared, idx: torch.Tensor, sl: slice | torch.Tensor) -> torch.Tensor:
        """(p, len(idx), k + 1) critic features of rows ``idx``, gathered in blocks of ``chunk_elems / 16``
        values: transforming a block takes about five float32 copies of it (a block of ``chunk_elems``
        was 670 MB at d = 768)."""
        cfg = self.cfg
        block = max(1, (cfg.chunk_elems >> 4) // Z.shape[2])
        with _autocast(self.device, cfg.precision):
            return torch.cat([self.critic.side_q(side, Z.rows(idx[a : a + block], sl), cfg.layers, sl)
                              for a in range(0, idx.numel(), block)], dim=1)

    @torch.no_grad()
    def evaluate(self, state: dict[str, Params], rows: torch.Tensor, cand: torch.Tensor, pos: torch.Tensor,
                 pairs: torch.Tensor | None = None) -> torch.Tensor:
        """Bound (nats, (P,)) of x[rows] against candidates y[cand] with the critics ``state``;
        ``pos[r]`` is the column of row r's own y.  Only the pairs ``pairs`` when given (the others read NaN)."""
        P = self.X.shape[0]
        subset = pairs is not None and pairs.numel() < P
        pos_d = pos.to(self.device)
        todo = pairs if subset else None
        full = []
        if self.bound.per_row:  # per-row terms: streamed over the rows when large
            chunks = self.score_chunks(state, rows, cand, todo, split_rows=True)
            for _, (terms,) in _row_terms(chunks, lambda S, rs, _pool: [bounds.infonce_rows(S, pos_d[rs])]):
                full.append(terms.mean(-1).cpu())
        else:
            for _, _, _, S in self.score_chunks(state, rows, cand, todo):
                full.append(self.bound.value(S, pos_d).cpu())
        if not subset:
            return torch.cat(full)
        out = torch.full((P,), math.nan, dtype=torch.float32)  # stopped pairs read as NaN
        if full:
            out[pairs] = torch.cat(full).float()
        return out


def _report_pool(cfg: TrainConfig, tr: torch.Tensor, sel: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
    """Candidate rows of the reported bound; the report rows come first, so row r's own y is column r."""
    if cfg.negatives == "report":
        return rep
    return torch.cat([rep, sel]) if cfg.negatives == "heldout" else torch.cat([rep, sel, tr])


def _row_weights(boot_weights: np.ndarray | None, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(1 + B, len(idx)) weights of the rows ``idx``: all ones (the value itself), then the
    bootstrap resamples (if any); only those rows are copied (a (1 + B, n) float32 copy of
    200 resamples of 300,000 ids is 241 MB)."""
    w = torch.ones(1, idx.numel())
    if boot_weights is not None:
        w = torch.cat([w, torch.as_tensor(boot_weights).index_select(1, idx).to(torch.float32)])
    return w.to(device)


def _pools(rows: int, cfg: TrainConfig) -> list[slice]:
    """Consecutive row ranges that are their own InfoNCE candidate pools: one up to
    ``pool_rows`` rows (or with pool_rows = 0), else as few equal ones as keep each within it."""
    k = 1 if cfg.pool_rows == 0 else -(-rows // cfg.pool_rows)
    edges = [rows * i // k for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def _row_terms(chunks: Any, terms: Any) -> Any:
    """Per chunk of pairs: ``terms(S, row slice, pool)``'s (p, r) tensors of every row block of
    the score chunks, joined along the rows into (p, R)."""
    current, parts = None, []
    for sl, rs, pool, S in chunks:
        if rs.start == 0 and parts:
            yield current, [torch.cat(p, -1) for p in zip(*parts)]
            parts = []
        current = sl
        parts.append(terms(S, rs, pool))
    if parts:
        yield current, [torch.cat(p, -1) for p in zip(*parts)]
