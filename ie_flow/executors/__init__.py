"""Executors run a step's units of work somewhere: `ray` (the local runtime or a cluster) or
`serial` (in-process, for debugging). Adding one is one file in this folder that defines
`EXECUTOR = YourExecutor` (a subclass of executors.base.Executor); its file name is its name."""

from __future__ import annotations

import importlib
import pkgutil

from ie_flow import IEFlowError
from ie_flow.executors.base import Completion, Executor, Step, UnitDone, WorkUnit
from ie_flow.executors.resources import Resources, WorkerPlan

__all__ = ["Completion", "Executor", "Resources", "Step", "UnitDone", "WorkerPlan", "WorkUnit", "executor_names", "get_executor"]
_NOT_EXECUTORS = {"base", "resources"}


def executor_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_EXECUTORS)


def get_executor(name: str, **options: object) -> Executor:
    """An executor by its name (its module in this folder), e.g. get_executor("ray", address=...)."""
    names = executor_names()
    if name not in names:
        from difflib import get_close_matches

        close = get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise IEFlowError(f"unknown executor {name!r}{hint} (known: {', '.join(names)})")
    return importlib.import_module(f"{__name__}.{name}").EXECUTOR(**options)
