"""`ie-flow`: a thin Typer app. Each command parses, builds the job spec in one place
(ie_flow.options), calls one library function and prints. Exit codes: 0 success, 2 bad input
(usage, config, data), 1 failure while running, 130 stopped by Ctrl-C, 143 stopped by SIGTERM."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, Iterator, NoReturn, Optional

import typer
from typer.core import TyperGroup

from ie_flow import IEFlowError, Refused, __version__, first_line
from ie_flow.config import JobSpec
from ie_flow.executors import executor_names
from ie_flow.options import (CLUSTER, JOB_OPTIONS, AsJson, EndpointOpt, ExperimentOpt, RayAddressOpt, StorageOpt,
                             TrackingOpt, build_job, choice_option, job_command)

app = typer.Typer(
    name="ie-flow",
    help="Information Emergence (arXiv 2405.12617) of language models over corpora, on Ray, tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("ie_flow")
EXIT_STOPPED = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Stopped(KeyboardInterrupt):
    """SIGTERM or Ctrl-C: stop where we are; finished units keep their completion markers.

    A KeyboardInterrupt, because Ray's blocking calls (ray.wait, ray.get) run signal handlers
    inside their C++ loop and only pass a KeyboardInterrupt on (as a new one, without our
    signal number: `_signals` keeps it); any other exception raised there is swallowed, and
    SIGTERM was ignored for the rest of the job."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_signals: list[int] = []  # signals received by main()'s handler, latest last


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """With --json, everything printed while working (Ray worker output included) goes to stderr,
    so stdout carries exactly one JSON object, printed after the work. Done at the file-descriptor
    level."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _print_outcome(result: Any, as_json: bool, seconds: bool = True) -> None:
    """A job's results.Result: the table (or the --json object), times and where everything is."""
    from ie_flow.report import format_table, json_summary

    if result.tracking_error:
        typer.echo(f"warning: {result.tracking_error}", err=True)
    if as_json:
        typer.echo(json.dumps(json_summary(result)))
        return
    typer.echo(format_table(result))
    if seconds:
        s = result.record.seconds
        typer.echo("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in s.items()))
    _print_where(result.record)


def _print_where(r: Any) -> None:
    typer.echo(f"\nactivations: {r.manifest_uri}")
    typer.echo(f"results:     {r.results_uri}")
    if r.mlflow_run_id:
        typer.echo(f"MLflow:      {r.tracking_uri}  run {r.mlflow_run_id}")
        if r.tracking_uri.startswith(("http://", "https://")):
            typer.echo(f"browse:      open {r.tracking_uri}")
        else:
            typer.echo(f"browse:      mlflow ui --backend-store-uri {r.tracking_uri}  (then open http://127.0.0.1:5000)")


@app.command()
@job_command()
def run(job: JobSpec, as_json: AsJson = False) -> None:
    """Run the whole job: extract activations, estimate MI, compute IE, log to MLflow."""
    from ie_flow.jobs import run_job

    with _stdout_to_stderr(as_json):
        outcome = run_job(job)
    _print_outcome(outcome, as_json)


@app.command()
@job_command()
def extract(
    job: JobSpec,
    force: Annotated[bool, typer.Option(help="Discard existing activations for this job and extract again.")] = False,
    repair: Annotated[bool, typer.Option(help="Check every shard file against its sha256 and extract again only "
                                              "the shards that are damaged or missing.")] = False,
    as_json: AsJson = False,
) -> None:
    """Stage 1 alone: capture every block's input/output to Parquet; prints the manifest URI."""
    from ie_flow.jobs import extract_activations

    with _stdout_to_stderr(as_json):
        res = extract_activations(job, force=force, repair=repair)
    m = res.manifest
    info = {"manifest": res.folder.manifest_uri, "reused": res.reused, "seconds": res.seconds,
            "samples": m.samples, "tokens": m.tokens, "corpus_digest": m.dataset.digest}
    typer.echo(json.dumps(info) if as_json else f"manifest: {info['manifest']} ({res.seconds:.1f} s)")


@app.command()
def estimate(
    manifest: Annotated[str, typer.Argument(help="manifest.json URI (or its folder) written by `ie-flow extract`.")],
    workflow: Annotated[Optional[Path], typer.Option(help="Job spec YAML for estimator settings.")] = None,
    estimator: JOB_OPTIONS["estimator"][0] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Estimator seeds, comma separated.")] = None,
    memory_budget: Annotated[Optional[str], typer.Option(help="Memory per stage-2 worker, e.g. 4GiB.")] = None,
    storage: StorageOpt = None, s3_endpoint: EndpointOpt = None, tracking_uri: TrackingOpt = None,
    experiment: ExperimentOpt = None, ray_address: RayAddressOpt = None,
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="Do not log to MLflow.")] = False,
    as_json: AsJson = False,
) -> None:
    """Stage 2 alone, on an existing manifest: MI per layer and position, IE, MLflow."""
    from ie_flow.jobs import estimate_job
    from ie_flow.store import dataset_folder

    folder, root = dataset_folder(manifest, s3_endpoint)
    job = build_job(workflow, {"estimator": estimator, "seeds": seeds, "memory_budget": memory_budget,
                               "storage": storage or root,
                               "s3_endpoint": s3_endpoint, "tracking_uri": tracking_uri, "experiment": experiment,
                               "ray_address": ray_address, "no_tracking": no_tracking})
    with _stdout_to_stderr(as_json):
        outcome = estimate_job(job, folder)
    _print_outcome(outcome, as_json, seconds=False)


