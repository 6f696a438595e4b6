"""Resource planning: how many workers a step gets and what each asks for, from what the
cluster reports. Stage 1 workers hold a model (one per GPU, or one per node on CPUs); stage 2
workers train batched critics (one per GPU, or one per node using all its cores)."""

from __future__ import annotations

from dataclasses import dataclass

from ie_flow import IEFlowError


@dataclass(frozen=True)
class WorkerPlan:
    """How many workers run a step and what each asks for (executors.resources plans it)."""

    workers: int  # started at once
    max_workers: int  # an autoscaling cluster may add workers up to this
    cpus: float
    gpus: float
    threads: int  # torch threads inside a worker
    units_per_call: int = 1  # units handed to a worker together (layers share one batched model)
    retries: int = 2  # times a unit is tried again after its worker died
    memory: int | None = None  # bytes a worker may hold (its share of the node's memory for tasks)


@dataclass(frozen=True)
class Resources:
    cpus: float
    gpus: float
    nodes: int
    memory: float = 0.0  # bytes for tasks and actors, all nodes together (Ray's "memory" resource)

    @property
    def cpus_per_node(self) -> float:
        return self.cpus / max(1, self.nodes)


def plan_model_workers(res: Resources, workers: int | None = None, gpus: float | None = None,
                       cpus: float | None = None, max_workers: int | None = None) -> WorkerPlan:
    """GPUs present: one model worker per GPU (or per `gpus` fraction). CPU only: one per node,
    booking about half its CPUs (a pool that books every CPU left Ray's own tasks starving and hung
    on 2 cores); torch may still use all of the node's cores, since the rest of the job is light."""
    if res.gpus > 0 and gpus != 0:
        per = gpus or 1.0
        n = workers or max(1, int(res.gpus / per))
        booked = cpus or 1.0
        return WorkerPlan(n, max(n, max_workers or n), booked, per, max(1, int(booked)))
    booked = cpus or max(0.5, min(res.cpus_per_node - 1, res.cpus_per_node / 2))
    n = workers or res.nodes
    if n * booked > res.cpus:
        raise IEFlowError(f"{n} workers x {booked:g} CPUs do not fit the cluster's {res.cpus:g} CPUs")
    per_node = -(-n // res.nodes)
    return WorkerPlan(n, max(n, max_workers or n), booked, 0.0, max(1, int(res.cpus_per_node // per_node)))


def plan_compute_workers(res: Resources, units: int, units_per_call: int | None = None,
                         gpus: float | None = None) -> WorkerPlan:
    """Batched estimators: on GPUs one worker per GPU (or `gpus` fraction), the units split evenly
    among them; on CPUs one worker per node using every core, `units_per_call` (default 6) at a time."""
    if res.gpus > 0 and gpus != 0:
        per = gpus or 1.0
        n = max(1, int(res.gpus / per))
        return WorkerPlan(n, n, 1.0, per, 1, units_per_call or max(1, -(-units // n)),
                          memory=_share(res, -(-n // res.nodes)))
    booked = max(1.0, res.cpus_per_node)
    return WorkerPlan(res.nodes, res.nodes, booked, 0.0, int(booked), units_per_call or 6, memory=_share(res, 1))


def _share(res: Resources, workers_per_node: int) -> int | None:
    """One worker's share of a node's memory for tasks (None when the cluster reports none)."""
    return int(res.memory / max(1, res.nodes) / workers_per_node) if res.memory > 0 else None
