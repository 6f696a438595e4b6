"""Dimension options of docs/METHOD.md section 2: ``full`` | ``first:K`` | ``project:K``."""
from __future__ import annotations

import functools

import numpy as np


def parse_dims(spec: str) -> tuple[str, int | None]:
    """``"full"`` -> ("full", None); ``"first:K"`` / ``"project:K"`` -> (kind, K)."""
    s = str(spec).strip().lower()
    if s == "full":
        return "full", None
    kind, sep, k = s.partition(":")
    if not sep or kind not in ("first", "project"):
        raise ValueError(f"dims spec must be 'full', 'first:K' or 'project:K', got {spec!r}")
    try:
        K = int(k)
    except ValueError:
        raise ValueError(f"dims spec {spec!r}: K must be an integer") from None
    if K < 1:
        raise ValueError(f"dims spec {spec!r}: K must be >= 1")
    return kind, K


@functools.lru_cache(maxsize=32)
def projection_matrix(d: int, k: int, seed: int = 0) -> np.ndarray:
    """A fixed (d, k) matrix with orthonormal columns, the same for the same (d, k, seed).

    QR of a seeded Gaussian matrix with the sign fix of R's diagonal gives a Haar-random
    orthonormal frame; cached because every position/layer of a model reuses it."""
    if k > d:
        raise ValueError(f"project:{k} asks for more dimensions than the data has ({d})")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), d, k, 0xD135]))
    q, r = np.linalg.qr(rng.standard_normal((d, k)))
    q = q * np.sign(np.diag(r))[None, :]
    q = np.ascontiguousarray(q, dtype=np.float64)
    q.setflags(write=False)
    return q


def apply_dims(x: np.ndarray, spec: str, seed: int = 0) -> np.ndarray:
    """Apply a dims spec to the last axis of ``x`` (any leading shape).

    ``first:K`` keeps the first K coordinates (what the reference code did for wide models);
    ``project:K`` multiplies by a fixed seeded orthogonal (d, K) projection."""
    kind, K = parse_dims(spec)
    x = np.asarray(x)
    if x.ndim < 1:
        raise ValueError("apply_dims needs an array with a feature axis")
    d = x.shape[-1]
    if kind == "full":
        return x
    assert K is not None
    if kind == "first":
        if K > d:
            raise ValueError(f"first:{K} asks for more dimensions than the data has ({d})")
        return x[..., :K]
    q = projection_matrix(d, K, seed)
    # float32 activations stay float32 (a (P, n, 576) stack is GBs); others compute in float64
    work = np.float32 if x.dtype in (np.float16, np.float32) else np.float64
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    return (x.astype(work, copy=False) @ q.astype(work)).astype(out_dtype, copy=False)
