"""Find a finished job's results (an MLflow run id, a results folder, or the latest) and format
them: the per-layer table, the comparison of several runs, and the `--json` object."""

from __future__ import annotations

import re
from typing import Any

from ie_flow.emergence import common_layers, lower_bound_cells, recorded_headline
from ie_flow.results import Result, ResultsRecord, companion_label, read_record
from ie_flow.store import ResultsFolder, StorageRoot, results_folder

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def result_of(record: ResultsRecord, table: Any, folder: ResultsFolder | None = None) -> Result:
    """A Result with its IE profile at the record's headline, its companion beside it."""
    em = recorded_headline(table, record.micro_reduce, record.variant, record.summary.companion_variant)
    return Result(record, table, em, folder)


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


def _diagnostic_names(*profiles: Any) -> list[str]:
    """The estimator's diagnostics found in the layers of the profiles, in the order declared; a
    diagnostic's interval ends (``*_ci_low``, ``*_ci_high``) stay in --json and MLflow, not in the table."""
    return list(dict.fromkeys(k for em in profiles for l in em.layers for k in l.diagnostics
                              if not k.endswith(("_ci_low", "_ci_high"))))


def _width(name: str) -> int:
    return max(7, len(name))


def _beside(em: Any) -> str:
    """The short name of the companion variant shown beside the headline ("" where none)."""
    return companion_label(em.variant, em.companion.variant) if em.companion is not None else ""


def _layer_line(l: Any, beside: str, split: bool, names: list[str], lower: dict[int, list[str]]) -> str:
    """One layer's row of the table: IE, the companion's beside it, the Gaussian reference, diagnostics."""
    return (
        f"{l.layer:>5}  {l.mi_macro:>9.3f}  {l.mi_micro:>9.3f}  {l.ie:>7.3f}  "
        f"[{l.ie_ci_low:>7.3f}, {l.ie_ci_high:>7.3f}]  "
        + (f"{l.companion_ie:>{_width(beside + ' IE')}.3f}  [{l.companion_ie_ci_low:>7.3f}, "
           f"{l.companion_ie_ci_high:>7.3f}]  " if beside else "") + f"{l.ceiling_bits:>7.2f}  "
        + (f"{l.reference_ie:>8.3f}  [{l.reference_ie_ci_low:>7.3f}, {l.reference_ie_ci_high:>7.3f}]  "
           f"{l.excess_ie:>7.3f}  [{l.excess_ie_ci_low:>7.3f}, {l.excess_ie_ci_high:>7.3f}]  " if split else "")
        + "".join(f"{l.diagnostics.get(n, float('nan')):>{_width(n)}.3f}  " for n in names) + _layer_notes(l, lower)
    )


def format_table(result: Result) -> str:
    em, record = result.emergence, result.record
    variant = f", {em.variant}" if em.variant else ""
    names = _diagnostic_names(em)
    split, beside = em.has_reference, _beside(em)
    target = record.manifest.target if _measures_target(record.estimator) else None
    macro, micro = ("U last", "U tokens") if target else ("macro MI", "micro MI")
    lines = [
        f"Information Emergence of {result.label}  (bits; micro={record.manifest.micro}, "
        f"reduce={em.micro_reduce}, estimator={record.estimator}{variant}, seeds={em.seeds}"
        + (f"; beside it: {em.companion.variant})" if beside else ")"),
        f"{'layer':>5}  {macro:>9}  {micro:>9}  {'IE':>7}  {'95% interval':>17}  "
        + (f"{beside + ' IE':>{_width(beside + ' IE')}}  {'95% interval':>17}  " if beside else "") + f"{'ceiling':>7}  "
        + (f"{'Gauss IE':>8}  {'95% interval':>17}  {'excess':>7}  {'95% interval':>17}  " if split else "")
        + "".join(f"{n:>{_width(n)}}  " for n in names) + "notes",
    ]
    lower = lower_bound_cells(result.table)
    lines += [_layer_line(l, beside, split, names, lower) for l in em.layers]
    s = em.summary
    interval = f" [{s.ie_mean_ci_low:.3f}, {s.ie_mean_ci_high:.3f}]" if s.has_interval else ""
    lines.append(
        f"model IE: mean {s.ie_mean:.3f}{interval}  max {s.ie_max:.3f} (layer {s.ie_argmax_layer})  "
        f"std over layers {s.ie_std_layers:.3f}  std over seeds {s.ie_std_seeds:.3f}"
    )
    if beside:
        lines += _companion_lines(em, record.estimator)
    if split:
        lines.append(_reference_sentence(em))
    if s.saturated_layers:
        lines.append(f"note: {s.saturated_layers} layer(s) have estimates at their ceiling: those are lower bounds")
    if lower:
        first = next(f"layer {layer} {cells[0]}" for layer, cells in sorted(lower.items()))
        lines.append(f"note: {sum(map(len, lower.values()))} cell(s) are lower bounds (the critic check); "
                     f"the first: {first}")
    if s.invalid_layers:
        lines.append(f"note: {s.invalid_layers} layer(s) have an invalid cell: left out of the model IE")
    entropy = record.manifest.prefix_entropy_bits
    if target:
        lines.append(f"usable information of a {em.variant} probe about the label ({' / '.join(target.label_names)}; "
                     f"H(s) = {target.entropy_bits:.3f} bits) at boundary l + 1, last position, minus its mean over "
                     "positions from each token's embedding alone: a lower bound for this probe family, which a "
                     "richer probe may exceed")
        if target.ceilings_bits:
            lines.append("exact I(s; prefix_t) per position (caps U_l(t)): "
                         + " ".join(f"{b:.3f}" for b in target.ceilings_bits))
    elif entropy:
        lines.append("prefix entropy per position (caps M_l(t)): " + " ".join(f"{b:.2f}" for b in entropy))
    if record.control:
        from ie_flow.control import format_comparison

        lines += ["", format_comparison(record.control, em, record.estimator)]
    return "\n".join(lines)


