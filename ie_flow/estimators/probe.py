"""Usable information about a sequence-level target (docs/METHOD.md section 8).

For a per-sequence label s and the representation h = H_l[t] of each sequence, the usable information
of a probe family V is U = H(s) - CE(s | h) under the best probe of V (Xu et al. 2020, "V-information";
a Barber-Agakov lower bound on I(s; h), and so on I(s; prefix_t) for a deterministic model). Here V is
the linear-softmax family (multinomial logistic regression on the standardised coordinates), fitted,
tuned and reported on three disjoint splits, made by *group* (e.g. the set of names of a sequence) so
that a probe cannot score by memorising the tuples it was fitted on:

- fit: the probes of a grid of L2 penalties are trained (full batch, preconditioned gradient descent
  with momentum), plus the constant predictor (the fit split's label frequencies), which is also the
  baseline of every gain;
- tune: the penalty with the lowest cross-entropy is chosen (the constant predictor included, so a cell
  with nothing to decode reads 0, not a noisy negative);
- report: ``bits`` is the mean gain over the report rows, log2 q(s|h) - log2 p_fit(s): a held-out value
  that no report row helped to fit or to choose (a lower bound on U in expectation).

A fitted probe is pessimistic on held-out rows and optimistic on the rows it was fitted on (to first
order by the same amount: the effective number of parameters over 2 n_fit, Takeuchi's criterion), so
the cell's reading is a bracket: the interval runs from the report value's lower 95% end to the upper
one of the chosen probe refitted on all rows at its penalty and read in sample (optimistic in
expectation, and the least so a probe fitted on these rows can be), each with its spread from a
bootstrap over sample ids (the probes kept fixed, the same resamples for every cell, so cells can be
differenced replicate by replicate) and, with several seeds, the t-interval over their splits. The
midpoint of the report and fit values of one probe, ``diagnostics["corrected_bits"]``, is the point
estimate of the family's U. A cell where no probe beat the constant predictor reads 0 with an
interval up to what its tune rows could have detected. All cells of a call (P, n, d) and all penalties
are fitted together as one batched model, on CPU or CUDA.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .base import (LOG2E, Estimator, MIEstimate, bootstrap_weights, detection_limit_bits, estimate_interval,
                   resolve_device)

REGISTRY = {"probe": "UsableInformation"}
VARIANT = "linear-softmax"  # the probe family, shown with every result (a richer family may find more)
PROBE_FAMILY = "linear-softmax (multinomial logistic regression on standardised coordinates, L2 penalty tuned)"
MOMENTUM = 0.5  # the preconditioned problem is well conditioned: light momentum suffices
MIN_CLASS_ROWS = 8  # rows of every class in every split: fewer cannot fit, tune or report a probe


@dataclass(frozen=True)
class Splits:
    """Row indices of the three disjoint splits (sorted), made by group."""

    fit: np.ndarray
    tune: np.ndarray
    report: np.ndarray


def split_by_group(groups: np.ndarray, eval_fraction: float, tune_fraction: float, seed: int) -> Splits:
    """Whole groups go to one split: groups in a seeded random order fill the report split to
    eval_fraction of the rows, then the tune split to tune_fraction; the rest fit."""
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9E0BE]))
    order = rng.permutation(counts.size)
    filled = np.cumsum(counts[order]) / groups.size
    part = np.empty(counts.size, dtype=np.int8)  # 0 report, 1 tune, 2 fit
    part[order] = np.where(filled <= eval_fraction, 0, np.where(filled <= eval_fraction + tune_fraction, 1, 2))
    row_part = part[inverse]
    return Splits(*(np.flatnonzero(row_part == k) for k in (2, 1, 0)))


def label_entropy_bits(labels: np.ndarray) -> float:
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def check_labels(labels: np.ndarray, groups: np.ndarray | None, eval_fraction: float, tune_fraction: float,
                 seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Integer class ids 0..K-1 and the groups, or a ValueError that says what is wrong: fewer than two
    classes, or a class with fewer than MIN_CLASS_ROWS rows in one of the splits a seed makes."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    classes, ids = np.unique(labels, return_inverse=True)
    if classes.size < 2:
        raise ValueError(f"the label is constant ({classes[0].item()!r} on all {labels.size} rows): nothing to decode")
    groups = np.arange(labels.size) if groups is None else np.asarray(groups)
    if groups.shape != labels.shape:
        raise ValueError(f"groups must have one entry per label: {groups.shape} vs {labels.shape}")
    for seed in seeds:
        splits = split_by_group(groups, eval_fraction, tune_fraction, seed)
        for name, rows in (("fit", splits.fit), ("tune", splits.tune), ("report", splits.report)):
            counts = np.bincount(ids[rows], minlength=classes.size)
            if counts.min() < MIN_CLASS_ROWS:
                k = int(counts.argmin())
                raise ValueError(
                    f"label class {classes[k].item()!r} has {int(counts[k])} rows in the {name} split (seed {seed}); "
                    f"every class needs at least {MIN_CLASS_ROWS} in each of the fit, tune and report splits "
                    f"({labels.size} rows, eval_fraction={eval_fraction}, tune_fraction={tune_fraction})")
    return ids.astype(np.int64), groups


def _standardise(x: Any, fit_rows: Any) -> Any:
    """Coordinates standardised with the fit rows' statistics; a coordinate constant there is zeroed."""
    import torch

    mean = x[:, fit_rows].mean(dim=1, keepdim=True)
    std = x[:, fit_rows].std(dim=1, keepdim=True)
    return (x - mean) * torch.where(std > 0, 1.0 / std, torch.zeros_like(std))


