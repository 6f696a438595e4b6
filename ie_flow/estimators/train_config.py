"""The trainer's settings (a frozen dataclass) and their validation, apart from the trainer itself so
that reading an estimator's defaults or checking a job's settings needs no torch: `ie-flow run` with
bad input answers in about a second instead of after torch's 2-3 s import."""
from __future__ import annotations

from dataclasses import dataclass

BOUNDS = ("infonce", "dv", "nwj", "smile")
PREPROCESS = ("copula", "none")
COPULA_BINS = 1024  # bins of the copula transform's per-column map (preprocess.py)


def check_preprocess(name: str) -> str:
    if name not in PREPROCESS:
        raise ValueError(f"preprocess must be one of {PREPROCESS}, got {name!r}")
    return name


NEGATIVES = ("report", "heldout", "all")


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
    # early stopping scores at most this many select rows against each other: its cost is their
    # square, every eval_every steps, and at n = 300,000 (30,000 select rows) that was most of a
    # cell's time.  It only ranks checkpoints; the reported value uses every report row.
    select_rows: int = 8192
    # InfoNCE's reported value scores each report row against the rows of its pool: all report
    # rows up to this many, else equal pools of at most this many (ceiling log2 of a pool). One
    # pool costs its square: at n = 300,000 the 75,000-row pool was most of stage 2's time, and
    # pools keep it linear in n. No change up to n = 65,536 (eval_fraction 0.25); 0: one pool.
    pool_rows: int = 16384
    negatives: str = "report"  # report | heldout | all (see module docstring)
    preprocess: str = "copula"  # copula | none (see preprocess.py)
    pool_check: bool = True  # InfoNCE: also evaluate with half the pool (saturation test)
    chunk_elems: int = 1 << 25  # memory cap (elements) of one evaluation chunk of pairs
    # auto | fp32 | bf16 (autocast of the matmuls).  auto = bf16 on CPUs with native bf16
    # (AMX / AVX512-BF16: the 240-pair profile ran in 189 s instead of 300 s with the same
    # estimates to 3 decimals and the same ground-truth results), fp32 elsewhere
    precision: str = "auto"

    def __post_init__(self) -> None:  # fail before any training, naming the setting
        if self.bound not in BOUNDS:
            raise ValueError(f"bound must be one of {BOUNDS}, got {self.bound!r}")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {self.negatives!r}")
        check_preprocess(self.preprocess)
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ValueError(f"ema must be in (0, 1), got {self.ema}")
        for name in ("embed", "batch_size", "max_steps", "eval_every", "patience", "select_rows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.pool_rows) < 0:
            raise ValueError(f"pool_rows must be >= 0 (0: one pool), got {self.pool_rows}")
        if self.lr <= 0 or self.scale_lr < 0:
            raise ValueError("lr must be > 0 and scale_lr >= 0")
        if self.stop_near_ceiling < 0:
            raise ValueError(f"stop_near_ceiling must be >= 0 bits, got {self.stop_near_ceiling}")
