"""The job options every job command shares (`run`, `extract`, `submit`, ...): defined once, each
mapped to the job spec field it sets. Options with an environment convention read it (shown in
`--help`); the values then enter the job spec as overrides, so the logged job.yaml records them."""

from __future__ import annotations

import difflib
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from ie_flow import IEFlowError
from ie_flow.config import JobSpec, load_job

# the option groups of `--help`
MODEL, CORPUS, EXTRACTION, ESTIMATION, STORAGE, CLUSTER = (
    "Model", "Corpus", "Extraction", "Estimation", "Storage and tracking", "Cluster")


class Choices:
    """A closed set of values for an option: it parses them (naming the close match of a wrong
    one), shell completion offers them, and `--help` shows them."""

    def __init__(self, values: list[str]) -> None:
        self.values = values

    def __call__(self, value: str) -> str:
        if value in self.values:
            return value
        close = difflib.get_close_matches(str(value), self.values, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(self.values)}{hint}")

    def complete(self, incomplete: str) -> list[str]:
        return [v for v in self.values if v.startswith(incomplete)]

    @property
    def metavar(self) -> str:
        return "[" + "|".join(self.values) + "]"


def literal_values(section: type, field: str) -> list[str]:
    """The values a `Literal[...]` field of the job spec allows: the spec stays their one source."""
    return [str(v) for v in typing.get_args(section.model_fields[field].annotation)]


def estimator_names() -> list[str]:
    from ie_flow.estimators import DEFAULT_METHOD, ESTIMATORS  # names are read without importing estimators

    return [DEFAULT_METHOD, *(n for n in ESTIMATORS if n != DEFAULT_METHOD)]


Workflow = Annotated[Optional[Path], typer.Argument(help="Job spec YAML (workflows/*.yaml); defaults otherwise.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout (logs go to stderr).")]
StorageOpt = Annotated[Optional[str], typer.Option(
    "--storage", envvar="IE_FLOW_STORAGE", rich_help_panel=STORAGE,
    help="Storage root: local folder or s3://bucket/prefix.")]
EndpointOpt = Annotated[Optional[str], typer.Option(
    "--s3-endpoint", envvar="AWS_ENDPOINT_URL", rich_help_panel=STORAGE, help="S3-compatible endpoint URL (MinIO).")]
TrackingOpt = Annotated[Optional[str], typer.Option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", rich_help_panel=STORAGE,
    help="MLflow tracking URI: sqlite:///FILE.db (default sqlite:///mlflow.db), http(s)://HOST:PORT, a database URI.")]
ExperimentOpt = Annotated[Optional[str], typer.Option(
    "--experiment", envvar="MLFLOW_EXPERIMENT_NAME", rich_help_panel=STORAGE, help="MLflow experiment name.")]
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", envvar="RAY_ADDRESS", rich_help_panel=CLUSTER,
    help="Ray cluster: auto, HOST:6379 or ray://HOST:10001 for jobs; the Jobs API http://HEAD:8265 for "
         "submit/status/logs/stop. Local Ray otherwise.")]


def _opt(help: str, panel: str, typ: Any = Optional[str], choices: list[str] | None = None) -> Any:
    if not choices:
        return Annotated[typ, typer.Option(help=help, rich_help_panel=panel)]
    parse = Choices(choices)
    return Annotated[typ, typer.Option(help=help, rich_help_panel=panel, parser=parse, autocompletion=parse.complete,
                                       metavar=parse.metavar)]


def choice_option(help: str, panel: str, choices: list[str]) -> Any:
    """An option with a closed set of values, for a command's own options (`corpus generate --executor`)."""
    return _opt(help, panel, choices=choices)


