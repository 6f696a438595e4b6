"""Jobs on a Ray cluster through the Ray Jobs API: the job carries the package (py_modules) and
the fully resolved job spec (working_dir), and runs `ie-flow run job.yaml --json` there."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

from ie_flow import IEFlowError, first_line
from ie_flow.config import JobSpec

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
DEFAULT_JOBS_API = "http://127.0.0.1:8265"


def client_for(address: str | None) -> Any:
    from ray.job_submission import JobSubmissionClient

    from ie_flow.locations import jobs_api_problem

    address = address or DEFAULT_JOBS_API
    if jobs_api_problem(address):
        raise IEFlowError(jobs_api_problem(address))
    try:
        return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - connection and auth errors from the Jobs API
        raise IEFlowError(f"cannot reach the Ray Jobs API at {address}: {first_line(e)}") from None


def check_shared(job: JobSpec, storage_is_shared: bool = False) -> None:
    """A cluster's workers write activations and the driver reads them: storage and tracking must
    be places every node reaches, not this machine's folder or SQLite file."""
    if not job.storage.uri.startswith("s3://") and not storage_is_shared:
        raise IEFlowError(
            f"--storage {job.storage.uri} is a local folder, which other nodes cannot see: use "
            "s3://bucket/prefix (--s3-endpoint for MinIO), or --storage-is-shared for a folder every node mounts")
    if job.tracking.enabled and not job.tracking.uri.startswith(("http://", "https://", "databricks")):
        raise IEFlowError(
            f"--tracking-uri {job.tracking.uri} lives on this machine only: use an MLflow server "
            "(--tracking-uri http://HOST:5000 or MLFLOW_TRACKING_URI), or --no-tracking")


def submit_job(client: Any, job: JobSpec, submission_id: str | None = None) -> str:
    """Submit `ie-flow run` of a resolved job spec; returns the submission id."""
    import ie_flow

    work = Path(tempfile.mkdtemp(prefix="ie-flow-submit-"))
    (work / "job.yaml").write_text(job.to_yaml())
    return client.submit_job(
        entrypoint="python -m ie_flow.cli run job.yaml --json",
        submission_id=submission_id,
        runtime_env={
            "working_dir": str(work),
            "py_modules": [str(Path(ie_flow.__file__).parent)],
            # the spec was resolved here (options > environment > file): the cluster's own
            # MLFLOW_TRACKING_URI / RAY_ADDRESS must not override it there
            "env_vars": {"PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": job.tracking.uri,
                         "MLFLOW_EXPERIMENT_NAME": job.tracking.experiment},
        },
        metadata={"ie_flow.model": job.model.name, "ie_flow.corpus": job.corpus.name},
    )


def wait_for(client: Any, job_id: str, timeout: float, echo_logs: bool = True) -> str:
    """Follow a job until it ends; returns its final status."""
    seen = 0
    deadline = time.monotonic() + timeout
    while True:
        status = str(client.get_job_status(job_id)).split(".")[-1]
        if echo_logs:
            logs = client.get_job_logs(job_id)
            if len(logs) > seen:
                typer.echo(logs[seen:], nl=False, err=True)
                seen = len(logs)
        if status in TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {status} after {timeout:.0f} s")
        time.sleep(2)


def last_json_line(logs: str) -> dict[str, Any] | None:
    """The job's `--json` result: the last log line that parses as a JSON object."""
    for line in reversed(logs.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None
