"""Jobs: what `ie-flow run`, `extract` and `estimate` do, built from the two steps, an executor and
the store. Everything that can be checked is checked here before any work starts; the executor
decides where the units run and skips those already done."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ie_flow import IEFlowError, Refused, __version__
from ie_flow.config import JobSpec
from ie_flow.control import control_job
from ie_flow.executors import Completion, Executor, get_executor
from ie_flow.results import Result, results_record
from ie_flow.store import DatasetFolder, DatasetInfo, Manifest, ModelInfo, ResultsFolder, StorageRoot

log = logging.getLogger("ie_flow")


@dataclass
class Extracted:
    folder: DatasetFolder
    manifest: Manifest
    seconds: float
    reused: bool
    input_ids: np.ndarray | None = None  # the corpus windows (tokens, not activations)
    stats: list[Any] = field(default_factory=list)  # per shard extracted by this run: stages.extract.ShardRun


@dataclass
class Estimated:
    results: ResultsFolder
    table: Any  # the MI table (pyarrow)
    seconds: float
    reused_layers: int
    stats: list[Any] = field(default_factory=list)  # per layer estimated by this run: its stages.estimate.BatchRun list


def executor_for(job: JobSpec) -> Executor:
    return get_executor(job.runtime.executor, address=job.runtime.ray_address)


@dataclass
class ExtractPlan:
    """Everything stage 1 needs, resolved and checked before any model runs."""

    job: JobSpec
    folder: DatasetFolder
    source: Any
    tokenizer: Any
    corpus: Any
    positions: list[int]
    identity: Any  # models.ModelIdentity: the weights' sha256 (a hub model's commit)

    @property
    def revision(self) -> str | None:
        """The revision the workers load: a hub model's resolved commit, so they load what was fingerprinted."""
        return self.identity.revision or self.job.model.revision

    @property
    def settings(self) -> dict[str, Any]:
        """What must match for a rerun to reuse finished shards in the same folder."""
        j = self.job
        return {
            "model": j.model.name, "revision": self.revision, "weights": self.identity.fingerprint,
            "dtype": j.model.dtype,
            "corpus_digest": self.corpus.digest, "storage_dtype": j.extract.storage_dtype,
            "micro": j.extract.micro, "layers": j.extract.layers, "positions": j.extract.positions,
            "shard_size": j.extract.shard_size, "seed": j.corpus.seed, "model_seed": j.model.seed,
        }


def plan_extract(job: JobSpec) -> ExtractPlan:
    """Resolve and check everything stage 1 needs; what needs no tokenizer is checked first (seconds)."""
    from ie_flow.corpora import build_corpus
    from ie_flow.models import load_tokenizer, model_identity, resolve_model
    from ie_flow.stages.extract import kept_positions

    executor_for(job).check()
    root = StorageRoot(job.storage.uri, job.storage.endpoint_url)
    root.storage.check_writable()
    endpoint = job.storage.endpoint_url
    source = resolve_model(job.model.name, job.model.revision, endpoint)  # an s3:// model: fetched, verified
    check_before_tokenizer(job)
    tokenizer = load_tokenizer(job.model.name, job.model.revision, endpoint)
    corpus = build_corpus(job.corpus, tokenizer, job.storage.endpoint_url)
    check_target_labels(job, corpus)
    positions = kept_positions(job.extract.positions, corpus.num_tokens)
    if corpus.num_samples != job.corpus.samples:  # a text corpus can give fewer windows than asked for
        check_estimator_settings(job, corpus.num_samples, f"corpus {job.corpus.name} gave {corpus.num_samples} "
                                 "windows: ")
    identity = model_identity(source, job.model.seed)
    return ExtractPlan(job, root.activations(source.key, corpus.dataset_id), source, tokenizer, corpus, positions,
                       identity)


