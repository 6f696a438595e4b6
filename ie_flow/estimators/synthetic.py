"""Ground-truth pairs with known MI (docs/METHOD.md section 6), shared by tests and benchmarks."""
from __future__ import annotations

import math

import numpy as np


def rotated_gaussian(d: int, bits: float, seed: int, n: int = 5000) -> tuple[np.ndarray, np.ndarray, float]:
    """d independent pairs with a common rho giving ``bits`` in total ("dense"), then mixed by a
    random rotation on each side: I = -(d/2) log2(1 - rho^2)."""
    rho = math.sqrt(1.0 - 2.0 ** (-2.0 * bits / d))
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, d))
    y = rho * x + math.sqrt(1 - rho**2) * r.standard_normal((n, d))
    qx, _ = np.linalg.qr(r.standard_normal((d, d)))
    qy, _ = np.linalg.qr(r.standard_normal((d, d)))
    return x @ qx, y @ qy, -(d / 2) * math.log2(1 - rho**2)


def correlated_gaussian(d: int, rho: float, seed: int, n: int = 5000) -> tuple[np.ndarray, np.ndarray, float]:
    """d pairs (x_i, y_i) with correlation rho each (no rotation)."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, d))
    y = rho * x + math.sqrt(1 - rho**2) * r.standard_normal((n, d))
    return x, y, -(d / 2) * math.log2(1 - rho**2)


def sparse_gaussian(d: int, k: int, rho: float, seed: int, n: int = 5000) -> tuple[np.ndarray, np.ndarray, float]:
    """d dims of which only the first k pairs are correlated (rho): I = -(k/2) log2(1 - rho^2)."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, d))
    y = r.standard_normal((n, d))
    y[:, :k] = rho * x[:, :k] + math.sqrt(1 - rho**2) * y[:, :k]
    return x, y, -(k / 2) * math.log2(1 - rho**2)


def discrete_injective(K: int, seed: int, n: int = 5000, d: int = 64) -> tuple[np.ndarray, np.ndarray, float]:
    """x = random d-dim embedding of a uniform K-valued variable; y = a random tanh-MLP of x
    (d dims, injective almost surely): I = log2 K."""
    r = np.random.default_rng(seed)
    v = r.integers(0, K, n)
    x = r.standard_normal((K, d))[v]
    a1 = r.standard_normal((d, d)) / math.sqrt(d)
    a2 = r.standard_normal((d, d)) / math.sqrt(d)
    y = np.tanh(2.0 * x @ a1) @ a2
    return x.astype(np.float32), y.astype(np.float32), math.log2(K)


