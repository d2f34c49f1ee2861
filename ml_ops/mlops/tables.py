"""The table store: Parquet folders locally, Delta on Databricks.

Stages name tables; only this module knows where and in what format they live.
A write lands in a staging folder first and is swapped in at the end, so a
failed write never leaves a half-written table behind.
"""
import json
import logging
import shutil
import uuid
from pathlib import Path

from mlops.config import running_on_databricks
from mlops.errors import DataError

logger = logging.getLogger(__name__)

METADATA_FILE = "_mlops_metadata.json"


_DRIVER_VISIBLE_ROOTS = ("/dbfs/", "/Volumes/", "/Workspace/", "/tmp/", "/local_disk0/")


def to_local_path(uri: str) -> Path:
    """A path the driver can open with plain file I/O.

    On Databricks ``dbfs:/x`` and a bare ``/x`` (which Spark reads from DBFS) are
    ``/dbfs/x``; Volumes and Workspace paths are already mounted. Locally, DBFS
    is a folder under ``MLOPS_HOME``.
    """
    uri = str(uri)
    if running_on_databricks():
        if uri.startswith("dbfs:/"):
            return Path("/dbfs" + uri[len("dbfs:"):])
        if uri.startswith("/") and not uri.startswith(_DRIVER_VISIBLE_ROOTS):
            return Path("/dbfs" + uri)
        return Path(uri)
    from mlops.local.dbutils import to_local_path as mapped

    return Path(mapped(uri))


def spark_path(uri: str) -> str:
    """The path to hand to Spark: the URI itself on Databricks, the mapped folder locally."""
    return str(uri) if running_on_databricks() else str(to_local_path(uri))


class TableStore:
    """Reads and writes named tables under one location."""

    def __init__(self, spark, location: str, table_format: str):
        if table_format not in ("parquet", "delta"):
            raise DataError(f"table format must be parquet or delta, got {table_format!r}")
        self.spark = spark
        self.location = location.rstrip("/")
        self.table_format = table_format

    def uri(self, name: str) -> str:
        return f"{self.location}/{name}"

    def _local(self, name: str) -> Path:
        return to_local_path(self.uri(name))

    def exists(self, name: str) -> bool:
        path = self._local(name)
        marker = "_delta_log" if self.table_format == "delta" else METADATA_FILE
        return (path / marker).exists()

    def read(self, name: str, missing_hint: str = ""):
        if not self.exists(name):
            hint = f"; {missing_hint}" if missing_hint else ""
            raise DataError(f"table '{name}' does not exist at {self.uri(name)}{hint}")
        return self.spark.read.format(self.table_format).load(self._spark_path(name))

    def write(self, df, name: str, partition_by=None, metadata: dict | None = None):
        """Replace table ``name`` with ``df``; the old version stays until the new one is complete."""
        writer = df.write.format(self.table_format).mode("overwrite")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        if self.table_format == "delta":
            # Delta commits atomically; overwriting in place is safe.
            writer.option("overwriteSchema", "true").save(self._spark_path(name))
            self._write_metadata(self._local(name), metadata or {})
            return
        final = self._local(name)
        staging = final.with_name(f".{final.name}.staging-{uuid.uuid4().hex[:8]}")
        try:
            writer.save(str(staging))
            self._write_metadata(staging, metadata or {})
            self._swap_in(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("wrote table %s to %s", name, self.uri(name))

    def metadata(self, name: str) -> dict:
        path = self._local(name) / METADATA_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def _spark_path(self, name: str) -> str:
        return spark_path(self.uri(name))

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


def resolve_table_format(requested: str, on_databricks: bool) -> str:
    if requested != "auto":
        return requested
    return "delta" if on_databricks else "parquet"
