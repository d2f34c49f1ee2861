"""The platform seam: the one place that knows Databricks from local.

Everything that differs between a Databricks cluster and a laptop is answered here: where a
URI is for the driver and for Spark, which job run a notebook belongs to, where tables,
the MLflow store and telemetry files live by default. The local runtime (``mlops.local``)
plugs in by binding its run context (:func:`mlops.platform.context.bind`); nothing here
imports it.
"""
import contextlib
import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Optional

from mlops.errors import ConfigError
from mlops.platform import catalog, context, home, locks, paths

RUNTIME_VERSION_ENV = "DATABRICKS_RUNTIME_VERSION"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
TABLE_FORMATS = ("auto", "parquet", "delta")


def name() -> str:
    """``databricks`` on a Databricks cluster, else ``local``."""
    return paths.DATABRICKS if RUNTIME_VERSION_ENV in os.environ else paths.LOCAL


def on_databricks() -> bool:
    return name() == paths.DATABRICKS


def _local_root(mount: str) -> Path:
    return home.dbfs_root() if mount == "dbfs" else home.mount_root(mount)


def locate(uri) -> paths.Location:
    """``uri`` resolved for this platform (see :mod:`mlops.platform.paths`)."""
    return paths.resolve(uri, name(), _local_root)


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
    if on_databricks():
        return context.databricks_run_context(dbutils, task)
    return context.local_run_context(task)


def default_tracking_uri() -> str:
    """Where MLflow tracks when MLFLOW_TRACKING_URI is not set."""
    return "databricks" if on_databricks() else home.mlflow_tracking_uri()


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


def table_format(requested: str) -> str:
    """``auto`` is Delta: Spark's own on Databricks, committed through delta-rs locally."""
    if requested not in TABLE_FORMATS:
        raise ConfigError(f"parameter 'table_format' must be one of {', '.join(TABLE_FORMATS)}, "
                          f"got {requested!r}")
    return "delta" if requested == "auto" else requested


def spark_has_delta() -> bool:
    """Databricks Runtime ships Delta Lake. Locally Spark has no Delta jars (Maven is out of reach),
    so ``mlops.data.delta_log`` commits the Parquet files Spark writes, through delta-rs."""
    return on_databricks()


def table_uri(location: str, table: str) -> str:
    """The URI of table ``table`` under ``table_location``."""
    return f"{location.rstrip('/')}/{table}"


@dataclasses.dataclass(frozen=True)
class TableTarget:
    """Where one table lives: a name the catalog manages, or a folder."""

    shown: str
    catalog_name: Optional[str] = None
    path: Optional[str] = None


def table_target(location: str, table: str) -> TableTarget:
    """Table ``table`` of ``table_location``.

    Under ``catalog.schema`` it is the Unity Catalog table ``catalog.schema.table`` on
    Databricks, and the folder ``$MLOPS_HOME/tables/<catalog>/<schema>/<table>`` locally.
    """
    location = catalog.check_location(location)
    if not catalog.is_schema(location):
        uri = table_uri(location, table)
        return TableTarget(shown=uri, path=uri)
    name = catalog.qualified_name(location, table)
    if on_databricks():
        return TableTarget(shown=name, catalog_name=name)
    folder = home.tables_dir().joinpath(*name.split("."))
    return TableTarget(shown=f"{name} ({folder})", path=str(folder))


def telemetry_file(job_run_id: str, task: str) -> Path:
    """The JSON-lines file a task's telemetry goes to when there is no connection string."""
    if on_databricks():
        return Path(tempfile.gettempdir()) / "mlops-telemetry" / f"{job_run_id}-{task}.jsonl"
    return home.runs_dir() / job_run_id / f"telemetry-{task}.jsonl"


def named_lock(name: str):
    """An exclusive lock that local processes share; on Databricks, where runs share no disk, none.

    The workspace registry offers no lock either: on Databricks a Champion move checks the
    Champion just before moving it and reads it back after (see ``RegistryClient.move_champion``).
    """
    if on_databricks():
        return contextlib.nullcontext(True)
    return locks.file_lock(locks.lock_path(home.mount_root("locks"), name))
