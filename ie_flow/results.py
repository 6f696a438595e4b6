"""The measurement contract: the MI table every estimator's results become (one row per cell,
level, variant and estimator seed), defined here once, and the typed records of a finished job
(`ResultsRecord`: the job spec, the manifest, the `Summary`, the layers, the `ControlRecord`), with
one `Result` type for results just computed or loaded from storage or MLflow. Stage 2 writes the
table; jobs, emergence, report, tracking, control, plots and the reproduction read through here.

MI table columns (MI_FIELDS): layer, position, level (macro|micro), method, variant (the estimator's
variant of the value, "" for an estimator with one), seed, bits, ceiling_bits, saturated, n_train,
n_eval, ci_low, ci_high, valid, invalid_reason, the critic check's verdict, the diagnostics the
estimator declares (a map, name -> value) and the bootstrap replicates of the cell, and where the
estimator has one (smoothed: the Gaussian reference G^β, diagnostic REFERENCE_DIAGNOSTIC) the same
resamples of the cell's reference part (empty in tables written before it)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, field_serializer

from ie_flow.config import STORED, EstimateSpec, JobSpec
from ie_flow.estimators.base import MIEstimate, is_saturated
from ie_flow.store import Manifest, ResultsFolder

# (column, Arrow type): the one definition of the MI table's schema
MI_FIELDS: tuple[tuple[str, str], ...] = (
    ("layer", "int32"), ("position", "int16"), ("level", "string"), ("method", "string"), ("variant", "string"),
    ("seed", "int64"), ("bits", "float64"), ("ceiling_bits", "float64"), ("saturated", "bool"), ("n_train", "int64"),
    ("n_eval", "int64"), ("ci_low", "float64"), ("ci_high", "float64"), ("valid", "bool"),
    ("invalid_reason", "string"), ("critic", "string"), ("lower_bound", "string"),
    ("diagnostics", "map<string,float64>"), ("replicates", "list<float64>"),
    ("reference_replicates", "list<float64>"),
)
# the diagnostic that holds a cell's reference part (the smoothed measure's Gaussian reference G^β):
# IE and a model-minus-control difference split into it and the excess over it
REFERENCE_DIAGNOSTIC = "gauss_bits"
MI_COLUMNS = tuple(name for name, _ in MI_FIELDS)


def variant_order(variant: str) -> tuple:
    """Sort key of variant names: by their words first ("β = 0.8" before "β = 0.4, standardised"), then
    by the numbers inside them, as numbers ("β=0.8" before "β=1.2")."""
    parts = [part for part in re.split(r"(\d+(?:\.\d+)?)", variant) if part]
    number = [bool(re.fullmatch(r"\d+(\.\d+)?", part)) for part in parts]
    return (tuple(p for p, is_number in zip(parts, number) if not is_number),
            tuple(float(p) for p, is_number in zip(parts, number) if is_number))


def companion_label(variant: str, companion: str) -> str:
    """A short name of the `companion` variant shown beside `variant`: what its name adds to it
    ("standardised" for "β = 0.6, standardised" beside "β = 0.6"), else its whole name."""
    extra = companion[len(variant):].lstrip(", ") if variant and companion.startswith(variant) else ""
    return extra or companion


def mi_rows(layer: int, position: int, level: str, est: MIEstimate) -> list[dict[str, Any]]:
    """One row per estimator seed (emergence.py computes the spread across seeds); the interval,
    validity, diagnostics and bootstrap replicates belong to the estimate and repeat on its rows."""
    nan = float("nan")
    # closed-form and paper-protocol estimators have no ceiling: never saturated
    ceiling = float("inf") if est.ceiling_bits is None else float(est.ceiling_bits)
    shared = {
        "layer": layer, "position": position, "level": level, "method": est.method, "variant": est.variant,
        "ceiling_bits": ceiling,
        "n_train": int(est.n_train), "n_eval": int(est.n_eval), "ci_low": float(est.ci_low),
        "ci_high": float(est.ci_high), "valid": bool(est.valid), "invalid_reason": est.invalid_reason,
        # the critic check (estimators/critic_check.py): which critic resolved the cell, why it is a lower bound
        "critic": est.settings.get("critic"), "lower_bound": est.settings.get("lower_bound"),
        "diagnostics": {k: float(est.diagnostics.get(k, nan)) for k in _declared_diagnostics(est.method)},
        "replicates": [float(v) for v in est.replicate_bits],
        "reference_replicates": [float(v) for v in est.reference_replicate_bits],
    }
    # the estimator's own flag also counts its pool test (halving the negatives lowers it)
    at_ceiling = _estimator(est.method).saturates
    return [{**shared, "seed": int(seed), "bits": float(bits),
             "saturated": bool(est.saturated or (at_ceiling and is_saturated(bits, ceiling)))}
            for seed, bits in zip(est.seeds, est.bits_per_seed)]


def _estimator(method: str) -> Any:
    from ie_flow.estimators import ESTIMATORS

    return ESTIMATORS[method]


def _declared_diagnostics(method: str) -> tuple[str, ...]:
    return _estimator(method).diagnostics


def mi_schema() -> Any:
    """The MI table's Arrow schema, from MI_FIELDS (plain Arrow types only)."""
    import pyarrow as pa

    types = {"int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(), "float64": pa.float64(),
             "bool": pa.bool_(), "string": pa.string(), "list<float64>": pa.list_(pa.float64()),
             "map<string,float64>": pa.map_(pa.string(), pa.float64())}
    return pa.schema([(name, types[kind]) for name, kind in MI_FIELDS])


