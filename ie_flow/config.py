"""Typed job spec and its validation. One precedence order, applied in one place (`load_job`):
command-line options > environment variables (the CLI reads them into the same overrides, so the
logged job.yaml records them) > workflow YAML > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ie_flow import IEFlowError

DEFAULT_STORAGE = "./ie-flow-data"
DEFAULT_TRACKING = "sqlite:///mlflow.db"
# validation context of a job read back from a finished job's record: what the job could do was
# checked when it ran (a control's own measurement keeps its parent's control setting)
STORED = {"stored": True}


def _stored(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("stored"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Section):
    name: str = "smollm2-135m"
    revision: str | None = None
    # auto: float32 on CPU, bfloat16 on GPU
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # weights seed of a `random:NAME` model (the random-weight control)
    seed: int = 0


class CorpusSpec(_Section):
    name: str = "icl-countries"
    shots: int = Field(4, ge=1, le=5)
    # window length N in tokens; None = 2 * shots for ICL corpora, 8 for text corpora
    tokens: int | None = Field(None, ge=1, le=512)
    samples: int = Field(4096, ge=1)
    seed: int = 0
    text_field: str = "text"
    # JSONL field / Parquet column holding each document's label (a per-sequence target for `probe`;
    # "label" when a target measure reads a corpus file and none is named)
    label_field: str | None = None
    # which N-token window of each sentence a text corpus contributes
    window: Literal["first", "last"] = "first"
    # number of names per ICL category (K); None = all single-token names (max 16)
    names: int | None = Field(None, ge=2, le=16)
    # permute the tokens inside each window (seeded; the corpus's token multiset is kept): the
    # shuffled-token control of text corpora
    shuffle_tokens: bool = False
    # text corpora: keep only sentences whose window is the same text under this model's tokenizer
    # too, so that two models with different tokenizers are measured on the same text
    same_text_as: str | None = None


class ExtractSpec(_Section):
    batch_size: int = Field(256, ge=1)
    storage_dtype: Literal["float16", "float32"] = "float16"
    micro: Literal["in_context", "isolated"] = "in_context"
    # sequences per Parquet shard (one completion marker each)
    shard_size: int = Field(1024, ge=1)
    num_actors: int | None = Field(None, ge=1)
    # an autoscaling cluster may add model workers up to this many (None = num_actors)
    max_actors: int | None = Field(None, ge=1)
    num_gpus_per_actor: float | None = Field(None, ge=0)
    num_cpus_per_actor: float | None = Field(None, gt=0)
    # block indices to capture (None = all); boundaries b and b+1 are kept for each
    layers: list[int] | None = None
    # token positions to keep, 0-based (None = all); the last position, the macro variable, is
    # always kept, and micro MI is reduced over the kept positions only
    positions: list[int] | None = None


class EstimateSpec(_Section):
    method: str = "infonce"
    seeds: list[int] = Field(default_factory=lambda: [0])
    # share of the samples that reports the value (the rest trains, and 10% selects the checkpoint)
    eval_fraction: float = Field(0.25, gt=0, lt=1)
    dims: str = "full"
    micro_reduce: Literal["mean", "sum"] = "mean"
    layers_per_task: int | None = Field(None, ge=1)
    num_gpus_per_task: float | None = Field(None, ge=0)
    # bytes a stage-2 worker may hold ("4GiB", "512MiB", 4e9; None: the worker's share of Ray's
    # memory resource): it decides how many (layer, position) cells a task estimates at once
    memory_budget: int | None = None
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _memory_budget(cls, v: Any) -> int | None:
        return None if v is None else parse_bytes(v)

    def estimator(self) -> Any:
        """The estimator stage 2 runs for this spec, with the settings it gives it (ValueError for bad ones)."""
        from ie_flow.estimators import ESTIMATORS, get_estimator

        stage = {"eval_fraction": self.eval_fraction, "drop_constant": True}
        defaults = ESTIMATORS[self.method].defaults
        return get_estimator(self.method, **{k: v for k, v in stage.items() if k in defaults}, **self.settings)

    def cell_dims(self, hidden_size: int) -> int:
        """Dimensions of each side of a cell after `dims` (full, first:K, project:K)."""
        return hidden_size if self.dims == "full" else min(hidden_size, int(self.dims.partition(":")[2]))

    @field_validator("dims")
    @classmethod
    def _dims(cls, v: str) -> str:
        if v == "full":
            return v
        kind, _, k = v.partition(":")
        if kind not in ("first", "project") or not k.isdigit() or int(k) < 1:
            raise ValueError(f"dims must be 'full', 'first:K' or 'project:K', got {v!r}")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        from ie_flow.estimators import ESTIMATORS

        if v not in ESTIMATORS:
            ESTIMATORS[v]  # raises with the known names and a close match
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("seeds must name at least one seed")
        return v


class ControlSpec(_Section):
    """A control measured in the same run (docs/METHOD.md section 7): the same job on a copy that
    should carry no meaning, estimated with `estimator` on both, and model minus control per layer."""

    kind: Literal["none", "random", "shuffled"] = "none"
    estimator: str = "smoothed"
    settings: dict[str, Any] = Field(default_factory=dict)
    seed: int = 1  # weights seed of the random copy


class StorageSpec(_Section):
    uri: str = DEFAULT_STORAGE
    # S3-compatible endpoint (MinIO, moto); credentials come from the environment only
    endpoint_url: str | None = None

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        from ie_flow.locations import storage_problem

        problem = storage_problem(v)
        if problem:
            raise ValueError(problem)
        return v


class TrackingSpec(_Section):
    uri: str = DEFAULT_TRACKING
    experiment: str = "ie-flow"
    enabled: bool = True
    # the job's run is a child of this run (a reproduction's cells under its parent run)
    parent_run_id: str | None = None

    @model_validator(mode="after")
    def _uri(self) -> "TrackingSpec":
        from ie_flow.locations import tracking_problem

        problem = tracking_problem(self.uri) if self.enabled else None  # --no-tracking: the URI is unused
        if problem:
            raise ValueError(problem)
        return self


class RuntimeSpec(_Section):
    ray_address: str | None = None
    # where units of work run: "ray" (local runtime or --ray-address) or "serial" (in-process)
    executor: str = "ray"

    @field_validator("executor")
    @classmethod
    def _executor(cls, v: str) -> str:
        from ie_flow.executors import executor_names

        if v not in executor_names():
            raise ValueError(f"unknown executor {v!r} (known: {', '.join(executor_names())})")
        return v


class JobSpec(_Section):
    name: str = "default"
    model: ModelSpec = Field(default_factory=ModelSpec)
    corpus: CorpusSpec = Field(default_factory=CorpusSpec)
    extract: ExtractSpec = Field(default_factory=ExtractSpec)
    estimate: EstimateSpec = Field(default_factory=EstimateSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    control: ControlSpec = Field(default_factory=ControlSpec)

    @model_validator(mode="after")
    def _samples_fit(self, info: ValidationInfo) -> "JobSpec":
        """The estimator's own sample needs (a split for the neural ones, 8 for smoothed); its
        dimensions are checked once the model's config is read (jobs.check_before_tokenizer)."""
        if _stored(info):
            return self
        try:
            problem = self.estimate.estimator().check(self.corpus.samples)
        except ValueError:  # bad settings: jobs.check_estimator_settings names them with the estimator
            return self
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _control_exists(self, info: ValidationInfo) -> "JobSpec":
        from ie_flow.corpora import ICL_CORPORA
        from ie_flow.models import RANDOM_PREFIX

        if _stored(info):
            return self
        kind = self.control.kind
        if kind == "random" and self.model.name.startswith(RANDOM_PREFIX):
            raise ValueError(f"--control random needs a trained model: {self.model.name} has no random copy of its own")
        if kind == "shuffled" and self.corpus.name in ICL_CORPORA:
            raise ValueError(f"--control shuffled is for text corpora: shuffling {self.corpus.name}'s names "
                             "and commas changes what the sequences are, not only their order")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(v: Any) -> int:
    """A size in bytes from 4096, 4e9, "4GiB", "512 MiB" or "3.5GB"; ValueError naming the problem."""
    import re

    text = str(v).strip()
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)", text)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS or isinstance(v, bool):
        raise ValueError(f"a size must be a number of bytes or like 4GiB, 512MiB, 3.5GB; got {v!r}")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise ValueError(f"a size must be at least 1 byte, got {v!r}")
    return size


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


