"""Bad input, as a new user types it: every case exits 2 with exactly one `error:` line, no
traceback, in under 3 s, and none starts Ray (the real `ie-flow` command in a subprocess)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

WORKFLOWS = {
    "bad_yaml": "model: [unclosed\n",
    "unknown_field": "modle:\n  name: x\n",
    "beta_zero": "estimate:\n  method: smoothed\n  settings: {betas: [0.4, 0]}\n",
    "too_many_queries": "estimate:\n  method: smoothed\n  settings: {queries: 5000}\n",
    "unknown_setting": "estimate:\n  method: infonce\n  settings: {lr_typo: 0.1}\n",
    "random_of_random": "model:\n  name: random:smollm2-135m\ncontrol:\n  kind: random\n",
}

# (kind, arguments, what the error line must say); {model} = a tiny model, {wf:NAME} = a workflow above,
# {tmp} = a fresh folder
CASES = [
    ("config", ["run", "{wf:bad_yaml}"], "not valid YAML"),
    ("config", ["run", "{wf:unknown_field}"], "modle"),
    ("config", ["run", "{tmp}/missing.yaml"], "workflow file not found"),
    ("config", ["run", "--model", "{model}", "--samples", "abc"], "Invalid value for '--samples'"),
    ("config", ["run", "--model", "{model}", "--samples", "50"], "need at least 128 samples"),
    ("config", ["run", "--model", "{model}", "--shots", "9"], "corpus.shots"),
    ("config", ["run", "--model", "{model}", "--seeds", "a,b"], "--seeds must be integers"),
    ("config", ["run", "--model", "{model}", "--storage-dtype", "float8"], "'float8' is not one of float16, float32"),
    ("config", ["run", "--model", "{model}", "--micro", "sideways"], "'sideways' is not one of in_context, isolated"),
    ("config", ["run", "--model", "{model}", "--positions", "9"], "positions must be in 0..7"),
    ("config", ["run", "--model", "{model}", "--layers", "99"], "layers must be in 0..1"),
    ("corpus", ["run", "--model", "{model}", "--corpus", "icl-colors"], "did you mean 'icl-colours'"),
    ("corpus", ["run", "--model", "{model}", "--corpus", "fortunez"], "did you mean 'fortunes'"),
    ("corpus", ["run", "--model", "{model}", "--corpus", "{tmp}/missing.txt"], "not found"),
    ("corpus", ["submit", "--corpus", "{tmp}/missing.jsonl", "--storage", "s3://b/x", "--tracking-uri",
                "http://127.0.0.1:5000", "--ray-address", "http://127.0.0.1:8265"], "corpus not found"),
    ("corpus", ["run", "--model", "{model}", "--corpus", "icl-countries", "--control", "shuffled"],
     "--control shuffled is for text corpora"),
    ("corpus", ["run", "--model", "{model}", "--corpus", "python-docs", "--label-field", "topic"],
     "the built-in python-docs has none"),
    ("estimator", ["run", "--model", "{model}", "--estimator", "probe"],
     "corpus icl-countries has none: use icl-coherence"),
    ("model", ["run", "--model", "no-such-model-xyz"], "unknown model 'no-such-model-xyz'"),
    ("model", ["run", "--model", "./missing/folder"], "model path not found"),
    ("model", ["run", "{wf:random_of_random}"], "has no random copy"),
    ("storage", ["run", "--model", "{model}", "--storage", "ftp://host/x"], "unsupported storage URI"),
    ("storage", ["run", "--model", "{model}", "--storage", "{tmp}/file/sub"], "is not writable"),
    ("tracking", ["submit", "--storage", "s3://b/x", "--tracking-uri", "sqlite:///mlflow.db",
                  "--ray-address", "http://127.0.0.1:8265"], "lives on this machine only"),
    ("estimator", ["run", "--model", "{model}", "--estimator", "infonse"], "did you mean 'infonce'"),
    ("estimator", ["run", "--model", "{model}", "{wf:beta_zero}"], "every beta must be a finite number > 0"),
    ("estimator", ["run", "--model", "{model}", "{wf:too_many_queries}"], "queries=5000 exceeds"),
    ("estimator", ["run", "--model", "{model}", "{wf:unknown_setting}"], "unknown setting 'lr_typo'"),
    ("cluster", ["run", "--model", "{model}", "--ray-address", "127.0.0.1:1"], "cannot reach the Ray cluster"),
    ("cluster", ["run", "--model", "{model}", "--executor", "serail"], "did you mean 'serial'"),
    ("cluster", ["submit", "--storage", "{tmp}/data", "--tracking-uri", "http://127.0.0.1:5000",
                 "--ray-address", "http://127.0.0.1:8265"], "other nodes cannot see"),
    ("cluster", ["status", "raysubmit_x", "--ray-address", "ray://127.0.0.1:10001"], "must be the Jobs API URL"),
]


def _expand(arg: str, model: Path, tmp: Path) -> str:
    if arg.startswith("{wf:"):
        path = tmp / f"{arg[4:-1]}.yaml"
        path.write_text(WORKFLOWS[arg[4:-1]])
        return str(path)
    return arg.replace("{model}", str(model)).replace("{tmp}", str(tmp))


def test_at_least_25_kinds_across_every_area():
    assert len(CASES) >= 25
    assert {kind for kind, _, _ in CASES} == {"config", "corpus", "model", "storage", "tracking", "estimator", "cluster"}


@pytest.mark.parametrize("kind, args, needle", CASES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(CASES)])
def test_bad_input(kind, args, needle, cli, tiny_llama, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    argv = [_expand(a, tiny_llama, tmp_path) for a in args]
    if argv[0] == "run":
        argv += ["--no-tracking"] + ([] if "--storage" in argv else ["--storage", str(tmp_path / "s")])
    res = cli(*argv, cwd=tmp_path, timeout=60)
    assert res.returncode == 2, res.describe()
    errors = res.error_lines()
    assert len(errors) == 1 and needle in errors[0], res.describe()
    assert "Traceback" not in res.stderr and "ray: local runtime" not in res.stderr, res.describe()
    assert res.seconds < 3.0, f"{res.seconds:.1f} s: {res.describe()}"
    assert not (tmp_path / "s" / "activations").exists()
