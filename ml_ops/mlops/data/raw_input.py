"""Reading raw trips from Parquet, CSV or Delta paths, with schema checks at the boundary.

CSV columns arrive as text. Each is cast here, and a value that does not cast is reported
with its column, an example value, its file and the job parameter, before any later stage
(or Spark's own error) could name it less clearly.

Parquet written by pandas or pyarrow keeps timestamps in nanoseconds, which Spark refuses to
read. Such a file is read with Spark's ``nanosAsLong`` setting, and its nanosecond columns are
turned into timestamps (microseconds, Spark's precision) here.
"""
import logging

from pyspark.sql import functions as F
from taxi_fares.schema import RAW_COLUMNS, conform_raw, schema_problems

from mlops import platform
from mlops.errors import DataError
from mlops.observability.redaction import public_uri

logger = logging.getLogger(__name__)

_BAD_COUNT = "_bad_{}"
_BAD_EXAMPLE = "_example_{}"
_BAD_FILE = "_file_{}"
_SOURCE_FILE = "_mlops_source_file"
NANOS_AS_LONG = "spark.sql.legacy.parquet.nanosAsLong"
_NANOS_TYPE = "TIMESTAMP(NANOS"


def detect_format(spark, uri: str) -> str:
    local = platform.driver_path(uri)
    if local.is_dir() and is_delta_table(spark, platform.spark_path(uri)):
        return "delta"
    name = local.name.lower()
    if name.endswith((".csv", ".csv.gz")) or (local.is_dir() and any(local.glob("*.csv*"))):
        return "csv"
    return "parquet"


def is_delta_table(spark, path: str) -> bool:
    from pyspark.errors import AnalysisException

    try:
        spark.read.format("delta").load(path).schema
    except AnalysisException:
        return False
    return True


def read_raw_trips(spark, uri: str, parameter: str = "taxi_fares_raw_data"):
    """Read raw trips from ``uri`` and conform them to the raw schema, or say what is wrong."""
    shown = public_uri(uri)
    if not platform.driver_path(uri).exists():
        raise DataError(f"input path {shown} (parameter '{parameter}') does not exist")
    data_format = detect_format(spark, uri)
    reader = spark.read.format(data_format)
    if data_format == "csv":
        reader = reader.option("header", "true")
    try:
        frame = reader.load(platform.spark_path(uri))
    except Exception as error:
        if data_format != "parquet" or _NANOS_TYPE not in str(error):
            raise DataError(f"cannot read {data_format} input {shown} (parameter '{parameter}'): "
                            f"{type(error).__name__}") from error
        frame = _read_nanosecond_parquet(spark, uri, shown, parameter)
    nanoseconds = data_format == "parquet" and spark.conf.get(NANOS_AS_LONG, "false").lower() == "true"
    missing = [name for name in RAW_COLUMNS if name not in frame.columns]
    if missing:
        # Reported first and alone: the types of the other columns mean little until then.
        raise DataError(f"input {shown} (parameter '{parameter}') does not have the raw trip schema: "
                        + "; ".join(f"column '{name}' is missing" for name in missing))
    if data_format == "csv":
        frame = _cast_csv(frame, shown, parameter)
    if nanoseconds:
        frame = _nanoseconds_to_timestamps(frame)
    problems = schema_problems(frame.schema)
    if problems:
        raise DataError(f"input {shown} (parameter '{parameter}') does not have the raw trip schema: "
                        + "; ".join(problems))
    return conform_raw(frame)


def _read_nanosecond_parquet(spark, uri: str, shown: str, parameter: str):
    """The Parquet input with its nanosecond timestamps read as longs (nanoseconds since the epoch)."""
    # Left on for the session: the files are read again when the plan runs, and the setting only
    # changes how nanosecond columns are read, which otherwise fail.
    spark.conf.set(NANOS_AS_LONG, "true")
    try:
        frame = spark.read.parquet(platform.spark_path(uri))
    except Exception as error:
        raise DataError(f"cannot read parquet input {shown} (parameter '{parameter}'): it has nanosecond "
                        f"timestamps, and reading them as {NANOS_AS_LONG} failed too: "
                        f"{type(error).__name__}; write it with microsecond timestamps "
                        "(pandas: df.to_parquet(path, coerce_timestamps='us'))") from error
    logger.info("input %s has nanosecond timestamps; they are read at microsecond precision", shown)
    return frame


def _nanoseconds_to_timestamps(frame):
    """Raw timestamp columns that arrived as nanosecond longs (under ``nanosAsLong``), as timestamps."""
    longs = {field.name for field in frame.schema.fields if field.dataType.typeName() == "long"}
    return frame.select(*[
        F.expr(f"timestamp_micros(div(`{name}`, 1000))").alias(name)
        if name in longs and RAW_COLUMNS.get(name) == "timestamp" else F.col(name)
        for name in frame.columns])


def _try_cast(name: str, kind: str):
    return F.expr(f"try_cast(`{name}` AS {kind})")


def _cast_csv(frame, shown: str, parameter: str):
    """Cast every raw column, after one pass that finds values that do not cast."""
    checks = []
    for name, kind in RAW_COLUMNS.items():
        failed = F.col(name).isNotNull() & (F.trim(F.col(name)) != "") & _try_cast(name, kind).isNull()
        checks += [F.sum(failed.cast("long")).alias(_BAD_COUNT.format(name)),
                   _first_where(failed, F.col(name)).alias(_BAD_EXAMPLE.format(name)),
                   _first_where(failed, F.col(_SOURCE_FILE)).alias(_BAD_FILE.format(name))]
    # The file source's metadata column names each row's file (deterministic, unlike input_file_name).
    found = frame.withColumn(_SOURCE_FILE, F.col("_metadata.file_path")).select(*checks).first()
    problems = [f"column '{name}' has {found[_BAD_COUNT.format(name)]} value(s) that are not {kind}, "
                f"e.g. {found[_BAD_EXAMPLE.format(name)]!r} in {_file_name(found[_BAD_FILE.format(name)])}"
                for name, kind in RAW_COLUMNS.items() if found[_BAD_COUNT.format(name)]]
    if problems:
        raise DataError(f"CSV input {shown} (parameter '{parameter}'): " + "; ".join(problems))
    return frame.select(*[_try_cast(name, kind).alias(name) for name, kind in RAW_COLUMNS.items()])


def _first_where(condition, value):
    return F.first(F.when(condition, value), ignorenulls=True)


def _file_name(uri) -> str:
    return public_uri(uri) if uri else "an unknown file"
