"""In-process executor: one worker, units one after another, no Ray. For debugging a step (a
breakpoint stops in the step itself) and for tests."""

from __future__ import annotations

from typing import Iterator

from ie_flow.executors.base import Executor, Step, UnitDone, WorkUnit
from ie_flow.executors.resources import WorkerPlan


class SerialExecutor(Executor):
    name = "serial"

    def dispatch(self, step: Step, groups: list[list[WorkUnit]], plan: WorkerPlan
                 ) -> Iterator[tuple[list[WorkUnit], list[UnitDone]]]:
        import torch

        torch.set_num_threads(max(1, plan.threads))
        step.setup()
        for group in groups:
            yield group, step.run(group)


EXECUTOR = SerialExecutor