def _fit(xf: Any, onehot: Any, log_prior: Any, penalties: Any, steps: int) -> tuple[Any, Any]:
    """Probes of every (cell, penalty): the mean cross-entropy + penalty/2 |W|^2 (bias unpenalised,
    started at the log prior) minimised by preconditioned gradient descent with momentum. penalties:
    (A,) for every cell, or (C, A) one row per cell.

    In the eigenbasis of the fit rows' Gram matrix X'X/n (eigenvalues lam) the Hessian is at most
    diag(lam / 2 + penalty), since the softmax's is at most 1/2: scaling each coordinate's step by its
    inverse is safe and makes the steps about equally fast in every direction, however ill-conditioned
    the representation (a few coordinates of a language model hold most of its variance). The penalty
    is on the rotated weights, whose norm is the same. The penalties are columns of one matrix per cell
    (C, d, A*K), so a step is two batched matrix products; fewer steps than convergence needs act as
    extra regularisation, which the tune split sees like any other."""
    import torch

    c, n, d = xf.shape
    a, k = penalties.shape[-1], onehot.shape[1]
    gram = xf.transpose(1, 2) @ xf / n
    # one thread: LAPACK's threaded eigh spins when the cores are shared (another task, another job):
    # a 576 x 576 Gram matrix took 0.4-8 s on 2 threads with one other busy process, 0.02-0.03 s on one
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lam, basis = torch.linalg.eigh(gram)  # (C, d), (C, d, d)
    finally:
        torch.set_num_threads(prev)
    z = xf @ basis
    zt = z.transpose(1, 2).contiguous()
    pen_cols = penalties.reshape(-1, 1, a).repeat_interleave(k, dim=-1)  # (1 or C, 1, A*K)
    step = 1.0 / (0.5 * lam.clamp(min=0)[:, :, None] + pen_cols)  # (C, d, A*K)
    target = onehot.repeat(1, a)[None]  # (1, n, A*K)
    u = z.new_zeros(c, d, a * k)
    b = log_prior.repeat(a).expand(c, 1, a * k).clone()
    u_look, b_look = u, b
    for _ in range(steps):
        err = torch.softmax(torch.baddbmm(b_look, z, u_look).view(c, n, a, k), dim=-1).view(c, n, a * k) - target
        u_next = u_look - step * (torch.bmm(zt, err) / n + pen_cols * u_look)
        b_next = b_look - 2.0 * err.mean(dim=1, keepdim=True)
        u_look = u_next + MOMENTUM * (u_next - u)
        b_look = b_next + MOMENTUM * (b_next - b)
        u, b = u_next, b_next
    return (basis @ u).view(c, d, a, k), b.view(c, a, k)


