"""Real services for the integration tier: an S3 server (moto's server mode), an MLflow tracking
server, a two-node Ray cluster on loopback with token authentication, headless Chromium.

Every service runs as its own process (group), is polled until it answers (bounded timeouts), and
is stopped by its fixture. Processes are stopped by id - never `ray stop` or `pkill`, which would
also end other people's Ray or servers on a shared machine.

The `ie-flow` CLI is run in subprocesses (`cli` fixture) with a clean environment: dummy AWS
credentials only where a test asks for them, no inherited RAY_ADDRESS / endpoints / tracking URI."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from processes import stop_processes

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
IE_FLOW = str(VENV_BIN / "ie-flow") if (VENV_BIN / "ie-flow").exists() else shutil.which("ie-flow") or "ie-flow"
ARTIFACTS = REPO / "test-artifacts"

# Distinctive dummy credentials: tests grep manifests, summaries and logs for them.
AWS_KEY_ID = "AKIAIEFLOWTEST000001"
AWS_SECRET = "ieflow-test-secret-must-never-be-written"
BUCKET = "ie-flow-it"

# variables that would make a subprocess talk to something other than what the test started
_HERMETIC_DROP = (
    "RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "IE_FLOW_S3_ENDPOINT",
    "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "IE_FLOW_DEBUG",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the Ray-cluster tests last: the cluster's two nodes are the heaviest processes of the tier,
    and the other tests' local Ray runtimes then never share the machine with it."""
    items.sort(key=lambda item: "ray_cluster" in getattr(item, "fixturenames", ()))


# --- small helpers --------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], Any], timeout: float, what: str, proc: "Service | None" = None,
               interval: float = 0.25) -> Any:
    """Poll `check` until it returns a truthy value (returned) or `timeout` seconds pass (fail)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.popen.returncode}\n{proc.log_tail()}")
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - not ready yet
            last = e
        time.sleep(interval)
    tail = proc.log_tail() if proc is not None else ""
    pytest.fail(f"{what} not ready after {timeout:.0f} s (last error: {last!r})\n{tail}")


def http_ok(url: str, timeout: float = 3.0) -> bool:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return 200 <= r.status < 300


def base_env(**extra: str) -> dict[str, str]:
    """The environment of every subprocess: this one minus anything pointing at other services."""
    env = {k: v for k, v in os.environ.items() if k not in _HERMETIC_DROP}
    env.update({
        "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    env.update(extra)
    return env


def kill_tree(pids: list[int], match: Callable[[str], bool] | None = None, grace: float = 5.0) -> None:
    """Stop processes by id, with their descendants, plus (with `match`) every process with a command
    line argument that `match` accepts (Ray's daemons re-parent to init). SIGTERM, then SIGKILL."""
    import psutil

    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    procs: dict[int, psutil.Process] = {}
    roots: list[psutil.Process] = []
    for pid in pids:
        try:
            roots.append(psutil.Process(pid))
        except psutil.Error:
            pass
    if match:
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if p.pid not in me and any(match(arg) for arg in (p.info["cmdline"] or ())):
                    roots.append(p)
            except psutil.Error:
                pass
    for root in roots:
        procs[root.pid] = root
        try:
            procs.update({c.pid: c for c in root.children(recursive=True)})
        except psutil.Error:
            pass
    for pid in me:
        procs.pop(pid, None)
    stop_processes(list(procs.values()), grace)


@dataclass
class Service:
    """A server process in its own process group, its output in a log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, name: str, cmd: list[str], env: dict[str, str], cwd: Path, log_dir: Path) -> "Service":
        log = log_dir / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        return cls(name, popen, log)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return f"--- {self.name} log ({self.log}) ---\n" + self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL whatever of the server's process tree is left
        (children that moved to another group included: they were listed before the signal)."""
        import psutil

        try:
            family = [psutil.Process(self.popen.pid), *psutil.Process(self.popen.pid).children(recursive=True)]
        except psutil.Error:
            family = []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(family, timeout=15)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=15)


@pytest.fixture(scope="session", name="base_env")
def base_env_fixture() -> Callable[..., dict[str, str]]:
    """base_env(**extra): a clean subprocess environment (see base_env)."""
    return base_env


