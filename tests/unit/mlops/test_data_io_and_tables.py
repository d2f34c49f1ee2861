import datetime

import pytest
from pyspark.sql import functions as F
from taxi_fares.data import generate_trips

from mlops.data.raw_input import detect_format, read_raw_trips
from mlops.errors import DataError
from mlops.data.tables import TableStore


@pytest.fixture(scope="module")
def raw_trips(spark):
    return generate_trips(spark, 500, datetime.date(2016, 1, 1), datetime.date(2016, 1, 3), seed=5).cache()


def test_parquet_and_csv_exports_read_identically(spark, raw_trips, tmp_path):
    raw_trips.write.parquet(str(tmp_path / "trips.parquet"))
    raw_trips.write.option("header", "true").csv(str(tmp_path / "trips_csv"))
    from_parquet = read_raw_trips(spark, str(tmp_path / "trips.parquet"))
    from_csv = read_raw_trips(spark, str(tmp_path / "trips_csv"))
    assert detect_format(spark, str(tmp_path / "trips_csv")) == "csv"
    assert from_parquet.schema == from_csv.schema
    assert from_parquet.count() == from_csv.count() == raw_trips.count()
    assert from_csv.agg(F.round(F.sum("fare_amount"), 2)).first()[0] == \
        from_parquet.agg(F.round(F.sum("fare_amount"), 2)).first()[0]


def test_export_with_long_zips_and_extra_columns_is_conformed(spark, raw_trips, tmp_path):
    widened = raw_trips.withColumn("pickup_zip", F.col("pickup_zip").cast("long")) \
        .withColumn("vendor", F.lit("x"))
    widened.write.parquet(str(tmp_path / "export"))
    frame = read_raw_trips(spark, str(tmp_path / "export"))
    assert dict(frame.dtypes)["pickup_zip"] == "int"
    assert "vendor" not in frame.columns


def test_missing_path_names_the_parameter(spark, tmp_path):
    with pytest.raises(DataError, match="does not exist") as caught:
        read_raw_trips(spark, str(tmp_path / "nowhere.parquet"))
    assert "taxi_fares_raw_data" in str(caught.value)


def test_missing_column_is_named(spark, raw_trips, tmp_path):
    raw_trips.drop("fare_amount").write.parquet(str(tmp_path / "nofare"))
    with pytest.raises(DataError, match="fare_amount"):
        read_raw_trips(spark, str(tmp_path / "nofare"))


def test_mistyped_column_is_named(spark, raw_trips, tmp_path):
    raw_trips.withColumn("pickup_zip", F.concat(F.lit("z"), F.col("pickup_zip"))) \
        .write.parquet(str(tmp_path / "stringzip"))
    with pytest.raises(DataError, match="pickup_zip.*string"):
        read_raw_trips(spark, str(tmp_path / "stringzip"))


def test_csv_without_a_column_is_named(spark, raw_trips, tmp_path):
    raw_trips.drop("dropoff_zip").write.option("header", "true").csv(str(tmp_path / "csv"))
    with pytest.raises(DataError, match="dropoff_zip"):
        read_raw_trips(spark, str(tmp_path / "csv"))


def test_failed_write_leaves_the_previous_table(spark, mlops_home, tmp_path):
    store = TableStore(spark, str(tmp_path / "tables"))
    store.write(spark.range(4), "numbers")
    exploding = spark.range(10).withColumn(
        "boom", F.when(F.col("id") == 7, F.raise_error(F.lit("planted failure"))).otherwise(F.lit(1)))
    with pytest.raises(Exception, match="planted failure"):
        store.write(exploding, "numbers")
    assert store.read("numbers").count() == 4 and store.version("numbers") == 0


def test_missing_table_error_carries_the_hint(spark, tmp_path):
    store = TableStore(spark, str(tmp_path / "tables"))
    with pytest.raises(DataError, match="table 'trips' does not exist.*execute_feature_engineering=true"):
        store.read("trips", missing_hint="set execute_feature_engineering=true to build it")
