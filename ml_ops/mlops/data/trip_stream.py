"""New raw trips as a stream: a Delta table's appends, or files landing in a folder.

A Delta source (a table name, or a folder with a Delta log) streams its new commits. A folder
of Parquet files streams each new file once, read with the raw schema; the platform names the
file reader (Auto Loader on Databricks, Spark's file source locally). A file whose columns differ
from the raw schema stops the stream with the columns named, instead of reading them as nulls.
"""
import logging
from dataclasses import dataclass

from pyspark.sql import functions as F
from taxi_fares.schema import RAW_COLUMNS, conform_raw, raw_schema, schema_problems

from mlops import platform
from mlops.data.raw_input import is_delta_table
from mlops.errors import DataError
from mlops.observability.redaction import public_uri
from mlops.platform import catalog

logger = logging.getLogger(__name__)

SOURCE_FILE = "source_file"
SOURCE_FILE_TIME = "source_file_time"
PARAMETER = "taxi_fares_stream_source"


@dataclass(frozen=True)
class TripStream:
    """The streaming DataFrame of raw trips (plus where each row came from), and its source kind."""

    frame: object
    kind: str
    shown: str


def open_trip_stream(spark, uri: str, checkpoint_uri: str, max_files_per_trigger: int = 0) -> TripStream:
    """The raw trips arriving at ``uri``, conformed to the raw schema."""
    shown = public_uri(uri)
    if catalog.is_schema(uri):
        # No slash and no scheme: the table name catalog.schema.table.
        location, table = ".".join(catalog.split_name(uri)[:2]), catalog.split_name(uri)[2]
        target = platform.table_target(location, table)
        if target.path is None:
            return TripStream(_conformed(spark.readStream.table(target.identifier), shown), "table", shown)
        uri = target.path
    if not platform.driver_path(uri).exists():
        raise DataError(f"stream source {shown} (parameter '{PARAMETER}') does not exist")
    location = platform.spark_path(uri)
    if is_delta_table(spark, location):
        reader = spark.readStream.format("delta")
        if max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", max_files_per_trigger)
        frame = reader.load(location)
        return TripStream(_conformed(frame, shown), "delta", shown)
    schema_location = f"{checkpoint_uri.rstrip('/')}/_schema"
    reader = platform.current().file_stream_reader(spark, raw_schema(), schema_location)
    if max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", max_files_per_trigger)
    frame = reader.load(location).select(
        *RAW_COLUMNS, F.col("_metadata.file_path").alias(SOURCE_FILE),
        F.col("_metadata.file_modification_time").alias(SOURCE_FILE_TIME))
    return TripStream(frame, "files", shown)


def _conformed(frame, shown: str):
    problems = schema_problems(frame.schema)
    if problems:
        raise DataError(f"stream source {shown} (parameter '{PARAMETER}') does not have the raw trip "
                        "schema: " + "; ".join(problems))
    return conform_raw(frame)


def check_new_files(batch, shown: str) -> None:
    """Refuse a micro-batch whose files do not have the raw columns, naming the file and the columns."""
    if SOURCE_FILE not in batch.columns:
        return
    import pyarrow.parquet as pq

    for row in batch.select(SOURCE_FILE).distinct().collect():  # one row per new file
        path = platform.driver_path(row[SOURCE_FILE])
        names = set(pq.read_schema(path).names)
        missing = [name for name in RAW_COLUMNS if name not in names]
        extra = sorted(names - set(RAW_COLUMNS))
        if missing or extra:
            details = [f"missing {', '.join(missing)}" if missing else "",
                       f"not in the raw schema {', '.join(extra)}" if extra else ""]
            raise DataError(f"file {public_uri(row[SOURCE_FILE])} in stream source {shown} does not have the "
                            f"raw trip columns: {'; '.join(detail for detail in details if detail)}; "
                            "fix or remove the file, then restart the stream")