@pytest.fixture(scope="session")
def test_artifacts() -> Path:
    """test-artifacts/ at the repository root: files a test keeps for people (screenshots)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def ie_flow_bin() -> str:
    """The `ie-flow` executable of this environment."""
    return IE_FLOW


@pytest.fixture(scope="session", name="free_port")
def free_port_fixture() -> Callable[[], int]:
    """free_port(): a TCP port on loopback that nothing listens on (also: a closed port for 'down')."""
    return free_port


@pytest.fixture(scope="session")
def service_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


# --- the ie-flow CLI ------------------------------------------------------------------------------
@dataclass
class CliResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def json(self) -> dict[str, Any]:
        import json

        assert self.returncode == 0, self.describe()
        lines = [l for l in self.stdout.splitlines() if l.strip()]
        assert len(lines) == 1, f"--json must print exactly one line on stdout:\n{self.describe()}"
        return json.loads(lines[0])

    def error_lines(self) -> list[str]:
        return [l for l in self.stderr.splitlines() if l.startswith("error")]

    def describe(self) -> str:
        return (f"$ ie-flow {' '.join(self.args)}\nexit {self.returncode} after {self.seconds:.1f} s\n"
                f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-6000:]}")


@pytest.fixture(scope="session")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., CliResult]:
    """cli(*args, env=None, timeout=300, cwd=None) -> CliResult; runs `ie-flow` in a subprocess
    (its own process group, killed whole on timeout)."""
    default_cwd = tmp_path_factory.mktemp("cli-cwd")  # defaults (./ie-flow-data, mlflow.db) land here

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None) -> CliResult:
        t0 = time.monotonic()
        proc = subprocess.Popen([IE_FLOW, *args], env=env or base_env(), cwd=cwd or default_cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree([proc.pid], grace=5)
            out, err = proc.communicate()
            pytest.fail(f"ie-flow {' '.join(args)} ran past {timeout} s\n{err[-6000:]}")
        return CliResult(list(args), proc.returncode, out, err, time.monotonic() - t0)

    return run


# --- S3: moto's server mode -----------------------------------------------------------------------
@dataclass
class S3Server:
    endpoint: str
    bucket: str
    env: dict[str, str]  # credentials (dummy) + endpoint, for subprocesses that talk to it
    service: Service = field(repr=False)
    key_id: str = AWS_KEY_ID
    secret: str = AWS_SECRET

    @property
    def credentials(self) -> dict[str, str]:
        """The credentials alone (endpoint given some other way)."""
        return {k: v for k, v in self.env.items() if k != "AWS_ENDPOINT_URL"}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=AWS_KEY_ID,
                            aws_secret_access_key=AWS_SECRET, region_name="us-east-1")

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()


@pytest.fixture(scope="session")
def s3_server(service_dir: Path) -> Iterator[S3Server]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    creds = {"AWS_ACCESS_KEY_ID": AWS_KEY_ID, "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    svc = Service.start("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                        base_env(**creds), service_dir, service_dir)
    try:
        wait_until(lambda: http_ok(f"{endpoint}/moto-api/"), 60, "moto S3 server", svc)
        server = S3Server(endpoint, BUCKET, {**creds, "AWS_ENDPOINT_URL": endpoint}, svc)
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        svc.stop()


@pytest.fixture
def s3_credentials(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server's (dummy) credentials in this process's environment, for in-process reads
    (ie_flow.storage.Storage, s3fs); the endpoint is passed explicitly."""
    for k, v in s3_server.credentials.items():
        monkeypatch.setenv(k, v)
    return s3_server


# --- MLflow tracking server -----------------------------------------------------------------------
@dataclass
class MlflowServer:
    uri: str
    artifacts: str  # where the server keeps artifacts (s3://...)
    service: Service = field(repr=False)


@contextlib.contextmanager
def mlflow_service(s3_server: S3Server, folder: Path, log_dir: Path, *extra: str) -> Iterator[MlflowServer]:
    """`mlflow server` on loopback: SQLite backend store, artifacts proxied to the S3 server;
    `extra` are more server options (e.g. --allowed-hosts)."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    folder.mkdir()
    artifacts = f"s3://{s3_server.bucket}/mlflow-artifacts"
    # no background job runner (GenAI evaluation jobs; eight extra processes on a 2-core machine)
    env = base_env(**s3_server.env, MLFLOW_S3_ENDPOINT_URL=s3_server.endpoint,
                   MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    svc = Service.start(folder.name, [
        str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", artifacts, *extra,
    ], env, folder, log_dir)
    try:
        wait_until(lambda: http_ok(f"{uri}/health"), 180, "mlflow server", svc, interval=0.5)
        yield MlflowServer(uri, artifacts, svc)
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def mlflow_server(s3_server: S3Server, service_dir: Path) -> Iterator[MlflowServer]:
    """The session's `mlflow server` (see mlflow_service)."""
    with mlflow_service(s3_server, service_dir / "mlflow", service_dir) as server:
        yield server


@pytest.fixture
def mlflow_server_for_other_hosts(s3_server: S3Server, service_dir: Path) -> Iterator[MlflowServer]:
    """An `mlflow server` started for the host name `mlflow.internal` only, as a Kubernetes or compose
    deployment is: MLflow >= 3.5 answers /health to anyone and refuses API calls with Host 127.0.0.1."""
    with mlflow_service(s3_server, service_dir / "mlflow-other-hosts", service_dir,
                        "--allowed-hosts", "mlflow.internal,mlflow.internal:*") as server:
        yield server