@app.command()
@job_command("storage", "s3_endpoint", "tracking_uri", workflow=False)
def report(
    job: JobSpec,
    target: Annotated[Optional[str], typer.Argument(help="MLflow run id, results folder URI, or nothing for the latest job.")] = None,
    experiment: ExperimentOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder to write the plots (PNG) into.")] = None,
    log_run: Annotated[bool, typer.Option("--log", help="Log these results to MLflow (e.g. after the server was down).")] = False,
    as_json: AsJson = False,
) -> None:
    """Table and plots of a finished job."""
    from ie_flow.emergence import emergence_by_variant
    from ie_flow.plots import write_plots
    from ie_flow.report import format_table, json_summary, load_result

    result = load_result(target, job.storage.uri, job.tracking.uri, job.storage.endpoint_url)
    if log_run:
        from ie_flow.tracking import log_results

        if result.results is None:
            raise IEFlowError("--log needs a results folder on storage, not an MLflow run id")
        with _stdout_to_stderr(as_json):  # MLflow prints the run's URL on stdout: keep --json's stdout clean
            run_id = log_results(result.record, result.table, result.emergence, job.tracking.uri,
                                 experiment or result.record.job.tracking.experiment,
                                 pending_run_id=result.record.mlflow_pending_run_id)
        result.record.mlflow_run_id, result.record.tracking_uri = run_id, job.tracking.uri
        result.record.mlflow_pending_run_id = None
        result.results.write_summary(result.record)
    plots = write_plots(result.emergence, result.label, out, result.record.control,  # IE at every variant
                        emergence_by_variant(result.table, result.record.micro_reduce)) if out else []
    if as_json:
        typer.echo(json.dumps(json_summary(result)))
        return
    typer.echo(format_table(result))
    if plots:
        typer.echo(f"plots: {', '.join(str(p) for p in plots)}")