def check_before_tokenizer(job: JobSpec) -> None:
    """Corpus name or path, positions, estimator settings and layers: none needs the tokenizer."""
    from ie_flow.corpora import ICL_CORPORA
    from ie_flow.inputs import local_corpus
    from ie_flow.models import count_blocks
    from ie_flow.stages.extract import boundaries_for_layers, kept_positions

    c = job.corpus
    local_corpus(c.name)  # a built-in, a URI, or a file or folder that exists
    kept_positions(job.extract.positions, c.tokens or (2 * c.shots if c.name in ICL_CORPORA else 8))
    # again with the windows the corpus really gives (plan_extract)
    check_estimator_settings(job, c.samples)
    check_target_corpus(job)
    if job.extract.layers is not None:
        boundaries_for_layers(job.extract.layers, count_blocks(job.model.name, job.model.revision,
                                                                   job.storage.endpoint_url))
    if job.estimate.memory_budget is not None:
        from ie_flow.models import hidden_size
        from ie_flow.stages.estimate import check_memory_budget

        width = hidden_size(job.model.name, job.model.revision, job.storage.endpoint_url)
        check_memory_budget(job.estimate, c.samples, width, job.extract.storage_dtype)


def _target_measures(job: JobSpec) -> list[Any]:
    """The job's estimators (its own, its control's) that measure a per-sequence target."""
    from ie_flow.control import measured_job

    specs = [job.estimate] + ([measured_job(job).estimate] if job.control.kind != "none" else [])
    found = []
    for spec in specs:
        try:
            est = spec.estimator()
        except ValueError:
            continue  # check_estimator_settings says why
        if est.measures_target:
            found.append(est)
    return found


def check_target_corpus(job: JobSpec) -> None:
    """Before the tokenizer: a target measure needs a labelled corpus and the embeddings (boundary 0);
    --label-field needs a corpus that is a file."""
    from ie_flow.corpora import ICL_CORPORA, LABELLED_CORPORA
    from ie_flow.corpora.builtin import BUILTIN_TEXT_CORPORA

    c = job.corpus
    if c.label_field and c.name in (*ICL_CORPORA, *BUILTIN_TEXT_CORPORA):
        raise IEFlowError(f"--label-field names a field of a JSONL or Parquet corpus; the built-in {c.name} has none"
                          f"{' (icl-coherence has its own label)' if c.name != 'icl-coherence' else ''}")
    measures = _target_measures(job)
    if not measures:
        return
    names = ", ".join(sorted({m.name for m in measures}))
    if c.name not in LABELLED_CORPORA and not c.label_field:
        raise IEFlowError(f"estimator {names} measures information about a per-sequence label, and corpus {c.name} "
                          "has none: use icl-coherence, or a JSONL/Parquet corpus with a `label` field "
                          "(or --label-field)")
    if job.extract.layers is not None and 0 not in job.extract.layers:
        raise IEFlowError(f"estimator {names} needs block 0 among --layers: its micro term is measured on the "
                          "embeddings (boundary 0)")


def check_target_labels(job: JobSpec, corpus: Any) -> None:
    """After the corpus is built, before any model runs: its labels can be measured (not constant, every
    class large enough for the splits of every seed)."""
    # the labels as the corpus names them, so a problem names the class the user wrote
    labels = corpus.labels if corpus.label_names is None else np.asarray(corpus.label_names)[corpus.labels]
    for est in _target_measures(job):
        problem = est.check_target(labels, corpus.groups, job.estimate.seeds)
        if problem:
            field = f" (--label-field {job.corpus.label_field})" if job.corpus.label_field else ""
            raise IEFlowError(f"corpus {corpus.name}{field}: {problem}")


def check_estimator_settings(job: JobSpec, samples: int, context: str = "") -> None:
    """Unknown or bad estimator settings and too few samples for the estimator's own needs (its
    `check`: a split, or more samples than dimensions) fail before any work."""
    from ie_flow.control import measured_job

    for spec in [job.estimate] + ([measured_job(job).estimate] if job.control.kind != "none" else []):
        try:
            estimator = spec.estimator()
        except ValueError as e:
            raise IEFlowError(f"estimator {spec.method}: {e}") from None
        dims = None
        if estimator.checks_dims:  # reading the config of a GGUF model takes seconds: only when it counts
            from ie_flow.models import hidden_size

            width = hidden_size(job.model.name, job.model.revision, job.storage.endpoint_url)
            dims = (spec.cell_dims(width),) * 2  # a block boundary each
        problem = estimator.check(samples, dims)
        if problem:
            raise IEFlowError(f"{context}estimator {spec.method}: {problem}")


# settings that name the model's weights: when only they differ, the stored activations are stale
IDENTITY_SETTINGS = ("weights", "revision")


