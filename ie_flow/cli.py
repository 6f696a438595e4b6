"""`ie-flow`: a thin Typer app. Commands parse options, build the job spec, call the library.
Exit codes: 0 success, 2 bad input (usage, config, data), 1 failure while running."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Iterator, NoReturn, Optional

import typer

from ie_flow import IEFlowError

app = typer.Typer(
    name="ie-flow",
    help="Information Emergence (arXiv 2405.12617) of language models over corpora, on Ray, tracked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("ie_flow")

# --- shared options (one definition, the same names on every command) ----------------------------
Workflow = Annotated[Optional[Path], typer.Argument(help="Job spec YAML (workflows/*.yaml); defaults otherwise.")]
Model = Annotated[Optional[str], typer.Option(help="Model: alias (smollm2-135m), HF hub id, folder, .gguf file; random:NAME for a random-weight control.")]
Corpus = Annotated[Optional[str], typer.Option(help="icl-countries (default), icl-animals, icl-colours, icl-mixed, or a text/JSONL/Parquet path or s3:// URI.")]
Shots = Annotated[Optional[int], typer.Option(help="ICL shots (names per sequence, 1-5).")]
Tokens = Annotated[Optional[int], typer.Option(help="Window length N in tokens (text corpora).")]
Samples = Annotated[Optional[int], typer.Option(help="Number of sequences.")]
TextField = Annotated[Optional[str], typer.Option(help="Text field / column of JSONL and Parquet corpora.")]
Estimator = Annotated[Optional[str], typer.Option(help="MI estimator: infonce (default), dv, mine, smile, nwj, gaussian, mine-paper.")]
Seeds = Annotated[Optional[str], typer.Option(help="Estimator seeds, comma separated, e.g. 0,1,2.")]
Micro = Annotated[Optional[str], typer.Option(help="Micro variables: in_context (default) or isolated.")]
Storage_ = Annotated[Optional[str], typer.Option("--storage", help="Storage root: local folder or s3://bucket/prefix.")]
Endpoint = Annotated[Optional[str], typer.Option("--s3-endpoint", help="S3-compatible endpoint URL (MinIO); or AWS_ENDPOINT_URL.")]
TrackingUri = Annotated[Optional[str], typer.Option("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db).")]
Experiment = Annotated[Optional[str], typer.Option(help="MLflow experiment name.")]
RayAddress = Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster to join (auto, ray://HOST:10001); local Ray otherwise.")]
Seed = Annotated[Optional[int], typer.Option(help="Corpus seed (sampling of sequences).")]
BatchSize = Annotated[Optional[int], typer.Option(help="Sequences per forward pass.")]
StorageDtype = Annotated[Optional[str], typer.Option(help="Activation storage dtype: float16 (default) or float32.")]
Layers = Annotated[Optional[str], typer.Option(help="Blocks to capture, comma separated, e.g. 0,1,2 (default all).")]
Positions = Annotated[Optional[str], typer.Option(help="Token positions to keep, comma separated (default all; the last is always kept).")]
NoTracking = Annotated[bool, typer.Option("--no-tracking", help="Do not log to MLflow.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout (logs go to stderr).")]


def _overrides(**kw: Any) -> dict[str, Any]:
    """CLI option name -> dotted job spec field."""
    fields = {
        "model": "model.name", "corpus": "corpus.name", "shots": "corpus.shots", "tokens": "corpus.tokens",
        "samples": "corpus.samples", "seed": "corpus.seed", "text_field": "corpus.text_field",
        "estimator": "estimate.method", "micro": "extract.micro", "batch_size": "extract.batch_size",
        "storage_dtype": "extract.storage_dtype", "storage": "storage.uri", "s3_endpoint": "storage.endpoint_url",
        "tracking_uri": "tracking.uri", "experiment": "tracking.experiment", "ray_address": "runtime.ray_address",
    }
    out = {fields[k]: v for k, v in kw.items() if k in fields}
    lists = {"seeds": "estimate.seeds", "layers": "extract.layers", "positions": "extract.positions"}
    for option, dotted in lists.items():
        if kw.get(option):
            try:
                out[dotted] = [int(s) for s in str(kw[option]).split(",") if s.strip()]
            except ValueError:
                raise IEFlowError(f"--{option} must be integers separated by commas, got {kw[option]!r}") from None
    if kw.get("no_tracking"):
        out["tracking.enabled"] = False
    return out


def _job(**kw: Any) -> Any:
    """Job spec from the command's own arguments (its locals()): workflow file + option overrides."""
    from ie_flow.config import load_job

    return load_job(kw.get("workflow"), _overrides(**kw))


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool) -> Iterator[Any]:
    """With --json, everything printed while working (Ray worker output included) goes to stderr,
    so stdout carries exactly one JSON object. Done at the file-descriptor level."""
    if not enabled:
        yield sys.stdout
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield os.fdopen(os.dup(saved), "w")
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _print_where(result: Any, tracking_error: str | None) -> None:
    r = result.record
    typer.echo(f"\nactivations: {r['manifest_uri']}")
    typer.echo(f"results:     {r['results_uri']}")
    if tracking_error:
        typer.echo(f"warning: {tracking_error}", err=True)
    elif r.get("mlflow_run_id"):
        uri = r["tracking_uri"]
        typer.echo(f"MLflow:      {uri}  run {r['mlflow_run_id']}")
        if uri.startswith(("http://", "https://")):
            typer.echo(f"browse:      open {uri}")
        else:
            typer.echo(f"browse:      mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000)")


