"""Fault injection with real processes: a killed worker, a killed or stopped job, the S3 endpoint
or the MLflow server going down, two jobs on one folder, a damaged shard. In every case nothing is
lost, nothing is duplicated, and nothing is marked complete that is not: each completion marker's
files exist with the checksums it recorded, and the rerun ends with the bytes of an uninterrupted
run (`reference`). docs/RELIABILITY.md lists these guarantees and the test of each."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from processes import TcpProxy, stop_processes

pytestmark = pytest.mark.integration

SAMPLES, SHARD = 512, 32  # 16 shards
SHARDS = SAMPLES // SHARD
# stage 2: one layer per group, a short InfoNCE training (a few seconds a layer: long enough to stop
# a job inside a group; the numbers do not matter here, only that a rerun reproduces them)
WORKFLOW = f"""extract:
  shard_size: {SHARD}
  batch_size: 32
estimate:
  method: infonce
  layers_per_task: 1
  settings:
    max_steps: 20
    patience: 1000
"""


@dataclass
class Job:
    """An `ie-flow` process in its own process group; output in files (Ray prints a lot)."""

    popen: subprocess.Popen
    folder: Path

    @property
    def stderr(self) -> str:
        return (self.folder / "stderr").read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return (self.folder / "stdout").read_text(errors="replace")

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"job ran past {timeout} s:\n{self.stderr[-4000:]}")

    def family(self) -> list:
        import psutil

        return [psutil.Process(self.popen.pid), *psutil.Process(self.popen.pid).children(recursive=True)]

    def kill(self) -> None:
        """SIGKILL the job and everything it started (a crash, an OOM kill, a lost node)."""
        if self.popen.poll() is None:
            family = self.family()
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=30)
            stop_processes(family, grace=0)

    def describe(self) -> str:
        return f"exit {self.popen.poll()}\n--- stdout ---\n{self.stdout[-2000:]}\n--- stderr ---\n{self.stderr[-5000:]}"


@pytest.fixture
def start(ie_flow_bin, base_env, tmp_path) -> Iterator[Callable[..., Job]]:
    """start(*args, env=None) -> Job; every job still running at the end is killed with its family."""
    jobs: list[Job] = []

    def run(*args: str, env: dict[str, str] | None = None) -> Job:
        folder = tmp_path / f"job{len(jobs)}"
        folder.mkdir()
        with open(folder / "stdout", "wb") as out, open(folder / "stderr", "wb") as err:
            popen = subprocess.Popen([ie_flow_bin, *args], env=env or base_env(), cwd=folder, stdout=out, stderr=err,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        jobs.append(Job(popen, folder))
        return jobs[-1]

    yield run
    for job in jobs:
        job.kill()


def wait_for(check: Callable[[], object], job: Job, timeout: float = 240, what: str = "") -> None:
    """Poll `check` until it holds; fail if the job ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if job.popen.poll() is not None:
            pytest.fail(f"the job ended before {what}:\n{job.describe()}")
        time.sleep(0.05)
    pytest.fail(f"{what} did not happen within {timeout} s:\n{job.describe()}")


def job_args(model: Path, storage: str, workflow: Path, command: str = "run") -> list[str]:
    return [command, str(workflow), "--model", str(model), "--corpus", "icl-countries", "--samples", str(SAMPLES),
            "--storage", storage, *(["--no-tracking"] if command == "run" else [])]


def files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every data file under root (killed writers' temporary files and
    the summary, which holds timings, left out)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".tmp-" not in p.name and p.name != "summary.json"}


def dataset(root: Path) -> Path:
    found = list(root.glob("activations/*/*"))
    assert len(found) == 1, found
    return found[0]


def results(root: Path) -> Path:
    found = list(root.glob("results/*/*/*"))
    assert len(found) == 1, found
    return found[0]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_markers_honest(folder: Path) -> int:
    """Every stage-1 completion marker names files that exist with the recorded sha256; returns
    how many shards are marked done."""
    markers = sorted((folder / "_done").glob("part-*")) if (folder / "_done").exists() else []
    for marker in markers:
        for rel, info in json.loads(marker.read_text())["files"].items():
            assert (folder / rel).exists(), f"{marker.name} is marked done but {rel} is missing"
            assert sha((folder / rel).read_bytes()) == info["sha256"], f"{marker.name}: {rel} is not what it recorded"
    return len(markers)


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "faults.yaml"
    path.write_text(WORKFLOW)
    return path


@pytest.fixture(scope="module")
def reference(tiny_llama, workflow, cli, tmp_path_factory) -> Path:
    """An uninterrupted job: what every interrupted one must end up equal to."""
    root = tmp_path_factory.mktemp("reference")
    res = cli(*job_args(tiny_llama, str(root), workflow), timeout=400)
    assert res.returncode == 0, res.describe()
    return root


