"""Find a finished job's results (an MLflow run id, a results folder, or the latest) and format
them: the per-layer table, the comparison of several runs, and the `--json` object."""

from __future__ import annotations

import re
from typing import Any

from ie_flow.emergence import information_emergence, lower_bound_cells
from ie_flow.results import Result, ResultsRecord, read_record
from ie_flow.store import ResultsFolder, StorageRoot, results_folder

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def result_of(record: ResultsRecord, table: Any, folder: ResultsFolder | None = None) -> Result:
    """A Result with its IE profile at the record's headline."""
    return Result(record, table, information_emergence(table, record.micro_reduce, record.beta), folder)


def load_results(folder: ResultsFolder) -> Result:
    """A finished results folder (a clear error otherwise)."""
    data, table = folder.load()
    return result_of(read_record(data), table, folder)


def _from_mlflow(run_id: str, tracking_uri: str) -> Result:
    from ie_flow.tracking import download_results

    record, table = download_results(run_id, tracking_uri)
    return result_of(record, table)


def load_result(target: str | None, storage_uri: str, tracking_uri: str, endpoint_url: str | None = None) -> Result:
    """target: an MLflow run id, a results folder / mi.parquet / summary.json URI, or None (latest)."""
    if target is None:
        return load_results(StorageRoot(storage_uri, endpoint_url).latest_results())
    if RUN_ID.match(target):
        return _from_mlflow(target, tracking_uri)
    return load_results(results_folder(target, endpoint_url))


def _layer_notes(l: Any, lower: dict[int, list[str]]) -> str:
    if not l.valid:
        return f"invalid: {l.invalid_reason}"
    sat = (["macro"] if l.macro_saturated else []) + ([f"{l.micro_saturated} micro"] if l.micro_saturated else [])
    sat += [f"{len(lower[l.layer])} lower bound"] if lower.get(l.layer) else []
    return ", ".join(sat) or "-"


def format_table(result: Result) -> str:
    em, record = result.emergence, result.record
    beta = f", beta={em.beta:g}" if em.beta is not None else ""
    lines = [
        f"Information Emergence of {result.label}  (bits; micro={record.manifest.micro}, "
        f"reduce={em.micro_reduce}, estimator={record.estimator}{beta}, seeds={em.seeds})",
        f"{'layer':>5}  {'macro MI':>9}  {'micro MI':>9}  {'IE':>7}  {'95% interval':>17}  {'ceiling':>7}  notes",
    ]
    lower = lower_bound_cells(result.table)
    for l in em.layers:
        lines.append(
            f"{l.layer:>5}  {l.mi_macro:>9.3f}  {l.mi_micro:>9.3f}  {l.ie:>7.3f}  "
            f"[{l.ie_ci_low:>7.3f}, {l.ie_ci_high:>7.3f}]  {l.ceiling_bits:>7.2f}  {_layer_notes(l, lower)}"
        )
    s = em.summary
    interval = f" [{s.ie_mean_ci_low:.3f}, {s.ie_mean_ci_high:.3f}]" if s.has_interval else ""
    lines.append(
        f"model IE: mean {s.ie_mean:.3f}{interval}  max {s.ie_max:.3f} (layer {s.ie_argmax_layer})  "
        f"std over layers {s.ie_std_layers:.3f}  std over seeds {s.ie_std_seeds:.3f}"
    )
    if s.saturated_layers:
        lines.append(f"note: {s.saturated_layers} layer(s) have estimates at their ceiling: those are lower bounds")
    if lower:
        first = next(f"layer {layer} {cells[0]}" for layer, cells in sorted(lower.items()))
        lines.append(f"note: {sum(map(len, lower.values()))} cell(s) are lower bounds (the critic check); "
                     f"the first: {first}")
    if s.invalid_layers:
        lines.append(f"note: {s.invalid_layers} layer(s) have an invalid cell: left out of the model IE")
    entropy = record.manifest.prefix_entropy_bits
    if entropy:
        lines.append("prefix entropy per position (caps M_l(t)): " + " ".join(f"{b:.2f}" for b in entropy))
    if record.control:
        from ie_flow.control import format_comparison

        lines += ["", format_comparison(record.control, em, record.estimator)]
    return "\n".join(lines)


def json_summary(result: Result) -> dict[str, Any]:
    """The `--json` object of the CLI contract (docs/ARCHITECTURE.md)."""
    r = result.record
    return {
        "manifest": r.manifest_uri,
        "results": r.results_uri,
        "tracking_uri": r.tracking_uri,
        "mlflow_run_id": r.mlflow_run_id,
        "model": r.model_name,
        "corpus_digest": r.corpus_digest,
        "summary": {"ie_mean": result.emergence.summary.ie_mean, "ie_max": result.emergence.summary.ie_max},
        "layers": [
            {"layer": l.layer, "ie": l.ie, "mi_macro": l.mi_macro, "mi_micro": l.mi_micro,
             "saturated": l.saturated}
            for l in result.emergence.layers
        ],
        "seconds": r.seconds,
        "control": r.control.model_dump(mode="json") if r.control else None,
    }


def format_compare(results: list[Result]) -> str:
    """Several runs side by side: IE per layer, mean and max; `*` marks saturated layers."""
    lines = [f"{i + 1}: {r.label}" for i, r in enumerate(results)]
    layers = sorted({l.layer for r in results for l in r.emergence.layers})
    lines.append("layer  " + " ".join(f"{'IE ' + str(i + 1):>9} " for i in range(len(results))))
    for layer in layers:
        cells = []
        for r in results:
            match = [l for l in r.emergence.layers if l.layer == layer]
            cells.append(f"{match[0].ie:>9.3f}{'*' if match[0].saturated else ' '}" if match else f"{'-':>9} ")
        lines.append(f"{layer:>5}  " + " ".join(cells))
    for stat in ("mean", "max"):
        lines.append(f"{stat:<6} " + " ".join(f"{getattr(r.emergence.summary, 'ie_' + stat):>9.3f} " for r in results))
    if any(l.saturated for r in results for l in r.emergence.layers):
        lines.append("* layer with saturated estimates: its IE is a difference of lower bounds")
    return "\n".join(lines)
