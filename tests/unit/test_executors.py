"""Executors: units, completion markers, resource planning; the serial executor runs a step in-process."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

from ie_flow import IEFlowError
from ie_flow.executors import Completion, UnitDone, WorkerPlan, WorkUnit, executor_names, get_executor
from ie_flow.executors.resources import Resources, plan_compute_workers, plan_model_workers
from ie_flow.storage import Storage


@dataclass
class SquareStep:
    """A toy step: writes each unit's square to storage and records it."""

    folder: Storage
    name: str = "toy"
    unit: str = "unit"
    setups: int = 0
    calls: list[list[str]] = field(default_factory=list)

    def setup(self) -> None:
        self.setups += 1

    def run(self, units: list[WorkUnit]) -> list[UnitDone]:
        self.calls.append([u.id for u in units])
        for u in units:
            self.folder.write_json(f"out/{u.id}", u.payload["x"] ** 2)
        return [UnitDone({"square": u.payload["x"] ** 2}, {"seconds": 0.5}) for u in units]


def _units(n: int) -> list[WorkUnit]:
    return [WorkUnit(f"u{i}", {"x": i}) for i in range(n)]


def test_serial_executor_runs_pending_units_and_marks_them(tmp_path):
    store = Storage(str(tmp_path))
    step, completion = SquareStep(store), Completion(store)
    plan = WorkerPlan(1, 1, 1.0, 0.0, 1, units_per_call=2)
    executor = get_executor("serial")
    records = executor.run(step, _units(5), completion, plan)
    assert records == [{"square": i * i} for i in range(5)]  # statistics are not in the markers
    assert executor.stats == [{"seconds": 0.5}] * 5
    assert step.setups == 1 and step.calls == [["u0", "u1"], ["u2", "u3"], ["u4"]]
    assert completion.count() == 5 and store.read_json("_done/u3") == {"square": 9}
    # a rerun does only what has no marker
    store.remove("_done/u1")
    again = SquareStep(store)
    assert get_executor("serial").run(again, _units(5), completion, plan) == records
    assert again.calls == [["u1"]]


def test_a_unit_that_fails_gets_no_marker(tmp_path):
    store = Storage(str(tmp_path))

    class Failing(SquareStep):
        def run(self, units):
            if units[0].id == "u2":
                raise RuntimeError("boom")
            return super().run(units)

    with pytest.raises(RuntimeError, match="boom"):
        get_executor("serial").run(Failing(store), _units(4), Completion(store), WorkerPlan(1, 1, 1, 0, 1))
    assert sorted(store.list("_done")) == ["u0", "u1"]


def test_executor_registry():
    assert {"ray", "serial"} <= set(executor_names())
    with pytest.raises(IEFlowError, match="did you mean 'serial'"):
        get_executor("serail")


def test_serial_executor_sees_this_machine():
    res = get_executor("serial").resources()
    assert res.cpus == os.cpu_count() and res.nodes == 1


def test_model_workers_on_cpus_and_gpus():
    two_cores = plan_model_workers(Resources(cpus=2, gpus=0, nodes=1))
    assert (two_cores.workers, two_cores.cpus, two_cores.gpus, two_cores.threads) == (1, 1.0, 0.0, 2)
    cluster = plan_model_workers(Resources(cpus=32, gpus=0, nodes=2))
    assert (cluster.workers, cluster.cpus, cluster.threads) == (2, 8.0, 16)
    gpus = plan_model_workers(Resources(cpus=16, gpus=4, nodes=1), gpus=0.5, max_workers=12)
    assert (gpus.workers, gpus.max_workers, gpus.gpus, gpus.cpus) == (8, 12, 0.5, 1.0)
    with pytest.raises(IEFlowError, match="do not fit"):
        plan_model_workers(Resources(cpus=2, gpus=0, nodes=1), workers=3, cpus=1.0)


def test_compute_workers_on_cpus_and_gpus():
    cpu = plan_compute_workers(Resources(cpus=2, gpus=0, nodes=1), units=30)
    assert (cpu.workers, cpu.cpus, cpu.threads, cpu.units_per_call) == (1, 2.0, 2, 6)
    gpu = plan_compute_workers(Resources(cpus=16, gpus=2, nodes=1), units=30)
    assert (gpu.workers, gpu.gpus, gpu.units_per_call) == (2, 1.0, 15)
    assert plan_compute_workers(Resources(8, 0, 1), units=30, units_per_call=3).units_per_call == 3


def test_ray_workers_are_placed_one_per_node_before_a_second(monkeypatch):
    """The Ray executor names each worker's node: one per live node before a second on any, as many
    on a node as its CPUs hold, the rest left to Ray (SPREAD); a dead node gets none."""
    import ray

    from ie_flow.executors.ray import _placements

    a, b, c = "a" * 56, "b" * 56, "c" * 56  # node ids are hex
    nodes = [{"NodeID": b, "Alive": True, "Resources": {"CPU": 1.0}},
             {"NodeID": a, "Alive": True, "Resources": {"CPU": 1.0}},
             {"NodeID": c, "Alive": False, "Resources": {"CPU": 8.0}}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    plan = WorkerPlan(workers=5, max_workers=5, cpus=0.5, gpus=0.0, threads=1)
    placed = _placements(plan, 5)
    assert [p.node_id for p in placed[:4]] == [a, b, a, b] and all(p.soft for p in placed[:4])
    assert placed[4] == "SPREAD"
    assert [p.node_id for p in _placements(plan, 2)] == [a, b]