def _log_q(x: Any, w: Any, b: Any) -> Any:
    """log q(s | x) of every probe: (C, A, m, K)."""
    import torch

    c, d, a, k = w.shape
    logits = torch.baddbmm(b.view(c, 1, a * k), x, w.reshape(c, d, a * k)).view(c, -1, a, k)
    return torch.log_softmax(logits, dim=-1).permute(0, 2, 1, 3)


def _row_gains(x: Any, ids: Any, rows: Any, penalties: Any, steps: int, n_classes: int) -> Any:
    """Per-row log-likelihood gains (nats) over the constant predictor of `rows` of the probes fitted
    on `rows` (standardised with their statistics), on all rows: (C, A, n)."""
    import torch

    counts = torch.bincount(ids[rows], minlength=n_classes).to(x.dtype)
    log_prior = torch.log((counts + 0.5) / (counts.sum() + 0.5 * n_classes))  # never log 0
    xs = _standardise(x, rows)
    w, b = _fit(xs[:, rows], torch.nn.functional.one_hot(ids[rows], n_classes).to(x.dtype), log_prior, penalties, steps)
    lq = _log_q(xs, w, b)  # (C, A, n, K)
    return lq.gather(-1, ids.view(1, 1, -1, 1).expand(*lq.shape[:3], 1))[..., 0] - log_prior[ids]


def _gains(x: Any, ids: Any, splits: Splits, penalties: Any, steps: int, n_classes: int) -> tuple[Any, Any, Any]:
    """Per-row gains (bits) of each cell's chosen probe on all rows (C, n); the in-sample gains (C, n)
    of that probe refitted on all rows at its chosen penalty (the bracket's upper side: the most rows
    a probe can be fitted on, so the least optimism); and the chosen penalty (C,; inf = the constant
    predictor, whose gains are 0)."""
    import torch

    fit, tune = (torch.as_tensor(r, device=x.device) for r in (splits.fit, splits.tune))
    row_ll = _row_gains(x, ids, fit, penalties, steps, n_classes)  # (C, A, n)
    tune_gain = row_ll[:, :, tune].mean(dim=2)  # (C, A); the constant predictor gains 0
    best = tune_gain.argmax(dim=1)
    use_probe = (tune_gain.gather(1, best[:, None])[:, 0] > 0)[:, None]
    chosen = row_ll.gather(1, best.view(-1, 1, 1).expand(-1, 1, row_ll.shape[2]))[:, 0]
    gains = torch.where(use_probe, chosen, torch.zeros_like(chosen)) * LOG2E
    every = torch.arange(x.shape[1], device=x.device)
    refit = _row_gains(x, ids, every, penalties[best][:, None], steps, n_classes)[:, 0]
    in_sample = torch.where(use_probe, refit, torch.zeros_like(refit)) * LOG2E
    penalty = torch.where(use_probe[:, 0], penalties[best], torch.full_like(penalties[best], math.inf))
    return gains, in_sample, penalty


