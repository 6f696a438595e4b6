"""MLflow: one run per (model, corpus, estimator) job. It opens RUNNING with the job's config when
the job starts and ends FINISHED with tags, per-layer metrics (step = layer), the corpus as a
dataset input and artifacts; or FAILED with the error as a tag. Logging the same results again
(`ie-flow report RESULTS --log`) updates that run; it never creates a second one."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Callable

from ie_flow import IEFlowError, __version__, first_line

log = logging.getLogger("ie_flow")
METRICS_PER_LAYER = ("ie", "mi_macro", "mi_micro", "ie_ci_low", "ie_ci_high", "ceiling_bits",
                     # the Gaussian reference's IE and the excess over it (smoothed; NaN, so not logged, elsewhere)
                     "reference_ie", "reference_ie_ci_low", "reference_ie_ci_high",
                     "excess_ie", "excess_ie_ci_low", "excess_ie_ci_high",
                     # the IE of the variant beside the headline (smoothed: the standardised mode at its β)
                     "companion_ie", "companion_ie_ci_low", "companion_ie_ci_high")


class TrackingUnavailable(IEFlowError):
    """The tracking server cannot be reached; results are safe on storage."""


class TrackingRejected(IEFlowError):
    """The tracking server answers but refuses this client (its Host header, or credentials):
    a configuration error, so the job stops before any work instead of running untracked."""


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when an HTTP tracking server is down;
    fail before any work when it answers but refuses this client."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            r.read()
    except OSError as e:
        raise TrackingUnavailable(f"MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)})") from None
    check_accepted(uri)


def check_accepted(uri: str) -> None:
    """One API call through the MLflow client: /health skips the server's Host-header check (MLflow
    >= 3.5 rejects a Host it was not started with, e.g. `mlflow:5000` inside Kubernetes or compose)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as e:
        status = e.get_http_status_code()
        if status not in (401, 403):
            raise TrackingUnavailable(f"MLflow tracking server {uri} failed a request ({first_line(e)})") from None
        host = urllib.parse.urlsplit(uri).netloc
        hint = (f"start `mlflow server` with --allowed-hosts including {host} (infra/README.md)"
                if "Host header" in str(e) else "check MLFLOW_TRACKING_USERNAME/PASSWORD or the token")
        raise TrackingRejected(f"MLflow tracking server {uri} refuses this client (HTTP {status}): {hint}") from None