def check_reuse(plan: ExtractPlan, force: bool) -> str | None:
    """Same model and corpus, other extraction settings: never mix or silently reuse. Returns why the
    stored activations are stale when only the weights changed (a checkpoint retrained in place, a
    hub repository that moved): they are then extracted again."""
    stored = plan.folder.job_settings()
    if stored is None or force:
        return None
    differ = {k: stored.get(k) for k in {*stored, *plan.settings} if plan.settings.get(k) != stored.get(k)}
    if differ and set(differ) <= set(IDENTITY_SETTINGS):
        if "weights" not in stored:  # written before the weights were fingerprinted
            return f"{plan.folder.storage.url()} does not record which weights it was extracted from"
        return (f"the weights of {plan.job.model.name} changed since {plan.folder.storage.url()} was extracted "
                f"(sha256 {stored['weights'][:12]} -> {plan.identity.fingerprint[:12]})")
    if differ:
        raise IEFlowError(
            f"{plan.folder.storage.url()} holds activations extracted with other settings "
            f"({', '.join(f'{k}={v}' for k, v in sorted(differ.items()))}); "
            "use another --storage, or `ie-flow extract --force` to replace them")
    return None


def extract_activations(job: JobSpec, force: bool = False, plan: ExtractPlan | None = None,
                        repair: bool = False) -> Extracted:
    """Stage 1: shards without a completion marker are extracted; then the manifest is written.
    `repair`: shards whose files fail their sha256 check are extracted again, the others kept."""
    from ie_flow.locks import locked

    t0 = time.perf_counter()
    if force and repair:
        raise IEFlowError("--force re-extracts everything and --repair only damaged shards: use one of them")
    plan = plan or plan_extract(job)
    folder = plan.folder
    if folder.has_manifest() and not (force or repair) and check_reuse(plan, force) is None:
        log.info("stage 1: reusing complete activations of %s (%s) at %s", job.model.name, plan.identity.describe(),
                 folder.manifest_uri)
        return Extracted(folder, folder.load_manifest(), time.perf_counter() - t0, True, plan.corpus.input_ids)
    with locked(folder.storage, "stage 1"):  # one job at a time writes this folder
        return _extract_locked(plan, force, repair, t0)


def _extract_locked(plan: ExtractPlan, force: bool, repair: bool, t0: float) -> Extracted:
    from ie_flow.executors.resources import plan_model_workers
    from ie_flow.stages.extract import ExtractShards, boundaries_for_layers, shard_units

    job, folder, corpus, x = plan.job, plan.folder, plan.corpus, plan.job.extract
    stale = check_reuse(plan, force)  # again: another job may have extracted this folder while we waited
    if folder.has_manifest() and not (force or repair or stale):
        return Extracted(folder, folder.load_manifest(), time.perf_counter() - t0, True, corpus.input_ids)
    if stale:
        log.info("stage 1: %s; extracting again", stale)
    if force or stale:
        folder.clear()
    folder.write_job_settings(plan.settings)
    units, completion = shard_units(corpus.input_ids, x.shard_size), Completion(folder.storage)
    if repair:
        forget_damaged(folder, units, completion)
    log.info("stage 1: %s on %s (%d sequences x %d tokens) -> %s", job.model.name, corpus.dataset_id,
             corpus.num_samples, corpus.num_tokens, folder.storage.url())
    step = ExtractShards(
        job.model.name, plan.revision, job.model.dtype, job.model.seed, folder, x.batch_size,
        boundaries_for_layers(x.layers, None), x.storage_dtype, x.micro,
        None if x.positions is None else plan.positions,
    )
    executor = executor_for(job)
    workers = plan_model_workers(executor.resources(), x.num_actors, x.num_gpus_per_actor, x.num_cpus_per_actor,
                                 x.max_actors)
    check_finished_compute(plan, units, completion, "cuda" if workers.gpus > 0 else "cpu")
    records = executor.run(step, units, completion, workers)
    manifest = build_manifest(plan, records, write_target(plan))
    folder.write_manifest(manifest)
    seconds = time.perf_counter() - t0
    log.info("stage 1: done in %.1f s: %s", seconds, folder.manifest_uri)
    return Extracted(folder, manifest, seconds, False, corpus.input_ids, executor.stats)