@app.command()
def run(
    workflow: Workflow = None, model: Model = None, corpus: Corpus = None, shots: Shots = None,
    tokens: Tokens = None, samples: Samples = None, text_field: TextField = None, estimator: Estimator = None,
    seeds: Seeds = None, micro: Micro = None, storage: Storage_ = None, s3_endpoint: Endpoint = None,
    tracking_uri: TrackingUri = None, experiment: Experiment = None, ray_address: RayAddress = None,
    seed: Seed = None, batch_size: BatchSize = None, storage_dtype: StorageDtype = None,
    layers: Layers = None, positions: Positions = None, no_tracking: NoTracking = False, as_json: AsJson = False,
) -> None:
    """Run the whole job: extract activations, estimate MI, compute IE, log to MLflow."""
    from ie_flow.pipeline import run_job
    from ie_flow.report import LoadedResult, format_table, json_summary

    job = _job(**locals())
    with _stdout_to_stderr(as_json) as out:
        outcome = run_job(job)
        result = LoadedResult(outcome.record, outcome.table, outcome.emergence, None)
    if as_json:
        if outcome.tracking_error:
            typer.echo(f"warning: {outcome.tracking_error}", err=True)
        typer.echo(json.dumps(json_summary(result)), file=out)
        out.close()
        return
    typer.echo(format_table(result))
    s = outcome.record["seconds"]
    typer.echo(f"time: extract {s['extract']:.1f} s, estimate {s['estimate']:.1f} s, total {s['total']:.1f} s")
    _print_where(result, outcome.tracking_error)


@app.command()
def extract(
    workflow: Workflow = None, model: Model = None, corpus: Corpus = None, shots: Shots = None,
    tokens: Tokens = None, samples: Samples = None, text_field: TextField = None, micro: Micro = None,
    storage: Storage_ = None, s3_endpoint: Endpoint = None, ray_address: RayAddress = None, seed: Seed = None,
    batch_size: BatchSize = None, storage_dtype: StorageDtype = None, layers: Layers = None,
    positions: Positions = None,
    force: Annotated[bool, typer.Option(help="Discard existing activations for this job and extract again.")] = False,
    as_json: AsJson = False,
) -> None:
    """Stage 1 alone: capture every block's input/output to Parquet; prints the manifest URI."""
    from ie_flow.stages.extract import run_extract

    job = _job(**locals())
    with _stdout_to_stderr(as_json) as out:
        res = run_extract(job, force=force)
    info = {"manifest": res.manifest_uri, "reused": res.reused, "seconds": res.seconds,
            "samples": res.manifest["samples"], "tokens": res.manifest["tokens"],
            "corpus_digest": res.manifest["dataset"]["digest"]}
    typer.echo(json.dumps(info) if as_json else f"manifest: {res.manifest_uri} ({res.seconds:.1f} s)",
               file=out if as_json else None)


def _manifest_storage(manifest: str, endpoint: str | None) -> tuple[Any, str]:
    """Dataset folder of a manifest URI, and the storage root it lives under."""
    from ie_flow.storage import Storage

    folder = manifest[: -len("/manifest.json")] if manifest.endswith("/manifest.json") else manifest.rstrip("/")
    parts = folder.split("/")
    if len(parts) < 4 or parts[-3] != "activations":
        raise IEFlowError(f"{manifest!r} is not an activations folder ({{root}}/activations/MODEL/DATASET)")
    return Storage(folder, endpoint), "/".join(parts[:-3]) or "/"


