"""Local Delta Lake tables without the Delta jars: Spark writes the Parquet files, delta-rs commits them.

A write goes to a staging folder inside the table, its files move to their partition folders,
and one commit to ``_delta_log`` (through the ``deltalake`` package) makes them the table's
next version. Until that commit, readers see the previous version: files that a failed or
killed write left behind belong to no version. Readers read only the files of the snapshot
they ask for, so any version can be read back.
"""
import contextlib
import json
import os
import shutil
import urllib.parse
import uuid
from pathlib import Path

import pyarrow.parquet
from pyspark.sql import functions as F

from mlops.errors import DataError

DELTA_LOG = "_delta_log"
ROWS_METADATA = "mlops.rows"
MODES = ("append", "overwrite")


def is_delta_table(folder: Path) -> bool:
    return (Path(folder) / DELTA_LOG).is_dir()


def parquet_files(folder: Path) -> list:
    """The data files of a Parquet table in ``folder``; staging and hidden folders do not count."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(file for file in folder.rglob("*.parquet")
                  if not any(part.startswith(("_", ".")) for part in file.relative_to(folder).parts))


def write(df, folder: Path, mode: str, partition_by=None, operation: str = "WRITE",
          replace_partitions=None, configuration=None) -> int:
    """Write ``df`` as the next version of the Delta table in ``folder``; returns that version.

    ``replace_partitions`` (overwrite only): the values of the first partition column whose
    partitions ``df`` replaces; the table's other partitions stay as they are.
    ``configuration``: table properties, set when the table is created.
    """
    if mode not in MODES:
        raise DataError(f"a Delta write mode must be one of {', '.join(MODES)}, got {mode!r}")
    if replace_partitions is not None and (mode != "overwrite" or not partition_by):
        raise DataError("replacing partitions needs mode overwrite and a partitioned table")
    folder = Path(folder)
    schema = _arrow_schema(df.schema)
    if is_delta_table(folder):
        _check_schema(folder, schema, mode)
    with _staged(df, folder, partition_by) as actions:
        filters = None
        if replace_partitions is not None:
            filters = [(partition_by[0], "in", sorted(str(value) for value in replace_partitions))]
        return _commit(folder, schema, actions, mode, list(partition_by or []), operation, filters,
                       configuration)


def upsert(df, folder: Path, keys, partition_by, configuration=None) -> int:
    """Rows of ``df`` replace the table's rows with the same ``keys`` and add the others: one commit.

    Only the partitions ``df`` writes to are read. When none of their rows share a key with
    ``df`` the commit is a plain append; otherwise those partitions are rewritten, their
    other rows kept, and the commit replaces them.
    """
    folder = Path(folder)
    schema = _arrow_schema(df.schema)
    partition_by = list(partition_by)
    if is_delta_table(folder):
        _check_schema(folder, schema, "append")
    with _staged(df, folder, partition_by) as actions:
        if not is_delta_table(folder) or not actions:
            return _commit(folder, schema, actions, "append", partition_by, "MERGE", None, configuration)
        touched = sorted({action.partition_values[partition_by[0]] for action in actions})
        filters = [(partition_by[0], "in", touched)]
        spark = df.sparkSession
        old = _snapshot_rows(spark, folder, _table(folder), filters)
        if old is None:
            return _commit(folder, schema, actions, "append", partition_by, "MERGE")
        new_keys = spark.read.option("basePath", str(folder)).parquet(
            *[str(folder / action.path) for action in actions]).select(*keys)
        if old.join(new_keys, list(keys), "left_semi").isEmpty():
            return _commit(folder, schema, actions, "append", partition_by, "MERGE")
        kept = old.join(new_keys, list(keys), "left_anti").select(*old.columns)
        with _staged(kept, folder, partition_by) as kept_actions:
            return _commit(folder, schema, actions + kept_actions, "overwrite", partition_by, "MERGE",
                           filters)


def fill_column(updates, folder: Path, key: str, column: str, partition_by) -> int | None:
    """Set ``column`` from ``updates`` (``key``, ``column``) on the rows with that key whose value differs.

    Only the partitions holding such rows are rewritten, in one commit; returns its version,
    or None when no row changes.
    """
    folder = Path(folder)
    table = _table(folder)
    spark = updates.sparkSession
    partition = partition_by[0]
    incoming = f"_incoming_{column}"
    # One snapshot for finding the changed rows and rewriting them.
    current = _snapshot_rows(spark, folder, table)
    if current is None:
        return None
    changes = updates.select(F.col(key), F.col(column).alias(incoming)).where(F.col(incoming).isNotNull())
    changed = current.join(changes, key).where(~F.col(column).eqNullSafe(F.col(incoming)))
    touched = sorted({str(row[0]) for row in changed.select(partition).distinct().collect()})
    if not touched:
        return None
    filters = [(partition, "in", touched)]
    old = _snapshot_rows(spark, folder, table, filters)
    filled = old.join(changes, key, "left").withColumn(
        column, F.coalesce(F.col(incoming), F.col(column))).select(*old.columns)
    with _staged(filled, folder, partition_by) as actions:
        return _commit(folder, _arrow_schema(old.schema), actions, "overwrite", list(partition_by), "MERGE",
                       filters)


@contextlib.contextmanager
def _staged(df, folder: Path, partition_by):
    """Spark writes ``df`` into a staging folder; its files move to their partition folders.

    Yields their add actions. Moved files belong to no version until a commit names them.
    """
    staging = folder / f"_staging-{uuid.uuid4().hex}"
    # Delta timestamps are microseconds; Spark's Parquet default (INT96) is not a Delta type.
    df.sparkSession.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    try:
        writer = df.write.mode("overwrite")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.parquet(staging.as_uri())
        yield [_moved_into_table(file, staging, folder) for file in sorted(staging.rglob("*.parquet"))]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def convert(spark, folder: Path, partition_by=None) -> int:
    """Make the Parquet table in ``folder`` a Delta table in place: one commit of its files."""
    folder = Path(folder)
    if is_delta_table(folder):
        raise DataError(f"{folder} already is a Delta table")
    files = parquet_files(folder)
    if not files:
        raise DataError(f"{folder} holds no Parquet files to convert")
    df = spark.read.parquet(folder.as_uri())
    partitions = list(partition_by or _partition_columns(files[0].relative_to(folder)))
    # Partition columns last, as a partitioned Parquet read lists them.
    columns = [name for name in df.columns if name not in partitions] + partitions
    actions = [_add_action(file, folder) for file in files]
    schema = _arrow_schema(df.select(*columns).schema)
    return _commit(folder, schema, actions, "append", partitions, "CONVERT")


def _partition_columns(relative: Path) -> list:
    return [part.partition("=")[0] for part in relative.parts[:-1] if "=" in part]


def read(spark, folder: Path, version=None):
    """The snapshot ``version`` (default: the latest) of the table in ``folder``, as a DataFrame."""
    table = _table(folder, version)
    rows = _snapshot_rows(spark, Path(folder), table)
    return spark.createDataFrame([], _spark_schema(table)) if rows is None else rows


def _snapshot_rows(spark, folder: Path, table, partition_filters=None):
    """The rows of ``table``'s files (those matching ``partition_filters``); None when it has none."""
    files = table.file_uris(partition_filters=partition_filters)
    if not files:
        return None
    return spark.read.schema(_spark_schema(table)).option("basePath", folder.as_uri()).parquet(*files)


