"""docs/METHOD.md section 6 end to end: ICL names drawn uniformly from K through a deterministic model.
Positions 0 and 1 carry exactly log2 K bits at every layer; estimates at their ceiling are flagged."""

from __future__ import annotations

import math

import pytest

from ie_flow.config import load_job
from ie_flow.jobs import run_job


@pytest.fixture(scope="module")
def outcome(tiny_llama, tmp_path_factory):
    job = load_job(None, {
        "model.name": str(tiny_llama), "corpus.samples": 4096, "tracking.enabled": False,
        "storage.uri": str(tmp_path_factory.mktemp("gt")), "runtime.executor": "serial",
    })
    return run_job(job)


def test_first_name_and_its_comma_carry_log2_k(outcome):
    k = outcome.record.manifest.dataset.settings["K"]
    assert k == 16
    macro = {(r["layer"], r["position"]): r for r in outcome.table.to_pylist() if r["level"] == "macro"}
    for (layer, pos), r in macro.items():
        if pos in (0, 1) and not (layer == 0 and pos == 1):
            assert abs(r["bits"] - math.log2(k)) < 0.2, r
            assert not r["saturated"]
    # block 0's input at a comma is the comma's embedding: a constant, so it carries 0 bits
    # (docs/METHOD.md section 6's log2 K holds from layer 1 on, where the comma has seen its name)
    for pos in (1, 3, 5, 7):
        assert abs(macro[(0, pos)]["bits"]) < 0.05, macro[(0, pos)]


def test_two_names_carry_log2_k_k_minus_1(outcome):
    rows = [r for r in outcome.table.to_pylist() if r["level"] == "macro"]
    for r in rows:
        if r["layer"] >= 1 and r["position"] == 2:  # log2(16 * 15) = 7.91 < ceiling log2(4096) = 12
            assert abs(r["bits"] - math.log2(16 * 15)) < 0.5, r
        if r["layer"] >= 1 and r["position"] == 3:
            # the comma after two names: a random 32-wide block need not keep all 240 prefixes
            # apart there (measured 6.9 bits; SmolLM2 keeps them: 7.86), but it knows the 2nd name
            assert 4 - 0.2 < r["bits"] < math.log2(16 * 15) + 0.2, r
        if r["layer"] == 0 and r["position"] % 2 == 0:  # block 0 sees one name token: log2 K
            assert abs(r["bits"] - 4) < 0.2, r


def test_saturation_flags_match_ceilings(outcome):
    rows = outcome.table.to_pylist()
    for r in rows:
        assert r["bits"] <= r["ceiling_bits"] + 1e-6
        if r["bits"] >= r["ceiling_bits"] - 0.1:  # at the ceiling: must be flagged (a lower bound)
            assert r["saturated"], r
    entropy = outcome.record.manifest.prefix_entropy_bits
    # no estimate exceeds what the distinct prefixes allow (plus estimator noise)
    for r in rows:
        assert r["bits"] <= entropy[r["position"]] + 0.2, r
