"""Real Spark engines on 127.0.0.1 for tests: a standalone cluster and a Spark Connect server.

Both are started from the pip ``pyspark`` package (``bin/spark-class`` and ``bin/spark-submit``),
on free ports, and stopped after the test session. Executors run this interpreter and can
import the project's packages from the source tree (``worker_environment``).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlops.local import delta_jars
from support.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_PATHS = (REPO_ROOT / "ml_source", REPO_ROOT / "ml_ops")
HOST = "127.0.0.1"
STARTUP_SECONDS = 120
LOG_TAIL_LINES = 30
CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def worker_environment() -> dict:
    """Variables a Spark process needs so its Python workers use this venv and the source tree."""
    existing = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    paths = [str(path) for path in SOURCE_PATHS if str(path) not in existing] + existing
    return {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
            "PYTHONPATH": os.pathsep.join(paths), "SPARK_HOME": str(spark_home())}


def export_worker_environment():
    """Set worker_environment() in this process, before it starts a JVM (Spark inherits it)."""
    os.environ.update(worker_environment())


def log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log written)"
    return "\n".join(lines[-LOG_TAIL_LINES:]) or "(log is empty)"


class SparkProcess:
    """One JVM process (master, worker or connect server) with its log file."""

    def __init__(self, name: str, command: list, log_path: Path, env: dict):
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as log:
            # A new session, so stop() can end the JVM and the children it forks (Python workers).
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def check_running(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.process.returncode}; last lines of "
                               f"{self.log_path}:\n{log_tail(self.log_path)}")

    def stop(self, timeout_seconds: float = 20.0):
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def wait_until(condition, what: str, processes, timeout_seconds: float = STARTUP_SECONDS):
    """Poll ``condition`` until true; fail with the processes' log tails when one dies or time is up."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        for process in processes:
            process.check_running()
        if condition():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {process.name} ({process.log_path}):\n{log_tail(process.log_path)}"
                      for process in processes)
    raise TimeoutError(f"{what} within {timeout_seconds:g} s\n{tails}")


def _master_state(web_port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{web_port}/json/", timeout=2) as answer:
            return json.loads(answer.read())
    except (OSError, ValueError):
        return {}


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class StandaloneCluster:
    master_url: str
    web_url: str
    log_dir: Path

    def application_names(self) -> list:
        """Names of the applications that ran or run on the cluster, from the master's JSON UI."""
        with urllib.request.urlopen(f"{self.web_url}/json/", timeout=5) as answer:
            state = json.loads(answer.read())
        return [app["name"] for key in ("activeapps", "completedapps") for app in state.get(key, [])]


@dataclass
class ConnectServer:
    remote: str
    log_path: Path


def _spark_env(log_dir: Path, **extra) -> dict:
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **worker_environment(), SPARK_LOG_DIR=str(log_dir),
               SPARK_LOCAL_IP=HOST, SPARK_LOCAL_DIRS=str(log_dir / "local"))
    env.update(extra)
    return env


def start_standalone_cluster(stack: ExitStack, log_dir: Path, workers: int = 2, worker_memory: str = "1g"):
    """A master and ``workers`` workers (1 core each) on 127.0.0.1, stopped when ``stack`` closes."""
    spark_class = str(spark_home() / "bin" / "spark-class")
    env = _spark_env(log_dir)
    master_port, web_port = free_port(), free_port()
    master = SparkProcess("master", [spark_class, "org.apache.spark.deploy.master.Master", "--host", HOST,
                                     "--port", str(master_port), "--webui-port", str(web_port)],
                          log_dir / "master.log", env)
    stack.callback(master.stop)
    master_url = f"spark://{HOST}:{master_port}"
    wait_until(lambda: _master_state(web_port).get("status") == "ALIVE", "the Spark master did not start",
               [master])
    processes = [master]
    for number in range(workers):
        work_dir = log_dir / f"worker-{number}"
        work_dir.mkdir(parents=True, exist_ok=True)
        worker = SparkProcess(
            f"worker-{number}",
            [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", HOST, "--cores", "1",
             "--memory", worker_memory, "--webui-port", str(free_port()), "--work-dir", str(work_dir),
             master_url],
            log_dir / f"worker-{number}.log", env)
        stack.callback(worker.stop)
        processes.append(worker)

    def all_registered():
        alive = [w for w in _master_state(web_port).get("workers", []) if w.get("state") == "ALIVE"]
        return len(alive) == workers

    wait_until(all_registered, f"{workers} workers did not register with the master", processes)
    return StandaloneCluster(master_url=master_url, web_url=f"http://{HOST}:{web_port}", log_dir=log_dir)