def _computed(record: dict[str, Any]) -> str:
    return f"{record.get('compute_dtype')} on {record.get('device')}"


def check_finished_compute(plan: ExtractPlan, units: list[Any], completion: Completion, device: str) -> None:
    """Before any work: the finished shards and the ones this job will compute must agree on the
    compute dtype and device (a job resumed on the other kind of machine would mix bfloat16 on a GPU
    with float32 on a CPU). Prints what it reuses."""
    from ie_flow.models import compute_dtype

    done = [completion.record(u) for u in units if completion.is_done(u)]
    if not done:
        return
    log.info("stage 1: reusing %d finished shards of %d from %s", len(done), len(units), plan.folder.storage.url())
    planned = {"compute_dtype": compute_dtype(plan.job.model.dtype, device), "device": device}
    finished = sorted({_computed(r) for r in done})
    if len(set(finished) | ({_computed(planned)} if len(done) < len(units) else set())) > 1:
        raise IEFlowError(
            f"{plan.folder.storage.url()}: finished shards were computed in {', '.join(finished)} and this job "
            f"would compute in {_computed(planned)}: resume it on the same kind of machine, set model.dtype in "
            "the workflow to match, or `ie-flow extract --force` to extract every shard again")


def check_shards_agree(plan: ExtractPlan, records: list[dict[str, Any]]) -> None:
    """After the work: every shard from these weights, in one compute dtype on one kind of device
    (a worker may have found a GPU the driver did not see); else the dataset is refused."""
    computed = sorted({_computed(r) for r in records})
    weights = sorted({str(r.get("fingerprint")) for r in records} - {plan.identity.fingerprint})
    if len(computed) > 1 or weights:
        problem = (f"its shards were computed in {' and '.join(computed)}" if len(computed) > 1 else
                   f"shards were extracted from other weights ({', '.join(w[:12] for w in weights)})")
        raise Refused(f"{plan.folder.storage.url()} is not completed: {problem}; "
                      "`ie-flow extract --force` on one kind of machine extracts them again")


def forget_damaged(folder: DatasetFolder, units: list[Any], completion: Completion) -> None:
    """Remove the completion marker of every finished shard whose files fail their sha256 (the
    checksums its marker recorded), and the manifest until they are extracted again."""
    damaged = 0
    for unit in units:
        if not completion.is_done(unit):
            continue
        problems = [p for rel, info in completion.record(unit)["files"].items()
                    if (p := folder.file_problem(rel, info["sha256"]))]
        if problems:
            log.warning("repair: %s: %s; extracting it again", unit.id, "; ".join(problems))
            completion.clear(unit)
            damaged += 1
    if damaged:
        folder.remove_manifest()
    log.info("repair: %d damaged shard(s) of %d", damaged, len(units))


def write_target(plan: ExtractPlan) -> Any:
    """A labelled corpus's target beside its activations (store.TargetInfo), None for an unlabelled one."""
    corpus = plan.corpus
    if corpus.labels is None:
        return None

    def kept(per_position: list[float] | None) -> list[float] | None:
        return None if per_position is None else [per_position[p] for p in plan.positions]

    names = corpus.label_names or [str(i) for i in range(int(corpus.labels.max()) + 1)]
    return plan.folder.write_target(corpus.labels, corpus.groups, names, kept(corpus.target_ceilings),
                                    kept(corpus.token_ceilings))


def build_manifest(plan: ExtractPlan, records: list[dict[str, Any]], target: Any = None) -> Manifest:
    """Deterministic (no timestamps): a resumed job writes the same manifest as an uninterrupted one."""
    from ie_flow.stages.extract import boundaries_for_layers

    check_shards_agree(plan, records)
    job, source, corpus, tok, first = plan.job, plan.source, plan.corpus, plan.tokenizer, records[0]
    num_blocks = first["num_blocks"]
    return Manifest(
        code_version=__version__,
        model=ModelInfo(name=job.model.name, key=source.key, kind=source.kind, location=source.location,
                        revision=plan.revision, random_init=source.random_init, fingerprint=plan.identity.fingerprint),
        tokenizer={"class": type(tok).__name__, "name_or_path": str(tok.name_or_path), "vocab_size": len(tok)},
        dataset=DatasetInfo(name=corpus.name, id=corpus.dataset_id, digest=corpus.digest, settings=corpus.settings),
        samples=corpus.num_samples, tokens=corpus.num_tokens, num_blocks=num_blocks,
        hidden_size=first["hidden_size"],
        boundaries=boundaries_for_layers(job.extract.layers, num_blocks) or list(range(num_blocks + 1)),
        positions=plan.positions, storage_dtype=job.extract.storage_dtype, micro=job.extract.micro,
        prefix_entropy_bits=corpus.prefix_entropy_bits(), target=target,
        shards=sorted(({k: r[k] for k in ("shard", "sample_ids", "sequences", "files", "compute_dtype", "device")}
                       for r in records),
                      key=lambda s: s["shard"]),
    )