def assert_same_data(root: Path, reference: Path, stage2: bool = True) -> None:
    ours = files(dataset(root))
    theirs = files(dataset(reference))
    ours.pop("_job.json", None), theirs.pop("_job.json", None)
    assert sorted(ours) == sorted(theirs)
    assert len([rel for rel in ours if rel.endswith(".parquet")]) == 3 * SHARDS
    for rel in theirs:
        assert ours[rel] == theirs[rel], f"{rel} differs from the uninterrupted run"
    if stage2:
        ours, theirs = files(results(root)), files(results(reference))
        assert sorted(ours) == sorted(theirs) and "mi.parquet" in ours
        for rel in theirs:
            assert ours[rel] == theirs[rel], f"results {rel} differ from the uninterrupted run"


def worker_pids(job: Job, doing: str = "") -> list[int]:
    """The job's StepWorker actor processes; with doing="run", only those inside a unit group
    (Ray names the process after the call it runs: ray::StepWorker.__init__, ray::StepWorker.run)."""
    import psutil

    pids = []
    for p in job.family():
        try:
            cmdline = p.cmdline()  # read once: a process that exits between two reads has an empty one
            if cmdline and cmdline[0].startswith(f"ray::StepWorker{'.' + doing if doing else ''}"):
                pids.append(p.pid)
        except psutil.Error:
            pass
    return pids


# --- killed workers -------------------------------------------------------------------------------
def test_killed_extraction_actor_job_finishes_with_identical_bytes(tiny_llama, workflow, reference, start, tmp_path):
    root = tmp_path / "data"
    job = start(*job_args(tiny_llama, str(root), workflow, "extract"))
    wait_for(lambda: len(list(root.glob("activations/*/*/_done/part-*"))) >= 2, job, what="two shards done")
    pids = worker_pids(job)
    assert len(pids) == 1, pids  # one model worker on this machine
    os.kill(pids[0], signal.SIGKILL)
    assert job.wait() == 0, job.describe()
    assert "worker died; running it again" in job.stderr, job.describe()
    assert assert_markers_honest(dataset(root)) == SHARDS
    assert_same_data(root, reference, stage2=False)


def test_killed_stage2_worker_group_runs_again(tiny_llama, workflow, reference, start, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(reference / "activations", root / "activations")  # stage 1 done
    job = start(*job_args(tiny_llama, str(root), workflow))
    wait_for(lambda: list(root.glob("results/*/*/*/_lock")) and worker_pids(job, "run"), job, what="a layer group")
    os.kill(worker_pids(job, "run")[0], signal.SIGKILL)
    assert job.wait() == 0, job.describe()
    assert "worker died; running it again" in job.stderr, job.describe()
    assert_same_data(root, reference)


def test_killed_job_in_stage2_rerun_redoes_only_the_unfinished_group(tiny_llama, workflow, reference, start, tmp_path):
    root = tmp_path / "data"
    args = job_args(tiny_llama, str(root), workflow)
    job = start(*args)
    wait_for(lambda: list(root.glob("results/*/*/*/_done/layer=000")), job, what="layer 0 done")
    job.kill()
    out = results(root)
    assert not (out / "_done" / "layer=001").exists() and not (out / "mi.parquet").exists()
    kept = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "_done" / "layer=000", out / "layers" / "layer=000.parquet")}
    rerun = start(*args)
    assert rerun.wait() == 0, rerun.describe()
    assert "stage 2 estimate: 1 of 2 units to do" in rerun.stderr, rerun.describe()
    assert "taking over the lock of a job that is gone" in rerun.stderr  # the killed job's lock
    for path, (mtime, data) in kept.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data, f"{path.name} was redone"
    assert_same_data(root, reference)