@app.command()
@job_command("storage", "s3_endpoint", "tracking_uri", workflow=False)
def compare(
    job: JobSpec,
    targets: Annotated[list[str], typer.Argument(help="Two or more MLflow run ids or results folders.")],
    out: Annotated[Path, typer.Option(help="Where to write the comparison plot.")] = Path("ie-compare.png"),
    as_json: AsJson = False,
) -> None:
    """Several models or corpora side by side: IE per layer table and one plot."""
    from ie_flow.plots import plot_compare
    from ie_flow.report import common_means, format_compare, json_summary, load_result

    if len(targets) < 2:
        raise IEFlowError("compare needs at least two runs or results folders")
    results = [load_result(t, job.storage.uri, job.tracking.uri, job.storage.endpoint_url) for t in targets]
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_compare({f"{i + 1}: {r.label}": r.emergence for i, r in enumerate(results)}, out)
    if as_json:
        keep, means = common_means(results)  # the comparison: the layers valid in every run
        typer.echo(json.dumps({"plot": str(out), "common_layers": keep, "runs": [
            {**json_summary(r), "ie_mean_common": m[0]} for r, m in zip(results, means)]}))
        return
    typer.echo(format_compare(results))
    typer.echo(f"plot: {out}")


@app.command()
@job_command("storage", "s3_endpoint", "tracking_uri", "no_tracking", "ray_address", "executor", workflow=False)
def reproduce(
    job: JobSpec,
    names: Annotated[Optional[list[str]], typer.Argument(
        help="Experiments to run (icl, natural-text, human-vs-model, model-size); all by default.")] = None,
    experiment: Annotated[str, typer.Option(
        "--experiment", envvar="MLFLOW_EXPERIMENT_NAME", help="MLflow experiment of the parent run.")] = "ie-flow-reproduction",
    workflows: Annotated[Optional[Path], typer.Option(help="Folder of experiment files (default workflows/paper).")] = None,
    out: Annotated[Path, typer.Option(help="The report to write (its figures go beside it).")] = Path("docs/REPRODUCTION.md"),
    report_only: Annotated[bool, typer.Option("--report-only", help="Write the report from what already ran.")] = False,
    scale: Annotated[str, typer.Option(help="The experiment files' scale: default (this 2-core machine), or a "
                                            "name under their `scales:` (paper: the n each claim's measure needs).")
                     ] = "default",
) -> None:
    """The paper's experiments (workflows/paper/), then the generated reproduction report."""
    from ie_flow.reproduction.document import write_report
    from ie_flow.reproduction.experiments import load_experiments
    from ie_flow.reproduction.runner import Setup, reproduce as run_experiments

    chosen = load_experiments(names, workflows, scale)
    setup = Setup(job.storage.uri, job.storage.endpoint_url, job.tracking.uri if job.tracking.enabled else None,
                  experiment, job.runtime.ray_address, job.runtime.executor)
    if report_only:
        from ie_flow.store import StorageRoot

        index = StorageRoot(setup.storage, setup.endpoint_url).load_reproduction()
    else:
        index = run_experiments(chosen, setup)
    written = write_report(load_experiments(None, workflows, scale), index, setup, out)
    typer.echo(f"report: {written}")
    if index.failed:  # each failure was logged with its error; the report lists them too
        typer.echo(f"error: {len(index.failed)} cell(s) failed ({', '.join(sorted(index.failed))}); rerun the same "
                   "command to retry them (finished cells are kept)", err=True)
        raise typer.Exit(1)


