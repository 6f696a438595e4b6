"""The CLI shows its choices and checks every location before work: enumerated options from the
registries (help and shell completion list them), option groups in `--help`, `-v` anywhere,
`--json` on status / logs / stop, storage / tracking / Ray addresses and corpus files refused with
one line and exit 2, and an estimator's own sample needs checked before stage 1."""

from __future__ import annotations

import json
import logging
import re

import pytest
from typer.main import get_command

from ie_flow.cli import app, hoist_global_flags
from ie_flow.config import load_job
from ie_flow.estimators import ESTIMATORS
from ie_flow.executors import executor_names
from ie_flow.locations import jobs_api_problem, ray_cluster_problem, storage_problem, tracking_problem
from ie_flow.options import CLUSTER, CORPUS, ESTIMATION, EXTRACTION, JOB_OPTIONS, MODEL, STORAGE


def _completions(command: str, option: str, incomplete: str) -> list[str]:
    cmd = get_command(app).commands[command]
    param = next(p for p in cmd.params if p.name == option)
    return [item.value for item in param.shell_complete(cmd.make_context(command, []), incomplete)]


def test_enumerated_options_complete_from_the_registries():
    assert _completions("run", "estimator", "") == ["infonce", *(n for n in ESTIMATORS if n != "infonce")]
    assert _completions("run", "estimator", "sm") == ["smile", "smoothed"]
    assert _completions("submit", "executor", "") == executor_names() == ["ray", "serial"]
    assert _completions("run", "micro", "") == ["in_context", "isolated"]
    assert _completions("extract", "storage_dtype", "float") == ["float16", "float32"]
    assert _completions("run", "control", "") == ["none", "random", "shuffled"]


def _panels(help_text: str) -> dict[str, list[str]]:
    """`--help` output -> panel title -> the options listed in it."""
    panels: dict[str, list[str]] = {}
    title = None
    for line in help_text.splitlines():
        head = re.match(r"^╭─ (.+?) ─", line)
        if head:
            title = head.group(1)
            panels[title] = []
        elif title and (flag := re.match(r"^│ (--[a-z0-9-]+)", line)):
            panels[title].append(flag.group(1))
    return panels


def test_help_groups_the_job_options_and_lists_every_estimator(ie_flow):
    text = ie_flow("run", "--help").out
    panels = _panels(text)
    expected = {MODEL: ["--model"], CORPUS: ["--corpus", "--samples", "--text-field"],
                EXTRACTION: ["--micro", "--storage-dtype", "--layers", "--positions"],
                ESTIMATION: ["--estimator", "--seeds", "--control"],
                STORAGE: ["--storage", "--tracking-uri", "--no-tracking"], CLUSTER: ["--ray-address", "--executor"]}
    for panel, flags in expected.items():
        assert set(flags) <= set(panels[panel]), (panel, panels.get(panel))
    grouped = {f for flags in panels.values() for f in flags}
    assert {"--" + o.replace("_", "-") for o in JOB_OPTIONS} <= grouped
    for name in ESTIMATORS:  # the help text names every estimator, smoothed included
        assert name in text.replace("\n", " "), name


def test_a_wrong_choice_names_the_close_one(ie_flow, tmp_path):
    ie_flow("run", "--estimator", "smoothd", "--storage", tmp_path).assert_one_error("did you mean 'smoothed'")
    ie_flow("run", "--micro", "isolatd").assert_one_error("'isolatd' is not one of in_context, isolated")


def test_verbose_works_after_the_subcommand(ie_flow, tmp_path):
    assert hoist_global_flags(["report", "x", "-v", "--", "-v"]) == ["-v", "report", "x", "--", "-v"]
    logging.getLogger("ie_flow").setLevel(logging.INFO)
    result = ie_flow("report", "--storage", tmp_path, "-v")
    result.assert_one_error("no finished ie-flow job")  # the command ran: -v was not a usage error
    assert logging.getLogger("ie_flow").level == logging.DEBUG
    ie_flow("report", "--storage", tmp_path).assert_one_error("no finished ie-flow job")
    assert logging.getLogger("ie_flow").level == logging.INFO


class _JobsApi:
    """What the Ray Jobs API client answers for one finished job (the real one: tests/integration)."""

    class Info:
        status = "JobStatus.SUCCEEDED"
        message = "Job finished successfully."

    def get_job_info(self, job_id):
        return self.Info()

    def get_job_status(self, job_id):
        return self.Info.status

    def get_job_logs(self, job_id):
        return "line 1\n{\"ie_mean\": 0.5}\n"

    def stop_job(self, job_id):
        return False


def test_status_logs_and_stop_print_one_json_object(ie_flow, monkeypatch):
    import ie_flow.submit as submit

    monkeypatch.setattr(submit, "client_for", lambda address: _JobsApi())
    assert json.loads(ie_flow("status", "raysubmit_1", "--json").out) == {
        "job_id": "raysubmit_1", "status": "SUCCEEDED", "message": "Job finished successfully."}
    assert json.loads(ie_flow("logs", "raysubmit_1", "--json").out) == {
        "job_id": "raysubmit_1", "status": "SUCCEEDED", "logs": "line 1\n{\"ie_mean\": 0.5}\n"}
    assert json.loads(ie_flow("logs", "raysubmit_1", "--follow", "--json").out)["status"] == "SUCCEEDED"
    assert json.loads(ie_flow("stop", "raysubmit_1", "--json").out) == {"job_id": "raysubmit_1", "stopped": False}
    assert ie_flow("status", "raysubmit_1").out.strip() == "raysubmit_1: SUCCEEDED  Job finished successfully."