def estimate_mi(job: JobSpec, folder: DatasetFolder) -> Estimated:
    """Stage 2: layers without a completion marker are estimated, a group of layers per call."""
    from ie_flow.executors.resources import plan_compute_workers
    from ie_flow.locks import locked
    from ie_flow.stages.estimate import EstimateLayers, check_memory_budget, layer_units, task_plan

    t0 = time.perf_counter()
    manifest = folder.load_manifest()
    spec = job.estimate
    if spec.estimator().measures_target and manifest.target is None:
        folder.read_target(manifest)  # says why, before any work
    check_memory_budget(spec, manifest.samples, manifest.hidden_size, manifest.storage_dtype)
    out = results_folder_for(job, manifest.model.key, manifest.dataset.id, manifest.sha256())
    units = layer_units(manifest.layers)
    completion = Completion(out.storage)
    todo = [u for u in units if not completion.is_done(u)]
    log.info("stage 2: %s, %d layers x %d positions -> %s", spec.method, len(units), len(manifest.positions),
             out.storage.url())
    if len(todo) < len(units):
        log.info("stage 2: reusing %d finished layers from %s", len(units) - len(todo), out.storage.url())
    with locked(out.storage, "stage 2"):  # one job at a time writes this results folder (taken before Ray starts)
        executor = executor_for(job)
        workers = plan_compute_workers(executor.resources(), len(todo), spec.layers_per_task,
                                       spec.num_gpus_per_task) if todo else None
        if workers:
            budget = spec.memory_budget or workers.memory
            if budget is not None:  # the cluster's share can be too small too: say so before any work
                task_plan(spec, manifest.samples, manifest.hidden_size, manifest.storage_dtype).cells_within(budget, 1)
            executor.run(EstimateLayers(folder, manifest, spec, out, budget), units, completion, workers)
        table = out.gather_layers(manifest.layers)
    seconds = time.perf_counter() - t0
    log.info("stage 2: done in %.1f s: %s", seconds, out.mi_uri)
    return Estimated(out, table, seconds, len(units) - len(todo), executor.stats)


def results_folder_for(job: JobSpec, model_key: str, dataset_id: str, manifest_sha256: str | None) -> ResultsFolder:
    """Where this job's estimator run on these activations (the manifest with this sha256), with this
    code, keeps its results: other activations or other estimator code never reuse them."""
    from ie_flow.provenance import code_version
    from ie_flow.stages.estimate import run_name

    run = run_name(job.estimate, manifest_sha256, code_version())
    return StorageRoot(job.storage.uri, job.storage.endpoint_url).results(model_key, dataset_id, run)


def job_run(job: JobSpec, model_key: str, dataset_id: str, manifest_sha256: str | None) -> Any:
    """The job's MLflow run, found again by its results folder; a job whose stage 1 is still to run
    names the folder of no manifest yet until its results are logged."""
    from ie_flow.tracking import JobRun

    results = results_folder_for(job, model_key, dataset_id, manifest_sha256)
    return JobRun(job, f"{model_key} on {dataset_id}", results.mi_uri)


def reusable_manifest_sha256(plan: ExtractPlan) -> str | None:
    """The sha256 of the activations this job will reuse, if they are complete and current."""
    folder = plan.folder
    return folder.load_manifest().sha256() if folder.has_manifest() and check_reuse(plan, False) is None else None


