"""The Makefile's promises: `make clean` removes build products and never results; deleting results
takes a target of its own, asked for by name (what `make -n` would run, not a reading of the text)."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from infra_files import ROOT

pytestmark = pytest.mark.infra

RESULTS = {"ie-flow-data", "mlflow.db", "mlruns"}  # where the embedded default keeps every result


def removed_by(target: str) -> set[str]:
    """The paths `make TARGET` would hand to rm (dry run); `find ... -exec rm` lines delete caches only."""
    commands = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, check=True).stdout
    lines = [shlex.split(line) for line in commands.splitlines() if line.strip()]
    return {w.rstrip("/") for words in lines if words[0] == "rm" for w in words[1:] if not w.startswith("-")}


def test_clean_removes_build_products_only() -> None:
    removed = removed_by("clean")
    assert ".venv" in removed and "test-artifacts" in removed
    assert not removed & RESULTS, removed & RESULTS


def test_results_are_deleted_only_by_clean_data() -> None:
    assert removed_by("clean-data") == RESULTS