def mi_table(rows: list[dict[str, Any]]) -> Any:
    """Rows (see `mi_rows`) as the MI table, in a fixed order (layer, level, variant, position, seed)."""
    import pyarrow as pa

    rows = sorted(rows, key=lambda r: (r["layer"], r["level"], variant_order(r["variant"]), r["position"], r["seed"]))
    return pa.Table.from_pylist(rows, schema=mi_schema())


def table_rows(table: Any) -> list[dict[str, Any]]:
    """The MI table's rows as dicts (from Arrow, or rows already: "variant" defaults to ""), the
    diagnostics map as a dict. A stored table written before variants existed is read in today's
    shape (its estimator's variant and diagnostics from the columns it had)."""
    rows = table.to_pylist() if hasattr(table, "to_pylist") else [dict(r) for r in table]
    if hasattr(table, "column_names") and "variant" not in table.column_names:
        from ie_flow.estimators.smoothed import upgrade_legacy_row  # the only estimator that had variants

        rows = [upgrade_legacy_row(r) for r in rows]
    for r in rows:
        r.setdefault("variant", "")
        if isinstance(r.get("diagnostics"), list):  # Arrow's map type reads back as (key, value) pairs
            r["diagnostics"] = dict(r["diagnostics"])
    return rows


def estimate_cells(xs: np.ndarray, ys: np.ndarray, spec: EstimateSpec, device: str | None = None,
                   side_keys: np.ndarray | None = None) -> list[list[MIEstimate]]:
    """Every cell's estimates, one per variant of the job's estimator; ``side_keys`` name the cells'
    sides for an estimator that keys its random draws by them (Estimator.takes_side_keys)."""
    estimator = spec.estimator()
    if side_keys is not None and estimator.takes_side_keys:
        return estimator.estimate_cells(xs, ys, seeds=tuple(spec.seeds), device=device, side_keys=side_keys)
    return estimator.estimate_cells(xs, ys, seeds=tuple(spec.seeds), device=device)


# --- the records of a finished job (summary.json) ---------------------------------------------
def _nan_if_none(value: Any) -> Any:
    return math.nan if value is None else value


# a float that may be NaN or infinite (an invalid layer, a closed form's ceiling): null in summary.json
Number = Annotated[float, BeforeValidator(_nan_if_none),
                   PlainSerializer(lambda v: v if math.isfinite(v) else None, when_used="json")]
