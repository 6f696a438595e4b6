"""Find a finished job's results (run id, results folder, or the latest) and print them."""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ie_flow import IEFlowError
from ie_flow.storage import Storage

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class LoadedResult:
    record: dict[str, Any]
    table: Any
    emergence: Any
    results: Storage | None  # folder on storage, when loaded from there

    @property
    def label(self) -> str:
        m = self.record["manifest"]
        return f"{m['model'].get('key', m['model']['name'])} / {m['dataset']['id']}"


def _from_storage(results: Storage) -> LoadedResult:
    from ie_flow.emergence import information_emergence

    if not results.exists("summary.json"):
        if results.exists("layers"):
            raise IEFlowError(f"{results.url()} is an unfinished stage 2 (no summary.json); rerun the job")
        raise IEFlowError(f"no ie-flow results at {results.url()} (no summary.json)")
    record = results.read_json("summary.json")
    table = results.read_parquet("mi.parquet")
    return LoadedResult(record, table, information_emergence(table, record["job"]["estimate"]["micro_reduce"]), results)


def _from_mlflow(run_id: str, tracking_uri: str) -> LoadedResult:
    import mlflow
    import pyarrow.parquet as pq

    from ie_flow.emergence import information_emergence
    from ie_flow.tracking import check_reachable

    check_reachable(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        mlflow.MlflowClient().get_run(run_id)
    except Exception:  # noqa: BLE001 - MLflow raises its own exception types per store
        raise IEFlowError(f"no MLflow run {run_id} at {tracking_uri}") from None
    with tempfile.TemporaryDirectory() as tmp:
        record = json.loads(Path(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="summary.json", dst_path=tmp)).read_text())
        table = pq.read_table(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="mi.parquet",
                                                                  dst_path=tmp))
    record["mlflow_run_id"] = run_id
    return LoadedResult(record, table, information_emergence(table, record["job"]["estimate"]["micro_reduce"]), None)


def latest_results(root: Storage) -> Storage:
    """The most recently written results folder under a storage root."""
    pattern = root.path("results", "*", "*", "*", "summary.json")
    found = root.fs.glob(pattern)
    if not found:
        raise IEFlowError(f"no finished ie-flow job under {root.url()}; run `ie-flow run` first")
    newest = max(found, key=lambda p: root.fs.modified(p))
    return Storage(("s3://" if root.is_s3 else "") + newest.rsplit("/", 1)[0], root.endpoint_url)


def load_result(target: str | None, storage_uri: str, tracking_uri: str, endpoint_url: str | None = None) -> LoadedResult:
    """target: an MLflow run id, a results folder / mi.parquet / summary.json URI, or None (latest)."""
    if target is None:
        return _from_storage(latest_results(Storage(storage_uri, endpoint_url)))
    if RUN_ID.match(target):
        return _from_mlflow(target, tracking_uri)
    target = re.sub(r"/(mi\.parquet|summary\.json)$", "", target)
    results = Storage(target, endpoint_url)
    if not results.exists(""):
        raise IEFlowError(f"{target!r} is neither an MLflow run id nor a results folder")
    return _from_storage(results)


def format_table(result: LoadedResult) -> str:
    em, record = result.emergence, result.record
    lines = [
        f"Information Emergence of {result.label}  (bits; micro={record['manifest']['micro']}, "
        f"reduce={em.micro_reduce}, estimator={record['job']['estimate']['method']}, seeds={em.seeds})",
        f"{'layer':>5}  {'macro MI':>9}  {'micro MI':>9}  {'IE':>7}  {'interval':>17}  {'ceiling':>7}  saturation",
    ]
    for l in em.layers:
        sat = []
        if l.macro_saturated:
            sat.append("macro")
        if l.micro_saturated:
            sat.append(f"{l.micro_saturated} micro")
        lines.append(
            f"{l.layer:>5}  {l.mi_macro:>9.3f}  {l.mi_micro:>9.3f}  {l.ie:>7.3f}  "
            f"[{l.ie_ci_low:>7.3f}, {l.ie_ci_high:>7.3f}]  {l.ceiling_bits:>7.2f}  {', '.join(sat) or '-'}"
        )
    s = em.summary
    lines.append(
        f"model IE: mean {s['ie_mean']:.3f}  max {s['ie_max']:.3f} (layer {s['ie_argmax_layer']})  "
        f"std over layers {s['ie_std_layers']:.3f}  std over seeds {s['ie_std_seeds']:.3f}"
    )
    if s["saturated_layers"]:
        lines.append(f"note: {s['saturated_layers']} layer(s) have estimates at their ceiling: those are lower bounds")
    entropy = record["manifest"].get("prefix_entropy_bits")
    if entropy:
        lines.append("prefix entropy per position (caps M_l(t)): " + " ".join(f"{b:.2f}" for b in entropy))
    return "\n".join(lines)


def json_summary(result: LoadedResult) -> dict[str, Any]:
    """The `--json` object of DESIGN.md's CLI contract."""
    r = result.record
    return {
        "manifest": r["manifest_uri"],
        "results": r["results_uri"],
        "tracking_uri": r.get("tracking_uri"),
        "mlflow_run_id": r.get("mlflow_run_id"),
        "model": r["manifest"]["model"]["name"],
        "corpus_digest": r["manifest"]["dataset"]["digest"],
        "summary": {"ie_mean": result.emergence.summary["ie_mean"], "ie_max": result.emergence.summary["ie_max"]},
        "layers": [
            {"layer": l.layer, "ie": l.ie, "mi_macro": l.mi_macro, "mi_micro": l.mi_micro,
             "saturated": l.saturated}
            for l in result.emergence.layers
        ],
        "seconds": r.get("seconds"),
    }
