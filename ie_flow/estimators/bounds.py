"""Variational MI lower bounds in nats, vectorised over a leading pair dimension P.

Scores are critic values T(x_r, y_c) as a (P, R, C) tensor: rows are x samples, columns are
candidate y samples, and ``pos`` gives, for each row, the column that holds its own y (the
positive pair); every other column is a negative, i.e. a draw from p(y) independent of x_r.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .train_config import BOUNDS  # the bound names, defined with the settings


def _pos_and_neg_mask(S: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    R, C = S.shape[-2:]
    pos_scores = S.gather(-1, pos.view(1, R, 1).expand(S.shape[0], R, 1)).squeeze(-1)  # (P, R)
    neg_mask = torch.ones(R, C, dtype=torch.bool, device=S.device)
    neg_mask[torch.arange(R, device=S.device), pos] = False
    return pos_scores, neg_mask


def infonce_rows(S: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(P, R) each row's InfoNCE term T(x_r, y_r) - log mean_c exp T(x_r, y_c); their mean is the bound."""
    pos_scores, _ = _pos_and_neg_mask(S, pos)
    return pos_scores - S.logsumexp(-1) + math.log(S.shape[-1])


def infonce(S: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """E_r[T(x_r, y_r) - log mean_c exp T(x_r, y_c)], all C candidates (incl. the positive);
    never exceeds log C."""
    return infonce_rows(S, pos).mean(-1)


def infonce_row_terms(S: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor | None = None,
                      pool_noise: bool = False) -> list[torch.Tensor]:
    """(P, R) per-row terms from one pass of exp over S, which is overwritten:
    - ``infonce_rows``;
    - if ``keep`` (bool (C,)), the terms with only the kept candidate columns plus each row's
      positive: comparing their mean with the full-pool bound tells whether the pool size limits it;
    - if ``pool_noise``, Var_c(u_rc) per row, whose mean over C R is the part of the rows-only
      bootstrap variance of the bound that comes from the finite pool: row r's log-partition is a
      mean over C candidates of the weights u_rc = C softmax(S_r)_c (mean 1), so its pool error
      has variance Var_c(u_rc) / C, which the bootstrap counts as independent from row to row.
    At 75,000 x 75,000 report scores, separate passes made about 12 temporaries of a chunk each
    and took 5 minutes on one core."""
    P, R, C = S.shape
    pos_scores = S.gather(-1, pos.view(1, R, 1).expand(P, R, 1)).squeeze(-1)
    top = S.amax(-1, keepdim=True)
    E = S.sub_(top).exp_()  # the kernel exp(S - row max), in place
    total = E.sum(-1)
    top = top.squeeze(-1)
    out = [pos_scores - (top + total.log()) + math.log(C)]
    if keep is not None:
        own_out = ~keep[pos]  # rows whose positive is not among the kept columns: added back
        kept = (E @ keep.to(E.dtype).view(C, 1)).squeeze(-1) + E.gather(-1, pos.view(1, R, 1).expand(P, R, 1)
                                                                        ).squeeze(-1) * own_out
        count = (keep.sum() + own_out).to(S.dtype)
        out.append(pos_scores - (top + kept.log()) + count.log())
    if pool_noise:
        squares = (E.view(P * R, 1, C) @ E.view(P * R, C, 1)).view(P, R)  # a dot per row: no copy of E
        out.append((C * squares / total.square() - 1.0).clamp_min(0.0))
    return out


def reweighted_mean(per_row: torch.Tensor, w_rows: torch.Tensor) -> torch.Tensor:
    """(P, B) the mean of per-row terms (P, R) under B row weightings ``w_rows`` (B, R): a bound
    whose terms depend on its row alone (InfoNCE with the pool kept as drawn) on B resamples."""
    w = w_rows.to(per_row)
    return (per_row @ w.T) / w.sum(-1)


def _neg_logmeanexp(S: torch.Tensor, neg_mask: torch.Tensor) -> torch.Tensor:
    n_neg = int(neg_mask.sum())
    return S.masked_fill(~neg_mask, float("-inf")).flatten(1).logsumexp(-1) - math.log(n_neg)


def dv(S: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Donsker-Varadhan: E_p[T] - log E_q[exp T] (log-mean-exp computed stably)."""
    pos_scores, neg_mask = _pos_and_neg_mask(S, pos)
    return pos_scores.mean(-1) - _neg_logmeanexp(S, neg_mask)


def smile(S: torch.Tensor, pos: torch.Tensor, clip: float = 5.0) -> torch.Tensor:
    """SMILE (Song & Ermon 2020): DV with the partition term on clip(T, -clip, clip),
    trading a little bias for far lower variance."""
    pos_scores, neg_mask = _pos_and_neg_mask(S, pos)
    return pos_scores.mean(-1) - _neg_logmeanexp(S.clamp(-clip, clip), neg_mask)


def nwj(S: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """NWJ / f-divergence bound: E_p[T] - E_q[exp(T - 1)]."""
    pos_scores, neg_mask = _pos_and_neg_mask(S, pos)
    n_neg = int(neg_mask.sum())
    neg = torch.where(neg_mask, (S - 1.0).clamp(max=80.0).exp(), torch.zeros((), dtype=S.dtype, device=S.device))
    return pos_scores.mean(-1) - neg.flatten(1).sum(-1) / n_neg


def js_fgan(S: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon f-GAN objective E_p[-softplus(-T)] - E_q[softplus(T)]: SMILE's training
    signal (bounded, low variance; its optimum is the same log density ratio)."""
    pos_scores, neg_mask = _pos_and_neg_mask(S, pos)
    n_neg = int(neg_mask.sum())
    neg = torch.where(neg_mask, F.softplus(S), torch.zeros((), dtype=S.dtype, device=S.device))
    return -F.softplus(-pos_scores).mean(-1) - neg.flatten(1).sum(-1) / n_neg


def neg_logmeanexp(S: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """log E_q[exp T] over the negatives (used by MINE's moving-average gradient correction)."""
    _, neg_mask = _pos_and_neg_mask(S, pos)
    return _neg_logmeanexp(S, neg_mask)


class Bound:
    """A variational bound as the trainer uses it: the value it evaluates and reports, what the
    optimiser maximises, and how its value is recomputed on bootstrap reweightings of the rows."""

    name = ""
    per_row = False  # a mean of per-row terms (InfoNCE): streamed over rows, pooled, reweighted row by row
    capped_by_pool = False  # never above log(candidates): a pair near it can no longer rank checkpoints

    def __init__(self, clip: float = 5.0) -> None:
        self.clip = clip

    def value(self, S: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """(P,) nats of scores S (P, R, C) whose row r's own candidate is column pos[r]."""
        raise NotImplementedError

    def training(self, S: torch.Tensor, pos: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the value, what the optimiser maximises) of a batch's scores of the pairs ``pairs``."""
        value = self.value(S, pos)
        return value, value

    def weighted(self, S: torch.Tensor, pos: torch.Tensor, w_rows: torch.Tensor) -> torch.Tensor:
        """(P, B) the value on B reweightings of the rows (the candidate pool kept as drawn)."""
        return weighted_bound(self.name, S, pos, w_rows, clip=self.clip)


class InfoNCEBound(Bound):
    name, per_row, capped_by_pool = "infonce", True, True

    def value(self, S: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return infonce(S, pos)


class DVBound(Bound):
    name = "dv"

    def value(self, S: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return dv(S, pos)


class NWJBound(Bound):
    name = "nwj"

    def value(self, S: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return nwj(S, pos)


class SMILEBound(Bound):
    name = "smile"

    def value(self, S: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return smile(S, pos, self.clip)

    def training(self, S: torch.Tensor, pos: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # SMILE (Song & Ermon 2020, their reference code): the value is the clipped DV, the gradient
        # comes from the Jensen-Shannon f-GAN bound. Training on the clipped DV itself is unbounded
        # (E_p[T] is not clipped) and blew up to 1e21 bits.
        return smile(S, pos, self.clip), js_fgan(S, pos)


class MINEBound(DVBound):
    """DV, trained with MINE's moving average of E[e^T] in the partition term's gradient: d/dθ log
    E[e^T] = E[∇T e^T] / E[e^T], and dividing by a moving average instead of the minibatch value
    removes most of the minibatch gradient bias. Keeps each pair's log moving average."""

    def __init__(self, ema: float, pairs: int, clip: float = 5.0) -> None:
        super().__init__(clip)
        self.ema = ema
        self.log_ema = torch.full((pairs,), math.nan, dtype=torch.float32)

    def training(self, S: torch.Tensor, pos: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos_mean = S.diagonal(dim1=1, dim2=2).mean(-1)
        lme = neg_logmeanexp(S, pos)
        lme_d = lme.detach()
        prev = self.log_ema[pairs].to(S.device)
        new_ema = torch.where(torch.isnan(prev), lme_d, torch.logaddexp(
            prev + math.log(1.0 - self.ema), lme_d + math.log(self.ema)))
        self.log_ema[pairs] = new_ema.cpu()
        return pos_mean - lme, pos_mean - lme * torch.exp(lme_d - new_ema)


# one class per name TrainConfig accepts (train_config.BOUNDS)
BOUND_CLASSES: dict[str, type[Bound]] = {c.name: c for c in (InfoNCEBound, DVBound, NWJBound, SMILEBound)}


def bound_for(name: str, ema: float | None, pairs: int, clip: float = 5.0) -> Bound:
    """The bound a training of ``pairs`` critics uses (``name`` checked by TrainConfig): MINE's DV
    when ``ema`` is set, else by name."""
    return MINEBound(ema, pairs, clip) if ema is not None else BOUND_CLASSES[name](clip)


# --------------------------------------------------------------------------- weighted rows
# The bootstrap resamples sample ids: a resample is a weight (a count) per row and per candidate.
# Every bound above has a weighted form, and with all weights 1 it is the bound itself, so one
# evaluation of the critic gives the value and all its bootstrap replicates.  The candidate sums
# are one matmul (P, R, C) @ (C, B) per chunk of pairs.

def weighted_bound(name: str, S: torch.Tensor, pos: torch.Tensor, w_rows: torch.Tensor,
                   w_cand: torch.Tensor | None = None, clip: float = 5.0) -> torch.Tensor:
    """(P, B) bound on B reweightings: ``w_rows`` (B, R) weights the rows (positives),
    ``w_cand`` (B, C) the candidate columns (row r's own candidate is column pos[r]); None keeps
    the pool as drawn, where an InfoNCE row's term depends on that row alone and the bound is
    the reweighted mean of the terms (P·R·B work instead of P·R·C·B)."""
    if name not in BOUNDS:
        raise ValueError(f"unknown bound {name!r}; expected one of {BOUNDS}")
    if w_cand is None and name == "infonce":
        return reweighted_mean(infonce_rows(S, pos).double(), w_rows)
    if w_cand is None:
        w_cand = torch.ones(w_rows.shape[0], S.shape[-1], device=S.device)
    pos_scores, neg_mask = _pos_and_neg_mask(S, pos)
    wr, wc = w_rows.to(S), w_cand.to(S)
    T = S.clamp(-clip, clip) if name == "smile" else S
    if name == "nwj":
        E, m = (T - 1.0).clamp(max=80.0).exp(), torch.zeros_like(T[..., :1])
    else:
        m = T.amax(-1, keepdim=True)
        E = (T - m).exp()
    if name != "infonce":  # the DV family and NWJ average over the negatives only
        E = E * neg_mask
        den = wc.sum(-1).unsqueeze(0) - wc.index_select(1, pos).T  # (R, B): weight of row r's negatives
    else:
        den = wc.sum(-1).unsqueeze(0).expand(pos.numel(), -1)
    # clamp: a row whose every weighted candidate underflows would give log 0
    num = torch.matmul(E, wc.T).clamp_min(1e-30)  # (P, R, B)
    total = wr.sum(-1)  # (B,)
    mean_pos = (pos_scores @ wr.T) / total  # (P, B)
    if name == "infonce":
        b = num.log() + m - den.log()  # (P, R, B): log of row r's weighted mean of exp(T)
        return mean_pos - torch.einsum("prb,br->pb", b, wr) / total
    if name == "nwj":
        return mean_pos - torch.einsum("prb,br->pb", num, wr) / torch.einsum("rb,br->b", den, wr)
    # DV / SMILE: log of the weighted mean of exp(T) over every (row, negative) pair
    lse = torch.logsumexp(num.log() + m + wr.T.log().unsqueeze(0), dim=1)  # (P, B)
    return mean_pos - lse + torch.einsum("rb,br->b", den, wr).log()
