"""The whole job: stage 1 -> stage 2 -> IE -> summary on storage -> MLflow. The CLI and
`ie-flow submit`'s entry point both call run_job."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ie_flow.storage import Storage

log = logging.getLogger("ie_flow")
SUMMARY = "summary.json"


@dataclass
class JobOutcome:
    record: dict[str, Any]  # what summary.json holds
    table: Any  # MI table (pyarrow)
    emergence: Any
    input_ids: Any = None  # the corpus windows, logged as the MLflow dataset input
    tracking_error: str | None = None


def make_record(job: Any, manifest_uri: str, manifest: dict[str, Any], results_uri: str, em: Any,
                seconds: dict[str, float]) -> dict[str, Any]:
    return {
        "job": job.model_dump(mode="json"),
        "job_yaml": job.to_yaml(),
        "manifest_uri": manifest_uri,
        "manifest": {k: v for k, v in manifest.items() if k != "shards"},
        "results_uri": results_uri,
        "seconds": seconds,
        "summary": em.summary,
        "layers": em.layer_rows(),
        "mlflow_run_id": None,
        "tracking_uri": job.tracking.uri if job.tracking.enabled else None,
    }


def run_job(job: Any) -> JobOutcome:
    from ie_flow.emergence import information_emergence
    from ie_flow.stages.estimate import run_estimate
    from ie_flow.stages.extract import run_extract

    t0 = time.perf_counter()
    if job.tracking.enabled:
        from ie_flow.tracking import check_reachable

        try:  # warn now rather than after an hour of work
            check_reachable(job.tracking.uri)
        except Exception as e:  # noqa: BLE001
            log.warning("%s; the job runs anyway and its results stay on storage", e)
    extracted = run_extract(job)
    estimated = run_estimate(job, extracted.storage)
    em = information_emergence(estimated.table, job.estimate.micro_reduce)
    seconds = {"extract": extracted.seconds, "estimate": estimated.seconds, "total": time.perf_counter() - t0}
    record = make_record(job, extracted.manifest_uri, extracted.manifest, estimated.results_uri, em, seconds)
    estimated.results.write_json(SUMMARY, record)
    outcome = JobOutcome(record, estimated.table, em, extracted.input_ids)
    if job.tracking.enabled:
        outcome.tracking_error = log_to_tracking(outcome, estimated.results, job.tracking.uri, job.tracking.experiment)
    return outcome


def log_to_tracking(outcome: JobOutcome, results: Storage, tracking_uri: str, experiment: str) -> str | None:
    """Log to MLflow and note the run id on storage. Returns an error line instead of raising:
    the results are already safe on storage and can be logged later."""
    from ie_flow.tracking import log_run

    try:
        run_id = log_run(outcome.record, outcome.table, outcome.emergence, tracking_uri, experiment, outcome.input_ids)
    except Exception as e:  # noqa: BLE001 - any tracking failure must not lose the computed results
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return (f"could not log to MLflow at {tracking_uri}: {first}. The results are on storage at "
                f"{outcome.record['results_uri']}; log them later with: "
                f"ie-flow report {results.url()} --log --tracking-uri {tracking_uri}")
    outcome.record["mlflow_run_id"] = run_id
    outcome.record["tracking_uri"] = tracking_uri
    results.write_json(SUMMARY, outcome.record)
    return None
