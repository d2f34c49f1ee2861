import datetime
import decimal

import pytest
from pyspark.sql import types as T

from taxi_fares.schema import RAW_COLUMNS, TRIP_ID, conform_raw, raw_schema, schema_problems, with_trip_id

PICKUP = datetime.datetime(2016, 2, 13, 10, 0, 0)
DROPOFF = datetime.datetime(2016, 2, 13, 10, 12, 30)


def test_raw_columns_follow_the_dataset_order_and_types():
    assert list(RAW_COLUMNS.items()) == [
        ("tpep_pickup_datetime", "timestamp"), ("tpep_dropoff_datetime", "timestamp"),
        ("trip_distance", "double"), ("fare_amount", "double"), ("pickup_zip", "int"), ("dropoff_zip", "int")]


def test_raw_schema_matches_raw_columns():
    schema = raw_schema()
    found = [(field.name, field.dataType.simpleString()) for field in schema.fields]
    assert found == list(RAW_COLUMNS.items())
    assert schema_problems(schema) == []


def test_compatible_types_are_accepted():
    schema = T.StructType([
        T.StructField("tpep_pickup_datetime", T.TimestampNTZType()),
        T.StructField("tpep_dropoff_datetime", T.TimestampType()),
        T.StructField("trip_distance", T.FloatType()),
        T.StructField("fare_amount", T.DecimalType(10, 2)),
        T.StructField("pickup_zip", T.LongType()),
        T.StructField("dropoff_zip", T.ShortType()),
        T.StructField("extra", T.StringType()),
    ])
    assert schema_problems(schema) == []


def test_missing_and_mistyped_columns_are_named_with_types():
    schema = T.StructType([
        T.StructField("tpep_pickup_datetime", T.StringType()),
        T.StructField("tpep_dropoff_datetime", T.DateType()),
        T.StructField("trip_distance", T.IntegerType()),
        T.StructField("pickup_zip", T.StringType()),
        T.StructField("dropoff_zip", T.DoubleType()),
    ])
    assert schema_problems(schema) == [
        "column 'tpep_pickup_datetime' has type string, expected timestamp",
        "column 'tpep_dropoff_datetime' has type date, expected timestamp",
        "column 'trip_distance' has type int, expected double",
        "column 'fare_amount' is missing",
        "column 'pickup_zip' has type string, expected int",
        "column 'dropoff_zip' has type double, expected int",
    ]


def export_like_frame(spark):
    """A frame as a real export may look: long zips, decimal fare, NTZ timestamps, an extra column."""
    schema = T.StructType([
        T.StructField("vendor", T.StringType()),
        T.StructField("pickup_zip", T.LongType()),
        T.StructField("tpep_pickup_datetime", T.TimestampNTZType()),
        T.StructField("tpep_dropoff_datetime", T.TimestampNTZType()),
        T.StructField("trip_distance", T.FloatType()),
        T.StructField("fare_amount", T.DecimalType(10, 2)),
        T.StructField("dropoff_zip", T.LongType()),
    ])
    rows = [("CMT", 10001, PICKUP, DROPOFF, 1.5, decimal.Decimal("9.50"), 10019),
            ("VTS", 11430, PICKUP, DROPOFF, 17.25, decimal.Decimal("52.00"), 10036)]
    return spark.createDataFrame(rows, schema)


def test_conform_raw_selects_and_casts_the_six_columns(spark):
    conformed = conform_raw(export_like_frame(spark))
    assert conformed.schema == raw_schema()
    rows = [tuple(row) for row in conformed.orderBy("pickup_zip").collect()]
    assert rows == [(PICKUP, DROPOFF, 1.5, 9.5, 10001, 10019), (PICKUP, DROPOFF, 17.25, 52.0, 11430, 10036)]


def test_conform_raw_refuses_an_unusable_schema(spark):
    frame = export_like_frame(spark).drop("fare_amount")
    with pytest.raises(ValueError,
                       match="does not have the raw trip schema: column 'fare_amount' is missing"):
        conform_raw(frame)


def raw_rows(spark, rows):
    return spark.createDataFrame(rows, raw_schema())


def test_trip_id_is_a_deterministic_long_that_separates_trips(spark):
    trips = raw_rows(spark, [
        (PICKUP, DROPOFF, 1.5, 9.5, 10001, 10019),
        (PICKUP, DROPOFF, 1.5, 9.75, 10001, 10019),
        (PICKUP, DROPOFF, 1.5, 9.5, 10001, 10036),
    ])
    first = [row[TRIP_ID] for row in with_trip_id(trips).collect()]
    second = [row[TRIP_ID] for row in with_trip_id(trips.repartition(3)).orderBy("fare_amount", "dropoff_zip")
              .collect()]
    assert with_trip_id(trips).schema[TRIP_ID].dataType == T.LongType()
    assert len(set(first)) == 3
    assert sorted(first) == sorted(second)


def test_trip_id_does_not_depend_on_compatible_input_types(spark):
    export = export_like_frame(spark)
    from_export = {row["pickup_zip"]: row[TRIP_ID] for row in with_trip_id(export).collect()}
    from_conformed = {row["pickup_zip"]: row[TRIP_ID] for row in with_trip_id(conform_raw(export)).collect()}
    assert from_export == from_conformed
