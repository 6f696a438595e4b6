"""Ray executor: a pool of worker actors (each loads its step's state once), units dispatched to
whichever worker is free, a unit whose worker died handed to another (Ray restarts the actor).
The same code runs on the local runtime (`ray.init()`) and on a cluster (`--ray-address`)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from typing import Any, Iterator

from ie_flow import IEFlowError
from ie_flow.executors.base import Executor, Step, UnitDone, WorkUnit
from ie_flow.executors.resources import Resources, WorkerPlan

log = logging.getLogger("ie_flow")

# workers are not terminals: no tqdm bars (GGUF de-quantisation draws 16 of them) or advisory logs
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}


def check_ray_address(address: str | None, timeout_s: float = 3.0) -> None:
    """Raise IEFlowError at once when the address is not a cluster's (a Jobs API URL, a typo) or
    nothing listens at its HOST:PORT.

    ray.init keeps retrying an unreachable GCS for minutes (still retrying 127.0.0.1:1 after 400 s, measured); one TCP
    connect answers in milliseconds. `auto`, `local` and a well-formed ray://... (Ray Client connects
    its own way) are left to ray.init."""
    from ie_flow.locations import ray_cluster_problem

    if not address or address in ("auto", "local"):
        return
    problem = ray_cluster_problem(address)
    if problem:
        raise IEFlowError(problem)
    if "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise IEFlowError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


def init_ray(address: str | None = None) -> None:
    """Join `address` (a cluster, `auto`, or ray://...) or start a local runtime. Idempotent."""
    import ray

    if ray.is_initialized():
        return
    check_ray_address(address)  # fail in a second, not after minutes of GCS retries
    verbose = logging.getLogger("ie_flow").isEnabledFor(logging.DEBUG)
    if not sys.stderr.isatty():  # workers' lines in a log file: no colour codes around their prefixes
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    # Ray's driver installs its own SIGTERM handler (it dumps a native stack); keep the CLI's
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(
            address=address,
            logging_level=logging.INFO if verbose else logging.ERROR,
            log_to_driver=True,
            runtime_env={"env_vars": WORKER_ENV},
            include_dashboard=False if address is None else None,
            # Ray starts workers at nice 15; on a small machine the driver and Ray's daemons then
            # take the cores from the model worker (stage 1 ran at 0.47 of a bare forward loop)
            _system_config={"worker_niceness": 0} if address is None else None,
        )
    except ConnectionError as e:
        raise IEFlowError(f"cannot reach the Ray cluster at {address}: {e}") from None
    if threading.current_thread() is threading.main_thread() and callable(on_sigterm):
        signal.signal(signal.SIGTERM, on_sigterm)
    log.info("ray: %s", "local runtime" if address is None else f"connected to {address}")


def cluster_resources() -> Resources:
    import ray

    total = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return Resources(float(total.get("CPU", 0)), float(total.get("GPU", 0)), max(1, nodes), float(total.get("memory", 0)))


class StepWorker:
    """The actor: sets its thread count and loads the step's state once, then runs unit groups."""

    def __init__(self, step: Step, threads: int) -> None:
        import torch

        from ie_flow.logs import configure_logging

        configure_logging()  # ie-flow's progress lines reach the driver; the libraries' logs do not
        torch.set_num_threads(max(1, threads))
        step.setup()
        self.step = step

    def ready(self) -> int:
        return os.getpid()

    def run(self, units: list[WorkUnit]) -> list[UnitDone]:
        return self.step.run(units)


class RayExecutor(Executor):
    name = "ray"

    def check(self) -> None:
        check_ray_address(self.address)

    def resources(self) -> Resources:
        init_ray(self.address)
        return cluster_resources()

    def dispatch(self, step: Step, groups: list[list[WorkUnit]], plan: WorkerPlan
                 ) -> Iterator[tuple[list[WorkUnit], list[UnitDone]]]:
        import ray

        init_ray(self.address)
        actor_class = ray.remote(num_cpus=plan.cpus, num_gpus=plan.gpus, max_restarts=plan.retries,
                                 max_task_retries=0)(StepWorker)
        # up to max_workers: those the cluster cannot place yet start when an autoscaler adds nodes
        count = min(plan.max_workers, len(groups))
        actors = [actor_class.options(scheduling_strategy=where).remote(step, plan.threads)
                  for where in _placements(plan, count)]
        try:
            yield from _work_queue(actors, deque(groups), plan.retries)
        finally:
            for actor in actors:
                ray.kill(actor)


def _placements(plan: WorkerPlan, count: int) -> list[Any]:
    """Where each of `count` workers goes: one per node before a second on any (a model per node,
    all nodes' cores used), as many on a node as its resources hold. Ray's SPREAD is only a
    preference (two half-CPU workers were seen on one node of two), so the nodes are named; a
    worker no live node has room for is left to Ray (an autoscaler may add its node)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    room = {}
    for node in sorted(ray.nodes(), key=lambda n: n["NodeID"]):
        res = node.get("Resources", {}) if node.get("Alive") else {}
        fits = [res.get(key, 0.0) / need for key, need in (("CPU", plan.cpus), ("GPU", plan.gpus)) if need > 0]
        room[node["NodeID"]] = int(min(fits, default=1) + 1e-9)
    placed: list[Any] = []
    while len(placed) < count and any(room.values()):
        for node_id in room:
            if room[node_id] > 0 and len(placed) < count:
                room[node_id] -= 1
                placed.append(NodeAffinitySchedulingStrategy(node_id=node_id, soft=True))
    return placed + ["SPREAD"] * (count - len(placed))


def _work_queue(actors: list[Any], queue: deque, retries: int
                ) -> Iterator[tuple[list[WorkUnit], list[UnitDone]]]:
    """Hand groups to idle actors until all are done; a group whose actor died goes back on the
    queue (at most `retries` times); an error raised by the step itself ends the run."""
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError

    starting = {actor.ready.remote(): actor for actor in actors}
    running: dict[Any, tuple[Any, list[WorkUnit]]] = {}
    tries: dict[str, int] = {}
    idle: list[Any] = []
    while queue or running:
        while idle and queue:
            actor, group = idle.pop(), queue.popleft()
            running[actor.run.remote(group)] = (actor, group)
        if not running and not starting:
            raise RuntimeError("no worker could be started for this step")
        (ref,), _ = ray.wait([*starting, *running], num_returns=1)
        if ref in starting:
            actor = starting.pop(ref)
            try:
                ray.get(ref)
                idle.append(actor)
            except ActorUnavailableError:  # still restarting after its process died: ask again shortly
                time.sleep(0.2)
                starting[actor.ready.remote()] = actor
            except RayActorError as e:  # the step's setup failed on this worker: nothing else will work
                raise RuntimeError(f"a worker could not start: {e}") from None
            continue
        actor, group = running.pop(ref)
        try:
            records = ray.get(ref)
        except RayActorError:  # the worker process died (killed, out of memory, node lost)
            tries[group[0].id] = tries.get(group[0].id, 0) + 1
            if tries[group[0].id] > retries:
                raise RuntimeError(f"{group[0].id}: its worker died {tries[group[0].id]} times; giving up") from None
            log.warning("%s: worker died; running it again (try %d of %d)", group[0].id, tries[group[0].id] + 1,
                        retries + 1)
            queue.appendleft(group)
            starting[actor.ready.remote()] = actor  # Ray restarts it (max_restarts)
            continue
        idle.append(actor)
        yield group, records


EXECUTOR = RayExecutor