@app.command()
def estimate(
    manifest: Annotated[str, typer.Argument(help="manifest.json URI (or its folder) written by `ie-flow extract`.")],
    workflow: Annotated[Optional[Path], typer.Option(help="Job spec YAML for estimator settings.")] = None,
    estimator: Estimator = None, seeds: Seeds = None, storage: Storage_ = None, s3_endpoint: Endpoint = None,
    tracking_uri: TrackingUri = None, experiment: Experiment = None, ray_address: RayAddress = None,
    no_tracking: NoTracking = False, as_json: AsJson = False,
) -> None:
    """Stage 2 alone, on an existing manifest: MI per layer and position, IE, MLflow."""
    from ie_flow.emergence import information_emergence
    from ie_flow.pipeline import SUMMARY, JobOutcome, log_to_tracking, make_record
    from ie_flow.report import LoadedResult, format_table, json_summary
    from ie_flow.stages.estimate import load_manifest, run_estimate

    store, root = _manifest_storage(manifest, s3_endpoint)
    kw = {**locals(), "storage": storage or root}
    job = _job(**kw)
    with _stdout_to_stderr(as_json) as out:
        man = load_manifest(store)
        res = run_estimate(job, store)
        em = information_emergence(res.table, job.estimate.micro_reduce)
        record = make_record(job, store.url("manifest.json"), man, res.results_uri, em, {"estimate": res.seconds})
        res.results.write_json(SUMMARY, record)
        outcome = JobOutcome(record, res.table, em)
        error = log_to_tracking(outcome, res.results, job.tracking.uri, job.tracking.experiment) \
            if job.tracking.enabled else None
    result = LoadedResult(record, res.table, em, res.results)
    if as_json:
        typer.echo(json.dumps(json_summary(result)), file=out)
        return
    typer.echo(format_table(result))
    _print_where(result, error)


@app.command()
def report(
    target: Annotated[Optional[str], typer.Argument(help="MLflow run id, results folder URI, or nothing for the latest job.")] = None,
    storage: Storage_ = None, s3_endpoint: Endpoint = None, tracking_uri: TrackingUri = None,
    experiment: Experiment = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder to write the plots (PNG) into.")] = None,
    log_run: Annotated[bool, typer.Option("--log", help="Log these results to MLflow (e.g. after the server was down).")] = False,
    as_json: AsJson = False,
) -> None:
    """Table and plots of a finished job."""
    from ie_flow.config import DEFAULT_STORAGE, DEFAULT_TRACKING
    from ie_flow.report import format_table, json_summary, load_result

    tracking = tracking_uri or DEFAULT_TRACKING
    result = load_result(target, storage or DEFAULT_STORAGE, tracking, s3_endpoint)
    if log_run:
        from ie_flow.pipeline import JobOutcome, log_to_tracking

        if result.results is None:
            raise IEFlowError("--log needs a results folder on storage, not an MLflow run id")
        with _stdout_to_stderr(as_json):  # MLflow prints the run's URL on stdout: keep --json's stdout clean
            error = log_to_tracking(JobOutcome(result.record, result.table, result.emergence), result.results,
                                    tracking, experiment or result.record["job"]["tracking"]["experiment"])
        if error:
            raise RuntimeError(error)
    if out:
        from ie_flow.plots import plot_ie_per_layer, plot_mi_heatmap, plot_token_curves

        out.mkdir(parents=True, exist_ok=True)
        plot_ie_per_layer(result.emergence, out / "ie_per_layer.png", f"IE per layer: {result.label}")
        plot_mi_heatmap(result.emergence, out / "mi_heatmap.png", f"M_l(t): {result.label}")
        plot_token_curves(result.emergence, out / "token_curves.png", f"E_l(t): {result.label}")
    if as_json:
        typer.echo(json.dumps(json_summary(result)))
        return
    typer.echo(format_table(result))
    if out:
        typer.echo(f"plots: {out}/ie_per_layer.png, mi_heatmap.png, token_curves.png")


@app.command()
def compare(
    targets: Annotated[list[str], typer.Argument(help="Two or more MLflow run ids or results folders.")],
    storage: Storage_ = None, s3_endpoint: Endpoint = None, tracking_uri: TrackingUri = None,
    out: Annotated[Path, typer.Option(help="Where to write the comparison plot.")] = Path("ie-compare.png"),
    as_json: AsJson = False,
) -> None:
    """Several models or corpora side by side: IE per layer table and one plot."""
    from ie_flow.config import DEFAULT_STORAGE, DEFAULT_TRACKING
    from ie_flow.plots import plot_compare
    from ie_flow.report import json_summary, load_result

    if len(targets) < 2:
        raise IEFlowError("compare needs at least two runs or results folders")
    results = [load_result(t, storage or DEFAULT_STORAGE, tracking_uri or DEFAULT_TRACKING, s3_endpoint)
               for t in targets]
    labels = [f"{i + 1}: {r.label}" for i, r in enumerate(results)]
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_compare({lab: r.emergence for lab, r in zip(labels, results)}, out)
    if as_json:
        typer.echo(json.dumps({"plot": str(out), "runs": [json_summary(r) for r in results]}))
        return
    for lab in labels:
        typer.echo(lab)
    layers = sorted({l.layer for r in results for l in r.emergence.layers})
    typer.echo("layer  " + " ".join(f"{'IE ' + str(i + 1):>9} " for i in range(len(results))))
    for layer in layers:
        cells = []
        for r in results:
            match = [l for l in r.emergence.layers if l.layer == layer]
            cells.append(f"{match[0].ie:>9.3f}{'*' if match[0].saturated else ' '}" if match else f"{'-':>9} ")
        typer.echo(f"{layer:>5}  " + " ".join(cells))
    typer.echo("mean   " + " ".join(f"{r.emergence.summary['ie_mean']:>9.3f} " for r in results))
    typer.echo("max    " + " ".join(f"{r.emergence.summary['ie_max']:>9.3f} " for r in results))
    if any(l.saturated for r in results for l in r.emergence.layers):
        typer.echo("* layer with saturated estimates: its IE is a difference of lower bounds")
    typer.echo(f"plot: {out}")


