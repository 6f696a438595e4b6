"""The paper's experiments as data: one YAML file per experiment in workflows/paper/.

    # ie-flow reproduce NAME                     (line 1: the command that runs it)
    experiment: NAME
    claim: what the paper says
    job: {...}                                   the base job, as in any workflow
    generate: [{name, model, prompts, ...}]      model-written corpora (`ie-flow corpus generate`)
    matrix: {corpus.name: [...], ...}            one cell per combination of these settings
    cells: [{name, set: {dotted: value}, tags}]  and/or cells listed one by one
    also: [smoothed]                             further estimators on each cell's activations

A cell is a job: the base job with the cell's settings. `generated:NAME` as a corpus name is the
file the experiment's generator NAME wrote."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ie_flow import IEFlowError

GENERATED_PREFIX = "generated:"
_KEYS = {"experiment", "claim", "job", "generate", "matrix", "cells", "also"}


def default_folder() -> Path:
    """workflows/paper of the working directory (a clone), else of the source tree."""
    here = Path("workflows/paper")
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "workflows" / "paper"


@dataclass(frozen=True)
class Cell:
    experiment: str
    name: str
    settings: dict[str, Any]  # dotted job keys over the experiment's base job
    tags: dict[str, Any]  # what the report groups by: the cell's settings (dotted keys) and its own tags
    also: tuple[str, ...] = ()

    def job_tree(self, base: dict[str, Any]) -> dict[str, Any]:
        tree = copy.deepcopy(base)
        for dotted, value in self.settings.items():
            *parents, leaf = dotted.split(".")
            node = tree
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        return tree

    def digest(self, base: dict[str, Any]) -> str:
        text = json.dumps([self.job_tree(base), sorted(self.also)], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Experiment:
    name: str
    claim: str
    command: str
    path: Path
    job: dict[str, Any]
    cells: list[Cell]
    generate: list[dict[str, Any]] = field(default_factory=list)


def _matrix_cells(name: str, matrix: dict[str, list[Any]], also: tuple[str, ...]) -> list[Cell]:
    keys = list(matrix)
    cells = []
    for values in itertools.product(*(matrix[k] for k in keys)):
        tags = dict(zip(keys, values))
        label = "-".join(f"{v}" if isinstance(v, str) else f"{k.rsplit('.', 1)[-1]}{v}" for k, v in tags.items())
        cells.append(Cell(name, label, dict(tags), tags, also))
    return cells


def _listed_cell(name: str, raw: dict[str, Any], also: tuple[str, ...], where: Path) -> Cell:
    if not isinstance(raw, dict) or "name" not in raw:
        raise IEFlowError(f"{where}: every entry of 'cells' needs a name and a 'set' of job settings")
    settings = dict(raw.get("set") or {})
    tags = {**settings, **(raw.get("tags") or {})}
    return Cell(name, str(raw["name"]), settings, tags, tuple(raw.get("also", also)))


def load_experiment(path: Path) -> Experiment:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise IEFlowError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not {"experiment", "claim"} <= set(raw):
        raise IEFlowError(f"{path}: an experiment file needs 'experiment' and 'claim'")
    unknown = set(raw) - _KEYS
    if unknown:
        raise IEFlowError(f"{path}: unknown keys {sorted(unknown)} (known: {sorted(_KEYS)})")
    name, also = str(raw["experiment"]), tuple(raw.get("also") or ())
    cells = _matrix_cells(name, raw["matrix"], also) if raw.get("matrix") else []
    cells += [_listed_cell(name, c, also, path) for c in raw.get("cells") or []]
    if len({c.name for c in cells}) != len(cells):
        raise IEFlowError(f"{path}: two cells share a name")
    command = path.read_text().splitlines()[0].lstrip("# ").split("  ")[0].strip()  # line 1, before any note
    return Experiment(name, str(raw["claim"]).strip(), command, path, raw.get("job") or {},
                      cells, list(raw.get("generate") or []))


def load_experiments(names: list[str] | None = None, folder: Path | None = None) -> list[Experiment]:
    """The experiments of `folder` (all, or those named, in the order named)."""
    folder = folder or default_folder()
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise IEFlowError(f"no experiment files (*.yaml) in {folder}")
    known = {e.name: e for e in map(load_experiment, files)}
    if not names:
        return sorted(known.values(), key=lambda e: e.path.name)
    missing = [n for n in names if n not in known]
    if missing:
        raise IEFlowError(f"unknown experiment {missing[0]!r}; known: {', '.join(sorted(known))}")
    return [known[n] for n in names]