# --- SIGTERM and Ctrl-C ---------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["stage 1", "stage 2"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_signal_stops_cleanly_and_the_rerun_resumes(stage, signum, tiny_llama, workflow, reference, start, tmp_path):
    root = tmp_path / "data"
    args = job_args(tiny_llama, str(root), workflow)
    job = start(*args)
    if stage == "stage 1":
        # signal at the first shard: 15 of 16 tiny shards (about a second) are left to be interrupted
        wait_for(lambda: list(root.glob("activations/*/*/_done/part-*")), job, what="a shard done")
    else:
        wait_for(lambda: list(root.glob("results/*/*/*/_lock")) and worker_pids(job, "run"), job, what="stage 2")
    if signum == signal.SIGTERM:
        os.kill(job.popen.pid, signal.SIGTERM)  # what Kubernetes, Slurm and `ray job stop` send
    else:
        os.killpg(job.popen.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    code = job.wait(timeout=60)
    name = signal.Signals(signum).name
    assert code == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum], job.describe()
    stopped = [l for l in job.stderr.splitlines() if l.startswith("stopped")]
    assert stopped == [f"stopped ({name}): finished units are kept; run the same command again to resume"], job.describe()
    assert "Traceback" not in job.stderr and "error:" not in job.stderr, job.describe()
    assert "Fatal Python error" not in job.stderr and "*** SIGTERM" not in job.stderr, job.describe()
    folder = dataset(root)
    done = assert_markers_honest(folder)
    assert not list(root.rglob("_lock")), "a stopped job must release its locks"
    if stage == "stage 1":
        assert done < SHARDS and not (folder / "manifest.json").exists()
    else:
        assert done == SHARDS and not (results(root) / "mi.parquet").exists()
        assert not (results(root) / "_done" / "layer=001").exists()
    rerun = start(*args)
    assert rerun.wait() == 0, rerun.describe()
    assert_same_data(root, reference)