@app.command()
def corpus(
    workflow: Workflow = None, corpus: Corpus = None, model: Model = None, shots: Shots = None,
    tokens: Tokens = None, samples: Samples = None, text_field: TextField = None, seed: Seed = None,
    s3_endpoint: Endpoint = None,
    preview: Annotated[int, typer.Option(help="Example windows to show.")] = 5,
    as_json: AsJson = False,
) -> None:
    """Build a corpus with a model's tokenizer and describe it: size, digest, examples."""
    from ie_flow.corpora import build_corpus
    from ie_flow.models import load_tokenizer

    job = _job(**locals())
    tok = load_tokenizer(job.model.name, job.model.revision)
    c = build_corpus(job.corpus, tok, job.storage.endpoint_url)
    info = c.describe(tok, preview)
    if as_json:
        typer.echo(json.dumps(info))
        return
    typer.echo(f"corpus {info['name']}: {info['samples']} windows x {info['tokens']} tokens")
    typer.echo(f"digest {info['digest']}  (storage folder {info['dataset_id']})")
    typer.echo(f"prefix entropy per position (bits): {info['prefix_entropy_bits']}")
    for ex in info.get("examples", []):
        typer.echo(f"  {ex!r}")


@app.command()
def models(
    name: Annotated[str, typer.Argument(help="Model name to resolve.")] = "smollm2-135m",
    revision: Annotated[Optional[str], typer.Option(help="Hub revision.")] = None,
    as_json: AsJson = False,
) -> None:
    """What a model name resolves to, and its blocks (loads the model on CPU)."""
    from ie_flow.models import GGUF_ALIASES, load_model

    loaded = load_model(name, revision)
    info = {
        "name": name, "resolves_to": loaded.source.describe(), "architecture": type(loaded.model).__name__,
        "blocks": loaded.num_blocks, "block_type": type(loaded.blocks[0]).__name__,
        "hidden_size": loaded.hidden_size, "fingerprint": loaded.fingerprint,
        "bos_prepended": loaded.bos_token_id is not None, "aliases": sorted(GGUF_ALIASES),
    }
    if as_json:
        typer.echo(json.dumps(info))
        return
    for k, v in info.items():
        typer.echo(f"{k:>14}: {v}")


from ie_flow.submit import register as _register_submit  # noqa: E402  (adds submit/status/logs/stop)

_register_submit(app)


def main() -> None:
    debug = bool(os.environ.get("IE_FLOW_DEBUG"))
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "urllib3", "botocore", "s3fs", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        result = app(standalone_mode=False)  # returns the code of typer.Exit / --help
        code = result if isinstance(result, int) else 0
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        code = 130
    except IEFlowError as e:
        typer.echo(f"error: {e}", err=True)
        code = 2
    except Exception as e:  # a Ray task's error arrives wrapped; unwrap user errors
        cause = getattr(e, "cause", None)
        if isinstance(cause, IEFlowError):
            typer.echo(f"error: {cause}", err=True)
            code = 2
        else:
            code = _failure_code(e, debug)
    _exit(code)


def _failure_code(e: Exception, debug: bool) -> int:
    """Usage errors exit 2 with click's message; anything else is a failure while running: exit 1."""
    import click

    if isinstance(e, click.ClickException):
        e.show()
        return e.exit_code
    if isinstance(e, click.exceptions.Exit):
        return e.exit_code
    if debug:
        raise e
    e = getattr(e, "cause", None) or e  # a Ray task's error: report what went wrong inside it
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    typer.echo(f"error: {type(e).__name__}: {first}  (set IE_FLOW_DEBUG=1 for the traceback)", err=True)
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
