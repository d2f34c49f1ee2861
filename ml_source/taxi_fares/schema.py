"""The raw trip schema of the Databricks dataset ``nyctaxi-with-zipcodes/subsampled``."""
import logging

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

logger = logging.getLogger(__name__)

RAW_COLUMNS = {
    "tpep_pickup_datetime": "timestamp",
    "tpep_dropoff_datetime": "timestamp",
    "trip_distance": "double",
    "fare_amount": "double",
    "pickup_zip": "int",
    "dropoff_zip": "int",
}

TRIP_ID = "trip_id"

_SPARK_TYPES = {"timestamp": T.TimestampType, "double": T.DoubleType, "int": T.IntegerType}

# Types a real export may carry that cast to the expected type without losing meaning.
_COMPATIBLE_TYPES = {
    "timestamp": (T.TimestampType, T.TimestampNTZType),
    "double": (T.DoubleType, T.FloatType, T.DecimalType),
    "int": (T.IntegerType, T.LongType, T.ShortType, T.ByteType),
}


def raw_schema() -> T.StructType:
    """The raw trip schema as a Spark StructType (all columns nullable, as in the source)."""
    return T.StructType([T.StructField(name, _SPARK_TYPES[kind](), nullable=True)
                         for name, kind in RAW_COLUMNS.items()])


def schema_problems(schema: T.StructType) -> list[str]:
    """One message per raw column that is missing or has an incompatible type; empty when usable."""
    found = {field.name: field.dataType for field in schema.fields}
    problems = []
    for name, expected in RAW_COLUMNS.items():
        if name not in found:
            problems.append(f"column '{name}' is missing")
        elif not isinstance(found[name], _COMPATIBLE_TYPES[expected]):
            problems.append(f"column '{name}' has type {found[name].simpleString()}, expected {expected}")
    return problems


def conform_raw(df: DataFrame) -> DataFrame:
    """The six raw columns cast to their exact types, in schema order; other columns are dropped."""
    problems = schema_problems(df.schema)
    if problems:
        raise ValueError("data does not have the raw trip schema: " + "; ".join(problems))
    return df.select(*[F.col(name).cast(kind).alias(name) for name, kind in RAW_COLUMNS.items()])


def trip_id_column():
    """A deterministic long id: xxhash64 of the six raw columns at their exact types.

    Casting first makes the id independent of compatible input types (an int64 zip hashes like an int).
    Trips that are identical in all six columns share an id.
    """
    return F.xxhash64(*[F.col(name).cast(kind) for name, kind in RAW_COLUMNS.items()])


def with_trip_id(df: DataFrame) -> DataFrame:
    """``df`` with a ``trip_id`` column (replaced if present)."""
    return df.withColumn(TRIP_ID, trip_id_column())
