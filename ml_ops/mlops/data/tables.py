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

from mlops import platform
from mlops.errors import DataError

logger = logging.getLogger(__name__)

METADATA_FILE = "_mlops_metadata.json"


class TableStore:
    """Reads and writes named tables under one location."""

    def __init__(self, spark, location: str, table_format: str):
        if table_format not in ("parquet", "delta"):
            raise DataError(f"table format must be parquet or delta, got {table_format!r}")
        self.spark = spark
        self.location = location.rstrip("/")
        self.table_format = table_format

    def uri(self, name: str) -> str:
        return platform.table_uri(self.location, name)

    def _local(self, name: str) -> Path:
        return platform.driver_path(self.uri(name))

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
        staging_uri = self.uri(f".{name}.staging-{uuid.uuid4().hex[:8]}")
        staging = platform.driver_path(staging_uri)
        try:
            writer.save(platform.spark_path(staging_uri))
            self._write_metadata(staging, metadata or {})
            self._swap_in(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("wrote table %s to %s", name, self.uri(name))

    def metadata(self, name: str) -> dict:
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