DEFAULT_LABEL_FIELD = "label"


def _target_defaults(tree: dict[str, Any]) -> None:
    """What a target measure's job means when it does not say: a corpus file's labels are its `label`
    field, and the control is measured with the same measure (and settings) unless the job names the
    control's estimator (the smoothed default measures no target)."""
    from ie_flow.corpora import ICL_CORPORA
    from ie_flow.corpora.builtin import BUILTIN_TEXT_CORPORA
    from ie_flow.estimators import ESTIMATORS

    estimate = tree.get("estimate") or {}
    method = estimate.get("method") if isinstance(estimate, dict) else None
    if method not in ESTIMATORS or not ESTIMATORS[method].measures_target:
        return
    corpus = tree.setdefault("corpus", {})
    if isinstance(corpus, dict) and corpus.get("name") not in (None, *ICL_CORPORA, *BUILTIN_TEXT_CORPORA):
        corpus.setdefault("label_field", DEFAULT_LABEL_FIELD)
    control = tree.get("control")
    if isinstance(control, dict) and "estimator" not in control:
        control["estimator"] = method
        control.setdefault("settings", dict(estimate.get("settings") or {}))


def family_settings(method: str, settings: dict[str, Any], corpus: str) -> dict[str, Any]:
    """`settings` of estimator `method` with what it fixes in advance for the corpus's family
    (Estimator.family_settings: the smoothed measure's headline β)."""
    from ie_flow.corpora import corpus_family
    from ie_flow.estimators import ESTIMATORS

    return ESTIMATORS[method].family_settings(settings, corpus_family(corpus))