def shuffled(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Break the pairing: I = 0."""
    return x, y[np.random.default_rng(seed).permutation(len(y))], 0.0


def smoothed_gaussian_bits(cov_x: np.ndarray, cov_y: np.ndarray, cross: np.ndarray, sigma_x: float, sigma_y: float) -> float:
    """I(X + σx Z1; Y + σy Z2) in bits for jointly Gaussian (X, Y) with Cov X, Cov Y and
    cross = Cov(X, Y): the smoothed pair is Gaussian with σ² added to each side's diagonal."""
    sx = cov_x + sigma_x**2 * np.eye(len(cov_x))
    sy = cov_y + sigma_y**2 * np.eye(len(cov_y))
    joint = np.block([[sx, cross], [cross.T, sy]])
    ld = lambda m: np.linalg.slogdet(m)[1]  # noqa: E731
    return float(0.5 * (ld(sx) + ld(sy) - ld(joint)) / math.log(2.0))


def linear_gaussian_smoothed(d: int, resolution: float, seed: int, n: int = 4000) -> tuple[np.ndarray, np.ndarray, float]:
    """X ~ N(0, I_d), Y = A X with A a random rotation times gains in [0.5, 2] (invertible), and
    the exact smoothed MI at resolution β (σ = β·sqrt(tr Cov) per side, population covariances):
    Cov X = I, Cov Y = A Aᵀ, Cov(X, Y) = Aᵀ."""
    r = np.random.default_rng(seed)
    q, _ = np.linalg.qr(r.standard_normal((d, d)))
    a = q * np.exp(r.uniform(math.log(0.5), math.log(2.0), d))  # columns scaled: A = Q diag(g)
    x = r.standard_normal((n, d))
    y = x @ a.T
    cov_y = a @ a.T
    bits = smoothed_gaussian_bits(np.eye(d), cov_y, a.T, resolution * math.sqrt(d), resolution * math.sqrt(np.trace(cov_y)))
    return x.astype(np.float32), y.astype(np.float32), bits


def spiral_gaussian(seed: int, n: int = 5000, speed: float = 0.5, d: int = 5) -> tuple[np.ndarray, np.ndarray, float]:
    """The sparse Gaussian (d + d dims, 2 pairs at rho = 0.8; 5 + 5 by default) with x bent by a
    spiral: x's (0, 1) plane rotated by an angle ``speed`` * ||x||^2.  A diffeomorphism of x (its
    inverse rotates back by the same angle, ||x|| being unchanged), so I is unchanged: 1.474 bits;
    no per-coordinate map undoes it."""
    x, y, bits = sparse_gaussian(d, 2, 0.8, seed=seed, n=n)
    angle = speed * (x**2).sum(1)
    c, s = np.cos(angle), np.sin(angle)
    x = x.copy()
    x[:, 0], x[:, 1] = c * x[:, 0] - s * x[:, 1], s * x[:, 0] + c * x[:, 1]
    return x, y, bits


def bits_of_shift(delta: float) -> float:
    """I(s; delta * s + z) in bits for a fair bit s and z ~ N(0, 1), by 1-D quadrature: the truth of
    the target measure's ground-truth task (shifted_gaussian_labels)."""
    h = np.linspace(-12.0, 12.0 + delta, 40001)
    a, b = np.exp(-0.5 * h * h), np.exp(-0.5 * (h - delta) ** 2)
    m = 0.5 * (a + b)

    def term(p: np.ndarray) -> np.ndarray:
        return p * np.log2(np.maximum(p, 1e-300) / m)

    return float((0.5 * term(a) + 0.5 * term(b)).sum() * (h[1] - h[0]) / math.sqrt(2 * math.pi))


def shift_for_bits(bits: float) -> float:
    """The shift delta with bits_of_shift(delta) == bits (bisection)."""
    lo, hi = 0.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if bits_of_shift(mid) < bits else (lo, mid)
    return (lo + hi) / 2


def shifted_gaussian_labels(bits: float, n: int, d: int, sets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(sets, n, d) features H = delta * s * u + N(0, I_d) and (sets, n) fair-bit labels s, each data set
    with its own labels and unit direction u. The Bayes posterior of s is linear-softmax in H, so a
    linear probe family's usable information is I(s; H) = bits itself."""
    rng = np.random.default_rng(seed)
    delta = shift_for_bits(bits) if bits > 0 else 0.0
    labels = rng.integers(0, 2, size=(sets, n))
    u = rng.standard_normal((sets, 1, d))
    u /= np.linalg.norm(u, axis=2, keepdims=True)
    x = rng.standard_normal((sets, n, d)) + delta * labels[:, :, None] * u
    return x.astype(np.float32), labels


def additive_uniform_bits(a: float) -> float:
    """I(X; X + U(-a, a)) in bits for X ~ N(0, 1): h(Y) - log(2a), with h(Y) by 1-D quadrature of
    the density p(y) = (Phi(y + a) - Phi(y - a)) / (2a)."""
    from scipy import integrate
    from scipy.special import ndtr

    def minus_p_log_p(v: float) -> float:
        p = (ndtr(v + a) - ndtr(v - a)) / (2 * a)
        return -p * math.log(p) if p > 0 else 0.0

    lim = a + 12.0
    h, _ = integrate.quad(minus_p_log_p, -lim, lim, points=[-a, a], limit=400, epsabs=1e-11)
    return (h - math.log(2 * a)) / math.log(2.0)


def additive_uniform(a: float, seed: int, n: int = 5000) -> tuple[np.ndarray, np.ndarray, float]:
    """x ~ N(0, 1) and y = x + U(-a, a), one dimension each (the density ratio is a box of
    half-width a around y = x: no bilinear-plus-quadratic critic has that shape)."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, 1))
    y = x + r.uniform(-a, a, size=(n, 1))
    return x, y, additive_uniform_bits(a)


def swiss_roll_gaussian(rho: float, seed: int, n: int = 5000) -> tuple[np.ndarray, np.ndarray, float]:
    """A 1-D Gaussian pair (correlation rho) with x embedded in 2-D as a swiss roll: u = Phi(x),
    t = 1.5 pi (1 + 2u), x -> (t cos t, t sin t) / 21 (injective and smooth, so I is the pair's
    -log2(1 - rho^2) / 2)."""
    from scipy.special import ndtr

    x, y, bits = correlated_gaussian(1, rho, seed=seed, n=n)
    t = 1.5 * math.pi * (1 + 2 * ndtr(x[:, 0]))
    return np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 21.0, y, bits


def atom_pair(K: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """K atoms: x_k ~ N(0, I_d) and y_k = a random tanh-MLP of x_k (injective almost surely), as
    ``discrete_injective`` draws them; a sample is (x_v, y_v) with v uniform on the K atoms."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((K, d))
    a1 = r.standard_normal((d, d)) / math.sqrt(d)
    a2 = r.standard_normal((d, d)) / math.sqrt(d)
    return x, np.tanh(2.0 * x @ a1) @ a2


def atoms_smoothed_bits(x: np.ndarray, y: np.ndarray, resolution: float, queries: int = 20000, seed: int = 0
                        ) -> tuple[float, float]:
    """I(X + σx Z1; Y + σy Z2) in bits for (X, Y) uniform on the K atom pairs (x_k, y_k), with σ = β ·
    sqrt(tr Cov) of the atoms (population): Monte Carlo over ``queries`` draws of (k, Z1, Z2) with the
    exact mixture densities.  Returns (value, its Monte-Carlo standard error)."""
    import torch

    r = np.random.default_rng(np.random.SeedSequence([seed, 0xA70]))
    K = len(x)
    sx, sy = (resolution * math.sqrt(float(np.trace(np.cov(a.T, bias=True)))) for a in (x, y))
    tx, ty = (torch.as_tensor(a, dtype=torch.float64) for a in (x, y))
    vals = []
    for start in range(0, queries, 512):
        q = min(512, queries - start)
        k = torch.as_tensor(r.integers(0, K, q))
        qx = tx[k] + sx * torch.as_tensor(r.standard_normal((q, x.shape[1])))
        qy = ty[k] + sy * torch.as_tensor(r.standard_normal((q, y.shape[1])))
        lx = -torch.cdist(qx, tx).square() / (2 * sx**2)
        ly = -torch.cdist(qy, ty).square() / (2 * sy**2)
        lse = torch.logsumexp
        vals.append(lse(lx + ly, 1) - lse(lx, 1) - lse(ly, 1) + math.log(K))
    v = torch.cat(vals).numpy() / math.log(2.0)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))
