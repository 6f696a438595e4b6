"""CLI contract, in-process: the options users need, one clear line and exit 2 for bad input,
precedence of options over the environment over the workflow file over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from ie_flow.config import load_job
from ie_flow.options import JOB_OPTIONS, build_job

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_commands_and_version(ie_flow):
    out = ie_flow("--help").out
    for cmd in ("run", "extract", "estimate", "report", "compare", "corpus", "models", "submit", "status", "logs"):
        assert cmd in out
    import ie_flow as pkg

    assert ie_flow("--version").out.strip() == f"ie-flow {pkg.__version__}"


def test_run_and_submit_take_the_same_job_options(ie_flow):
    run_help, submit_help = ie_flow("run", "--help").out, ie_flow("submit", "--help").out
    for option in JOB_OPTIONS:
        flag = "--" + option.replace("_", "-")
        assert flag in run_help and flag in submit_help, flag
    for env in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "RAY_ADDRESS", "AWS_ENDPOINT_URL", "IE_FLOW_STORAGE"):
        assert env in run_help, env


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "no-such-model-xyz"], "unknown model 'no-such-model-xyz'"),
        (["--model", "./missing/folder"], "model path not found"),
        (["--samples", "50"], "need at least 128 samples"),
        (["--samples", "abc"], "Invalid value for '--samples'"),
        (["--estimator", "infonse"], "did you mean 'infonce'"),
        (["--executor", "serail"], "did you mean 'serial'"),
        (["--corpus", "icl-colors"], "did you mean 'icl-colours'"),
        (["--shots", "9"], "corpus.shots"),
        (["--seeds", "a,b"], "--seeds must be integers"),
        (["--positions", "9"], "positions must be in 0..7"),
        (["--ray-address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, needle, ie_flow, tiny_llama, tmp_path):
    model = [] if "--model" in args else ["--model", str(tiny_llama)]
    result = ie_flow("run", *model, *args, "--storage", tmp_path / "s", "--no-tracking")
    result.assert_one_error(needle)
    assert not (tmp_path / "s" / "activations").exists()  # refused before any work


def test_corpus_without_a_window_of_that_length(ie_flow, tiny_llama, tmp_path):
    corpus = tmp_path / "short.txt"
    corpus.write_text("the cat sat.\nthe mat.\n")
    ie_flow("run", "--model", tiny_llama, "--corpus", corpus, "--tokens", "6", "--storage", tmp_path / "s",
            "--no-tracking").assert_one_error("no sentence")
    assert not (tmp_path / "s" / "activations").exists()


def test_unwritable_storage(ie_flow, tiny_llama, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    ie_flow("run", "--model", tiny_llama, "--storage", blocker / "sub", "--no-tracking").assert_one_error("is not writable")


def test_bad_workflow_files(ie_flow, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    ie_flow("run", bad).assert_one_error("not valid YAML")
    bad.write_text("modle:\n  name: x\n")
    ie_flow("run", bad).assert_one_error("modle")
    ie_flow("run", tmp_path / "none.yaml").assert_one_error("workflow file not found")


@pytest.mark.parametrize("settings, needle", [
    ("estimate:\n  method: smoothed\n  settings: {betas: [0.4, 0]}\n", "every beta must be a finite number > 0"),
    ("estimate:\n  method: smoothed\n  settings: {queries: 5000}\n", "queries=5000 exceeds the 4096 samples"),
    ("estimate:\n  method: smoothed\n  settings: {betaz: [0.4]}\n", "unknown setting 'betaz'"),
    ("control:\n  kind: shuffled\n", "--control shuffled is for text corpora"),
    ("model:\n  name: random:smollm2-135m\ncontrol:\n  kind: random\n", "has no random copy"),
])
def test_bad_estimator_and_control_settings(settings, needle, ie_flow, tiny_llama, tmp_path):
    spec = tmp_path / "w.yaml"
    spec.write_text(settings)
    model = [] if "random:" in settings else ["--model", tiny_llama]
    ie_flow("run", spec, *model, "--storage", tmp_path / "s", "--no-tracking").assert_one_error(needle)
    assert not (tmp_path / "s" / "activations").exists()


def test_submit_refuses_places_only_this_machine_sees(ie_flow, tmp_path):
    ie_flow("submit", "--storage", tmp_path / "data", "--tracking-uri", "http://mlflow:5000",
            "--ray-address", "http://head:8265").assert_one_error("is a local folder, which other nodes cannot see")
    ie_flow("submit", "--storage", "s3://bucket/x", "--tracking-uri", "sqlite:///mlflow.db",
            "--ray-address", "http://head:8265").assert_one_error("lives on this machine only")


def test_precedence_options_over_environment_over_file_over_defaults(tmp_path, monkeypatch):
    spec = tmp_path / "w.yaml"
    spec.write_text("corpus:\n  samples: 1000\n  shots: 2\nestimate:\n  method: gaussian\n"
                    "tracking:\n  uri: sqlite:///file.db\n  experiment: from-file\n")
    job = load_job(spec, {"corpus.samples": 2000, "corpus.seed": None})
    assert job.corpus.samples == 2000 and job.corpus.shots == 2 and job.estimate.method == "gaussian"
    assert job.corpus.seed == 0 and job.model.name == "smollm2-135m"
    # the CLI reads environment conventions into the same overrides: they beat the file ...
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    from typer.main import get_command

    from ie_flow.cli import app

    ctx = get_command(app).commands["run"].make_context("run", [str(spec)])
    values = {k: v for k, v in ctx.params.items() if k in JOB_OPTIONS}
    job = build_job(spec, values)
    assert job.tracking.uri == "http://from-env:5000" and job.tracking.experiment == "from-file"
    assert "http://from-env:5000" in job.to_yaml()  # ... and the logged job records them
    # ... and an option beats the environment
    ctx = get_command(app).commands["run"].make_context("run", [str(spec), "--tracking-uri", "sqlite:///cli.db"])
    job = build_job(spec, {k: v for k, v in ctx.params.items() if k in JOB_OPTIONS})
    assert job.tracking.uri == "sqlite:///cli.db"


def test_shipped_workflows_are_valid():
    files = sorted((REPO / "workflows").rglob("*.yaml"))
    assert files
    for f in files:
        first = f.read_text().splitlines()[0]
        assert first.startswith("# ie-flow "), f"{f.name} must start with the command that runs it"
        if not f.parent.name.startswith("paper"):  # paper/, paper-hub/: experiment files test_reproduction.py loads
            load_job(f)