def latest_version(folder: Path) -> int:
    return _table(folder).version()


def history(folder: Path) -> list:
    """One entry per version, newest first: version, time, operation, mode and rows written."""
    entries = []
    for commit in _table(folder).history():
        metadata = commit.get("userMetadata") or commit.get("mlops") or {}
        if isinstance(metadata, str):
            metadata = json.loads(metadata) if metadata.startswith("{") else {}
        entries.append({"version": commit.get("version"), "timestamp": commit.get("timestamp"),
                        "operation": commit.get("mlops.operation") or commit.get("operation"),
                        "mode": (commit.get("operationParameters") or {}).get("mode", ""),
                        "rows": commit.get(ROWS_METADATA, metadata.get(ROWS_METADATA))})
    return entries


def _table(folder: Path, version=None):
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    folder = Path(folder)
    if not is_delta_table(folder):
        hint = (f"; it holds Parquet files without a {DELTA_LOG} (a Parquet table): convert it in place "
                f"with `mlops table convert {folder.name}`" if parquet_files(folder) else "")
        raise DataError(f"{folder} is not a Delta table{hint}")
    try:
        return DeltaTable(str(folder), version=version)
    except (DeltaError, TableNotFoundError, ValueError, OSError) as error:
        if version is None:
            raise DataError(f"cannot open the Delta table {folder}: {error}") from error
        latest = DeltaTable(str(folder)).version()
        raise DataError(f"the Delta table {folder} has no version {version}; its versions are 0 to "
                        f"{latest}") from error