def run_job(job: JobSpec) -> Result:
    """The whole job: stage 1, stage 2, the control if asked for, IE, summary on storage, MLflow (a
    run that opens RUNNING when the job starts and ends FINISHED, or FAILED with the error)."""
    t0 = time.perf_counter()
    plan = plan_extract(job)  # every check that needs no model runs before the tracking run opens
    control_plan = plan_extract(control_job(job)) if job.control.kind != "none" else None
    with job_run(job, plan.source.key, plan.corpus.dataset_id, reusable_manifest_sha256(plan)) as tracked:
        extracted = extract_activations(job, plan=plan)
        estimated = estimate_mi(job, extracted.folder)
        seconds = {"extract": extracted.seconds, "estimate": estimated.seconds}
        comparison = run_control(job, extracted.folder, control_plan, tracked, seconds) if control_plan else None
        seconds["total"] = time.perf_counter() - t0
        return finish(job, extracted.folder, extracted.manifest, estimated, seconds, extracted.input_ids, tracked,
                      comparison)


def run_control(job: JobSpec, folder: DatasetFolder, plan: ExtractPlan, tracked: Any,
                seconds: dict[str, float]) -> Any:
    """The control estimator on the model's activations and on the control's; model minus control.
    Each measurement is its own results folder and a child of the job's MLflow run."""
    from ie_flow.control import ControlComparison, compare, measured_job

    t0 = time.perf_counter()
    model_job, ctrl_job = measured_job(job), plan.job
    model_est = estimate_mi(model_job, folder)
    seconds["control_model_estimate"] = time.perf_counter() - t0
    ctrl = extract_activations(ctrl_job, plan=plan)
    ctrl_est = estimate_mi(ctrl_job, ctrl.folder)
    seconds["control_extract"], seconds["control_estimate"] = ctrl.seconds, ctrl_est.seconds
    for sub_job, sub_folder, manifest, est in ((model_job, folder, folder.load_manifest(), model_est),
                                                (ctrl_job, ctrl.folder, ctrl.manifest, ctrl_est)):
        finish(sub_job, sub_folder, manifest, est, {"estimate": est.seconds}, None, tracked.child(sub_job))
    variant, valid, em, ec, layers = compare(model_job.estimate, model_est.table, ctrl_est.table)
    target = None
    if model_job.estimate.estimator().measures_target:
        from ie_flow.targets import compare_targets

        target = compare_targets(model_est.table, ctrl_est.table, variant)
    return ControlComparison(job.control.kind, job.control.estimator, variant, valid, em, ec, layers,
                             model_est.results.mi_uri, ctrl_est.results.mi_uri, target)


def estimate_job(job: JobSpec, folder: DatasetFolder) -> Result:
    """Stage 2 and what follows, on activations that are already on storage."""
    manifest = folder.load_manifest()
    with job_run(job, manifest.model.key, manifest.dataset.id, manifest.sha256()) as tracked:
        estimated = estimate_mi(job, folder)
        return finish(job, folder, manifest, estimated, {"estimate": estimated.seconds}, None, tracked)


def finish(job: JobSpec, folder: DatasetFolder, manifest: Manifest, estimated: Estimated,
           seconds: dict[str, float], input_ids: np.ndarray | None, tracked: Any, comparison: Any = None) -> Result:
    """IE from the MI table, the summary record on storage, then the tracking run."""
    from ie_flow.emergence import headline
    from ie_flow.provenance import code_version

    variant, variant_valid, (em,) = headline(job.estimate.estimator(), job.estimate.micro_reduce, estimated.table)
    if not variant_valid:  # the headline stays at its variant: the invalid layers are flagged, never read at another
        log.warning("warning: %s at its headline %s is invalid in %d of %d layers: marked, left out of the model IE",
                    job.estimate.method, variant, sum(not l.valid for l in em.layers), len(em.layers))
    record = results_record(
        job=job, job_yaml=job.to_yaml(), manifest_uri=folder.manifest_uri,
        manifest=manifest.model_copy(update={"shards": []}), results_uri=estimated.results.mi_uri, seconds=seconds,
        summary=em.summary, layers=em.layer_rows(),
        tracking_uri=job.tracking.uri if job.tracking.enabled else None, variant=variant, variant_valid=variant_valid,
        control=comparison.record() if comparison else None, manifest_sha256=manifest.sha256(),
        code_version=code_version(),
    )
    estimated.results.write_summary(record)
    result = Result(record, estimated.table, em, estimated.results, input_ids, comparison=comparison)
    result.tracking_error = tracked.log(result)
    return result
