"""Ray: start or join a runtime, size actor pools and tasks from what Ray reports."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ie_flow import IEFlowError

log = logging.getLogger("ie_flow")


def init_ray(address: str | None = None) -> None:
    """Join `address` (a cluster, `auto`, or ray://...) or start a local runtime. Idempotent."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        ray.init(
            address=address,
            logging_level=logging.WARNING,
            log_to_driver=True,
            # the package travels with the job when a driver joins a remote cluster
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}} if address else None,
            include_dashboard=False if address is None else None,
            # Ray starts workers at nice 15; on a small machine the driver and Ray's daemons then
            # take the cores from the model actor (stage 1 ran at 0.47 of a bare forward loop)
            _system_config={"worker_niceness": 0} if address is None else None,
        )
    except ConnectionError as e:
        raise IEFlowError(f"cannot reach the Ray cluster at {address}: {e}") from None
    log.info("ray: %s", "local runtime" if address is None else f"connected to {address}")


@dataclass
class Resources:
    cpus: float
    gpus: float
    nodes: int

    @property
    def cpus_per_node(self) -> float:
        return self.cpus / max(1, self.nodes)


def cluster_resources() -> Resources:
    import ray

    total = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return Resources(float(total.get("CPU", 0)), float(total.get("GPU", 0)), max(1, nodes))


@dataclass
class ActorPlan:
    """How many model actors and what each asks for."""

    num_actors: int
    num_cpus: float
    num_gpus: float
    torch_threads: int


def plan_actors(
    res: Resources, num_actors: int | None, num_gpus: float | None, num_cpus: float | None
) -> ActorPlan:
    """GPUs present: one actor per GPU (or per `num_gpus` fraction). CPU only: leave a CPU for Ray
    Data's read tasks (a pool that takes every CPU starves them and hangs; measured on 2 cores)."""
    if res.gpus > 0 and num_gpus != 0:
        per = num_gpus or 1.0
        n = num_actors or max(1, int(res.gpus / per))
        cpus = num_cpus or 1.0
        return ActorPlan(n, cpus, per, max(1, int(cpus)))
    # one actor per node by default: torch already spreads a forward pass over the node's cores
    cpus = num_cpus or max(0.5, min(res.cpus_per_node - 1, res.cpus_per_node / 2))
    n = num_actors or res.nodes
    if n * cpus > res.cpus:
        raise IEFlowError(f"{n} actors x {cpus:g} CPUs do not fit the cluster's {res.cpus:g} CPUs")
    # torch may use more cores than Ray books for the actor: the read tasks beside it are light
    actors_per_node = -(-n // res.nodes)
    threads = max(1, int(res.cpus_per_node // actors_per_node))
    return ActorPlan(n, cpus, 0.0, threads)
