"""The table store: Delta tables written and read by Spark, the same code locally and on Databricks.

Stages name tables; the platform object hands over the identifier Spark SQL uses for each (a
Unity Catalog name, or a path identifier, see :mod:`mlops.platform.platforms`). Every read,
write, merge and history query below is Spark SQL or the DataFrame API on that identifier.
A write is one Delta commit: readers see the previous version until it lands, and a write
that fails or is killed leaves no version behind. Commits that lose a race with another
writer are retried a bounded number of times (:mod:`mlops.data.conflicts`).
"""
import contextlib
import json
import logging
import uuid
from pathlib import Path

from mlops import platform
from mlops.data import conflicts
from mlops.errors import DataError
from mlops.platform import catalog

logger = logging.getLogger(__name__)

METADATA_PROPERTY = "mlops.metadata"
# Delta's idempotent writes: a commit carrying an (app id, version) the table has seen is skipped.
TXN_APP_ID = "spark.databricks.delta.write.txnAppId"
TXN_VERSION = "spark.databricks.delta.write.txnVersion"
IDEMPOTENT_WRITE_SETTINGS = (TXN_APP_ID, TXN_VERSION)
# Analysis errors that mean "no Delta table there": a folder without a Delta log (an old
# Parquet table, say), nothing at the path, no such catalog table.
NOT_DELTA_CONDITIONS = ("DELTA_TABLE_NOT_FOUND", "DELTA_MISSING_DELTA_TABLE")
MISSING_CONDITIONS = ("PATH_NOT_FOUND", "TABLE_OR_VIEW_NOT_FOUND", *NOT_DELTA_CONDITIONS)


