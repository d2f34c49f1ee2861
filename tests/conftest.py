"""Shared fixtures: one local Spark session and a real MLflow store per test."""
import os

import pytest

# As in every mlops command: MLflow's sqlite stores keep their artifact root in MLOPS_HOME, not ./mlruns.
import mlops.lifecycle.tracking  # noqa: F401
from support.spark_cluster import export_worker_environment

# Before any fixture starts a JVM: Python workers use this venv and import the source tree.
export_worker_environment()
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    from mlops.local import delta_jars

    builder = SparkSession.builder
    for key, value in delta_jars.spark_conf().items():
        builder = builder.config(key, value)
    session = (
        builder.master("local[2]")
        .appName("mlops-tests")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.fixture
def mlops_home(tmp_path, monkeypatch):
    """An empty MLOPS_HOME with its own sqlite MLflow store."""
    home = tmp_path / "mlops_home"
    home.mkdir()
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    return home


@pytest.fixture
def mlflow_tracking(tmp_path, monkeypatch):
    """Point MLflow at a fresh sqlite store, the real backend, not a mock."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
