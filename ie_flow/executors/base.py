"""What every executor shares: work units, the step protocol, completion markers and the run loop.

A step (ie_flow.stages) knows only how to do its units of work. An executor decides where the
units run; this base class owns what must be the same everywhere: which units are still to do
(a unit is done when its completion marker exists), writing the marker only after the unit's
data is on storage, progress, and the records of finished units."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from ie_flow.executors.resources import Resources, WorkerPlan
from ie_flow.progress import Progress
from ie_flow.storage import Storage
from ie_flow.store import DONE

log = logging.getLogger("ie_flow")


@dataclass(frozen=True)
class WorkUnit:
    """One unit of work: `id` is stable across reruns (it names the completion marker)."""

    id: str
    payload: dict[str, Any] = field(default_factory=dict, compare=False)
    weight: int = 1  # progress amount (sequences of a shard, 1 for a layer)


@dataclass
class UnitDone:
    """A step's result for one unit: the record its completion marker keeps (deterministic, so a
    resumed job's markers equal an uninterrupted one's) and the step's own run statistics (seconds,
    memory: a typed record of the step's), reported apart and never written into the marker."""

    record: dict[str, Any]
    stats: Any = None


class Step(Protocol):
    """Work over units, with no knowledge of Ray, MLflow or where it runs."""

    name: str  # progress label, e.g. "stage 1 extract"
    unit: str  # progress unit, e.g. "seq"

    def setup(self) -> None:
        """Heavy state (a model) loaded once per worker, before its first unit."""

    def run(self, units: list[WorkUnit]) -> list[UnitDone]:
        """Do `units` (their data written to storage) and return each one's JSON-able record and statistics."""


class Completion:
    """Completion markers in one folder: `_done/{unit id}` holds the unit's record."""

    def __init__(self, folder: Storage) -> None:
        self.folder = folder

    def _marker(self, unit: WorkUnit) -> str:
        return f"{DONE}/{unit.id}"

    def is_done(self, unit: WorkUnit) -> bool:
        return self.folder.exists(self._marker(unit))

    def record(self, unit: WorkUnit) -> dict[str, Any]:
        return self.folder.read_json(self._marker(unit))

    def mark(self, unit: WorkUnit, record: dict[str, Any]) -> None:
        self.folder.write_json(self._marker(unit), record)

    def clear(self, unit: WorkUnit) -> None:
        """Forget that `unit` is done (its data is damaged): the next run does it again."""
        self.folder.remove(self._marker(unit))

    def count(self) -> int:
        return len(self.folder.list(DONE))


class Executor:
    """Runs a step over units; subclasses implement `dispatch` (where the units run)."""

    name = "base"

    def __init__(self, address: str | None = None) -> None:
        self.address = address  # the Ray cluster to join, for executors that use one
        self.stats: list[Any] = []  # per unit finished in this run, its step's statistics (UnitDone.stats)

    def check(self) -> None:
        """Fail now, with one clear line, if this executor cannot run anything (called before any work)."""

    def resources(self) -> Resources:
        """What the workers can use: this machine's cores and GPUs, for in-process executors."""
        import torch

        # memory for the work: what Ray's local runtime offers tasks by default (70% of the machine's)
        memory = 0.7 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0.0
        return Resources(float(os.cpu_count() or 1), float(torch.cuda.device_count()), 1, memory)

    def run(self, step: Step, units: list[WorkUnit], completion: Completion, plan: WorkerPlan) -> list[dict[str, Any]]:
        """Do the units without a completion marker; return every unit's record, in unit order."""
        pending = [u for u in units if not completion.is_done(u)]
        if pending:
            log.info("%s: %d of %d units to do on %s (%d worker(s), %g CPU / %g GPU each)", step.name,
                     len(pending), len(units), self.name, min(plan.workers, len(pending)), plan.cpus, plan.gpus)
            groups = [pending[i : i + plan.units_per_call] for i in range(0, len(pending), plan.units_per_call)]
            with Progress(step.name, sum(u.weight for u in pending), step.unit) as progress:
                for group, results in self.dispatch(step, groups, plan):
                    for unit, done in zip(group, results):
                        self.stats.append(done.stats)
                        completion.mark(unit, done.record)
                    progress.update(sum(u.weight for u in group), f"{_span(group)} done",
                                    milestone=plan.units_per_call > 1)
        return [completion.record(u) for u in units]

    def dispatch(self, step: Step, groups: list[list[WorkUnit]], plan: WorkerPlan
                 ) -> Iterator[tuple[list[WorkUnit], list[UnitDone]]]:
        """Run every group; yield (group, its results) as each finishes, in any order."""
        raise NotImplementedError


def _span(group: list[WorkUnit]) -> str:
    return group[0].id if len(group) == 1 else f"{group[0].id}..{group[-1].id}"