def start_connect_server(stack: ExitStack, log_dir: Path, master: str = "local[2]"):
    """A Spark Connect server on a free loopback port, stopped when ``stack`` closes."""
    port = free_port()
    command = [str(spark_home() / "bin" / "spark-submit"), "--class", CONNECT_SERVER_CLASS,
               "--name", "mlops-connect-tests", "--master", master,
               "--conf", f"spark.connect.grpc.binding.address={HOST}",
               "--conf", f"spark.connect.grpc.binding.port={port}",
               "--conf", "spark.ui.enabled=false",
               "--conf", "spark.sql.session.timeZone=UTC",
               "--conf", "spark.sql.shuffle.partitions=4",
               "--conf", "spark.driver.memory=1g"]
    # Delta Lake inside the server, as in every local session: SQL and DataFrame writes reach it.
    for key, value in delta_jars.spark_conf().items():
        command += ["--conf", f"{key}={value}"]
    server = SparkProcess("connect-server", command, log_dir / "connect-server.log",
                          _spark_env(log_dir, SPARK_CONNECT_MODE="0"))
    stack.callback(server.stop)
    wait_until(lambda: _port_answers(port), "the Spark Connect server did not listen", [server])
    return ConnectServer(remote=f"sc://{HOST}:{port}", log_path=server.log_path)


@pytest.fixture(scope="session")
def standalone_cluster(tmp_path_factory):
    """A running standalone cluster: one master, two 1-core workers."""
    with ExitStack() as stack:
        yield start_standalone_cluster(stack, tmp_path_factory.mktemp("spark-cluster"))


@pytest.fixture(scope="session")
def connect_server(tmp_path_factory):
    """A running Spark Connect server (``remote`` is its sc:// URL)."""
    with ExitStack() as stack:
        yield start_connect_server(stack, tmp_path_factory.mktemp("spark-connect"))


# ---------------------------------------------------------------- running the scoring job in its own process

SCORING_JOB = "taxi_fares_batch_scoring"
WHEEL_NAMES = ("taxi_fares-", "taxi_fares_mlops-")


def ensure_wheels() -> Path:
    """``dist/`` with both wheels, which the notebooks' %pip cell installs; built when missing."""
    dist = REPO_ROOT / "dist"

    def complete():
        return all(any(dist.glob(f"{name}*.whl")) for name in WHEEL_NAMES)

    if not complete():
        subprocess.run([sys.executable, "setup.py", "wheels"], cwd=REPO_ROOT, check=True,
                       capture_output=True, timeout=600)
    assert complete(), f"wheels were not built into {dist}"
    return dist


def run_job_process(job_file, home: Path, parameters: dict, extra_env: dict | None = None,
                    timeout_seconds: float = 900) -> subprocess.CompletedProcess:
    """``mlops job run`` in a new interpreter with MLOPS_HOME ``home`` (and its sqlite MLflow store)."""
    env = dict(os.environ, **worker_environment(), MLOPS_HOME=str(home), **(extra_env or {}))
    for variable in ("MLFLOW_TRACKING_URI", "SPARK_REMOTE", "MLOPS_SPARK_MASTER"):
        if variable not in (extra_env or {}):
            env.pop(variable, None)
    return subprocess.run(job_command(job_file, parameters), cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout_seconds)


def job_command(job, parameters: dict) -> list:
    """``mlops job run`` of a bundle job in the dev target (run from the repository) or of a JSON job file."""
    command = [sys.executable, "-m", "mlops", "job", "run", str(job)]
    if not str(job).endswith(".json"):
        command += ["--target", "dev"]
    for name, value in parameters.items():
        command += ["-p", f"{name}={value}"]
    return command


def new_scoring_home(spark, tmp_path_factory, folder: str, rows: int, start, end, model_name: str):
    """A fresh MLOPS_HOME with raw trips and a Champion, plus the job parameters to score it."""
    export_worker_environment()
    ensure_wheels()
    home = tmp_path_factory.mktemp(folder)
    return home, prepare_scoring_home(spark, home, rows, start, end, model_name)


def prepare_scoring_home(spark, home: Path, rows: int, start, end, model_name: str, seed: int = 5) -> dict:
    """Raw trips under ``home``'s DBFS and a LightGBM model registered there with alias Champion.

    Returns job parameters that point the scoring job at them.
    """
    import mlflow
    from taxi_fares import features, training
    from taxi_fares.data import generate_trips

    raw_uri = "dbfs:/raw/trips"
    raw_path = home / "dbfs" / "raw" / "trips"
    generate_trips(spark, rows, start, end, seed=seed).write.mode("overwrite").parquet(str(raw_path))
    trips = features.clean_trips(spark.read.parquet(str(raw_path)))
    frame = features.build_training_set(trips, features.pickup_zip_features(trips),
                                        features.dropoff_zip_features(trips)).toPandas()
    booster = training.train_model(frame[list(features.FEATURE_COLUMNS)], frame[features.LABEL_COLUMN],
                                   training.TrainingParams(num_rounds=30, num_leaves=15))
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        experiment = client.create_experiment("training", artifact_location=(home / "mlartifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.lightgbm.log_model(
                booster, name="model", registered_model_name=model_name,
                pip_requirements=mlflow.lightgbm.get_default_pip_requirements())
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    client.set_model_version_tag(model_name, str(info.registered_model_version), "model_validation_status",
                                 "PASSED")
    client.set_registered_model_alias(model_name, "Champion", str(info.registered_model_version))
    return {"taxi_fares_raw_data": raw_uri, "registered_model_name": model_name, "registry_uri": "",
            "scoring_data_start_date": str(start), "scoring_data_end_date": str(end),
            "experiment_name": "scoring"}
