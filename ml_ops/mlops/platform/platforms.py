"""The two platforms a task runs on, behind one protocol: Databricks and a laptop.

A platform object owns what differs between them: where a URI is for the driver and for
Spark, the run context, the MLflow store, secrets, locks, and the identifier Spark SQL uses
for a table. Code asks the object (see :func:`mlops.platform.current`), never which one it is.

Tables are Delta on both. On Databricks a table under a Unity Catalog schema is the managed
table ``catalog.schema.table``; locally it is the path identifier
``delta.`$MLOPS_HOME/tables/<catalog>/<schema>/<table>```. Path identifiers need no
metastore: Spark's local metastore (Derby) admits one process at a time, while local jobs
run in several.
"""
import contextlib
import dataclasses
import tempfile
from pathlib import Path
from typing import Optional, Protocol

from mlops.platform import catalog, context, home, locks, paths, secrets


@dataclasses.dataclass(frozen=True)
class TableTarget:
    """One table: the identifier Spark SQL names it by, how messages show it, and its folder if any."""

    identifier: str
    shown: str
    path: Optional[str] = None


class Platform(Protocol):
    name: str

    def locate(self, uri) -> paths.Location: ...

    def run_context(self, dbutils, task: str) -> context.RunContext: ...

    def default_tracking_uri(self) -> str: ...

    def registry_store(self, registry_uri: str, tracking_uri: str) -> str: ...

    def table_target(self, location: str, table: str) -> TableTarget: ...

    def primary_key_statements(self, target: TableTarget, columns, timeseries: str) -> list: ...

    def telemetry_file(self, job_run_id: str, task: str) -> Path: ...

    def named_lock(self, name: str): ...

    def read_secret(self, dbutils, scope: str, key: str, env_var: str, parameters: tuple): ...

    def file_stream_reader(self, spark, schema, schema_location: str): ...

    def serving_client(self): ...


UNITY_CATALOG_REGISTRY = "databricks-uc"


def path_identifier(spark_path: str) -> str:
    """The Spark SQL identifier of the Delta table in folder ``spark_path``."""
    return "delta.`{}`".format(spark_path.replace("`", "``"))


class _Shared:
    name = ""

    def locate(self, uri) -> paths.Location:
        return paths.resolve(uri, self.name, _local_root)

    def read_secret(self, dbutils, scope: str, key: str, env_var: str, parameters: tuple):
        return secrets.read_secret(dbutils, scope, key, env_var, parameters)

    def _folder_target(self, location: str, table: str) -> TableTarget:
        uri = f"{location.rstrip('/')}/{table}"
        return TableTarget(identifier=path_identifier(self.locate(uri).spark), shown=uri, path=uri)


class DatabricksPlatform(_Shared):
    name = paths.DATABRICKS

    def run_context(self, dbutils, task: str) -> context.RunContext:
        return context.databricks_run_context(dbutils, task)

    def default_tracking_uri(self) -> str:
        return "databricks"

    def registry_store(self, registry_uri: str, tracking_uri: str) -> str:
        return registry_uri or tracking_uri

    def table_target(self, location: str, table: str) -> TableTarget:
        location = catalog.check_location(location)
        if not catalog.is_schema(location):
            return self._folder_target(location, table)
        name = catalog.qualified_name(location, table)
        return TableTarget(identifier=name, shown=name)

    def primary_key_statements(self, target: TableTarget, columns, timeseries: str) -> list:
        """Unity Catalog's primary key (``timeseries`` marked TIMESERIES) makes a feature table."""
        if target.path is not None:
            return []
        constraint = f"{target.identifier.rsplit('.', 1)[-1]}_pk"
        table = target.identifier
        keys = ", ".join(f"`{column}`" + (" TIMESERIES" if column == timeseries else "")
                         for column in columns)
        return [*(f"ALTER TABLE {table} ALTER COLUMN `{column}` SET NOT NULL" for column in columns),
                f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {constraint}",
                f"ALTER TABLE {table} ADD CONSTRAINT {constraint} PRIMARY KEY ({keys})"]

    def telemetry_file(self, job_run_id: str, task: str) -> Path:
        return Path(tempfile.gettempdir()) / "mlops-telemetry" / f"{job_run_id}-{task}.jsonl"

    def serving_client(self):
        """The workspace client that drives Model Serving endpoints."""
        from databricks.sdk import WorkspaceClient

        return WorkspaceClient()

    def file_stream_reader(self, spark, schema, schema_location: str):
        """Auto Loader on Parquet files; a file with new columns stops the stream."""
        return (spark.readStream.format("cloudFiles").schema(schema)
                .option("cloudFiles.format", "parquet")
                .option("cloudFiles.schemaLocation", self.locate(schema_location).spark)
                .option("cloudFiles.schemaEvolutionMode", "failOnNewColumns"))

    def named_lock(self, name: str):
        """None: runs share no disk. The registry offers no lock either, so a Champion move checks
        the Champion just before moving it and reads it back after (``RegistryClient.move_champion``)."""
        return contextlib.nullcontext(True)


class LocalPlatform(_Shared):
    name = paths.LOCAL

    def run_context(self, dbutils, task: str) -> context.RunContext:
        return context.local_run_context(task)

    def default_tracking_uri(self) -> str:
        return home.mlflow_tracking_uri()

    def registry_store(self, registry_uri: str, tracking_uri: str) -> str:
        """The tracking store, for ``databricks-uc`` too: Unity Catalog's three-level model names
        live in the local store, as its tables live under ``$MLOPS_HOME/tables``."""
        return tracking_uri if registry_uri in ("", UNITY_CATALOG_REGISTRY) else registry_uri

    def table_target(self, location: str, table: str) -> TableTarget:
        location = catalog.check_location(location)
        if not catalog.is_schema(location):
            return self._folder_target(location, table)
        name = catalog.qualified_name(location, table)
        folder = home.tables_dir().joinpath(*name.split("."))
        return TableTarget(identifier=path_identifier(str(folder)), shown=f"{name} ({folder})",
                           path=str(folder))

    def primary_key_statements(self, target: TableTarget, columns, timeseries: str) -> list:
        """None: primary keys with TIMESERIES exist in Unity Catalog only; the keys stay in the metadata."""
        return []

    def telemetry_file(self, job_run_id: str, task: str) -> Path:
        return home.runs_dir() / job_run_id / f"telemetry-{task}.jsonl"

    def serving_client(self):
        """None: locally ``mlops serve --follow-rollout`` plays the endpoint."""
        return None

    def file_stream_reader(self, spark, schema, schema_location: str):
        """Spark's own file source on Parquet files (Auto Loader is Databricks-only)."""
        return spark.readStream.format("parquet").schema(schema)

    def named_lock(self, name: str):
        return locks.file_lock(locks.lock_path(home.mount_root("locks"), name))


def _local_root(mount: str) -> Path:
    return home.dbfs_root() if mount == "dbfs" else home.mount_root(mount)