def _measures_target(method: str) -> bool:
    from ie_flow.estimators import ESTIMATORS

    return method in ESTIMATORS and ESTIMATORS[method].measures_target


def _companion_lines(em: Any, method: str) -> list[str]:
    """The companion's model IE beside the headline's, and the estimator's sentence on which the headline
    shows and why."""
    from ie_flow.estimators import ESTIMATORS

    s, c = em.summary, em.companion.summary
    interval = f" [{c.ie_mean_ci_low:.3f}, {c.ie_mean_ci_high:.3f}]" if c.has_interval else ""
    over = f" over its {len(em.layers) - c.invalid_layers} valid layers" if c.invalid_layers != s.invalid_layers else ""
    note = ESTIMATORS[method].headline_note if method in ESTIMATORS else ""
    return [f"{_beside(em)} IE ({em.companion.variant}), beside the headline ({em.variant}): mean {c.ie_mean:.3f}"
            f"{interval}{over}  max {c.ie_max:.3f} (layer {c.ie_argmax_layer})"] + ([note] if note else [])


def _reference_sentence(em: Any) -> str:
    """How much of IE the Gaussian reference accounts for (docs/METHOD.md section 7)."""
    ok = [l for l in em.layers if l.valid and l.reference_ie == l.reference_ie]
    if not ok:
        return "Gauss IE: no valid layer"
    apart = sum(l.excess_ie_ci_low > 0 or l.excess_ie_ci_high < 0 for l in ok)
    return (f"Gauss IE is the IE of the Gaussian reference G^β (the smoothed MI a Gaussian with each cell's covariances "
            f"would have); mean over layers {sum(l.reference_ie for l in ok) / len(ok):+.3f}, excess "
            f"{sum(l.excess_ie for l in ok) / len(ok):+.3f} bits; the excess is beyond its interval in {apart} of "
            f"{len(ok)} valid layers.")


def json_summary(result: Result) -> dict[str, Any]:
    """The `--json` object of the CLI contract (docs/ARCHITECTURE.md)."""
    r, s = result.record, result.emergence.summary
    return {
        "manifest": r.manifest_uri,
        "results": r.results_uri,
        "tracking_uri": r.tracking_uri,
        "mlflow_run_id": r.mlflow_run_id,
        "model": r.model_name,
        "corpus_digest": r.corpus_digest,
        "estimator": r.estimator,
        "variant": r.variant,
        "summary": {"ie_mean": s.ie_mean, "ie_max": s.ie_max,
                    **({"companion_variant": s.companion_variant, "companion_ie_mean": s.companion_ie_mean,
                        "companion_ie_mean_ci_low": s.companion_ie_mean_ci_low,
                        "companion_ie_mean_ci_high": s.companion_ie_mean_ci_high} if s.companion_variant else {})},
        "layers": [
            {"layer": l.layer, "ie": l.ie, "mi_macro": l.mi_macro, "mi_micro": l.mi_micro,
             "saturated": l.saturated, **({"diagnostics": l.diagnostics} if l.diagnostics else {}),
             **({"reference_ie": l.reference_ie, "excess_ie": l.excess_ie} if l.reference_ie == l.reference_ie else {}),
             **({"companion_ie": l.companion_ie, "companion_ie_ci_low": l.companion_ie_ci_low,
                 "companion_ie_ci_high": l.companion_ie_ci_high} if s.companion_variant else {})}
            for l in result.emergence.layers
        ],
        "seconds": r.seconds,
        "control": r.control.model_dump(mode="json") if r.control else None,
    }


