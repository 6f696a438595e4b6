"""Run the paper's experiments (`ie-flow reproduce`, `make reproduce`): each cell is an ordinary job,
a child run of one MLflow parent run; what finished is kept in reproduction/index.json on storage,
so an interrupted reproduction resumes at the first unfinished cell and a changed cell reruns."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ie_flow import IEFlowError, first_line
from ie_flow.config import DEFAULT_TRACKING, EstimateSpec, JobSpec, family_settings, fill_family_defaults
from ie_flow.reproduction.experiments import Cell, Experiment
from ie_flow.store import ReproductionEntry, ReproductionIndex, StorageRoot, dataset_folder

log = logging.getLogger("ie_flow")


@dataclass(frozen=True)
class Setup:
    """Where the cells run and record: the same for every cell."""

    storage: str
    endpoint_url: str | None = None
    tracking_uri: str | None = None  # None: no MLflow
    tracking_experiment: str = "ie-flow-reproduction"
    ray_address: str | None = None
    executor: str = "ray"

    def apply(self, tree: dict[str, Any], parent_run_id: str | None) -> dict[str, Any]:
        tree = {**tree, "storage": {"uri": self.storage, "endpoint_url": self.endpoint_url}}
        tree["tracking"] = {"uri": self.tracking_uri or DEFAULT_TRACKING, "experiment": self.tracking_experiment,
                            "enabled": self.tracking_uri is not None, "parent_run_id": parent_run_id}
        tree["runtime"] = {"ray_address": self.ray_address, "executor": self.executor}
        return tree


def cell_job(experiment: Experiment, cell: Cell, setup: Setup, index: ReproductionIndex) -> JobSpec:
    tree = cell.job_tree(experiment.job)
    corpus = tree.setdefault("corpus", {})
    name = cell.generated_corpus(experiment.job)
    if name is not None:
        generated = index.generated.get(name)
        if generated is None:
            raise IEFlowError(f"the generated corpus {name!r} is missing: its generation failed (see above)")
        corpus["name"] = generated["uri"]
    fill_family_defaults(tree)
    return JobSpec.model_validate(setup.apply(tree, index.parent_run_id))


def _parent_run(setup: Setup, index: ReproductionIndex, names: list[str]) -> None:
    """The MLflow run every cell is a child of: the index's, while its tracking URI is the same."""
    if setup.tracking_uri is None:
        return
    from ie_flow.tracking import open_parent_run

    resume = index.parent_run_id if index.tracking_uri == setup.tracking_uri else None
    try:
        index.parent_run_id = open_parent_run(setup.tracking_uri, setup.tracking_experiment, "reproduction",
                                              {"experiments": ",".join(names), "storage_uri": setup.storage}, resume)
        index.tracking_uri = setup.tracking_uri
    except Exception as e:  # noqa: BLE001 - as for any job: tracking never stops the work
        log.warning("warning: no MLflow parent run (%s); the cells run and log on their own", first_line(e))


def _generate(experiment: Experiment, setup: Setup, root: StorageRoot, index: ReproductionIndex) -> None:
    from ie_flow.corpora.generate import GenerationSettings, generate_corpus

    for raw in experiment.generate:
        spec, key = {k: v for k, v in raw.items() if k != "name"}, f"{experiment.name}/generate {raw['name']}"
        uri = root.generated_corpus_uri(raw["name"])
        log.info("reproduce %s: generating %s with %s", experiment.name, raw["name"], spec.get("model", "smollm2-135m"))
        try:
            # the experiment file decides what its corpus holds: text made otherwise is replaced
            result = generate_corpus(GenerationSettings(**spec), uri, ray_address=setup.ray_address,
                                     endpoint_url=setup.endpoint_url, replace_other=True)
        except Exception as e:  # noqa: BLE001 - like a failed cell: recorded, the rest goes on
            index.failed[key] = f"{type(e).__name__}: {first_line(e)}"
            index.generated.pop(raw["name"], None)  # the cells that read it fail with a clear line
            log.warning("reproduce %s: FAILED: %s", key, index.failed[key])
            continue
        index.failed.pop(key, None)
        # a resumed or already complete generation adds only its own time to what earlier runs spent
        # on the same text (text generated again, with other settings, counts from zero)
        previous = index.generated.get(raw["name"], {})
        before = previous.get("seconds", 0.0) if previous.get("metadata") == result.metadata else 0.0
        spent = before + (result.seconds if result.batches_generated else 0.0)
        index.generated[raw["name"]] = {"uri": result.uri, "seconds": spent, "metadata": result.metadata}
        root.save_reproduction(index)