def _client(uri: str) -> Any:
    import mlflow

    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def _experiment_id(client: Any, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def _flat_params(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat_params(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = str(value)[:500]  # MLflow caps param values


def job_params(job: dict[str, Any]) -> dict[str, str]:
    """The job's settings as MLflow params (storage and tracking URIs are tags, not params)."""
    params: dict[str, str] = {}
    _flat_params("", {k: job[k] for k in ("model", "corpus", "extract", "estimate")}, params)
    return params


def find_run(client: Any, experiment_id: str, results_uri: str) -> Any | None:
    """The run that already holds these results (relogging updates it instead of duplicating)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.results_uri = '{results_uri}'",
                              max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def open_run(job: Any, title: str, results_uri: str) -> tuple[str, Callable[[], None]]:
    """Create the job's run, RUNNING; returns its id and the call that records the job's config
    (params, tags, job.yaml). Two steps, so that a server going down between them leaves a run
    whose id the job still knows, for `report --log` to finish instead of opening a second one."""
    from mlflow.entities import Param, RunTag

    client = _client(job.tracking.uri)
    exp = _experiment_id(client, job.tracking.experiment)
    existing = find_run(client, exp, results_uri)
    tags = {"mlflow.runName": title, "model": job.model.name, "corpus.name": job.corpus.name,
            "estimator": job.estimate.method, "units": "bits", "code_version": __version__,
            "storage_uri": job.storage.uri, "results_uri": results_uri}
    if job.tracking.parent_run_id:
        tags["mlflow.parentRunId"] = job.tracking.parent_run_id
    # the same job again (a rerun after a failure) continues its run; one still RUNNING belongs to a
    # job at work, which this one must not touch (if refused by that job's lock, this run ends FAILED)
    reopen = existing is not None and existing.info.status != "RUNNING"
    if reopen:
        run_id = existing.info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(exp, run_name=title, tags=tags).info.run_id

    def describe() -> None:
        if not reopen:
            params = job_params(job.model_dump(mode="json"))
            client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        client.log_text(run_id, job.to_yaml(), "job.yaml")

    return run_id, describe


def open_parent_run(uri: str, experiment: str, title: str, tags: dict[str, str], resume: str | None = None) -> str:
    """A run that groups other runs (`ie-flow reproduce`): `resume` is reopened RUNNING if it still
    exists on this server, else a new run is created."""
    client = _client(uri)
    if resume:
        try:
            client.update_run(resume, status="RUNNING")
            return resume
        except Exception:  # noqa: BLE001 - deleted, or from another server: start a new one
            pass
    return client.create_run(_experiment_id(client, experiment), run_name=title, tags=tags).info.run_id


def end_parent_run(uri: str, run_id: str, failed: list[str]) -> None:
    client = _client(uri)
    client.set_tag(run_id, "failed_cells", ",".join(failed) or "none")
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def fail_run(uri: str, run_id: str, error: str) -> None:
    client = _client(uri)
    client.set_tag(run_id, "error", error[:5000])
    client.set_terminated(run_id, status="FAILED")


def log_results(record: Any, table: Any, em: Any, uri: str, experiment: str, input_ids: Any = None,
                run_id: str | None = None, parent_run_id: str | None = None,
                pending_run_id: str | None = None) -> str:
    """Log a finished job's results into `run_id`, or the run that already holds these results, or
    `pending_run_id` (the run the job opened, if this server still has it), or a new run (a child of
    `parent_run_id` if given); the run ends FINISHED. Returns its id."""
    import mlflow

    client = _client(uri)
    exp = _experiment_id(client, experiment)
    run = client.get_run(run_id) if run_id else find_run(client, exp, record.results_uri)
    if run is None and pending_run_id:
        run = _run_if_here(client, pending_run_id)
    if run is None:
        tags = {"results_uri": record.results_uri, **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
        run = client.create_run(exp, run_name=_title(record), tags=tags)
        from mlflow.entities import Param

        params = job_params(record.job.model_dump(mode="json"))
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    run_id = run.info.run_id
    first_time = "ie_mean" not in run.data.metrics  # a relog of logged results adds no metric points
    mlflow.set_experiment(experiment_id=exp)
    with mlflow.start_run(run_id=run_id):  # ends FINISHED when the block exits normally
        mlflow.set_tags({**_result_tags(record), **_critic_tags(table)})
        if first_time:
            _log_manifest_params(client, run_id, record.manifest)
            _log_metrics(client, run_id, record, em)
            if record.control:
                _log_control_metrics(client, run_id, record.control)
            if input_ids is not None:
                _log_dataset(record, input_ids)
            if len(em.seeds) > 1:
                child_tags = {k: v for k, v in _result_tags(record).items() if k != "results_uri"}
                _log_seed_children(run_id, em, child_tags)
        _log_artifacts(record, table, em)
    return run_id


def _run_if_here(client: Any, run_id: str) -> Any | None:
    try:
        return client.get_run(run_id)
    except Exception:  # noqa: BLE001 - deleted, or a run of another server: log into a new run
        return None


def _title(record: Any) -> str:
    return f"{record.manifest.model.key} on {record.manifest.dataset.id}"


def _result_tags(record: Any) -> dict[str, str]:
    model, dataset = record.manifest.model, record.manifest.dataset
    return {
        "model": model.name, "model.kind": model.kind, "model.revision": str(model.revision),
        "model.fingerprint": str(model.fingerprint), "corpus.digest": dataset.digest,
        "corpus.name": dataset.name, "estimator": record.estimator, "variant": record.variant or "none",
        "variant_valid": str(record.variant_valid), "units": "bits",
        "code_version": __version__, "storage_uri": record.job.storage.uri,
        "manifest_uri": record.manifest_uri, "results_uri": record.results_uri,
        "mlflow.note.content": f"Information Emergence of {_title(record)}",
        **({"companion_variant": record.summary.companion_variant} if record.summary.companion_variant else {}),
        **({"control.estimator": record.control.estimator, "control.variant": record.control.variant or "none"}
           if record.control else {}),
        **({"target.emergence_boundary": "none" if record.control.target.emergence_boundary is None
            else str(record.control.target.emergence_boundary),
            "target.emergence_shares": ", ".join(f"{k}: {v:.3f}" for k, v in record.control.target.emergence_shares.items())}
           if record.control and record.control.target else {}),
    }


def _critic_tags(table: Any) -> dict[str, str]:
    """The critic check's verdicts (the MI table's columns, also in the mi.parquet artifact) as tags."""
    from collections import Counter

    from ie_flow.emergence import lower_bound_cells

    rows = table.to_pylist() if hasattr(table, "to_pylist") else list(table)
    critics = Counter(r.get("critic") for r in rows if r.get("critic"))
    return {"critic_check.critics": ", ".join(f"{k}: {v} rows" for k, v in sorted(critics.items())) or "none",
            "critic_check.lower_bound_cells": str(sum(map(len, lower_bound_cells(table).values())))}


def _log_metrics(client: Any, run_id: str, record: Any, em: Any) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, float(getattr(row, key)), now, row.layer) for row in em.layer_rows()
               for key in METRICS_PER_LAYER if math.isfinite(getattr(row, key))]  # closed forms have no ceiling
    # the estimator's own diagnostics of each layer's macro cell, as "diagnostic.<name>" (step = layer)
    metrics += [Metric(f"diagnostic.{key}", float(value), now, row.layer) for row in em.layer_rows()
                for key, value in row.diagnostics.items() if math.isfinite(value)]
    summary = {**em.summary.model_dump(), **{f"seconds_{k}": v for k, v in record.seconds.items()}}
    beside = summary["companion_variant"] is not None  # its name is a tag; its figures only where there is one
    metrics += [Metric(key, float(value), now, 0) for key, value in summary.items()
                if isinstance(value, (int, float)) and (beside or not key.startswith("companion_"))]
    for i in range(0, len(metrics), 900):  # MLflow's log_batch limit is 1000 metrics
        client.log_batch(run_id, metrics=metrics[i : i + 900])


def _log_manifest_params(client: Any, run_id: str, manifest: Any) -> None:
    """What stage 1 found (not in the config): the window length, sample count, blocks, width."""
    from mlflow.entities import Param

    facts = {"tokens": manifest.tokens, "samples": manifest.samples, "layers": manifest.num_blocks,
             "hidden_size": manifest.hidden_size, "storage_dtype": manifest.storage_dtype, "micro": manifest.micro}
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in facts.items()])


def _log_control_metrics(client: Any, run_id: str, control: Any) -> None:
    """Model minus control per layer (step = layer), from the comparison's record."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    keys = {"model_ie": "control_model_ie", "control_ie": "control_ie", "diff": "control_diff",
            "ci_low": "control_diff_ci_low", "ci_high": "control_diff_ci_high",
            # its Gaussian-reference part and the excess (smoothed), each with its paired interval
            **{f"{part}{end}": f"control_diff_{part}{end}" for part in ("reference", "excess")
               for end in ("_diff", "_ci_low", "_ci_high")},
            # at the variant beside the headline (smoothed: the standardised mode), its paired interval
            "companion_diff": "control_diff_companion", "companion_ci_low": "control_diff_companion_ci_low",
            "companion_ci_high": "control_diff_companion_ci_high",
            **{f"companion_reference{end}": f"control_diff_companion_reference{end}"
               for end in ("_diff", "_ci_low", "_ci_high")}}
    metrics = [Metric(name, float(getattr(row, k)), now, row.layer) for row in control.layers
               for k, name in keys.items() if math.isfinite(getattr(row, k))]
    if control.target:  # a target measure: its values per boundary (step = boundary) and the emergence layer
        fields = ("model", "model_low", "model_high", "control", "control_low", "control_high", "diff", "diff_low",
                  "diff_high", "gain", "gain_low", "gain_high", "ceiling")
        metrics += [Metric(f"target_{k}", float(getattr(row, k)), now, row.boundary) for row in control.target.boundaries
                    for k in fields if math.isfinite(getattr(row, k))]
        if control.target.emergence_boundary is not None:  # "none" is the tag target.emergence_boundary
            metrics.append(Metric("target_emergence_boundary", float(control.target.emergence_boundary), now, 0))
    for i in range(0, len(metrics), 900):
        client.log_batch(run_id, metrics=metrics[i : i + 900])


def _log_dataset(record: Any, input_ids: Any) -> None:
    import mlflow

    dataset = record.manifest.dataset
    with warnings.catch_warnings():  # MLflow warns that a local path could be two source kinds
        warnings.simplefilter("ignore", UserWarning)
        ds = mlflow.data.from_numpy(input_ids, source=record.manifest_uri, name=dataset.id,
                                    digest=dataset.digest[:16])
    mlflow.log_input(ds, context="corpus")


def _log_artifacts(record: Any, table: Any, em: Any) -> None:
    import mlflow
    import pyarrow.parquet as pq

    from ie_flow.emergence import emergence_by_variant
    from ie_flow.plots import write_plots

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        table.to_pandas().to_csv(d / "mi.csv", index=False)
        pq.write_table(table, d / "mi.parquet")
        write_plots(em, _title(record), d, record.control, emergence_by_variant(table, record.micro_reduce))
        if record.control:
            from ie_flow.plots import plot_control

            plot_control(record.control, d / "control_difference.png", f"model - {record.control.kind} control")
        (d / "job.yaml").write_text(record.job_yaml)
        (d / "summary.json").write_text(json.dumps(record.model_dump(mode="json"), indent=2, default=str))
        mlflow.log_artifacts(tmp)


def _log_seed_children(parent_id: str, em: Any, tags: dict[str, str]) -> None:
    """One nested run per estimator seed, with that seed's IE per layer."""
    import mlflow

    for s, seed in enumerate(em.seeds):
        with mlflow.start_run(run_name=f"seed {seed}", nested=True, parent_run_id=parent_id,
                              tags={**tags, "seed": str(seed)}):
            for i, layer in enumerate(em.layers):
                mlflow.log_metric("ie", float(em.ie_per_seed[s, i]), step=layer.layer)


def download_results(run_id: str, tracking_uri: str) -> tuple[Any, Any]:
    """(ResultsRecord, MI table) of a logged run, read back from its artifacts."""
    import mlflow
    import pyarrow.parquet as pq

    from ie_flow.results import read_record

    check_reachable(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        mlflow.MlflowClient().get_run(run_id)
    except Exception:  # noqa: BLE001 - MLflow raises its own exception types per store
        raise IEFlowError(f"no MLflow run {run_id} at {tracking_uri}") from None
    with tempfile.TemporaryDirectory() as tmp:
        record = read_record(Path(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="summary.json", dst_path=tmp)).read_text())
        table = pq.read_table(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="mi.parquet",
                                                                  dst_path=tmp))
    record.mlflow_run_id = run_id
    return record, table


