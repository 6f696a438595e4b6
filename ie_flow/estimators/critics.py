"""Batched separable critics: P independent critics stored as (P, d_in, d_out) tensors.

T(x, y) = <u(x), v(y)> / sqrt(k) + a(x) + b(y), with u, a from one network on x and v, b from
one on y.  Each side is a learned linear projection d -> hidden (the only cost that scales with
the input width), a residual MLP in the hidden width, and a linear head hidden -> k + 1.
The bilinear term is what a Gaussian pair needs (its log density ratio is bilinear plus
one-sided quadratics, which a(x) and b(y) absorb); the MLP lets the critic separate discrete
/ curved structure.  All pairs are applied at once with torch.baddbmm, so training 240 critics
is one set of large matmuls instead of 240 python loops.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Params = dict[str, torch.Tensor]


def _init_side(
    d: int, hidden: int, embed: int, layers: int, P: int, gen: torch.Generator, dtype: torch.dtype,
    zero_out: bool = False,
) -> Params:
    # Every pair starts from the same draw (generated once, expanded over P): a pair's
    # trajectory then does not depend on which other pairs share the batch, so
    # estimate_mi_many and estimate_mi agree for the same seed.
    def lecun(fan_in: int, fan_out: int, gain: float = 1.0) -> torch.Tensor:
        w = torch.randn(fan_in, fan_out, generator=gen, dtype=torch.float64) * (gain / math.sqrt(fan_in))
        return w.to(dtype).expand(P, fan_in, fan_out).clone()

    out_gain = 0.0 if zero_out else 1.0
    if hidden <= 0:  # purely linear side: d -> k + 1 directly (cheapest; no MLP possible)
        if layers:
            raise ValueError("layers > 0 needs hidden > 0")
        return {"w_out": lecun(d, embed + 1, out_gain), "b_out": torch.zeros(P, 1, embed + 1, dtype=dtype)}
    p: Params = {
        "w_in": lecun(d, hidden),
        "b_in": torch.zeros(P, 1, hidden, dtype=dtype),
    }
    for i in range(layers):
        p[f"w{i}a"] = lecun(hidden, hidden, math.sqrt(2.0))
        p[f"b{i}a"] = torch.zeros(P, 1, hidden, dtype=dtype)
        # residual branch starts small so the critic starts near its linear part
        p[f"w{i}b"] = lecun(hidden, hidden, 0.1)
        p[f"b{i}b"] = torch.zeros(P, 1, hidden, dtype=dtype)
    p["w_out"] = lecun(hidden, embed + 1, out_gain)
    p["b_out"] = torch.zeros(P, 1, embed + 1, dtype=dtype)
    return p


class SeparableCritic:
    """Holds the parameters of P separable critics (x side and y side)."""

    def __init__(
        self,
        P: int,
        dx: int,
        dy: int,
        *,
        hidden: int,
        embed: int,
        layers: int,
        seed: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + 17)
        self.layers = layers
        self.embed = embed
        x = _init_side(dx, hidden, embed, layers, P, gen, dtype)
        # the x side gets the same quadratic term: InfoNCE ignores x-only terms, but the DV/NWJ
        # critics must represent log p(x, y) / p(x)p(y) whole, whose x-only part is quadratic
        x["gamma"] = torch.zeros(P, 1, embed, dtype=dtype)
        self.x = {k: v.to(device).requires_grad_(True) for k, v in x.items()}
        # y head starts at zero: T == 0 at step 0, so every bound starts at exactly 0 bits (the
        # right answer for independent data) instead of at a random negative value; the x side
        # is random, so the y head still gets gradient
        y = _init_side(dy, hidden, embed, layers, P, gen, dtype, zero_out=True)
        # per-embedding-coordinate weight of a -v_k^2/2 term: gives b(y) the quadratic part a
        # Gaussian log density ratio has (a bilinear critic alone cannot represent it)
        y["gamma"] = torch.zeros(P, 1, embed, dtype=dtype)
        self.y = {k: v.to(device).requires_grad_(True) for k, v in y.items()}
        # log of a per-pair scale on all scores: Adam moves each weight by ~lr per step, so
        # reaching the large scores of a high-MI pair (rho=0.99: ~50 x.y) through the weights
        # alone takes thousands of steps; one scalar with its own larger lr gets there fast
        self.log_scale = torch.zeros(P, 1, 1, dtype=dtype, device=device, requires_grad=True)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.x.values()) + list(self.y.values())

    def state(self) -> dict[str, Params]:
        return {"x": self.x, "y": self.y, "s": {"log_scale": self.log_scale}}

    @staticmethod
    def side(p: Params, z: torch.Tensor, layers: int, sl: slice | None = None) -> torch.Tensor:
        """(P, n, d) standardised inputs -> (P, n, k + 1) features; ``sl`` picks a pair slice."""
        def g(t: torch.Tensor) -> torch.Tensor:
            return t if sl is None else t[sl]

        if "w_in" not in p:
            return torch.baddbmm(g(p["b_out"]), z, g(p["w_out"]))
        h = torch.baddbmm(g(p["b_in"]), z, g(p["w_in"]))
        for i in range(layers):
            r = F.gelu(torch.baddbmm(g(p[f"b{i}a"]), h, g(p[f"w{i}a"])))
            h = h + torch.baddbmm(g(p[f"b{i}b"]), r, g(p[f"w{i}b"]))
        return torch.baddbmm(g(p["b_out"]), h, g(p["w_out"]))

    @staticmethod
    def side_q(p: Params, z: torch.Tensor, layers: int, sl: slice | None = None) -> torch.Tensor:
        """``side`` plus the quadratic term -sum_k gamma_k v_k^2 / (2 sqrt k) folded into the
        one-sided output (a(x) or b(y))."""
        gy = SeparableCritic.side(p, z, layers, sl)
        gamma = p["gamma"] if sl is None else p["gamma"][sl]
        k = gy.shape[-1] - 1
        v = gy[..., :k]
        quad = -0.5 * (v * v * gamma).sum(-1, keepdim=True) / math.sqrt(k)
        return torch.cat([v, gy[..., k:] + quad], dim=-1)

    def scores(self, fx: torch.Tensor, gy: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        """(P, R, k+1) x-features and (P, C, k+1) y-features -> (P, R, C) critic values."""
        k = self.embed
        u, a = fx[..., :k], fx[..., k:]
        v, b = gy[..., :k], gy[..., k:]
        raw = torch.baddbmm(a + b.transpose(1, 2), u, v.transpose(1, 2), alpha=1.0 / math.sqrt(k))
        return raw * log_scale.exp()