class _CorpusGroup(TyperGroup):
    """`ie-flow corpus [WORKFLOW] [OPTIONS]` describes a corpus and `ie-flow corpus generate ...`
    writes one. Click would read `generate` as the WORKFLOW argument, so a subcommand's name is
    routed before the group's own arguments are parsed."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] in self.commands:
            super().parse_args(ctx, [])  # the group's own options keep their defaults
            ctx._protected_args, ctx.args = args[:1], args[1:]  # what click's Group.parse_args sets
            return ctx.args
        return super().parse_args(ctx, args)


corpus_app = typer.Typer(cls=_CorpusGroup, help="Describe a corpus; `generate` writes model-written text.")
app.add_typer(corpus_app, name="corpus")


@corpus_app.callback(invoke_without_command=True)
@job_command("corpus", "model", "shots", "tokens", "samples", "text_field", "label_field", "seed", "s3_endpoint")
def corpus(
    job: JobSpec,
    ctx: typer.Context,
    preview: Annotated[int, typer.Option(help="Example windows to show.")] = 5,
    as_json: AsJson = False,
) -> None:
    """Build a corpus with a model's tokenizer and describe it: size, digest, prefix entropy, examples.
    Built-in text corpora: python-docs, fortunes."""
    from ie_flow.corpora import build_corpus
    from ie_flow.models import load_tokenizer

    if ctx.invoked_subcommand:
        return
    tok = load_tokenizer(job.model.name, job.model.revision)
    info = build_corpus(job.corpus, tok, job.storage.endpoint_url).describe(tok, preview)
    if as_json:
        typer.echo(json.dumps(info))
        return
    typer.echo(f"corpus {info['name']}: {info['samples']} windows x {info['tokens']} tokens")
    typer.echo(f"digest {info['digest']}  (storage folder {info['dataset_id']})")
    typer.echo(f"prefix entropy per position (bits): {info['prefix_entropy_bits']}")
    if "target" in info:
        target = info["target"]
        classes = ", ".join(f"{name!r}: {count}" for name, count in target["classes"].items())
        typer.echo(f"label: {classes}  (H(s) = {target['entropy_bits']} bits; {target['groups']} groups)")
        for what, key in (("I(s; prefix_t)", "exact_prefix_bits"), ("I(s; x_t), token alone", "exact_token_bits")):
            if target[key] is not None:
                typer.echo(f"exact {what} per position (bits): {[round(b, 3) for b in target[key]]}")
    for ex in info.get("examples", []):
        typer.echo(f"  {ex!r}")


def _gen(help: str, typ: Any = Optional[int]) -> Any:
    return Annotated[typ, typer.Option(help=help)]


@corpus_app.command("generate")
def corpus_generate(
    out: Annotated[str, typer.Option(help="JSONL file to write: local path or s3:// URI.")],
    prompts: _gen("Human corpus the prompts come from: fortunes (default), python-docs or a "
                  "text/JSONL/Parquet path.", Optional[str]) = None,
    model: _gen("Model that writes (default smollm2-135m, SmolLM2-135M-Instruct).", Optional[str]) = None,
    samples: _gen("Number of prompts (default 256).") = None,
    seed: _gen("Seed of the prompt draw and of sampling.") = None,
    task: _gen("continue (default): continue the opening sentence; answer: reply to it.", Optional[str]) = None,
    batch_size: _gen("Prompts generated together (and per completion record; default 64).") = None,
    max_new_tokens: _gen("Tokens the model writes per prompt (default 64).") = None,
    temperature: _gen("Sampling temperature (default 0.7).", Optional[float]) = None,
    top_p: _gen("Nucleus sampling mass (default 0.9).", Optional[float]) = None,
    text_field: _gen("Text field / column of a JSONL or Parquet prompt corpus.", Optional[str]) = None,
    dtype: _gen("What the model computes in: auto (default: bfloat16 on a GPU or a CPU with native bfloat16, "
                "else float32), float32, bfloat16, float16.", Optional[str]) = None,
    ray_address: RayAddressOpt = None,
    executor: choice_option("serial (default: in-process) or ray (the local runtime, or the --ray-address cluster).",
                            CLUSTER, executor_names()) = None,
    s3_endpoint: EndpointOpt = None,
    force: Annotated[bool, typer.Option(help="Replace OUT (and unfinished batches) made with other settings.")] = False,
    as_json: AsJson = False,
) -> None:
    """Model-written text: the model continues (or answers) the opening sentences of human documents.
    Each line holds the model's text and the human rest of the same document (field `human`).
    In-process by default; on a Ray cluster with --ray-address. A rerun resumes an interrupted one."""
    given = {k: v for k, v in locals().items() if v is not None and k not in
             ("out", "ray_address", "executor", "s3_endpoint", "force", "as_json")}  # unset: the defaults
    from ie_flow.corpora.generate import GenerationSettings, generate_corpus

    with _stdout_to_stderr(as_json):
        result = generate_corpus(GenerationSettings(**given), out, ray_address, force, s3_endpoint, executor)
    typer.echo(json.dumps(result.summary()) if as_json else "\n".join(result.describe()))


@app.command()
def models(
    name: Annotated[str, typer.Argument(help="Model name to resolve.")] = "smollm2-135m",
    revision: Annotated[Optional[str], typer.Option(help="Hub revision.")] = None,
    as_json: AsJson = False,
) -> None:
    """What a model name resolves to, and its blocks (loads the model on CPU)."""
    from ie_flow.models import describe_model

    info = describe_model(name, revision)
    if as_json:
        typer.echo(json.dumps(info))
        return
    for k, v in info.items():
        typer.echo(f"{k:>14}: {v}")


@app.command()
@job_command()
def submit(
    job: JobSpec,
    storage_is_shared: Annotated[bool, typer.Option(help="The --storage folder is mounted on every node (NFS, ...).")] = False,
    wait: Annotated[bool, typer.Option(help="Follow the job's logs until it ends.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 3600,
    as_json: AsJson = False,
) -> None:
    """Submit a job to a Ray cluster (Ray Jobs API at --ray-address); it runs `ie-flow run` there. A
    corpus or model that exists on this machine only is uploaded to the job's storage first (once)."""
    from ie_flow.inputs import carry_inputs, local_inputs
    from ie_flow.submit import check_shared, client_for, last_json_line, submit_job, wait_for

    check_shared(job, storage_is_shared)
    inputs = local_inputs(job)  # a local corpus or model: checked here, uploaded once the cluster answers
    client = client_for(job.runtime.ray_address)
    job_id = submit_job(client, carry_inputs(job, inputs))
    typer.echo(f"submitted {job_id}", err=True)
    if not wait:
        typer.echo(json.dumps({"job_id": job_id}) if as_json else job_id)
        return
    status = wait_for(client, job_id, timeout, echo_logs=not as_json)
    result = last_json_line(client.get_job_logs(job_id)) or {}
    typer.echo(json.dumps({"job_id": job_id, "status": status, "result": result}) if as_json
               else f"{job_id}: {status}")
    if status != "SUCCEEDED":
        raise typer.Exit(1)


