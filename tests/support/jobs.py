"""Running the real jobs in tests: a fresh MLOPS_HOME with raw trips, small parameters, and
``mlops job run`` as a subprocess, plus readers for what a run leaves behind.

Raw trips are generated once per test session (``training_trips`` fixture) and copied into
each home, so every test starts from its own empty MLflow store and table location. Import
the fixture with ``from support.jobs import training_trips  # noqa: F401``.
"""
import contextlib
import datetime
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from support.spark_cluster import REPO_ROOT, ensure_wheels, job_command, worker_environment

# The bundle's jobs run in the dev target, with the parameters below over its values.
TRAINING_JOB = "taxi_fares_training"
TARGET = "dev"
TRAINING_START, TRAINING_END = datetime.date(2016, 1, 1), datetime.date(2016, 1, 31)
RAW_TRIPS_URI = "dbfs:/raw/trips"
# Variables that would point a job away from its own MLOPS_HOME, Spark or telemetry sink.
_OUTSIDE_ENVIRONMENT = ("MLFLOW_TRACKING_URI", "SPARK_REMOTE", "MLOPS_SPARK_MASTER",
                        "APPLICATIONINSIGHTS_CONNECTION_STRING")


def dbfs_path(home: Path, uri: str) -> Path:
    """Where the local runtime keeps ``dbfs:/...`` for MLOPS_HOME ``home``."""
    return home / "dbfs" / uri.removeprefix("dbfs:/")


def write_raw_trips(spark, path: Path, rows: int, seed: int = 0, start=TRAINING_START, end=TRAINING_END):
    """Synthetic raw trips in the public dataset's schema, as Parquet at ``path``."""
    from taxi_fares.data import generate_trips

    generate_trips(spark, rows, start, end, seed=seed).write.mode("overwrite").parquet(str(path))
    return path


@pytest.fixture(scope="session")
def training_trips(spark, tmp_path_factory) -> Path:
    """~15k January 2016 trips (Parquet), generated once; copy them with :func:`new_home`."""
    ensure_wheels()
    return write_raw_trips(spark, tmp_path_factory.mktemp("raw") / "trips", 15_000)


def new_home(root: Path, raw_trips: Path | None = None) -> Path:
    """An empty MLOPS_HOME under ``root``, with ``raw_trips`` copied to ``RAW_TRIPS_URI`` when given."""
    home = root / "mlops_home"
    home.mkdir(parents=True)
    if raw_trips is not None:
        shutil.copytree(raw_trips, dbfs_path(home, RAW_TRIPS_URI))
    return home


@contextlib.contextmanager
def in_process_home(tmp_path_factory, name: str):
    """A fresh MLOPS_HOME for jobs run in this process (``run_job``), with no outside store or sink."""
    ensure_wheels()
    home = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(home))
        for variable in ("MLFLOW_TRACKING_URI", "APPLICATIONINSIGHTS_CONNECTION_STRING"):
            patch.delenv(variable, raising=False)
        yield home


def training_parameters(**overrides) -> dict:
    """Training-job parameters for the small data of :func:`new_home`: a model trains in seconds."""
    parameters = {
        "wheel_path": str(REPO_ROOT / "dist"), "taxi_fares_raw_data": RAW_TRIPS_URI,
        "table_location": "dbfs:/tables", "experiment_name": "/Shared/taxi_fares_tests",
        "registered_model_name": "taxi_fares", "registry_uri": "",
        "training_data_start_date": str(TRAINING_START),
        "training_data_end_date": str(TRAINING_END), "training_num_rounds": "15",
        # Long trips are rare in the synthetic data, so their rmse is several times the overall
        # one; the default factor of 2 would fail every small model.
        "validation_slice_factor": "6",
    }
    return {**parameters, **overrides}


def job_environment(home: Path, extra_env: dict | None = None) -> dict:
    """This process's environment for a job on ``home``; ``extra_env`` may set anything back."""
    env = dict(os.environ, **worker_environment(), MLOPS_HOME=str(home))
    for variable in _OUTSIDE_ENVIRONMENT:
        env.pop(variable, None)
    env.update(extra_env or {})
    return env


def bundle_job(key: str):
    """Job ``key`` of the repository's bundle in the dev target, for ``run_job`` in this process."""
    from mlops.local.job_file import bundle_job as load

    return load(key, TARGET, root=REPO_ROOT)


def run_job_process(job_file, home: Path, parameters: dict, extra_env: dict | None = None,
                    timeout_seconds: float = 900) -> subprocess.CompletedProcess:
    """``mlops job run`` in a new interpreter with MLOPS_HOME ``home`` (and its sqlite MLflow store)."""
    return subprocess.run(job_command(job_file, parameters), cwd=REPO_ROOT,
                          env=job_environment(home, extra_env), capture_output=True, text=True,
                          timeout=timeout_seconds)


def start_job_process(job_file, home: Path, parameters: dict, stdout, stderr,
                      extra_env: dict | None = None) -> subprocess.Popen:
    """:func:`run_job_process` without waiting; output goes to the given files.

    The job gets its own process group, so :func:`stop_process_group` also ends its Spark JVM.
    """
    return subprocess.Popen(job_command(job_file, parameters), cwd=REPO_ROOT,
                            env=job_environment(home, extra_env), stdout=stdout, stderr=stderr,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)


def stop_process_group(process: subprocess.Popen, timeout_seconds: float = 20.0):
    """End ``process`` and the processes it started (it must lead its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout_seconds)


def run_records(home: Path) -> list[dict]:
    """Every run record under ``home``, oldest first."""
    return [json.loads(path.read_text(encoding="utf-8"))
            for path in sorted((home / "runs").glob("*.json"))]


def only_run_record(home: Path) -> dict:
    records = run_records(home)
    assert len(records) == 1, f"expected one job run in {home}, found {len(records)}"
    return records[0]


def task_states(record: dict) -> dict:
    return {key: entry["state"] for key, entry in record["tasks"].items()}


def telemetry_items(home: Path, run_id: str, task: str) -> list[dict]:
    """The items of a task's JSONL telemetry file (written when no connection string is set)."""
    path = home / "runs" / run_id / f"telemetry-{task}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def home_tracking_uri(home: Path) -> str:
    """The sqlite MLflow store the local runtime uses for ``home``."""
    return f"sqlite:///{home / 'mlflow.db'}"


def mlflow_runs(tracking_uri: str) -> list:
    """Every MLflow run of every experiment in the store, task runs of the job included."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    return list(client.search_runs(experiment_ids)) if experiment_ids else []


def task_mlflow_run(tracking_uri: str, task: str):
    """The one MLflow run that task ``task`` opened in the store."""
    runs = [run for run in mlflow_runs(tracking_uri) if run.data.tags.get("task") == task]
    assert len(runs) == 1, f"expected one MLflow run of task {task}, found {len(runs)}"
    return runs[0]


def job_settings_with_absolute_paths(key: str) -> dict:
    """Job ``key`` of the bundle (dev target) as JSON job settings that can live in any folder."""
    from mlops.local.bundle import load_bundle

    bundle = load_bundle(REPO_ROOT, TARGET)
    settings = {"name": key, **bundle.job_settings(key)}
    folder = bundle.source("jobs", key).parent
    for task in settings["tasks"]:
        if "notebook_task" in task:
            notebook = folder / task["notebook_task"]["notebook_path"]
            task["notebook_task"]["notebook_path"] = str(notebook.resolve())
    return settings