def _moved_into_table(file: Path, staging: Path, folder: Path):
    """Move one staged data file to its partition folder; its add action."""
    target = folder / file.relative_to(staging)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(file, target)
    return _add_action(target, folder)


def _add_action(target: Path, folder: Path):
    """The add action of a data file already in its place in the table."""
    from deltalake.transaction import AddAction

    relative = target.relative_to(folder)
    partition_values = {}
    for part in relative.parts[:-1]:
        key, _, value = part.partition("=")
        value = urllib.parse.unquote(value)
        partition_values[key] = None if value == "__HIVE_DEFAULT_PARTITION__" else value
    stat = target.stat()
    # Readers parse the stats of every file; the row count comes from the Parquet footer.
    stats = json.dumps({"numRecords": pyarrow.parquet.ParquetFile(target).metadata.num_rows})
    return AddAction(path=relative.as_posix(), size=stat.st_size, partition_values=partition_values,
                     modification_time=int(stat.st_mtime * 1000), data_change=True, stats=stats)


def _commit(folder: Path, schema, actions: list, mode: str, partition_by: list, operation: str,
            partition_filters=None, configuration=None) -> int:
    from deltalake import DeltaTable
    from deltalake.schema import Schema
    from deltalake.transaction import CommitProperties, create_table_with_add_actions

    # Row counts come from the Parquet footers, through each file's stats: no second pass over the data.
    rows = sum(json.loads(action.stats)["numRecords"] for action in actions)
    properties = CommitProperties(custom_metadata={ROWS_METADATA: str(rows), "mlops.operation": operation})
    delta_schema = Schema.from_arrow(schema)
    if not is_delta_table(folder):
        create_table_with_add_actions(str(folder), delta_schema, actions, mode="append",
                                      partition_by=partition_by or None, configuration=configuration,
                                      commit_properties=properties)
    else:
        DeltaTable(str(folder)).create_write_transaction(actions, mode=mode, schema=delta_schema,
                                                         partition_by=partition_by or None,
                                                         partition_filters=partition_filters,
                                                         commit_properties=properties)
    return DeltaTable(str(folder)).version()


def _check_schema(folder: Path, schema, mode: str) -> None:
    """An append must bring the table's columns with the table's types; an overwrite may change them."""
    from deltalake.schema import Schema

    if mode != "append":
        return
    current = {field.name: _type_name(field.type) for field in _table(folder).schema().fields}
    new = {field.name: _type_name(field.type) for field in Schema.from_arrow(schema).fields}
    missing = sorted(set(current) - set(new))
    extra = sorted(set(new) - set(current))
    changed = sorted(name for name in set(current) & set(new) if current[name] != new[name])
    if missing or extra or changed:
        details = [f"missing {', '.join(missing)}" if missing else "",
                   f"not in the table {', '.join(extra)}" if extra else "",
                   "; ".join(f"{name} is {new[name]}, the table has {current[name]}" for name in changed)]
        raise DataError(f"cannot append to the Delta table {folder}: the schema does not match: "
                        f"{'; '.join(detail for detail in details if detail)}")


def _type_name(delta_type) -> str:
    return getattr(delta_type, "type", None) or str(delta_type)


def _arrow_schema(spark_schema):
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(spark_schema)


def _spark_schema(table):
    import pyarrow
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(pyarrow.schema(table.schema().to_arrow()))