def fill_family_defaults(tree: dict[str, Any]) -> None:
    """The per-family settings of the estimators a job runs (its own, and its control's when it has
    one) written into its tree before validation, so the resolved job, the results key and the
    records show them; settings the job names win."""
    from ie_flow.estimators import ESTIMATORS

    corpus = tree.get("corpus")
    name = corpus.get("name") if isinstance(corpus, dict) else None
    for section, spec, key in (("estimate", EstimateSpec, "method"), ("control", ControlSpec, "estimator")):
        node = tree.get(section)
        if not isinstance(node, dict) or (section == "control" and node.get("kind", "none") == "none"):
            continue
        method, settings = node.get(key, spec.model_fields[key].default), node.get("settings") or {}
        if method in ESTIMATORS and isinstance(settings, dict):
            filled = family_settings(method, settings, str(name or CorpusSpec.model_fields["name"].default))
            if filled != settings:
                node["settings"] = filled


def load_job(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> JobSpec:
    """Build a JobSpec from defaults, an optional YAML file, then dotted CLI overrides (None = unset)."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise IEFlowError(f"workflow file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise IEFlowError(f"workflow file {p} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise IEFlowError(f"workflow file {p} must hold a mapping, got {type(loaded).__name__}")
        tree = loaded
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, dotted, value)
    _target_defaults(tree)
    fill_family_defaults(tree)
    try:
        return JobSpec.model_validate(tree)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or 'job'}: {err['msg'].removeprefix('Value error, ')}"
            for err in e.errors()
        )
        raise IEFlowError(f"invalid job spec: {problems}") from None