Figure = Annotated[float, BeforeValidator(_nan_if_none)]  # a summary figure: NaN stays NaN in summary.json


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Summary(_Record):
    """The model-level figures of one IE profile; every key is always there (NaN when undefined)."""

    ie_mean: Figure
    ie_mean_ci_low: Figure = math.nan  # (records written before every key was always there lack them)
    ie_mean_ci_high: Figure = math.nan
    ie_max: Figure
    ie_argmax_layer: int
    ie_std_layers: Figure
    ie_std_seeds: Figure
    saturated_layers: int
    invalid_layers: int
    # the variant shown beside the headline (Estimator.companion_variant: the smoothed measure's
    # standardised mode at the headline β) and its IE mean over its own valid layers, with its interval
    companion_variant: str | None = None
    companion_ie_mean: Figure = math.nan
    companion_ie_mean_ci_low: Figure = math.nan
    companion_ie_mean_ci_high: Figure = math.nan
    companion_invalid_layers: int = 0

    @property
    def has_interval(self) -> bool:
        return self.ie_mean_ci_low != self.ie_mean_ci_high and math.isfinite(self.ie_mean_ci_low)


class LayerRecord(_Record):
    """One layer of an IE profile (emergence.LayerEmergence as kept on storage)."""

    layer: int
    ie: Number
    ie_std_seeds: Number
    ie_ci_low: Number
    ie_ci_high: Number
    mi_macro: Number
    mi_micro: Number
    ceiling_bits: Number
    macro_saturated: bool
    micro_saturated: int
    valid: bool = True
    invalid_reason: str | None = None
    saturated: bool
    diagnostics: dict[str, Number] = {}  # the estimator's declared diagnostics of the macro cell
    # IE of the cells' reference part (smoothed: the Gaussian reference) and IE minus it, with intervals
    reference_ie: Number = math.nan
    reference_ie_ci_low: Number = math.nan
    reference_ie_ci_high: Number = math.nan
    excess_ie: Number = math.nan
    excess_ie_ci_low: Number = math.nan
    excess_ie_ci_high: Number = math.nan
    # IE of the companion variant (Summary.companion_variant) at this layer, with its interval
    companion_ie: Number = math.nan
    companion_ie_ci_low: Number = math.nan
    companion_ie_ci_high: Number = math.nan


class ControlLayer(_Record):
    layer: int
    model_ie: Number
    control_ie: Number
    diff: Number  # model - control; NaN when either side is invalid
    ci_low: Number
    ci_high: Number
    # the difference's reference part (smoothed: of the Gaussian reference) and its excess, paired intervals
    reference_diff: Number = math.nan
    reference_ci_low: Number = math.nan
    reference_ci_high: Number = math.nan
    excess_diff: Number = math.nan
    excess_ci_low: Number = math.nan
    excess_ci_high: Number = math.nan
    # model - control at the companion variant (ControlRecord.companion_variant), paired interval
    companion_diff: Number = math.nan
    companion_ci_low: Number = math.nan
    companion_ci_high: Number = math.nan
    companion_reference_diff: Number = math.nan  # of it, the reference parts' difference (paired interval)
    companion_reference_ci_low: Number = math.nan
    companion_reference_ci_high: Number = math.nan

    @property
    def apart(self) -> bool:
        """The difference's interval excludes 0."""
        return math.isfinite(self.diff) and (self.ci_low > 0 or self.ci_high < 0)

    @property
    def companion_apart(self) -> bool:
        """The companion's difference's interval excludes 0."""
        return math.isfinite(self.companion_diff) and (self.companion_ci_low > 0 or self.companion_ci_high < 0)


class TargetBoundary(_Record):
    """A target measure at one boundary, at the last position, for the model and its control."""

    boundary: int  # 0: the embeddings; l + 1: block l's output
    model: Number  # the held-out value (a lower bound in expectation), its interval the cell's bracket
    model_low: Number
    model_high: Number
    control: Number
    control_low: Number
    control_high: Number
    diff: Number  # model - control, its interval paired replicate by replicate
    diff_low: Number
    diff_high: Number
    gain: Number  # the model's value here minus at the boundary before (the block's gain), paired
    gain_low: Number
    gain_high: Number
    ceiling: Number  # the exact information the prefix holds about the label (its entropy if unknown)


