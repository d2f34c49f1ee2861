"""The platform seam: the one place that knows Databricks from local.

Everything that differs between a Databricks cluster and a laptop is answered by one
platform object (:mod:`mlops.platform.platforms`), chosen by :func:`current`: where a URI is
for the driver and for Spark, which job run a notebook belongs to, where tables, the MLflow
store and telemetry files live by default. The functions here ask that object. The local
runtime (``mlops.local``) plugs in by binding its run context
(:func:`mlops.platform.context.bind`); nothing here imports it.
"""
import contextlib
import os
from pathlib import Path

from mlops.errors import ConfigError
from mlops.platform import context, home, paths
from mlops.platform.platforms import DatabricksPlatform, LocalPlatform, Platform, TableTarget

RUNTIME_VERSION_ENV = "DATABRICKS_RUNTIME_VERSION"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"

_PLATFORMS = {paths.DATABRICKS: DatabricksPlatform(), paths.LOCAL: LocalPlatform()}

__all__ = ["Platform", "TableTarget", "current", "name", "locate", "driver_path", "spark_path",
           "run_context", "default_tracking_uri", "mlflow_store_environment", "local_artifact_root",
           "table_target", "telemetry_file", "named_lock"]


def name() -> str:
    """``databricks`` on a Databricks cluster, else ``local``."""
    return paths.DATABRICKS if RUNTIME_VERSION_ENV in os.environ else paths.LOCAL


def current() -> Platform:
    """The platform this process runs on."""
    return _PLATFORMS[name()]


def locate(uri) -> paths.Location:
    """``uri`` resolved for this platform (see :mod:`mlops.platform.paths`)."""
    return current().locate(uri)


def driver_path(uri) -> Path:
    """A path the driver can open with plain file I/O; cloud storage has none."""
    location = locate(uri)
    if location.driver is None:
        raise ConfigError(f"'{uri}' is cloud storage with no driver path; read it with Spark, "
                          "or use a dbfs:/ or /Volumes/ location")
    return location.driver


def spark_path(uri) -> str:
    """The path to hand to Spark."""
    return locate(uri).spark


def run_context(dbutils, task: str) -> context.RunContext:
    """The job run of the running notebook task."""
    return current().run_context(dbutils, task)


def default_tracking_uri() -> str:
    """Where MLflow tracks when MLFLOW_TRACKING_URI is not set."""
    return current().default_tracking_uri()


@contextlib.contextmanager
def mlflow_store_environment():
    """MLFLOW_TRACKING_URI set to this platform's store for the block, unless already set.

    Every MLflow call of a command, including those that take no URI (a ``models:/`` download,
    ``mlflow.start_run``), then reads and writes the same store, and nothing lands in the
    working directory.
    """
    if os.environ.get(TRACKING_URI_ENV):
        yield os.environ[TRACKING_URI_ENV]
        return
    os.environ[TRACKING_URI_ENV] = default_tracking_uri()
    try:
        yield os.environ[TRACKING_URI_ENV]
    finally:
        os.environ.pop(TRACKING_URI_ENV, None)


def local_artifact_root() -> Path:
    """Artifact root for experiments created against a local (sqlite or file) tracking store."""
    return home.mlflow_artifact_root()


def table_target(location: str, table: str) -> TableTarget:
    """Table ``table`` of ``table_location``: a Unity Catalog table on Databricks, a folder locally."""
    return current().table_target(location, table)


def telemetry_file(job_run_id: str, task: str) -> Path:
    """The JSON-lines file a task's telemetry goes to when there is no connection string."""
    return current().telemetry_file(job_run_id, task)


def named_lock(name: str):
    """An exclusive lock that local processes share; on Databricks, where runs share no disk, none."""
    return current().named_lock(name)