def _what_differs(results: list[Result]) -> list[str]:
    """Notes on what makes the results' IE different quantities: estimator, variant or corpus."""
    facts = {"estimator": [r.record.estimator for r in results], "variant": [r.emergence.variant for r in results],
             "corpus": [r.record.corpus_digest[:12] for r in results]}
    notes = []
    for what, values in facts.items():
        if len(set(values)) > 1:
            which = ", ".join(f"{i + 1}: {v or 'none'}" for i, v in enumerate(values))
            notes.append(f"note: the results differ in {what} ({which}): their IE are not the same quantity, "
                         "compare them with care")
    return notes


def _layer_figure(layer: Any, name: str) -> float:
    """A layer's field (reference_ie, excess_ie) or its macro cell's diagnostic; NaN where it has neither."""
    if layer is None:
        return float("nan")
    return float(getattr(layer, name)) if hasattr(layer, name) else layer.diagnostics.get(name, float("nan"))


def common_means(results: list[Result]) -> tuple[list[int], list[tuple[float, float, float]]]:
    """The layers valid in every run, and each run's IE mean over them with its interval (NaN: none)."""
    keep = common_layers([r.emergence for r in results])
    nan = (float("nan"),) * 3
    return keep, [r.emergence.mean_ie([i for i, l in enumerate(r.emergence.layers) if l.layer in keep]) if keep
                  else nan for r in results]


def format_compare(results: list[Result]) -> str:
    """Several runs side by side: IE per layer with its 95% interval, mean (with its interval) over
    each run's valid layers and over the layers valid in every run (the comparison), and max, each
    estimator's diagnostics; `*` marks saturated layers, and a note says when the runs differ in
    estimator, variant or corpus."""
    lines = [f"{i + 1}: {r.label}  ({r.record.estimator}{', ' + r.emergence.variant if r.emergence.variant else ''})"
             for i, r in enumerate(results)]
    # the IE of the Gaussian reference (smoothed) is shown with the diagnostics, per run that has one
    names = [(["reference_ie", "excess_ie"] if r.emergence.has_reference else []) + _diagnostic_names(r.emergence)
             for r in results]
    layers = sorted({l.layer for r in results for l in r.emergence.layers})
    lines.append("layer  " + " ".join(f"{'IE ' + str(i + 1):>9}  {'95% interval':>17}" for i in range(len(results)))
                 + "".join(f"  {f'{n} {i + 1}':>{_width(n) + 2}}" for i, ns in enumerate(names) for n in ns))
    for layer in layers:
        cells, diags = [], []
        for r, ns in zip(results, names):
            match = [l for l in r.emergence.layers if l.layer == layer]
            l = match[0] if match else None
            cells.append(f"{l.ie:>9.3f}{'*' if l.saturated else ' '}[{l.ie_ci_low:>7.3f}, {l.ie_ci_high:>7.3f}]" if l
                         else f"{'-':>9}  {'':>17}")
            diags += [f"  {_layer_figure(l, n):>{_width(n) + 2}.3f}" for n in ns]
        lines.append(f"{layer:>5}  " + " ".join(cells) + "".join(diags))
    cells = []
    for r in results:
        s = r.emergence.summary
        cells.append(f"{s.ie_mean:>9.3f} [{s.ie_mean_ci_low:>7.3f}, {s.ie_mean_ci_high:>7.3f}]")
    lines.append(f"{'mean':<6} " + " ".join(cells))
    keep, means = common_means(results)
    lines.append(f"{'common':<6} " + " ".join(f"{m:>9.3f} [{lo:>7.3f}, {hi:>7.3f}]" for m, lo, hi in means))
    lines.append(f"{'max':<6} " + " ".join(f"{r.emergence.summary.ie_max:>9.3f}  {'':>17}" for r in results))
    beside = [r.emergence.summary for r in results]
    if any(c.companion_variant for c in beside):  # the companion's mean, over its own valid layers, beside each
        lines.append("beside the headline: " + "; ".join(
            f"{i + 1}: {c.companion_variant} mean {c.companion_ie_mean:.3f} [{c.companion_ie_mean_ci_low:.3f}, "
            f"{c.companion_ie_mean_ci_high:.3f}]" if c.companion_variant else f"{i + 1}: none"
            for i, c in enumerate(beside)))
    lines.append(f"mean: over each run's valid layers; common: over the {len(keep)} layers valid in every run"
                 + (f" ({', '.join(map(str, keep))})" if keep else ": none, nothing to compare"))
    if any(l.saturated for r in results for l in r.emergence.layers):
        lines.append("* layer with saturated estimates: its IE is a difference of lower bounds")
    return "\n".join(lines + _what_differs(results))