def relog_command(results_uri: str, tracking_uri: str) -> str:
    folder = results_uri.rsplit("/", 1)[0]
    return f"ie-flow report {folder} --log --tracking-uri {tracking_uri}"


class JobRun:
    """The tracking side of one job, as a context manager around the work: opens the run at the
    start (a tracking server that is down only costs a warning: results stay on storage), marks it
    FAILED with the error if the work raises, and `log(outcome)` finishes it."""

    def __init__(self, job: Any, title: str, results_uri: str) -> None:
        self.job, self.title, self.results_uri = job, title, results_uri
        self.enabled = job.tracking.enabled
        self.run_id: str | None = None
        self.parent_id: str | None = None

    def __enter__(self) -> "JobRun":
        if self.enabled:
            try:
                self.run_id, describe = open_run(self.job, self.title, self.results_uri)
                describe()
            except TrackingRejected:
                raise  # a misconfigured server: one line, exit 2, before any work
            except Exception as e:  # noqa: BLE001 - a server that is down must never stop the work
                log.warning("warning: %s; the job runs anyway and its results stay on storage", first_line(e))
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or self.run_id is None:
            return
        reason = "stopped by a signal" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else first_line(exc)
        try:
            fail_run(self.job.tracking.uri, self.run_id, f"{type(exc).__name__}: {reason}")
        except Exception as e:  # noqa: BLE001 - the original error is what the user must see
            log.warning("warning: could not mark MLflow run %s FAILED: %s", self.run_id, first_line(e))

    def child(self, job: Any) -> "JobRun":
        """The tracking of a measurement inside this job (the control's): a nested run, opened when logged."""
        sub = JobRun(job, self.title, "")
        sub.enabled, sub.parent_id = self.enabled and self.run_id is not None, self.run_id
        return sub

    def log(self, outcome: Any) -> str | None:
        """Log the results and end the run FINISHED; an error line (never an exception) if tracking fails."""
        if not self.enabled:
            return None
        uri, record = self.job.tracking.uri, outcome.record
        try:
            run_id = log_results(record, outcome.table, outcome.emergence, uri, self.job.tracking.experiment,
                                 outcome.input_ids, self.run_id, self.parent_id)
        except Exception as e:  # noqa: BLE001 - any tracking failure must not lose the computed results
            if self.run_id is not None:  # so that `report --log` finishes this run rather than opening another
                record.mlflow_pending_run_id = self.run_id
                outcome.results.write_summary(record)
            return (f"could not log to MLflow at {uri}: {first_line(e)}. The results are on storage at "
                    f"{record.results_uri}; log them later with: {relog_command(record.results_uri, uri)}")
        record.mlflow_run_id, record.tracking_uri = run_id, uri
        outcome.results.write_summary(record)
        return None
