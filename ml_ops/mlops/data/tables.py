"""The table store: Delta tables (Spark's own on Databricks, committed by delta-rs locally), or Parquet.

Stages name tables; only this module knows where and in what format they live. The location
is a folder, or a Unity Catalog schema ``catalog.schema``: then, on Databricks, tables are
managed Delta tables written with ``saveAsTable`` and read with ``spark.table`` (their
metadata in the table property ``mlops.metadata``), and locally they are folders under
``$MLOPS_HOME/tables/<catalog>/<schema>/``. A folder write lands in a staging folder first
and is swapped in at the end, so a failed write never leaves a half-written table behind.
"""
import contextlib
import json
import logging
import shutil
import uuid
from pathlib import Path

from mlops import platform
from mlops.data import delta_log
from mlops.errors import DataError
from mlops.platform import catalog

logger = logging.getLogger(__name__)

METADATA_FILE = "_mlops_metadata.json"
METADATA_PROPERTY = "mlops.metadata"


class TableStore:
    """Reads and writes named tables under one location."""

    def __init__(self, spark, location: str, table_format: str):
        if table_format not in ("parquet", "delta"):
            raise DataError(f"table format must be parquet or delta, got {table_format!r}")
        self.spark = spark
        self.location = location
        self.table_format = table_format
        # Checked now, so a malformed location fails before any Spark work.
        catalog.check_location(location)

    def uri(self, name: str) -> str:
        """The table's catalog name on Databricks under a schema, else its folder URI."""
        target = platform.table_target(self.location, name)
        return target.catalog_name or target.path

    def _local(self, name: str) -> Path:
        return platform.driver_path(self.uri(name))

    def _catalog_name(self, name: str):
        return platform.table_target(self.location, name).catalog_name

    def exists(self, name: str) -> bool:
        if self._catalog_name(name):
            return self.spark.catalog.tableExists(self._catalog_name(name))
        path = self._local(name)
        marker = "_delta_log" if self.table_format == "delta" else METADATA_FILE
        return (path / marker).exists()

    def read(self, name: str, missing_hint: str = "", version: int | None = None):
        """Table ``name``; at Delta ``version`` (time travel) when given."""
        if version is not None:
            return self._read_version(name, int(version))
        local = self._commits_with_delta_rs()
        if local and not self.exists(name) and delta_log.parquet_files(self._local(name)):
            # A Parquet table from before: delta_log says how to convert it.
            return delta_log.read(self.spark, self._local(name))
        if not self.exists(name):
            hint = f"; {missing_hint}" if missing_hint else ""
            raise DataError(f"table '{name}' does not exist at "
                            f"{platform.table_target(self.location, name).shown}{hint}")
        if self._catalog_name(name):
            return self.spark.table(self._catalog_name(name))
        if self._commits_with_delta_rs():
            return delta_log.read(self.spark, self._local(name))
        return self.spark.read.format(self.table_format).load(self._spark_path(name))

    def _read_version(self, name: str, version: int):
        self._require_delta(name, "read at a version")
        if not self.exists(name):
            shown = platform.table_target(self.location, name).shown
            raise DataError(f"table '{name}' does not exist at {shown}")
        latest = self.version(name)
        if not 0 <= version <= latest:
            raise DataError(f"table '{name}' has no version {version}: its versions are 0 to {latest}")
        if self._commits_with_delta_rs():
            return delta_log.read(self.spark, self._local(name), version)
        reader = self.spark.read.format("delta").option("versionAsOf", version)
        return reader.table(self._catalog_name(name)) if self._catalog_name(name) \
            else reader.load(self._spark_path(name))

    def history(self, name: str) -> list:
        """The versions of Delta table ``name``, newest first (see :func:`delta_log.history`)."""
        if self._catalog_name(name) or not self._commits_with_delta_rs():
            raise DataError(f"table history is read here for local Delta tables only; on Databricks, "
                            f"run DESCRIBE HISTORY {self._catalog_name(name) or self.uri(name)}")
        return delta_log.history(self._local(name))

    def version(self, name: str) -> int | None:
        """The current Delta version of table ``name``; None for a Parquet table."""
        if self.table_format != "delta":
            return None
        if self._commits_with_delta_rs():
            return delta_log.latest_version(self._local(name))
        return self.spark.sql(f"DESCRIBE HISTORY {self._sql_name(name)} LIMIT 1").first()["version"]

    def convert(self, name: str) -> int:
        """Make the local Parquet table ``name`` a Delta table in place; returns its version."""
        if not self._commits_with_delta_rs():
            raise DataError("only local tables are converted here; on Databricks, run "
                            f"CONVERT TO DELTA parquet.`{self.uri(name)}`")
        return delta_log.convert(self.spark, self._local(name))

    def _commits_with_delta_rs(self) -> bool:
        return self.table_format == "delta" and not platform.spark_has_delta()

    def write(self, df, name: str, partition_by=None, metadata: dict | None = None):
        """Replace table ``name`` with ``df``; the old version stays until the new one is complete."""
        writer = df.write.format(self.table_format).mode("overwrite")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        if self._catalog_name(name):
            # A managed Delta table commits atomically; the catalog keeps its metadata.
            full_name = self._catalog_name(name)
            writer.format("delta").option("overwriteSchema", "true").saveAsTable(full_name)
            value = _sql_string(json.dumps(metadata or {}, default=str))
            self.spark.sql(f"ALTER TABLE {full_name} SET TBLPROPERTIES ('{METADATA_PROPERTY}' = '{value}')")
            return
        if self._commits_with_delta_rs():
            delta_log.write(df, self._local(name), "overwrite", partition_by)
            self._write_metadata(self._local(name), metadata or {})
            return
        if self.table_format == "delta":
            # Delta commits atomically; overwriting in place is safe.
            writer.option("overwriteSchema", "true").save(self._spark_path(name))
            self._write_metadata(self._local(name), metadata or {})
            return
        final = self._local(name)
        # A sibling folder, so the swap is two renames within one parent.
        staging_uri = f"{self.uri(name).rsplit('/', 1)[0]}/.{name}.staging-{uuid.uuid4().hex[:8]}"
        staging = platform.driver_path(staging_uri)
        try:
            writer.save(platform.spark_path(staging_uri))
            self._write_metadata(staging, metadata or {})
            self._swap_in(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("wrote table %s to %s", name, self.uri(name))

    def upsert(self, df, name: str, keys, partition_by, properties: dict | None = None):
        """Rows of ``df`` replace the rows of table ``name`` with the same ``keys`` and add the others.

        One commit (MERGE INTO on Databricks); the first write creates the table, partitioned by
        ``partition_by``, with the table ``properties``.
        """
        self._require_delta(name, "appended to by key")
        properties = properties or {}
        if self._commits_with_delta_rs():
            delta_log.upsert(df, self._guarded_local(name), keys, partition_by, configuration=properties)
            return
        target = self._sql_name(name)
        if not self.exists(name):
            self._create(df, name, partition_by, properties)
            return
        condition = " AND ".join(f"target.`{column}` = source.`{column}`"
                                 for column in [*keys, *partition_by])
        with self._view(df) as source:
            self.spark.sql(f"MERGE INTO {target} AS target USING {source} AS source ON {condition} "
                           "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *")

    def fill_column(self, name: str, updates, key: str, column: str, partition_by) -> bool:
        """Set ``column`` of ``name`` from ``updates`` by ``key`` where it differs; False if none does."""
        self._require_delta(name, "updated by key")
        if self._commits_with_delta_rs():
            version = delta_log.fill_column(updates, self._guarded_local(name), key, column, partition_by)
            return version is not None
        with self._view(updates) as source:
            changed = (f"source.`{column}` IS NOT NULL "
                       f"AND NOT (target.`{column}` <=> source.`{column}`)")
            result = self.spark.sql(
                f"MERGE INTO {self._sql_name(name)} AS target USING {source} AS source "
                f"ON target.`{key}` = source.`{key}` WHEN MATCHED AND {changed} "
                f"THEN UPDATE SET target.`{column}` = source.`{column}`").first()
        return bool(result and result[0])

    def _require_delta(self, name: str, action: str):
        if self.table_format != "delta":
            raise DataError(f"table '{name}' is {action} and needs Delta: set table_format to auto "
                            f"or delta, not {self.table_format}")

    def _guarded_local(self, name: str) -> Path:
        """The local Delta folder of ``name``; an old Parquet table there is refused with how to convert."""
        folder = self._local(name)
        if not delta_log.is_delta_table(folder) and delta_log.parquet_files(folder):
            delta_log.read(self.spark, folder)  # raises, saying how to convert
        return folder

    def _sql_name(self, name: str) -> str:
        return self._catalog_name(name) or f"delta.`{self._spark_path(name)}`"

    def _create(self, df, name: str, partition_by, properties: dict):
        if self._catalog_name(name):
            writer = df.writeTo(self._catalog_name(name)).using("delta").partitionedBy(*partition_by)
            for key, value in properties.items():
                writer = writer.tableProperty(key, value)
            writer.create()
            return
        df.write.format("delta").partitionBy(*partition_by).save(self._spark_path(name))
        if properties:
            assignments = ", ".join(f"'{key}' = '{_sql_string(value)}'"
                                    for key, value in properties.items())
            self.spark.sql(f"ALTER TABLE {self._sql_name(name)} SET TBLPROPERTIES ({assignments})")

    @contextlib.contextmanager
    def _view(self, df):
        """``df`` as a temporary view for SQL, dropped afterwards."""
        view = f"mlops_source_{uuid.uuid4().hex[:12]}"
        df.createOrReplaceTempView(view)
        try:
            yield view
        finally:
            self.spark.catalog.dropTempView(view)

    def declare_primary_key(self, name: str, columns, timeseries: str):
        """Unity Catalog tables get the primary key ``columns`` (``timeseries`` marked TIMESERIES).

        That makes a feature table of them. Folder tables keep their keys in the metadata only.
        """
        if not self._catalog_name(name):
            return
        for statement in primary_key_statements(self._catalog_name(name), columns, timeseries):
            self.spark.sql(statement)

    def metadata(self, name: str) -> dict:
        if self._catalog_name(name):
            rows = self.spark.sql(f"SHOW TBLPROPERTIES {self._catalog_name(name)} "
                                  f"('{METADATA_PROPERTY}')").collect()
            value = rows[0]["value"] if rows else ""
            return json.loads(value) if value.startswith("{") else {}
        path = self._local(name) / METADATA_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def _spark_path(self, name: str) -> str:
        return platform.spark_path(self.uri(name))

    @staticmethod
    def _write_metadata(folder: Path, metadata: dict):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str))

    @staticmethod
    def _swap_in(staging: Path, final: Path):
        retired = final.with_name(f".{final.name}.retired-{uuid.uuid4().hex[:8]}")
        if final.exists():
            final.rename(retired)
        staging.rename(final)
        shutil.rmtree(retired, ignore_errors=True)


def primary_key_statements(full_name: str, columns, timeseries: str) -> list:
    """The SQL that gives ``full_name`` its primary key; rerunnable after an overwrite."""
    constraint = f"{full_name.rsplit('.', 1)[-1]}_pk"
    keys = ", ".join(f"`{column}`" + (" TIMESERIES" if column == timeseries else "") for column in columns)
    return [*(f"ALTER TABLE {full_name} ALTER COLUMN `{column}` SET NOT NULL" for column in columns),
            f"ALTER TABLE {full_name} DROP CONSTRAINT IF EXISTS {constraint}",
            f"ALTER TABLE {full_name} ADD CONSTRAINT {constraint} PRIMARY KEY ({keys})"]


def _sql_string(text: str) -> str:
    """``text`` for a single-quoted Spark SQL literal."""
    return text.replace("\\", "\\\\").replace("'", "\\'")