class TableStore:
    """Reads and writes named Delta tables under one location."""

    def __init__(self, spark, location: str, host=None):
        self.spark = spark
        self.location = location
        self.host = host or platform.current()
        # Checked now, so a malformed location fails before any Spark work.
        catalog.check_location(location)

    def target(self, name: str) -> platform.TableTarget:
        return self.host.table_target(self.location, name)

    def uri(self, name: str) -> str:
        """The table's folder, or its catalog name when it has no folder of its own."""
        target = self.target(name)
        return target.path or target.identifier

    def _identifier(self, name: str) -> str:
        return self.target(name).identifier

    def exists(self, name: str) -> bool:
        return self._missing_reason(name) is None

    def _missing_reason(self, name: str):
        """None when table ``name`` exists, else the analysis error condition that says why not."""
        from pyspark.errors import AnalysisException

        try:
            self.spark.read.table(self._identifier(name)).schema
        except AnalysisException as error:
            condition = error.getCondition()
            if condition in MISSING_CONDITIONS:
                return condition
            raise
        return None

    def read(self, name: str, missing_hint: str = "", version: int | None = None):
        """Table ``name``; at Delta ``version`` (time travel) when given."""
        reason = self._missing_reason(name)
        if reason is not None:
            raise self._missing(name, reason, missing_hint)
        if version is None:
            return self.spark.read.table(self._identifier(name))
        latest = self.version(name)
        if not 0 <= int(version) <= latest:
            raise DataError(f"table '{name}' has no version {version}: its versions are 0 to {latest}")
        return self.spark.sql(f"SELECT * FROM {self._identifier(name)} VERSION AS OF {int(version)}")

    def _missing(self, name: str, reason: str, missing_hint: str = "") -> DataError:
        shown = self.target(name).shown
        if reason in NOT_DELTA_CONDITIONS:
            return DataError(f"table '{name}' at {shown} is a folder without a Delta log: if it holds a "
                             "Parquet table from before, convert it in place with "
                             f"`mlops table convert {name}`")
        hint = f"; {missing_hint}" if missing_hint else ""
        return DataError(f"table '{name}' does not exist at {shown}{hint}")

    def history(self, name: str) -> list:
        """Delta's own DESCRIBE HISTORY of table ``name``, newest first, one dict per version."""
        self._require(name)
        rows = self.spark.sql(f"DESCRIBE HISTORY {self._identifier(name)}").collect()
        return [row.asDict(recursive=True) for row in rows]

    def version(self, name: str) -> int:
        """The current Delta version of table ``name``."""
        self._require(name)
        return self.spark.sql(f"DESCRIBE HISTORY {self._identifier(name)} LIMIT 1").first()["version"]

    def _require(self, name: str):
        reason = self._missing_reason(name)
        if reason is not None:
            raise self._missing(name, reason)

    def convert(self, name: str) -> int:
        """CONVERT TO DELTA: the Parquet folder of table ``name`` becomes a Delta table in place."""
        target = self.target(name)
        if self.exists(name):
            raise DataError(f"table '{name}' at {target.shown} already is a Delta table")
        if target.path is None:
            raise DataError(f"table '{name}' is the catalog table {target.identifier}, not a folder: "
                            "CONVERT TO DELTA takes a Parquet folder")
        location = self.host.locate(target.path)
        folder = location.spark
        try:
            schema = self.spark.read.parquet(folder).schema
        except Exception as error:
            raise DataError(f"table '{name}' at {target.shown} holds no Parquet table to convert "
                            f"({type(error).__name__})") from None
        partitions = _partition_columns(location.driver, schema)
        spec = ", ".join(f"`{field.name}` {field.dataType.simpleString()}" for field in partitions)
        quoted = folder.replace("`", "``")
        partitioned = f" PARTITIONED BY ({spec})" if spec else ""
        self.spark.sql(f"CONVERT TO DELTA parquet.`{quoted}`{partitioned}")
        return self.version(name)

    def write(self, df, name: str, partition_by=None, metadata: dict | None = None):
        """Replace table ``name`` with ``df``: one commit, and the old versions stay readable."""
        writer = df.writeTo(self._identifier(name)).using("delta").tableProperty(
            METADATA_PROPERTY, json.dumps(metadata or {}, default=str))
        if partition_by:
            writer = writer.partitionedBy(*partition_by)
        conflicts.committed(writer.createOrReplace, self.target(name).shown)
        logger.info("wrote table %s to %s", name, self.target(name).shown)

    def upsert(self, df, name: str, keys, partition_by, properties: dict | None = None,
               added_columns=()):
        """Rows of ``df`` replace the rows of table ``name`` with the same ``keys`` and add the others.

        One MERGE INTO; the first write creates the table, partitioned by ``partition_by``,
        with the table ``properties``. Columns named in ``added_columns`` that an older table
        lacks are added to it first (nullable; its old rows read null).
        """
        self._require_columns(df, name, [*keys, *partition_by], "merge")
        # Null-safe on the keys: a key column added to an older table is null in its old rows, and
        # rows that still have no value for it must replace them, not sit beside them.
        condition = " AND ".join([*(f"target.`{column}` <=> source.`{column}`" for column in keys),
                                  *(f"target.`{column}` = source.`{column}`" for column in partition_by)])

        def merge_or_create():
            if not self.exists(name):
                self._create(df, name, partition_by, properties or {})
                return
            self._check_schema(df, name, added_columns)
            with self._view(df) as source:
                self.spark.sql(f"MERGE INTO {self._identifier(name)} AS target USING {source} AS source "
                               f"ON {condition} "
                               "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *")

        conflicts.committed(merge_or_create, self.target(name).shown)

    def fill_column(self, name: str, updates, key: str, column: str) -> bool:
        """Set ``column`` of ``name`` from ``updates`` by ``key`` where it differs; False if none does."""
        self._require_columns(updates, name, [key, column], "merge")
        self._require(name)
        changed = f"source.`{column}` IS NOT NULL AND NOT (target.`{column}` <=> source.`{column}`)"

        def merge():
            with self._view(updates) as source:
                return self.spark.sql(
                    f"MERGE INTO {self._identifier(name)} AS target USING {source} AS source "
                    f"ON target.`{key}` = source.`{key}` WHEN MATCHED AND {changed} "
                    f"THEN UPDATE SET target.`{column}` = source.`{column}`").first()

        result = conflicts.committed(merge, self.target(name).shown)
        return bool(result and result[0])

    @staticmethod
    def _require_columns(df, name: str, columns, action: str):
        missing = [column for column in columns if column not in df.columns]
        if missing:
            raise DataError(f"cannot {action} into table '{name}': the rows lack the key column(s) "
                            f"{', '.join(missing)}")

    def _check_schema(self, df, name: str, added_columns=()):
        """Rows added to ``name`` must bring its columns with its types, and no others.

        Of the others, those in ``added_columns`` are added to the table instead.
        """
        # The caller has just found the table: no second existence check.
        schema = self.spark.read.table(self._identifier(name)).schema
        current = {field.name: field.dataType.simpleString() for field in schema.fields}
        new = {field.name: field.dataType.simpleString() for field in df.schema.fields}
        missing = sorted(set(current) - set(new))
        addable = [column for column in new if column not in current and column in added_columns]
        if addable and not missing:
            self._add_columns(name, {column: new[column] for column in addable})
            current.update({column: new[column] for column in addable})
        extra = sorted(set(new) - set(current))
        changed = sorted(column for column in set(current) & set(new) if current[column] != new[column])
        if missing or extra or changed:
            details = [f"missing {', '.join(missing)}" if missing else "",
                       f"not in the table {', '.join(extra)}" if extra else "",
                       "; ".join(f"{column} is {new[column]}, the table has {current[column]}"
                                 for column in changed)]
            raise DataError(f"cannot add rows to table '{name}' at {self.target(name).shown}: the schema "
                            f"does not match: {'; '.join(detail for detail in details if detail)}")

    def _add_columns(self, name: str, columns: dict):
        # Outside any idempotent-write setting: the schema change must not use up the write's
        # transaction version, or Delta would skip the write that follows as already done.
        settings = {key: self.spark.conf.get(key, None) for key in IDEMPOTENT_WRITE_SETTINGS}
        for key in IDEMPOTENT_WRITE_SETTINGS:
            self.spark.conf.unset(key)
        try:
            added = ", ".join(f"`{column}` {kind}" for column, kind in columns.items())
            self.spark.sql(f"ALTER TABLE {self._identifier(name)} ADD COLUMNS ({added})")
        finally:
            for key, value in settings.items():
                if value is not None:
                    self.spark.conf.set(key, value)
        logger.info("added column(s) %s to table %s at %s", ", ".join(columns), name, self.target(name).shown)

    def _create(self, df, name: str, partition_by, properties: dict):
        writer = df.writeTo(self._identifier(name)).using("delta")
        if partition_by:
            writer = writer.partitionedBy(*partition_by)
        for key, value in properties.items():
            writer = writer.tableProperty(key, value)
        writer.create()

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
        """The primary key ``columns`` (``timeseries`` marked TIMESERIES), where the platform has them.

        In Unity Catalog that makes a feature table; elsewhere the keys stay in the metadata.
        """
        for statement in self.host.primary_key_statements(self.target(name), columns, timeseries):
            self.spark.sql(statement)

    def metadata(self, name: str) -> dict:
        query = f"SHOW TBLPROPERTIES {self._identifier(name)} ('{METADATA_PROPERTY}')"
        rows = self.spark.sql(query).collect()
        value = rows[0]["value"] if rows else ""
        return json.loads(value) if value.startswith("{") else {}


def _partition_columns(folder: Path | None, schema) -> list:
    """The fields of ``schema`` that name partition folders (``column=value``) in ``folder``."""
    if folder is None:
        return []
    data_files = (file for file in sorted(Path(folder).rglob("*.parquet"))
                  if not any(part.startswith(("_", ".")) for part in file.relative_to(folder).parts))
    data_file = next(data_files, None)
    if data_file is None:
        return []
    names = [part.partition("=")[0] for part in data_file.relative_to(folder).parts[:-1] if "=" in part]
    return [schema[column] for column in names if column in schema.fieldNames()]