class TargetRecord(_Record):
    """What a target measure's control comparison shows (targets.compare_targets)."""

    position: int  # the last stored position, where the boundaries are compared
    boundaries: list[TargetBoundary]
    # the first boundary whose model lower end clears the control's upper end (None: none does), and
    # the share of bootstrap replicates on which each boundary ("none": no boundary) is the first
    emergence_boundary: int | None
    emergence_shares: dict[str, float]
    positions: list[int]  # the stored positions of the grids
    model_grid: list[list[Number]]  # [boundary][position] the model's values
    control_grid: list[list[Number]]
    diff_low_grid: list[list[Number]]  # [boundary][position] model - control's paired 95% interval
    diff_high_grid: list[list[Number]]
    ceilings: list[Number]  # per position


class ControlRecord(_Record):
    """The control measured in the same run (control.ControlComparison.record)."""

    kind: str
    estimator: str
    variant: str = ""  # the headline variant of both sides (Estimator.choose_headline)
    variant_valid: bool = True
    companion_variant: str | None = None  # the variant compared beside it (Estimator.companion_variant)
    model_results: str = ""  # mi.parquet URIs of the two measurements
    control_results: str = ""
    layers: list[ControlLayer]
    target: TargetRecord | None = None  # a target measure's boundaries and emergence layer


class ResultsRecord(BaseModel):
    """summary.json of a results folder: the job, where its data is, and what it found."""

    model_config = ConfigDict(extra="ignore")

    job: JobSpec  # the resolved job spec
    job_yaml: str
    manifest_uri: str
    manifest: Manifest  # kept without its shard list
    results_uri: str
    seconds: dict[str, float]
    summary: Summary
    layers: list[LayerRecord]
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    # the run the job opened but could not log into (the server went down): `report --log` finishes it
    mlflow_pending_run_id: str | None = None
    # the headline variant (Estimator.choose_headline), and whether every layer is valid there
    variant: str = ""
    variant_valid: bool = True
    control: ControlRecord | None = None
    # what the results folder is keyed on (with the estimator settings): the manifest's sha256 and
    # the code version (provenance.code_version)
    manifest_sha256: str | None = None
    code_version: str | None = None

    @field_serializer("manifest")
    def _manifest(self, manifest: Manifest) -> dict[str, Any]:
        return manifest.without_shards()

    @property
    def model_name(self) -> str:
        return self.manifest.model.name

    @property
    def label(self) -> str:
        return f"{self.manifest.model.key} / {self.manifest.dataset.id}"

    @property
    def corpus_digest(self) -> str:
        return self.manifest.dataset.digest

    @property
    def estimator(self) -> str:
        return self.job.estimate.method

    @property
    def micro_reduce(self) -> str:
        return self.job.estimate.micro_reduce


@dataclass
class Result:
    """A finished job's results wherever they come from (the job just run, storage, an MLflow run)."""

    record: ResultsRecord  # what summary.json holds
    table: Any  # the MI table (pyarrow, or rows)
    emergence: Any  # emergence.Emergence at the record's headline
    results: ResultsFolder | None = None  # the folder on storage, when there is one
    input_ids: np.ndarray | None = None  # the corpus windows, when the job was just run
    tracking_error: str | None = None
    comparison: Any = None  # control.ControlComparison when the job had a control (just run)

    @property
    def label(self) -> str:
        return self.record.label


def read_record(data: dict[str, Any] | str) -> ResultsRecord:
    """summary.json's content (parsed, or its text) as the typed record."""
    if isinstance(data, str):
        return ResultsRecord.model_validate_json(data, context=STORED)
    return ResultsRecord.model_validate(data, context=STORED)


def results_record(**fields: Any) -> ResultsRecord:
    """The record of a job just finished (its job spec was checked when it started)."""
    return ResultsRecord.model_validate(fields, context=STORED)