JobId = Annotated[str, typer.Argument(help="Ray job submission id.")]


@app.command()
def status(job_id: JobId, ray_address: RayAddressOpt = None, as_json: AsJson = False) -> None:
    """Status of a submitted job."""
    from ie_flow.submit import client_for

    info = client_for(ray_address).get_job_info(job_id)
    state, message = str(info.status).split(".")[-1], info.message or ""
    typer.echo(json.dumps({"job_id": job_id, "status": state, "message": message}) if as_json
               else f"{job_id}: {state}  {message}".rstrip())


@app.command()
def logs(job_id: JobId, ray_address: RayAddressOpt = None,
         follow: Annotated[bool, typer.Option(help="Keep printing until the job ends.")] = False,
         as_json: AsJson = False) -> None:
    """Logs of a submitted job (with --json: one object holding them, after the job ends with --follow)."""
    from ie_flow.submit import client_for, wait_for

    client = client_for(ray_address)
    if as_json:
        state = wait_for(client, job_id, timeout=10**9, echo_logs=False) if follow else \
            str(client.get_job_status(job_id)).split(".")[-1]
        typer.echo(json.dumps({"job_id": job_id, "status": state, "logs": client.get_job_logs(job_id)}))
    elif follow:
        wait_for(client, job_id, timeout=10**9)
    else:
        typer.echo(client.get_job_logs(job_id), nl=False)


