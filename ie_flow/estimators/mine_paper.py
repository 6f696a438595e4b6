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

from .base import LOG2E, Estimator, MIEstimate, validate_pairs

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
        import torch.nn.functional as F

        from .base import resolve_device, seed_interval

        t0 = self._clock()
        seeds = self._check_seeds(seeds)
        s = self.settings
        xs, ys = validate_pairs(xs, ys, eval_fraction=s["eval_fraction"], drop_constant=s["drop_constant"], batched=True)
        dev = resolve_device(device)
        P, n, dx = xs.shape
        dy = ys.shape[2]
        X = torch.as_tensor(np.ascontiguousarray(xs, dtype=np.float32), device=dev)
        Y = torch.as_tensor(np.ascontiguousarray(ys, dtype=np.float32), device=dev)
        steps = int(s["steps"])
        per_seed: list[np.ndarray] = []
        div_seed: list[np.ndarray] = []
        traces: list[list[list[float]]] = []
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed))
            dims = (dx + dy,) + WIDTHS
            ws, bs = [], []
            for fi, fo in zip(dims[:-1], dims[1:]):
                std = math.sqrt(2.0 / (fi + fo))  # xavier_normal_
                w = (torch.randn(fi, fo, generator=gen) * std).expand(P, fi, fo).clone()
                ws.append(w.to(dev).requires_grad_(True))
                bs.append(torch.zeros(P, 1, fo, device=dev, requires_grad=True))
            opt = torch.optim.Adam(ws + bs, lr=s["lr"])
            best = torch.full((P,), -math.inf, dtype=torch.float64)
            dead = torch.zeros(P, dtype=torch.bool)
            perm_gen = torch.Generator().manual_seed(int(seed) + 7919)
            trace: list[list[float]] = []

            def critic(z: torch.Tensor) -> torch.Tensor:
                for i, (w, b) in enumerate(zip(ws, bs)):
                    z = torch.baddbmm(b, z, w)
                    if i < len(ws) - 1:
                        z = F.leaky_relu(z, s["negative_slope"])
                return z.squeeze(-1)

            for step in range(steps):
                for g in opt.param_groups:
                    g["lr"] = poly_warmup_lr(step, steps, s["lr"], s["warmup"], s["lr_end"])
                perm = torch.randperm(n, generator=perm_gen).to(dev)
                joint = torch.cat([X, Y], dim=2)
                marg = torch.cat([X, Y[:, perm]], dim=2)
                t = critic(torch.cat([joint, marg], dim=1))  # (P, 2n)
                mi = t[:, :n].mean(1) - (t[:, n:].logsumexp(1) - math.log(n))  # (P,) nats
                val = mi.detach().double().cpu()
                if s["record_trace"]:
                    trace.append((val * LOG2E).tolist())
                nan = ~torch.isfinite(val)
                dead |= nan  # the reference stops at the first NaN; we flag it as diverged
                live = ~dead
                best = torch.where(live & (val > best), val, best)
                if not live.any():
                    break
                loss = -torch.where(live.to(dev), mi, torch.zeros((), device=dev)).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            traces.append(trace)
            per_seed.append((best * LOG2E).numpy())
            div_seed.append(dead.numpy())
        elapsed = self._clock() - t0
        out = []
        for p in range(P):
            vals = tuple(float(v[p]) for v in per_seed)
            diverged = any(bool(d[p]) for d in div_seed)
            mean, lo, hi = seed_interval(vals) if not diverged else (math.nan,) * 3
            out.append(
                MIEstimate(
                    bits=mean,
                    ceiling_bits=None,
                    saturated=False,
                    n_train=n,
                    n_eval=0,
                    method=self.name,
                    seconds=elapsed / P,
                    seeds=seeds,
                    bits_per_seed=vals,
                    ci_low=lo,
                    ci_high=hi,
                    settings={**s, "device": str(dev), "reported": "max training-batch DV x log2(e)",
                              "preprocess": "none (the paper's protocol: raw inputs)",
                              "batch_pairs": P, "batch_seconds": elapsed,
                              **({"trace_bits": [[row[p] for row in tr] for tr in traces]} if s["record_trace"] else {})},
                    diverged=diverged,
                )
            )
        return out