@pytest.mark.parametrize("uri, needle", [
    ("s3:/bucket/x", "malformed storage URI 's3:/bucket/x': write s3://bucket/x"),
    ("s3://", "no bucket name after s3://"),
    ("gs://bucket/x", "unsupported storage URI 'gs://bucket/x'"),
    ("file://", "file:// needs a path"),
    (" ", "the storage URI is empty"),
])
def test_storage_problems(uri, needle):
    assert needle in storage_problem(uri)


@pytest.mark.parametrize("uri", ["./data", "/abs/data", "s3://bucket/prefix", "s3://b/x", "file:///tmp/x", "a:b"])
def test_storage_accepted(uri):
    assert storage_problem(uri) is None


@pytest.mark.parametrize("uri, needle", [
    ("sqlite://mlflow.db", "a SQLite file is sqlite:///relative.db"),
    ("sqlite:/mlflow.db", "a SQLite file is sqlite:///relative.db"),
    ("htp://host:5000", "unsupported tracking URI 'htp://host:5000'"),
    ("http:/host:5000", "write http://host:5000"),
    ("http://", "no host"),
    ("http://host:99999", "Port out of range"),
])
def test_tracking_problems(uri, needle):
    assert needle in tracking_problem(uri)


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "sqlite:////tmp/m.db", "http://127.0.0.1:5000",
                                 "https://mlflow.example.org", "databricks", "postgresql://u@h/db",
                                 "mysql+pymysql://u@h/db", "file:///tmp/mlruns", "./mlruns"])
def test_tracking_accepted(uri):
    assert tracking_problem(uri) is None


def test_ray_addresses_by_command():
    assert "is a Ray Jobs API URL" in ray_cluster_problem("http://127.0.0.1:8265")
    assert "bad Ray address" in ray_cluster_problem("gcs://h:6379")
    assert ray_cluster_problem("ray://h:10001") is None and ray_cluster_problem("10.0.0.1:6379") is None
    assert "must be the Jobs API URL" in jobs_api_problem("127.0.0.1:6379")
    assert "no host" in jobs_api_problem("http://")
    assert jobs_api_problem("http://head:8265") is None


@pytest.mark.parametrize("args, needle", [
    (["--storage", "s3:/bucket/x"], "storage.uri: malformed storage URI 's3:/bucket/x'"),
    (["--tracking-uri", "sqlite://mlflow.db"], "malformed tracking URI 'sqlite://mlflow.db'"),
    (["--tracking-uri", "htp://127.0.0.1:5000"], "unsupported tracking URI"),
    (["--ray-address", "http://127.0.0.1:8265"], "is a Ray Jobs API URL"),
])
def test_locations_refused_before_work(args, needle, ie_flow, tiny_llama, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a malformed URI must not become a folder here
    storage = [] if "--storage" in args else ["--storage", tmp_path / "s"]
    ie_flow("run", "--model", tiny_llama, *storage, *args).assert_one_error(needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_bad_tracking_uri_is_not_read_without_tracking():
    assert load_job(None, {"tracking.uri": "sqlite://x.db", "tracking.enabled": False}).tracking.uri == "sqlite://x.db"


def test_job_commands_refuse_a_jobs_api_address_and_jobs_api_commands_a_cluster_one(ie_flow, tmp_path):
    ie_flow("extract", "--ray-address", "http://127.0.0.1:8265", "--storage", tmp_path / "s").assert_one_error(
        "to run this command on the cluster use auto, HOST:6379 or ray://HOST:10001")
    ie_flow("logs", "raysubmit_1", "--ray-address", "127.0.0.1:6379").assert_one_error("must be the Jobs API URL")


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _parquet(path, column):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": column}), path)
    return path


@pytest.mark.parametrize("make, needle", [
    (lambda p: _write(p / "c.parquet", b"not parquet\n"),
     "c.parquet is not a valid Parquet file: Parquet magic bytes not found"),
    (lambda p: _parquet(p / "ints.parquet", [1, 2, 3]), "ints.parquet column 'text' holds int64, not text"),
    (lambda p: _write(p / "c.jsonl", b'{"text": "a b"}\n{"text": \n'), "c.jsonl line 2 is not JSON"),
    (lambda p: _write(p / "c.txt", b"the cat\xff sat.\n"), "c.txt line 1 is not valid UTF-8"),
])
def test_corpus_files_invalid_in_their_format(make, needle, ie_flow, tiny_llama, tmp_path):
    corpus = make(tmp_path)
    ie_flow("run", "--model", tiny_llama, "--corpus", corpus, "--tokens", "3", "--storage", tmp_path / "s",
            "--no-tracking", "--executor", "serial").assert_one_error(needle)
    assert not (tmp_path / "s" / "activations").exists()


def test_a_measure_checks_its_own_sample_needs_before_stage_1(ie_flow, wide_llama, tmp_path):
    """`run --samples 256 --estimator gaussian` on a model wider than 128: one line, exit 2, no
    activations (it used to extract everything and fail in stage 2 with exit 1)."""
    ie_flow("run", "--model", wide_llama, "--samples", "256", "--estimator", "gaussian", "--storage", tmp_path / "s",
            "--no-tracking", "--executor", "serial").assert_one_error(
        "estimator gaussian: 128+128 dimensions need more than 257 samples (n=256)")
    assert not (tmp_path / "s" / "activations").exists()


def test_each_estimator_has_its_own_sample_rule():
    assert load_job(None, {"estimate.method": "smoothed", "corpus.samples": 16}).corpus.samples == 16
    with pytest.raises(Exception, match="need at least 128 samples"):
        load_job(None, {"estimate.method": "infonce", "corpus.samples": 16})
    with pytest.raises(Exception, match="smoothed needs at least 8 samples, got 4"):
        load_job(None, {"estimate.method": "smoothed", "corpus.samples": 4})