@app.command()
def stop(job_id: JobId, ray_address: RayAddressOpt = None, as_json: AsJson = False) -> None:
    """Stop a submitted job."""
    from ie_flow.submit import client_for

    stopped = bool(client_for(ray_address).stop_job(job_id))
    typer.echo(json.dumps({"job_id": job_id, "stopped": stopped}) if as_json
               else f"{job_id}: {'stop requested' if stopped else 'already ended'}")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ie-flow {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray's, MLflow's and transformers' own logs "
                                                                  "(anywhere on the command line).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    from ie_flow.logs import configure_logging

    configure_logging(verbose)


GLOBAL_FLAGS = ("-v", "--verbose")


def hoist_global_flags(args: list[str]) -> list[str]:
    """`-v` anywhere on the command line: moved before the subcommand, where click looks for the
    app's own options (nothing after a `--` is touched)."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]


def run_cli(args: list[str] | None = None) -> int:
    """Run one command in this process and return its exit code (tests call this directly)."""
    args = hoist_global_flags(sys.argv[1:] if args is None else list(args))
    try:
        result = app(args=args, standalone_mode=False)  # returns the code of typer.Exit / --help
        code = result if isinstance(result, int) else 0
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (Stopped; main() recorded it) outside the command itself
        code = EXIT_STOPPED[signal.SIGINT]
    except Exception as e:  # noqa: BLE001 - the one place that turns errors into exit codes
        return _error_code(e)
    if code != EXIT_STOPPED[signal.SIGINT]:
        return code
    # Typer turns a KeyboardInterrupt raised in a command (Ctrl-C; SIGTERM raises Stopped, which
    # Ray's blocking calls pass on as a plain KeyboardInterrupt) into a silent exit 130
    signum = _signals[-1] if _signals else signal.SIGINT
    typer.echo(f"stopped ({signal.Signals(signum).name}): finished units are kept; run the same command "
               "again to resume", err=True)
    return EXIT_STOPPED[signum]


def main() -> None:
    def stop_here(signum: int, frame: Any) -> None:
        _signals.append(signum)
        raise Stopped(signum)

    # SIGTERM (Kubernetes, Slurm, `ray job stop`) stops like Ctrl-C: one line, a documented code,
    # and no completion marker for a unit that did not finish
    signal.signal(signal.SIGTERM, stop_here)
    signal.signal(signal.SIGINT, stop_here)
    _exit(run_cli())


def _error_code(e: Exception) -> int:
    """User errors (ours, or the command line's usage errors) exit 2 with one line; anything else 1."""
    cause = getattr(e, "cause", None) or e  # a Ray task's error arrives wrapped
    if isinstance(cause, IEFlowError):
        typer.echo(f"error: {cause}", err=True)
        return 2
    if isinstance(cause, Refused):
        typer.echo(f"error: refused: {cause}", err=True)
        return 1
    if isinstance(e, typer.Exit):
        return e.exit_code
    if isinstance(e, typer.TyperException) and hasattr(e, "format_message"):  # usage errors
        typer.echo(f"error: {e.format_message()}", err=True)
        return int(getattr(e, "exit_code", 2))
    if os.environ.get("IE_FLOW_DEBUG"):
        raise e
    typer.echo(f"error: {type(cause).__name__}: {first_line(cause)}  (set IE_FLOW_DEBUG=1 for the traceback)", err=True)
    return 1


def _exit(code: int) -> NoReturn:
    """Exit with `code`, skipping native libraries' teardown. After all work was done and printed,
    Arrow's thread pools sometimes abort the process while static destructors run (SIGABRT,
    "terminate called without an active exception": apache/arrow#34314), which turned a
    successful `ie-flow report --json` into exit -6 in CI. Ray is shut down and output flushed
    first; ie-flow registers nothing else to run at exit."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
