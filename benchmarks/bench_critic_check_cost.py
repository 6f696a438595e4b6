"""What the critic check (estimators/critic_check.py) adds to the demo-shaped stage-2 profile
(30 layers x 8 positions, n = 4,096, d = 576, the data of bench_estimator_profile.py): no
training, since every cell is saturated or at its entropy cap, only the hash of its x rows that
finds the cap.  Times that hash on every cell's x side and prints each position's cap.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_critic_check_cost.py
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ie_flow.estimators.critic_check import plugin_entropy_bits  # noqa: E402


def main() -> None:
    here = os.path.dirname(__file__)
    spec = importlib.util.spec_from_file_location("prof", os.path.join(here, "bench_estimator_profile.py"))
    prof = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prof)
    h = prof.synthetic_profile(30, 8, 4096, 576)
    xs = h[:-1].reshape(-1, 4096, 576)
    t = time.perf_counter()
    caps = [plugin_entropy_bits(x) for x in xs]
    dt = time.perf_counter() - t
    print(f"entropy hash of all {len(xs)} x sides: {dt:.2f} s ({dt / len(xs) * 1000:.1f} ms a cell); "
          f"caps per position: {np.round(np.array(caps).reshape(30, 8)[0], 2)}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
