"""The reference estimator of docs/METHOD.md section 4 ("paper mode"), reproduced for parity only.

Donsker-Varadhan with a joint MLP critic on [x; y]:
2d -> 768 -> 384 -> 192 -> 96 -> 48 -> 24 -> 12 -> 6 -> 3 -> 1, LeakyReLU, Xavier-normal weights,
zero biases; loss -(mean T(x, y) - log mean exp T(x, y_perm)) with one fresh random permutation
of y per step; Adam lr 1e-4, 5 warm-up steps then cubic polynomial decay to 1e-8 (the schedule
of transformers' get_polynomial_decay_schedule_with_warmup, which starts at lr 0); full batch;
``steps`` (10,000) steps; reported value = MAX training-batch estimate over all steps x log2(e).
No held-out data, no standardisation and no copula preprocessing (the robust estimators'
default, docs/METHOD.md section 5, is OFF here because the paper fed raw activations): its known
upward bias and its sensitivity to heavy-tailed coordinates are part of what it reproduces.
The log-mean-exp is computed stably (same value, no overflow).  P pairs are trained together
with batched matmuls; each pair's trajectory is the same as alone.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import numpy as np

from ..progress import Progress
from .base import LOG2E, Estimator, MIEstimate, resolve_device, seed_interval

# registry names of this module's estimators (read by estimators/__init__.py without importing it)
REGISTRY = {"mine-paper": "MinePaper"}

WIDTHS = (768, 384, 192, 96, 48, 24, 12, 6, 3, 1)


def poly_warmup_lr(step: int, total: int, lr: float, warmup: int = 5, end: float = 1e-8, power: float = 3.0) -> float:
    """Learning rate at optimiser step ``step`` (0-based), as the HF scheduler gives it."""
    if step < warmup:
        return lr * step / max(1, warmup)
    if step > total:
        return end
    remaining = 1.0 - (step - warmup) / max(1, total - warmup)
    return (lr - end) * remaining**power + end


class MinePaper(Estimator):
    name = "mine-paper"
    defaults: ClassVar[dict[str, Any]] = {
        "steps": 10_000,
        "lr": 1e-4,
        "warmup": 5,
        "lr_end": 1e-8,
        "negative_slope": 0.01,  # LeakyReLU default
        "eval_fraction": 0.2,  # only for the common sample-count check; no split is used
        "drop_constant": True,  # the reference never checked; constant columns are harmless here
        "record_trace": False,  # keep every step's training estimate (bits) in settings["trace_bits"]
    }

    def estimate_many(
        self, xs: np.ndarray, ys: np.ndarray, seeds: Sequence[int] = (0,), device: Any = None
    ) -> list[MIEstimate]:
        import torch

        s = self.settings
        t0, seeds, xs, ys = self._start(xs, ys, seeds, eval_fraction=s["eval_fraction"], drop_constant=s["drop_constant"])
        dev = resolve_device(device)
        X = torch.as_tensor(np.ascontiguousarray(xs, dtype=np.float32), device=dev)
        Y = torch.as_tensor(np.ascontiguousarray(ys, dtype=np.float32), device=dev)
        # the protocol runs 10,000 full-batch steps: say how far it is (a line a minute without a terminal)
        with Progress(f"mine-paper training ({len(xs)} pairs)", len(seeds) * int(s["steps"]), "step",
                      terminal=False) as progress:
            runs = [self._train_seed(X, Y, int(seed), dev, progress) for seed in seeds]
        return self._estimates(runs, seeds, xs.shape[1], self._clock() - t0, str(dev))

    def _train_seed(self, X: Any, Y: Any, seed: int, dev: Any, progress: Progress) -> tuple[Any, Any, list]:
        """One seed of the protocol: (best training estimate per pair in nats, diverged, trace)."""
        import torch

        s, (P, n, _) = self.settings, X.shape
        critic, params = _critic(P, X.shape[2] + Y.shape[2], seed, s["negative_slope"], dev)
        opt = torch.optim.Adam(params, lr=s["lr"])
        best = torch.full((P,), -math.inf, dtype=torch.float64)
        dead = torch.zeros(P, dtype=torch.bool)
        perm_gen = torch.Generator().manual_seed(seed + 7919)
        trace: list[list[float]] = []
        steps = int(s["steps"])
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = poly_warmup_lr(step, steps, s["lr"], s["warmup"], s["lr_end"])
            perm = torch.randperm(n, generator=perm_gen).to(dev)
            t = critic(torch.cat([torch.cat([X, Y], dim=2), torch.cat([X, Y[:, perm]], dim=2)], dim=1))  # (P, 2n)
            mi = t[:, :n].mean(1) - (t[:, n:].logsumexp(1) - math.log(n))  # (P,) nats
            val = mi.detach().double().cpu()
            if s["record_trace"]:
                trace.append((val * LOG2E).tolist())
            dead |= ~torch.isfinite(val)  # the reference stops at the first NaN; we flag it as diverged
            best = torch.where(~dead & (val > best), val, best)
            progress.update(1)
            if dead.all():
                break
            loss = -torch.where((~dead).to(dev), mi, torch.zeros((), device=dev)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return best, dead, trace

    def _estimates(self, runs: list[tuple[Any, Any, list]], seeds: tuple[int, ...], n: int, elapsed: float,
                   device: str) -> list[MIEstimate]:
        s, P = self.settings, len(runs[0][0])
        out = []
        for p in range(P):
            vals = tuple(float(best[p] * LOG2E) for best, _, _ in runs)
            diverged = any(bool(dead[p]) for _, dead, _ in runs)
            mean, lo, hi = seed_interval(vals) if not diverged else (math.nan,) * 3
            trace = {"trace_bits": [[row[p] for row in tr] for _, _, tr in runs]} if s["record_trace"] else {}
            settings = {**s, "device": device, "reported": "max training-batch DV x log2(e)",
                        "preprocess": "none (the paper's protocol: raw inputs)", "batch_pairs": P,
                        "batch_seconds": elapsed, **trace}
            out.append(MIEstimate(bits=mean, ceiling_bits=None, saturated=False, n_train=n, n_eval=0, method=self.name,
                                  seconds=elapsed / P, seeds=seeds, bits_per_seed=vals, ci_low=lo, ci_high=hi,
                                  settings=settings, diverged=diverged))
        return out


def _critic(P: int, d_in: int, seed: int, negative_slope: float, dev: Any) -> tuple[Any, list[Any]]:
    """P independent copies of the reference MLP on [x; y] (Xavier-normal weights, zero bias), as
    batched matrices; returns (forward function, parameters)."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    dims = (d_in,) + WIDTHS
    ws, bs = [], []
    for fi, fo in zip(dims[:-1], dims[1:]):
        std = math.sqrt(2.0 / (fi + fo))  # xavier_normal_
        ws.append((torch.randn(fi, fo, generator=gen) * std).expand(P, fi, fo).clone().to(dev).requires_grad_(True))
        bs.append(torch.zeros(P, 1, fo, device=dev, requires_grad=True))

    def forward(z: Any) -> Any:
        for i, (w, b) in enumerate(zip(ws, bs)):
            z = torch.baddbmm(b, z, w)
            if i < len(ws) - 1:
                z = F.leaky_relu(z, negative_slope)
        return z.squeeze(-1)

    return forward, ws + bs
