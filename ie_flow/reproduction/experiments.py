"""The paper's experiments as data: one YAML file per experiment in workflows/paper/.

    # ie-flow reproduce NAME                     (line 1: the command that runs it)
    experiment: NAME
    claim: what the paper says
    job: {...}                                   the base job, as in any workflow
    generate: [{name, model, prompts, ...}]      model-written corpora (`ie-flow corpus generate`)
    matrix: {corpus.name: [...], ...}            one cell per combination of these settings
    cells: [{name, set: {dotted: value}, tags}]  and/or cells listed one by one
    also: [infonce]                              further estimators on each cell's activations
                                                 (as a job naming only it: its family's settings, one seed)
    scales: {paper: {corpus.samples: 4096}}      dotted settings of every cell at a named scale

A cell is a job: the base job with the cell's settings. `generated:NAME` as a corpus name is the
file the experiment's generator NAME wrote. `ie-flow reproduce --scale NAME` applies the scale's
dotted settings over the base job of every cell (a setting the cell names itself stays), and those
named `generate.KEY` (generate.samples) to every generator; `default` is the file as written, and a
scale a file does not name is an error. A scale that changes a generator writes its own file
(NAME-SCALE), so the two scales' corpora never overwrite each other and the cells that read it rerun."""

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
DEFAULT_SCALE = "default"
_KEYS = {"experiment", "claim", "job", "generate", "matrix", "cells", "also", "scales"}


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

    def generated_corpus(self, base: dict[str, Any]) -> str | None:
        """The name of the generated corpus the cell reads (`generated:NAME`), if it reads one."""
        name = str(self.job_tree(base).get("corpus", {}).get("name", ""))
        return name.removeprefix(GENERATED_PREFIX) if name.startswith(GENERATED_PREFIX) else None

    def digest(self, base: dict[str, Any], corpus_metadata: dict[str, Any] | None = None) -> str:
        """What decides the cell's results: its job, its further estimators and, for a generated
        corpus, what the text was generated with (new text makes the cell rerun)."""
        parts: list[Any] = [self.job_tree(base), sorted(self.also)]
        if corpus_metadata is not None:
            parts.append(corpus_metadata)
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Experiment:
    name: str
    claim: str
    command: str
    path: Path
    job: dict[str, Any]
    cells: list[Cell]
    generate: list[dict[str, Any]] = field(default_factory=list)
    scale: str = DEFAULT_SCALE

    def cell_digest(self, cell: Cell, generated: dict[str, dict[str, Any]]) -> str:
        """What a cell's measurements are stored under: its settings and, for a cell that reads a
        generated corpus, that corpus's metadata (`generated`: the index's generated corpora)."""
        corpus = generated.get(cell.generated_corpus(self.job) or "", {})
        return cell.digest(self.job, corpus.get("metadata"))


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


def _scale_settings(raw: dict[str, Any], scale: str, where: Path) -> dict[str, Any]:
    """The dotted settings of `scale` (none for the default: the file as written)."""
    scales = raw.get("scales") or {}
    if not isinstance(scales, dict) or not all(isinstance(v, dict) for v in scales.values()):
        raise IEFlowError(f"{where}: 'scales' maps each scale name to dotted settings")
    if scale != DEFAULT_SCALE and scale not in scales:
        known = ", ".join(dict.fromkeys([DEFAULT_SCALE, *map(str, scales)]))
        raise IEFlowError(f"{where}: unknown scale {scale!r}; known: {known}")
    return dict(scales.get(scale) or {})


def _at_scale(cells: list[Cell], generate: list[dict[str, Any]], settings: dict[str, Any], scale: str,
              where: Path) -> tuple[list[Cell], list[dict[str, Any]]]:
    """Cells with the scale's settings under their own (a setting a cell names itself, such as the
    seed of an estimator that runs once, is what that cell needs at every scale); generators with its
    `generate.` settings, renamed NAME-SCALE (and every `generated:NAME` that reads them)."""
    from dataclasses import fields

    from ie_flow.corpora.generate import GenerationSettings

    gen = {k.removeprefix("generate."): v for k, v in settings.items() if k.startswith("generate.")}
    unknown = sorted(set(gen) - {f.name for f in fields(GenerationSettings)})
    if unknown:
        raise IEFlowError(f"{where}: scale {scale!r} sets unknown generator settings {unknown}")
    job = {k: v for k, v in settings.items() if not k.startswith("generate.")}
    renamed = {g["name"]: f"{g['name']}-{scale}" for g in generate} if gen else {}

    def follow(d: dict[str, Any]) -> dict[str, Any]:
        name = str(d.get("corpus.name", ""))
        if name.startswith(GENERATED_PREFIX) and name.removeprefix(GENERATED_PREFIX) in renamed:
            return {**d, "corpus.name": GENERATED_PREFIX + renamed[name.removeprefix(GENERATED_PREFIX)]}
        return d

    cells = [Cell(c.experiment, c.name, {**job, **follow(c.settings)}, follow(c.tags), c.also) for c in cells]
    return cells, [{**g, **gen, "name": renamed.get(g["name"], g["name"])} for g in generate]


def load_experiment(path: Path, scale: str = DEFAULT_SCALE) -> Experiment:
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
    cells, generate = _at_scale(cells, list(raw.get("generate") or []), _scale_settings(raw, scale, path),
                                scale, path)
    command = path.read_text().splitlines()[0].lstrip("# ").split("  ")[0].strip()  # line 1, before any note
    return Experiment(name, str(raw["claim"]).strip(), command, path, raw.get("job") or {}, cells, generate, scale)


def load_experiments(names: list[str] | None = None, folder: Path | None = None,
                     scale: str = DEFAULT_SCALE) -> list[Experiment]:
    """The experiments of `folder` at `scale` (all, or those named, in the order named)."""
    folder = folder or default_folder()
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise IEFlowError(f"no experiment files (*.yaml) in {folder}")
    known = {e.name: e for e in (load_experiment(f, scale) for f in files)}
    if not names:
        return sorted(known.values(), key=lambda e: e.path.name)
    missing = [n for n in names if n not in known]
    if missing:
        raise IEFlowError(f"unknown experiment {missing[0]!r}; known: {', '.join(sorted(known))}")
    return [known[n] for n in names]
