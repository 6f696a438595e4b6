"""`ie-flow submit / status / logs / stop`: jobs on a Ray cluster through the Ray Jobs API.
The job carries the package (py_modules) and the fully resolved job spec (working_dir).
No `from __future__ import annotations` here: Typer must resolve the option types imported
inside register()."""

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ie_flow import IEFlowError

Address = Annotated[Optional[str], typer.Option("--address", help="Ray dashboard / Jobs API, e.g. http://HEAD:8265 (or RAY_ADDRESS).")]
JobId = Annotated[str, typer.Argument(help="Ray job submission id.")]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _client(address: str | None) -> Any:
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    if not address.startswith(("http://", "https://")):
        raise IEFlowError(f"--address must be the Jobs API URL (http://HEAD:8265), got {address!r}")
    try:
        return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - connection and auth errors from the Jobs API
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise IEFlowError(f"cannot reach the Ray Jobs API at {address}: {first}") from None


def submit_job(job: Any, address: str | None, submission_id: str | None = None) -> str:
    """Submit `ie-flow run` of a resolved job spec; returns the submission id."""
    import ie_flow

    client = _client(address)
    work = Path(tempfile.mkdtemp(prefix="ie-flow-submit-"))
    (work / "job.yaml").write_text(job.to_yaml())
    # not TOKENIZERS_PARALLELISM: the driver's init_ray sets it, and Ray refuses a driver runtime_env
    # that repeats a key of the job's ("Failed to merge the Job's runtime env")
    env_vars = {"PYTHONUNBUFFERED": "1"}
    return client.submit_job(
        entrypoint="python -m ie_flow.cli run job.yaml --json",
        submission_id=submission_id,
        runtime_env={
            "working_dir": str(work),
            "py_modules": [str(Path(ie_flow.__file__).parent)],
            "env_vars": env_vars,
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


def register(app: typer.Typer) -> None:
    from ie_flow.cli import (
        AsJson, Corpus, Endpoint, Estimator, Experiment, Model, Samples, Seeds, Shots, Storage_, Tokens,
        TrackingUri, Workflow, _job,
    )

    @app.command()
    def submit(
        workflow: Workflow = None, address: Address = None, model: Model = None, corpus: Corpus = None,
        shots: Shots = None, tokens: Tokens = None, samples: Samples = None, estimator: Estimator = None,
        seeds: Seeds = None, storage: Storage_ = None, s3_endpoint: Endpoint = None,
        tracking_uri: TrackingUri = None, experiment: Experiment = None,
        wait: Annotated[bool, typer.Option(help="Follow the job's logs until it ends.")] = False,
        timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 3600,
        as_json: AsJson = False,
    ) -> None:
        """Submit a job to a Ray cluster (Ray Jobs API); the job runs `ie-flow run` there."""
        kw = {k: v for k, v in locals().items() if k not in ("address", "wait", "timeout", "as_json")}
        job = _job(**kw)
        client = _client(address)
        job_id = submit_job(job, address)
        typer.echo(f"submitted {job_id}", err=True)
        if not wait:
            typer.echo(json.dumps({"job_id": job_id}) if as_json else job_id)
            return
        status = wait_for(client, job_id, timeout, echo_logs=not as_json)
        result = last_json_line(client.get_job_logs(job_id)) or {}
        if as_json:
            typer.echo(json.dumps({"job_id": job_id, "status": status, "result": result}))
        else:
            typer.echo(f"{job_id}: {status}")
        if status != "SUCCEEDED":
            raise typer.Exit(1)

    @app.command()
    def status(job_id: JobId, address: Address = None) -> None:
        """Status of a submitted job."""
        info = _client(address).get_job_info(job_id)
        typer.echo(f"{job_id}: {str(info.status).split('.')[-1]}  {info.message or ''}".rstrip())

    @app.command()
    def logs(job_id: JobId, address: Address = None,
             follow: Annotated[bool, typer.Option(help="Keep printing until the job ends.")] = False) -> None:
        """Logs of a submitted job."""
        client = _client(address)
        if follow:
            wait_for(client, job_id, timeout=10**9)
        else:
            typer.echo(client.get_job_logs(job_id), nl=False)

    @app.command()
    def stop(job_id: JobId, address: Address = None) -> None:
        """Stop a submitted job."""
        stopped = _client(address).stop_job(job_id)
        typer.echo(f"{job_id}: {'stop requested' if stopped else 'already ended'}")