def _job_options() -> dict[str, tuple[Any, str]]:
    from ie_flow.config import ControlSpec, ExtractSpec
    from ie_flow.executors import executor_names

    estimators, executors = estimator_names(), executor_names()
    micro, dtypes = literal_values(ExtractSpec, "micro"), literal_values(ExtractSpec, "storage_dtype")
    return {
        "model": (_opt("Model: alias (smollm2-135m), HF hub id, folder, .gguf file; random:NAME for a random-weight control.", MODEL), "model.name"),
        "corpus": (_opt("icl-countries (default), icl-animals, icl-colours, icl-mixed (all 48 names), icl-mixed-matched (16 names over the three categories: the one-category corpora's K and prefix entropy), icl-coherence (labelled), a built-in text corpus, or a text/JSONL/Parquet path or s3:// URI.", CORPUS), "corpus.name"),
        "shots": (_opt("ICL shots (names per sequence, 1-5).", CORPUS, Optional[int]), "corpus.shots"),
        "tokens": (_opt("Window length N in tokens (text corpora).", CORPUS, Optional[int]), "corpus.tokens"),
        "samples": (_opt("Number of sequences.", CORPUS, Optional[int]), "corpus.samples"),
        "seed": (_opt("Corpus seed (sampling of sequences).", CORPUS, Optional[int]), "corpus.seed"),
        "text_field": (_opt("Text field / column of JSONL and Parquet corpora.", CORPUS), "corpus.text_field"),
        "label_field": (_opt("Field / column of JSONL and Parquet corpora holding each document's label: the "
                             "per-sequence target the probe estimator measures (default label).", CORPUS),
                        "corpus.label_field"),
        "estimator": (_opt(f"MI estimator: {', '.join(estimators)} (default infonce).", ESTIMATION,
                           choices=estimators), "estimate.method"),
        "seeds": (_opt("Estimator seeds, comma separated, e.g. 0,1,2.", ESTIMATION), "estimate.seeds"),
        "micro": (_opt(f"Micro variables: {' or '.join(micro)} (default {micro[0]}).", EXTRACTION, choices=micro),
                  "extract.micro"),
        "batch_size": (_opt("Sequences per forward pass.", EXTRACTION, Optional[int]), "extract.batch_size"),
        "storage_dtype": (_opt(f"Activation storage dtype: {' or '.join(dtypes)} (default {dtypes[0]}).", EXTRACTION,
                               choices=dtypes), "extract.storage_dtype"),
        "layers": (_opt("Blocks to capture, comma separated, e.g. 0,1,2 (default all).", EXTRACTION), "extract.layers"),
        "positions": (_opt("Token positions to keep, comma separated (default all; the last is always kept).", EXTRACTION), "extract.positions"),
        "memory_budget": (_opt("Stage-2 memory per worker, e.g. 4GiB (default: its share of Ray's memory); sets how "
                               "many cells a task takes at once.", ESTIMATION), "estimate.memory_budget"),
        "storage": (StorageOpt, "storage.uri"),
        "s3_endpoint": (EndpointOpt, "storage.endpoint_url"),
        "tracking_uri": (TrackingOpt, "tracking.uri"),
        "experiment": (ExperimentOpt, "tracking.experiment"),
        "no_tracking": (Annotated[bool, typer.Option("--no-tracking", rich_help_panel=STORAGE,
                                                     help="Do not log to MLflow.")], "tracking.enabled"),
        "ray_address": (RayAddressOpt, "runtime.ray_address"),
        "control": (_opt("A control in the same run: random (the model with random seeded weights), shuffled (tokens permuted inside each window; text corpora) or none.", ESTIMATION,
                         choices=literal_values(ControlSpec, "kind")), "control.kind"),
        "executor": (_opt("Where units of work run: ray (default; local runtime or --ray-address), serial (in-process, "
                          f"for debugging){''.join(f', {e}' for e in executors if e not in ('ray', 'serial'))}.",
                          CLUSTER, choices=executors), "runtime.executor"),
    }


# option -> (its type and help, the job spec field it sets); lists are comma-separated integers
JOB_OPTIONS: dict[str, tuple[Any, str]] = _job_options()
INT_LISTS = {"seeds", "layers", "positions"}


def _int_list(option: str, value: str) -> list[int]:
    try:
        return [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise IEFlowError(f"--{option.replace('_', '-')} must be integers separated by commas, got {value!r}") from None


def overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Job option values (None = not given) -> dotted job spec overrides."""
    out: dict[str, Any] = {}
    for option, value in values.items():
        field = JOB_OPTIONS[option][1]
        if option == "no_tracking":
            if value:
                out[field] = False
        elif value is not None:
            out[field] = _int_list(option, value) if option in INT_LISTS else value
    return out


def build_job(workflow: Path | None, values: dict[str, Any]) -> JobSpec:
    return load_job(workflow, overrides(values))


def job_command(*only: str, workflow: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate `fn(job, **own options)`: the command gets the workflow argument and the job options
    (all of them, or `only` those), builds the job spec from them in one place, and calls fn."""
    names = list(only or JOB_OPTIONS)

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(fn, include_extras=True)  # real types, not postponed strings
        own = [p.replace(annotation=hints.get(name, p.annotation))
               for name, p in inspect.signature(fn).parameters.items() if name != "job"]
        shared = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=JOB_OPTIONS[n][0],
                                    default=False if n == "no_tracking" else None) for n in names]
        head = [inspect.Parameter("workflow", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Workflow,
                                  default=None)] if workflow else []

        def command(**kw: Any) -> Any:
            job = build_job(kw.pop("workflow", None), {n: kw.pop(n) for n in names})
            return fn(job, **kw)

        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        params = head + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return wrap