class UsableInformation(Estimator):
    """Usable information (bits) of a linear-softmax probe about a per-sequence label (module docstring)."""

    name = "probe"
    defaults: dict[str, Any] = {
        "eval_fraction": 0.25,  # report split (rows, filled by whole groups)
        "tune_fraction": 0.15,  # tune split: chooses the penalty
        "penalties": (1.0, 0.3, 0.1, 0.03, 0.01, 0.003),
        "steps": 30,
        "bootstrap": 200,
        "bootstrap_seed": 0,
        "cells_per_batch": 16,  # cells fitted together: memory ~ cells * penalties * n * classes floats
        "threads": 0,
    }

    measures_target = True
    saturates = False  # its ceiling is the exact I(s; prefix): reaching it is a full reading, not a bound
    takes_float16 = True  # converted to float32 a batch of cells at a time
    diagnostics = ("corrected_bits", "fit_bits", "refit_bits", "penalty", "label_entropy_bits", "above_ceiling_bits")

    def variants(self) -> tuple[str, ...]:
        return (VARIANT,)

    def memory_plan(self, pairs: int, n: int, dx: int, dy: int, itemsize: int, eval_fraction: float) -> int:
        """The cells' stacks (one side each) and, per batch of cells fitted together, four float32 copies
        of its features (as given, standardised, the fit rows, rotated) and the probes' logits: 16 cells
        of n = 4,096, d = 576 measured 575 MiB above their stacks, 588 MiB planned."""
        batch = min(pairs, max(1, int(self.settings["cells_per_batch"])))
        return pairs * n * dx * itemsize + batch * n * (4 * dx + 4 * len(self.settings["penalties"]) * 2) * 4

    def check_target(self, labels: np.ndarray, groups: np.ndarray | None, seeds: Sequence[int] = (0,)) -> str | None:
        try:
            check_labels(labels, groups, self.settings["eval_fraction"], self.settings["tune_fraction"], seeds)
        except ValueError as e:
            return str(e)
        return None

    def estimate_target_cells(self, xs: np.ndarray, labels: np.ndarray, groups: np.ndarray | None,
                              ceilings: Sequence[float | None] | None = None, seeds: Sequence[int] = (0,),
                              device: Any = None) -> list[list[MIEstimate]]:
        return [[e] for e in self.estimate_targets(xs, labels, groups, seeds, device, ceilings)]

    def estimate_targets(self, xs: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None,
                         seeds: Sequence[int] = (0,), device: Any = None,
                         ceilings: Sequence[float | None] | None = None) -> list[MIEstimate]:
        """xs (P, n, d): one representation per cell; labels (n,): the target of each row; groups (n,):
        rows that share a group never straddle two splits; ceilings (P,): the exact I(s; prefix) of each
        cell where the corpus knows it (flagged when the interval's upper end exceeds it)."""
        import torch

        t0 = self._clock()
        s = self.settings
        seeds = self._check_seeds(seeds)
        xs = np.asarray(xs)
        if xs.ndim != 3 or xs.shape[1] != np.asarray(labels).shape[0]:
            raise ValueError(f"features must be (P, n, d) with n = len(labels), got {xs.shape} and {np.shape(labels)}")
        if not np.isfinite(xs).all():
            raise ValueError("features contain non-finite values")
        ids, groups = check_labels(labels, groups, s["eval_fraction"], s["tune_fraction"], seeds)
        dev = resolve_device(device)
        prev = torch.get_num_threads()
        if s["threads"] and dev.type == "cpu":
            torch.set_num_threads(int(s["threads"]))
        try:
            per_seed = [self._one_split(xs, ids, groups, seed, dev) for seed in seeds]
        finally:
            torch.set_num_threads(prev)
        return self._estimates(per_seed, ids, seeds, ceilings, self._clock() - t0)

    def _one_split(self, xs: np.ndarray, ids: np.ndarray, groups: np.ndarray, seed: int, dev: Any) -> dict[str, Any]:
        """Every cell's probe on the splits of one seed: values and bootstrap replicates (bits)."""
        import torch

        s = self.settings
        splits = split_by_group(groups, s["eval_fraction"], s["tune_fraction"], seed)
        ids_t = torch.as_tensor(ids, device=dev)
        penalties = torch.tensor([float(p) for p in s["penalties"]], dtype=torch.float32, device=dev)
        n_classes = int(ids.max()) + 1
        boot = bootstrap_weights(xs.shape[1], int(s["bootstrap"]), int(s["bootstrap_seed"])) if s["bootstrap"] else None
        out: dict[str, list] = {"report": [], "fit": [], "refit": [], "penalty": [], "rep_report": [], "rep_refit": []}
        every = np.arange(xs.shape[1])
        step = max(1, int(s["cells_per_batch"]))
        for c0 in range(0, xs.shape[0], step):
            x = torch.as_tensor(np.ascontiguousarray(xs[c0:c0 + step], dtype=np.float32), device=dev)
            gains, in_sample, penalty = _gains(x, ids_t, splits, penalties, int(s["steps"]), n_classes)
            g, g_all = gains.double().cpu().numpy(), in_sample.double().cpu().numpy()
            out["report"].extend(g[:, splits.report].mean(axis=1))
            out["fit"].extend(g[:, splits.fit].mean(axis=1))
            out["refit"].extend(g_all.mean(axis=1))
            out["penalty"].extend(penalty.cpu().numpy())
            if boot is not None:
                out["rep_report"].extend(_weighted_means(g, boot, splits.report))
                out["rep_refit"].extend(_weighted_means(g_all, boot, every))
        out["n"] = (splits.fit.size, splits.tune.size, splits.report.size)
        return out

    def _estimates(self, per_seed: list[dict[str, Any]], ids: np.ndarray, seeds: tuple[int, ...],
                   ceilings: Sequence[float | None] | None, seconds: float) -> list[MIEstimate]:
        s = self.settings
        entropy = label_entropy_bits(ids)
        n_fit, n_tune, n_report = per_seed[0]["n"]
        P = len(per_seed[0]["report"])
        out = []
        for p in range(P):
            report, fit, refit = ([r[side][p] for r in per_seed] for side in ("report", "fit", "refit"))
            bits, lo, _ = estimate_interval(report, _mean_replicates(per_seed, "rep_report", p))
            refit_bits, _, hi = estimate_interval(refit, _mean_replicates(per_seed, "rep_refit", p))
            fit_bits = float(np.mean(fit))
            if all(math.isinf(r["penalty"][p]) for r in per_seed):
                # no probe beat the constant predictor on the tune rows: the value is 0, but U up to
                # what those rows could have detected is not excluded
                hi = max(hi, detection_limit_bits(n_tune, 0.0))
            ceiling = entropy if ceilings is None or ceilings[p] is None else float(ceilings[p])
            diag = {"corrected_bits": (bits + fit_bits) / 2, "fit_bits": fit_bits, "refit_bits": refit_bits,
                    "penalty": float(per_seed[0]["penalty"][p]), "label_entropy_bits": entropy,
                    "above_ceiling_bits": max(0.0, hi - ceiling)}
            out.append(MIEstimate(
                bits=bits, ceiling_bits=ceiling, saturated=False, n_train=n_fit, n_eval=n_report,
                method=self.name, seconds=seconds / max(1, P), seeds=seeds, bits_per_seed=tuple(map(float, report)),
                ci_low=lo, ci_high=hi, diagnostics=diag,
                settings={**s, "probe_family": PROBE_FAMILY, "n_tune": n_tune,
                          "interval": "from the report value's lower end to the refit in-sample value's upper end"},
                replicate_bits=tuple(_mean_replicates(per_seed, "rep_report", p) if s["bootstrap"] else ()),
                variant=VARIANT))
        return out


def _mean_replicates(per_seed: list[dict[str, Any]], key: str, p: int) -> np.ndarray | None:
    """Cell p's bootstrap replicates averaged over seeds (None without a bootstrap)."""
    return np.mean([r[key][p] for r in per_seed], axis=0) if per_seed[0][key] else None


def _weighted_means(g: np.ndarray, boot: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(C, B): each cell's mean gain over `rows` on each bootstrap resample of the sample ids."""
    w = boot[:, rows].astype(np.float64)
    return (g[:, rows] @ w.T) / w.sum(axis=1)[None, :]
