"""The same code on CUDA: captured activations and MI estimates agree with the CPU's.
Skipped where no CUDA GPU is present (CI); run on a GPU host with `pytest -m gpu`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ie_flow.estimators import estimate_mi_many
from ie_flow.estimators.synthetic import discrete_injective
from ie_flow.models import load_model
from ie_flow.stages.extract import capture_boundaries

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_cuda_capture_matches_cpu(arch, request):
    folder = str(request.getfixturevalue(arch))
    ids = np.random.default_rng(0).integers(4, 40, size=(16, 8))
    out = {dev: capture_boundaries(load_model(folder, device=dev, dtype="float32"), ids, 8, [0, 1, 2])
           for dev in ("cpu", "cuda")}
    for b in (0, 1, 2):
        np.testing.assert_allclose(out["cuda"][b], out["cpu"][b], rtol=1e-4, atol=1e-5)
    # stage 1's default on a GPU is bfloat16: within its rounding of the float32 values
    bf16 = capture_boundaries(load_model(folder, device="cuda"), ids, 8, [2])[2]
    assert np.abs(bf16 - out["cpu"][2]).max() <= 0.05 * np.abs(out["cpu"][2]).max()


def test_cuda_estimates_match_cpu_and_truth():
    pairs = [discrete_injective(16, seed=s, n=2000) for s in range(4)]
    xs = np.stack([p[0] for p in pairs])
    ys = np.stack([p[1] for p in pairs])
    cpu = estimate_mi_many(xs, ys, device="cpu", precision="fp32")
    gpu = estimate_mi_many(xs, ys, device="cuda", precision="fp32")
    for c, g in zip(cpu, gpu):
        assert g.settings["device"].startswith("cuda")
        assert abs(g.bits - 4.0) <= 0.15 and abs(g.bits - c.bits) <= 0.05, (g.bits, c.bits)