@dataclass
class MlflowRun:
    """One small `ie-flow run --json` logged to the session's MLflow server."""

    result: dict[str, Any]
    experiment: str
    storage: Path
    cli: CliResult


@pytest.fixture(scope="session")
def mlflow_run(mlflow_server: MlflowServer, tiny_llama: Path, cli: Callable[..., CliResult],
               tmp_path_factory: pytest.TempPathFactory) -> MlflowRun:
    storage = tmp_path_factory.mktemp("mlflow-run-storage")
    experiment = "ie-flow-integration"
    res = cli("run", "--model", str(tiny_llama), "--corpus", "icl-countries", "--samples", "512",
              "--estimator", "gaussian", "--seeds", "0,1", "--storage", str(storage),
              "--tracking-uri", mlflow_server.uri, "--experiment", experiment, "--json", timeout=400)
    assert res.returncode == 0, res.describe()
    return MlflowRun(res.json(), experiment, storage, res)


# --- Ray cluster: head + one worker on loopback, token authentication ------------------------------
@dataclass
class RayCluster:
    address: str  # Jobs API / dashboard: http://127.0.0.1:PORT
    gcs_address: str  # 127.0.0.1:PORT (ray start --address)
    env: dict[str, str]  # what a client needs: RAY_AUTH_MODE=token, RAY_AUTH_TOKEN
    temp_dir: Path
    log_dir: Path


def _ray_start(args: list[str], env: dict[str, str], cwd: Path, log: Path, timeout: float = 180) -> None:
    """`ray start` returns once its daemons run; they outlive it (stopped by kill_tree)."""
    with open(log, "ab") as out:
        out.write(f"$ ray start {' '.join(args)}\n".encode())
        out.flush()
        proc = subprocess.run([str(VENV_BIN / "ray"), "start", *args], env=env, cwd=cwd, stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"ray start {' '.join(args)} failed ({proc.returncode}):\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def ray_cluster(s3_server: S3Server, service_dir: Path) -> Iterator[RayCluster]:
    """Head and one worker node (`ray start`, --num-cpus=1 each) on 127.0.0.1 with token auth.

    The cluster's processes get what a real deployment would give its nodes: the S3 credentials
    and endpoint, the virtualenv on PATH, and the cluster token. Ray writes its session under a
    private --temp-dir, so a plain `ray.init()` elsewhere never attaches to this cluster, and
    teardown stops exactly these processes (found by that folder and the GCS port)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rit-", dir="/tmp"))  # short: Ray's unix socket paths
    cwd = service_dir / "ray-cwd"  # not /tmp: a `ray` folder in a driver's cwd shadows the package
    cwd.mkdir(exist_ok=True)
    log = service_dir / "ray-start.log"
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # this cluster's own token
    env = base_env(**s3_server.env, **auth)
    gcs_port, dash_port, client_port = free_port(), free_port(), free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", f"--temp-dir={temp_dir}",
              "--object-store-memory=200000000", "--disable-usage-stats"]
    gcs = f"127.0.0.1:{gcs_port}"
    try:
        _ray_start(["--head", f"--port={gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
                    f"--ray-client-server-port={client_port}", f"--dashboard-agent-listen-port={free_port()}",
                    *common], env, cwd, log)
        _ray_start([f"--address={gcs}", f"--dashboard-agent-listen-port={free_port()}", *common], env, cwd, log)
        address = f"http://127.0.0.1:{dash_port}"

        def two_nodes_alive() -> bool:
            import json

            req = urllib.request.Request(f"{address}/nodes?view=summary",
                                         headers={"Authorization": f"Bearer {auth['RAY_AUTH_TOKEN']}"})
            with urllib.request.urlopen(req, timeout=5) as r:
                body = json.loads(r.read())
            nodes = body["data"]["summary"]
            return sum(1 for n in nodes if n["raylet"]["state"] == "ALIVE") == 2

        wait_until(two_nodes_alive, 120, "two-node Ray cluster (dashboard)", interval=1)
        yield RayCluster(address, gcs, base_env(**auth), temp_dir, log.parent)
    finally:
        # this cluster's processes: they name its session folder or its GCS address (host:port)
        kill_tree([], match=lambda arg: str(temp_dir) in arg or arg.endswith(f":{gcs_port}"))
        shutil.rmtree(temp_dir, ignore_errors=True)


# --- headless Chromium ---------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    """A Selenium driver for Debian's headless Chromium, with a fresh profile."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("chromium / chromedriver not installed (Debian: apt-get install chromium chromium-driver; "
                    "`make system-deps`)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
                 "--disable-dev-shm-usage", "--window-size=1600,1200", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    service = DriverService(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
