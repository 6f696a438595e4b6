"""`ie-flow corpus generate --executor ray`: the batches run on Ray workers (a local runtime in a
subprocess) and the file equals the one the in-process executor writes (per-batch seeds)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration

DOCS = [f"the cat sat on the mat number {i}. a cat is on a mat and the mat is {i}." for i in range(6)]


def test_generate_on_ray_equals_in_process(cli, tiny_llama, tmp_path):
    human = tmp_path / "human.jsonl"
    human.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    args = ["--prompts", str(human), "--model", str(tiny_llama), "--samples", "5", "--batch-size", "2",
            "--max-new-tokens", "5", "--json"]
    on_ray = cli("corpus", "generate", "--out", str(tmp_path / "ray.jsonl"), "--executor", "ray", *args, timeout=300)
    assert on_ray.returncode == 0, on_ray.describe()
    summary = on_ray.json()
    assert summary["records"] == 5 and summary["batches_generated"] == 3 and summary["new_tokens"] == 25
    local = cli("corpus", "generate", "--out", str(tmp_path / "local.jsonl"), *args, timeout=300)
    assert local.returncode == 0, local.describe()
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert not (tmp_path / "ray.jsonl.parts").exists()
