"""Reading raw trips from Parquet, CSV or Delta paths, with schema checks at the boundary."""
import logging

from pyspark.sql import functions as F
from taxi_fares.schema import RAW_COLUMNS, conform_raw, schema_problems

from mlops.errors import DataError
from mlops.tables import spark_path, to_local_path

logger = logging.getLogger(__name__)


def detect_format(uri: str) -> str:
    local = to_local_path(uri)
    if (local / "_delta_log").is_dir():
        return "delta"
    name = local.name.lower()
    if name.endswith((".csv", ".csv.gz")) or (local.is_dir() and any(local.glob("*.csv*"))):
        return "csv"
    return "parquet"


def read_raw_trips(spark, uri: str, parameter: str = "taxi_fares_raw_data"):
    """Read raw trips from ``uri`` and conform them to the raw schema, or say what is wrong."""
    local = to_local_path(uri)
    if not local.exists():
        raise DataError(f"input path {uri} (parameter '{parameter}') does not exist")
    data_format = detect_format(uri)
    reader = spark.read.format(data_format)
    if data_format == "csv":
        reader = reader.option("header", "true")
    try:
        frame = reader.load(spark_path(uri))
    except Exception as error:
        raise DataError(f"cannot read {data_format} input {uri} (parameter '{parameter}'): "
                        f"{type(error).__name__}: {str(error).splitlines()[0]}") from error
    if data_format == "csv":
        frame = _cast_csv(frame)
    problems = schema_problems(frame.schema)
    if problems:
        raise DataError(f"input {uri} (parameter '{parameter}') does not have the raw trip schema: "
                        + "; ".join(problems))
    return conform_raw(frame)


def _cast_csv(frame):
    """CSV columns are strings; cast the known ones so schema checks see real types."""
    missing = [name for name in RAW_COLUMNS if name not in frame.columns]
    if missing:
        return frame
    return frame.select(*[F.col(name).cast(kind).alias(name) for name, kind in RAW_COLUMNS.items()])