def _measure(job: JobSpec, cell: Cell, t0: float) -> list[ReproductionEntry]:
    """The cell's job (with its control, if any), then its further estimators on the same activations."""
    from ie_flow.jobs import estimate_job, run_job

    def entry(estimator: str, results_uri: str, run_id: str | None, tags: dict[str, Any]) -> ReproductionEntry:
        return ReproductionEntry(experiment=cell.experiment, cell=cell.name, estimator=estimator, tags=tags,
                                 results_uri=results_uri, mlflow_run_id=run_id, seconds=time.perf_counter() - t0)

    outcome = run_job(job)
    entries = [entry(job.estimate.method, outcome.record.results_uri, outcome.record.mlflow_run_id, cell.tags)]
    measured = {job.estimate.method}
    if outcome.comparison is not None:
        c = outcome.comparison
        if c.estimator not in measured:  # a job by the control's estimator has its entry already
            entries.append(entry(c.estimator, c.model_results, None, cell.tags))
        entries.append(entry(f"{c.estimator}:control-{c.kind}", c.control_results, None, {**cell.tags, "control": c.kind}))
        measured.add(c.estimator)
    folder, _ = dataset_folder(outcome.record.manifest_uri, job.storage.endpoint_url)
    for method in cell.also:
        if method in measured:
            continue
        # as a job naming only it would run it: its corpus family's settings and the default seed (an
        # estimator run alongside for what it shows, not for its spread: icl's InfoNCE is at its ceiling)
        settings = family_settings(method, {}, job.corpus.name)
        estimate = job.estimate.model_copy(update={"method": method, "settings": settings,
                                                   "seeds": EstimateSpec().seeds})
        sub = job.model_copy(update={"estimate": estimate})
        more = estimate_job(sub, folder)
        entries.append(entry(method, more.record.results_uri, more.record.mlflow_run_id, cell.tags))
    return entries


def run_cell(experiment: Experiment, cell: Cell, setup: Setup, index: ReproductionIndex) -> bool:
    """Run one cell unless the index holds it with the same settings; False if it failed."""
    key, digest = f"{experiment.name}/{cell.name}", experiment.cell_digest(cell, index.generated)
    done = [e for k, e in index.entries.items() if k.startswith(key + "/") and e.job_digest == digest]
    if done:
        log.info("reproduce %s: done before (%d measurements), kept", key, len(done))
        return True
    t0 = time.perf_counter()
    try:
        entries = _measure(cell_job(experiment, cell, setup, index), cell, t0)
    except Exception as e:  # noqa: BLE001 - one failed cell must not stop the others; it is reported
        index.failed[key] = f"{type(e).__name__}: {first_line(e)}"
        log.warning("reproduce %s: FAILED after %.0f s: %s", key, time.perf_counter() - t0, index.failed[key])
        return False
    index.failed.pop(key, None)
    for k in [k for k in index.entries if k.startswith(key + "/")]:
        del index.entries[k]
    for e in entries:
        index.entries[f"{key}/{e.estimator}"] = e.model_copy(update={"job_digest": digest})
    log.info("reproduce %s: done in %.0f s", key, time.perf_counter() - t0)
    return True


def reproduce(experiments: list[Experiment], setup: Setup) -> ReproductionIndex:
    """Run every cell of `experiments` not already in the index; returns the index (failed cells in
    `failed`). Each cell's results are on storage and in the index before the next cell starts."""
    root = StorageRoot(setup.storage, setup.endpoint_url)
    index = root.load_reproduction()
    _parent_run(setup, index, [e.name for e in experiments])
    total, done = sum(len(e.cells) for e in experiments), 0
    try:
        for experiment in experiments:
            t0 = time.perf_counter()
            _generate(experiment, setup, root, index)
            for cell in experiment.cells:
                done += 1
                log.info("reproduce [%d/%d] %s/%s", done, total, experiment.name, cell.name)
                run_cell(experiment, cell, setup, index)
                root.save_reproduction(index)
            index.seconds[experiment.name] = time.perf_counter() - t0
            root.save_reproduction(index)
    finally:
        _end_parent(setup, index)
    return index


def _end_parent(setup: Setup, index: ReproductionIndex) -> None:
    if setup.tracking_uri is None or not index.parent_run_id:
        return
    from ie_flow.tracking import end_parent_run

    try:
        end_parent_run(setup.tracking_uri, index.parent_run_id, sorted(index.failed))
    except Exception as e:  # noqa: BLE001 - the results are on storage whatever MLflow says
        log.warning("warning: could not close the MLflow parent run: %s", first_line(e))