# --- a damaged shard --------------------------------------------------------------------------------
def test_damaged_shard_is_named_by_stage2_and_repair_extracts_only_it(tiny_llama, workflow, reference, cli, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(reference / "activations", root / "activations")
    folder = dataset(root)
    victim = folder / "boundary=001" / "part-00005.parquet"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the Parquet file may even still parse
    victim.write_bytes(bytes(data))
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*.parquet") if "part-00005" not in p.name}

    refused = cli("estimate", str(folder / "manifest.json"), "--estimator", "gaussian", "--no-tracking")
    assert refused.returncode == 2, refused.describe()
    assert len(refused.error_lines()) == 1, refused.describe()
    line = refused.error_lines()[0]
    assert str(victim) in line and "damaged" in line and "--repair" in line, line
    assert "Traceback" not in refused.stderr
    assert not (root / "results").exists() or not list(root.glob("results/*/*/*/_done/*"))

    repaired = cli(*job_args(tiny_llama, str(root), workflow, "extract"), "--repair", "--json")
    assert repaired.returncode == 0, repaired.describe()
    assert "repair: part-00005:" in repaired.stderr and "repair: 1 damaged shard(s) of 16" in repaired.stderr
    assert "1 of 16 units to do" in repaired.stderr, repaired.describe()
    for path, mtime in before.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was extracted again"
    assert_same_data(root, reference, stage2=False)
    assert cli("estimate", str(folder / "manifest.json"), "--estimator", "gaussian", "--no-tracking").returncode == 0


# --- two jobs on one folder -------------------------------------------------------------------------
def test_second_job_on_the_same_folder_is_refused(tiny_llama, workflow, reference, cli, start, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(reference / "activations", root / "activations")
    first = start(*job_args(tiny_llama, str(root), workflow))
    wait_for(lambda: list(root.glob("results/*/*/*/_lock")), first, what="stage 2 of the first job")
    holder = json.loads(next(root.glob("results/*/*/*/_lock")).read_text())
    assert holder["pid"] == first.popen.pid and holder["host"] == socket.gethostname()
    second = cli("estimate", str(dataset(root) / "manifest.json"), "--workflow", str(workflow), "--no-tracking")
    assert first.popen.poll() is None, "the first job ended before the second one asked: make stage 2 longer"
    assert second.returncode == 2, second.describe()
    assert len(second.error_lines()) == 1 and "is in use by another ie-flow job" in second.error_lines()[0]
    assert f"pid {first.popen.pid}" in second.error_lines()[0] and "_lock" in second.error_lines()[0]
    assert first.wait() == 0, first.describe()
    assert_same_data(root, reference)  # the refused job wrote nothing into the folder


def test_stage1_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tiny_llama, workflow, reference, cli, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(reference / "activations", root / "activations")
    folder = dataset(root)
    (folder / "manifest.json").unlink()  # an unfinished extraction: a rerun would write into the folder
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "what": "stage 1", "token": "x"}
    (folder / "_lock").write_text(json.dumps(holder))
    args = job_args(tiny_llama, str(root), workflow, "extract")
    refused = cli(*args)
    assert refused.returncode == 2 and len(refused.error_lines()) == 1, refused.describe()
    assert f"pid {os.getpid()}" in refused.error_lines()[0] and "stage 1" in refused.error_lines()[0]
    assert refused.seconds < 30 and "ray" not in refused.stderr.lower(), refused.describe()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (folder / "_lock").write_text(json.dumps({**holder, "pid": dead.pid}))
    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.describe()
    assert "taking over the lock of a job that is gone" in resumed.stderr
    assert not (folder / "_lock").exists()
    assert_same_data(root, reference, stage2=False)


# --- the S3 endpoint goes down mid-write ---------------------------------------------------------------
def test_s3_down_mid_write_fails_clearly_and_the_rerun_completes(s3_server, tiny_llama, workflow, reference, start,
                                                                 base_env, free_port):
    proxy = TcpProxy(int(s3_server.endpoint.rsplit(":", 1)[1]), free_port()).start()
    prefix = "faults-s3"
    storage = f"s3://{s3_server.bucket}/{prefix}"
    env = base_env(**s3_server.credentials, AWS_ENDPOINT_URL=proxy.url)
    args = job_args(tiny_llama, storage, workflow, "extract")
    try:
        job = start(*args, env=env)
        wait_for(lambda: len([k for k in s3_server.keys(prefix) if "/_done/" in k]) >= 2, job, what="two shards")
        proxy.stop()
        code = job.wait(timeout=180)
        assert code == 1, job.describe()
        errors = [l for l in job.stderr.splitlines() if l.startswith("error:")]
        assert len(errors) == 1 and proxy.url in errors[0], job.describe()
        assert "Traceback" not in job.stderr, job.describe()
        keys = s3_server.keys(prefix)
        assert not [k for k in keys if k.endswith("manifest.json")]
        markers = [k for k in keys if "/_done/" in k]
        assert 2 <= len(markers) < SHARDS
        for key in markers:  # no marker for a shard whose files are not all there
            for rel, info in json.loads(s3_server.get(key))["files"].items():
                assert sha(s3_server.get(key.split("/_done/")[0] + "/" + rel)) == info["sha256"], (key, rel)
        proxy.start()
        rerun = start(*args, env=env)
        assert rerun.wait() == 0, rerun.describe()
    finally:
        proxy.stop()
    keys = s3_server.keys(prefix)
    manifest_key = next(k for k in keys if k.endswith("manifest.json"))
    assert s3_server.get(manifest_key) == (dataset(reference) / "manifest.json").read_bytes()
    base = manifest_key.rsplit("/", 1)[0]
    for rel, data in files(dataset(reference)).items():
        if rel.endswith(".parquet"):
            assert s3_server.get(f"{base}/{rel}") == data, rel
    assert not [k for k in keys if k.endswith("/_lock")]


# --- the MLflow server goes down during the job -------------------------------------------------------
def test_mlflow_down_during_the_job_results_stay_and_relog_logs_once(mlflow_server, tiny_llama, workflow, start,
                                                                     cli, free_port, tmp_path):
    from mlflow import MlflowClient

    proxy = TcpProxy(int(mlflow_server.uri.rsplit(":", 1)[1]), free_port()).start()
    experiment = "faults-mlflow-down"
    root = tmp_path / "data"
    args = [a for a in job_args(tiny_llama, str(root), workflow) if a != "--no-tracking"]
    client = MlflowClient(mlflow_server.uri)
    try:
        job = start(*args, "--tracking-uri", proxy.url, "--experiment", experiment)

        def runs() -> list:
            exp = client.get_experiment_by_name(experiment)
            return client.search_runs([exp.experiment_id]) if exp else []

        wait_for(runs, job, what="the MLflow run to open")
        proxy.stop()  # the server goes away while the job works
        assert job.wait() == 0, job.describe()
        warning = [l for l in job.stderr.splitlines() if l.startswith("warning: could not log to MLflow")]
        assert len(warning) == 1, job.describe()
        summary = json.loads((results(root) / "summary.json").read_text())
        command = warning[0].split("log them later with: ", 1)[1]
        assert command == f"ie-flow report {results(root)} --log --tracking-uri {proxy.url}"
        assert (results(root) / "mi.parquet").exists() and summary["mlflow_run_id"] is None
        (run,) = runs()
        assert run.info.status == "RUNNING"  # the server could not be told; the command finishes it
        proxy.start()
        for _ in range(2):  # logging twice still gives one run with one value per metric step
            relog = cli(*command.split()[1:], "--experiment", experiment)
            assert relog.returncode == 0, relog.describe()
    finally:
        proxy.stop()
    found = runs()
    assert len(found) == 1, [(r.info.run_id, r.info.status, r.info.start_time, r.data.tags) for r in found]
    (run,) = found
    assert run.info.status == "FINISHED" and run.data.tags["results_uri"] == summary["results_uri"]
    assert len(client.get_metric_history(run.info.run_id, "ie_mean")) == 1
    assert json.loads((results(root) / "summary.json").read_text())["mlflow_run_id"] == run.info.run_id
