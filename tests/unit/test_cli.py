"""CLI contract: fast help, the options users need, one clear line and exit 2 for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from ie_flow.config import load_job

CLI = [sys.executable, "-m", "ie_flow.cli"]


def ie_flow(*args: str, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def test_help_is_instant_and_lists_commands():
    best = min(_timed(["--help"]) for _ in range(3))
    assert best < 1.0, f"ie-flow --help took {best:.2f} s"
    out = ie_flow("--help").stdout
    for cmd in ("run", "extract", "estimate", "report", "compare", "corpus", "models", "submit"):
        assert cmd in out


def _timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([*CLI, *args], capture_output=True, check=True)
    return time.perf_counter() - t0


def test_run_help_lists_user_options():
    out = ie_flow("run", "--help").stdout
    for opt in ("--model", "--corpus", "--samples", "--estimator", "--storage", "--tracking-uri",
                "--ray-address", "--seed", "--shots", "--tokens", "--json"):
        assert opt in out, opt


def _one_clear_line(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "no-such-model-xyz"], "unknown model 'no-such-model-xyz'"),
        (["--model", "./missing/folder"], "model path not found"),
        (["--samples", "50"], "need at least 160 samples"),
        (["--estimator", "infonse"], "did you mean 'infonce'"),
        (["--corpus", "icl-colors"], "did you mean 'icl-colours'"),
        (["--shots", "9"], "corpus.shots"),
        (["--seeds", "a,b"], "--seeds must be integers"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, needle, tiny_llama, tmp_path):
    model = [] if "--model" in args else ["--model", str(tiny_llama)]
    proc = ie_flow("run", *model, *args, "--storage", str(tmp_path / "s"), "--no-tracking")
    _one_clear_line(proc, needle)


def test_corpus_without_a_window_of_that_length(tiny_llama, tmp_path):
    corpus = tmp_path / "short.txt"
    corpus.write_text("the cat sat.\nthe mat.\n")
    proc = ie_flow("run", "--model", str(tiny_llama), "--corpus", str(corpus), "--tokens", "6",
                   "--storage", str(tmp_path / "s"), "--no-tracking")
    _one_clear_line(proc, "no sentence")
    assert not (tmp_path / "s" / "activations").exists()


def test_unwritable_storage(tiny_llama, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    proc = ie_flow("run", "--model", str(tiny_llama), "--storage", str(blocker / "sub"), "--no-tracking")
    _one_clear_line(proc, "is not writable")


def test_bad_workflow_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    _one_clear_line(ie_flow("run", str(bad)), "not valid YAML")
    bad.write_text("modle:\n  name: x\n")
    _one_clear_line(ie_flow("run", str(bad)), "modle")
    _one_clear_line(ie_flow("run", str(tmp_path / "none.yaml")), "workflow file not found")


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    spec = tmp_path / "w.yaml"
    spec.write_text("corpus:\n  samples: 1000\n  shots: 2\nestimate:\n  method: gaussian\n")
    job = load_job(spec, {"corpus.samples": 2000, "corpus.seed": None})
    assert job.corpus.samples == 2000 and job.corpus.shots == 2 and job.estimate.method == "gaussian"
    assert job.corpus.seed == 0 and job.model.name == "smollm2-135m"


def test_shipped_workflows_are_valid():
    from pathlib import Path

    files = sorted((Path(__file__).parents[2] / "workflows").glob("*.yaml"))
    assert files
    for f in files:
        first = f.read_text().splitlines()[0]
        assert first.startswith("# ie-flow "), f"{f.name} must start with the command that runs it"
        load_job(f)
