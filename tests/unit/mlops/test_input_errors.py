"""Bad input is named at the boundary: the column, an example value, the file and the parameter."""
import pytest

from mlops.config import TrainingConfig
from mlops.data.raw_input import read_raw_trips
from mlops.errors import ConfigError, DataError
from mlops.observability.redaction import register_secret

HEADER = "tpep_pickup_datetime,tpep_dropoff_datetime,trip_distance,fare_amount,pickup_zip,dropoff_zip"
GOOD_ROW = "2016-01-01 10:00:00,2016-01-01 10:12:00,2.5,11.5,10001,10002"


def write_csv(folder, *rows, header=HEADER):
    folder.mkdir()
    path = folder / "trips-part-1.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_text_in_a_numeric_column_names_column_value_file_and_parameter(spark, tmp_path):
    write_csv(tmp_path / "export", GOOD_ROW, "2016-01-01 11:00:00,2016-01-01 11:20:00,3.0,$17.74,10001,10003",
              GOOD_ROW.replace("11.5", "n/a"))
    with pytest.raises(DataError) as caught:
        read_raw_trips(spark, str(tmp_path / "export"))
    message = str(caught.value)
    assert "(parameter 'taxi_fares_raw_data')" in message
    assert "column 'fare_amount' has 2 value(s) that are not double, e.g. '$17.74' in " in message
    assert "trips-part-1.csv" in message
    assert "trip_distance" not in message and "CAST_INVALID_INPUT" not in message


def test_a_missing_column_is_reported_first_and_alone(spark, tmp_path):
    header = HEADER.replace(",fare_amount", "")
    write_csv(tmp_path / "export", "2016-01-01 10:00:00,not-a-time,2.5,10001,10002", header=header)
    with pytest.raises(DataError) as caught:
        read_raw_trips(spark, str(tmp_path / "export"))
    assert str(caught.value).endswith("does not have the raw trip schema: column 'fare_amount' is missing")


def test_empty_csv_values_are_nulls_not_errors(spark, tmp_path):
    write_csv(tmp_path / "export", GOOD_ROW, GOOD_ROW.replace(",2.5,", ",,"))
    trips = read_raw_trips(spark, str(tmp_path / "export"))
    assert [row.trip_distance for row in trips.orderBy("trip_distance").collect()] == [None, 2.5]


def test_an_input_path_with_a_query_string_is_shown_without_it(spark, tmp_path):
    missing = f"{tmp_path}/nowhere?sv=1&token2=abcdef-not-shown"
    with pytest.raises(DataError) as caught:
        read_raw_trips(spark, missing)
    assert str(caught.value) == \
        f"input path {tmp_path}/nowhere (parameter 'taxi_fares_raw_data') does not exist"


def test_a_lightgbm_setting_is_reported_by_its_job_parameter():
    with pytest.raises(ConfigError, match="^parameter 'training_num_rounds' must be an integer >= 1, got 0$"):
        TrainingConfig.from_params({"training_num_rounds": "0"})
    with pytest.raises(ConfigError, match="^parameter 'training_learning_rate' must be a positive number"):
        TrainingConfig.from_params({"training_learning_rate": "-1"})


def test_a_config_error_never_echoes_a_secret():
    planted = "plain-secret-config-value-5e1f"
    register_secret(planted)
    with pytest.raises(ConfigError) as caught:
        TrainingConfig.from_params({"training_num_leaves": planted})
    assert str(caught.value) == "parameter 'training_num_leaves' must be an integer, got ***"


@pytest.mark.parametrize("params, message", [
    ({"held_out_gap_minutes": "30"},
     "parameter 'held_out_gap_minutes' must be at least 60 (the longest feature window), got 30"),
    ({"training_data_start_date": "2016-01-01", "training_data_end_date": "2016-01-01",
      "test_fraction": "0.85", "held_out_gap_minutes": "240"},
     "parameters 'test_fraction' and 'held_out_gap_minutes': a held-out fraction of 0.85 and a gap of 240 "
     "minutes leave no training time in 2016-01-01..2016-01-01"),
])
def test_a_held_out_range_that_cannot_evaluate_names_its_parameters(params, message):
    with pytest.raises(ConfigError) as caught:
        TrainingConfig.from_params(params)
    assert str(caught.value) == message


def pandas_export(folder, rows):
    """Raw trips written the way a data scientist's laptop writes them: pandas, nanosecond timestamps."""
    import pandas as pd

    folder.mkdir()
    frame = pd.DataFrame(rows, columns=HEADER.split(","))
    for name in ("tpep_pickup_datetime", "tpep_dropoff_datetime"):
        frame[name] = pd.to_datetime(frame[name], format="ISO8601")
    frame = frame.astype({"trip_distance": "float64", "fare_amount": "float64"})
    frame.astype({"pickup_zip": "int32", "dropoff_zip": "int32"}).to_parquet(folder / "trips.parquet")
    return folder


def test_a_pandas_parquet_export_with_nanosecond_timestamps_is_read(spark, tmp_path):
    import datetime

    import pyarrow.parquet

    folder = pandas_export(tmp_path / "export", [
        ["2016-01-01 10:00:00.123456789", "2016-01-01 10:12:00", 2.5, 11.5, 10001, 10002],
        ["2016-01-01 11:00:00", "2016-01-01 11:20:00", 3.0, 17.5, 10001, 10003]])
    assert "timestamp[ns]" in str(pyarrow.parquet.read_schema(folder / "trips.parquet"))

    rows = read_raw_trips(spark, str(folder)).orderBy("tpep_pickup_datetime").collect()

    assert [row.tpep_pickup_datetime for row in rows] == [datetime.datetime(2016, 1, 1, 10, 0, 0, 123456),
                                                          datetime.datetime(2016, 1, 1, 11)]
    assert [row.tpep_dropoff_datetime for row in rows] == [datetime.datetime(2016, 1, 1, 10, 12),
                                                           datetime.datetime(2016, 1, 1, 11, 20)]
    assert [row.fare_amount for row in rows] == [11.5, 17.5]


def test_an_input_without_rows_says_so_rather_than_blaming_the_dates(spark, tmp_path):
    import datetime
    import types

    from mlops.data.tables import TableStore
    from mlops.stages.feature_tables import TRAINING, build_feature_tables

    folder = pandas_export(tmp_path / "export", [])
    run = types.SimpleNamespace(spark=spark, tables=TableStore(spark, str(tmp_path / "tables")))
    expected = f"^input {folder} \\(parameter 'taxi_fares_raw_data'\\) holds no rows$"
    with pytest.raises(DataError, match=expected):
        build_feature_tables(run, str(folder), datetime.date(2016, 1, 1), datetime.date(2016, 1, 31),
                             TRAINING, "training_data")


def test_the_generator_s_late_labels_match_the_request_ids_scoring_gives_the_trips(spark, tmp_path):
    import datetime

    from pyspark.sql import functions as F
    from taxi_fares.schema import with_trip_id

    from mlops.data.generator import generate
    from mlops.data.tables import TableStore
    from mlops.inference import engine

    tables = TableStore(spark, str(tmp_path / "tables"))
    first, second = datetime.date(2016, 1, 1), datetime.date(2016, 1, 2)
    generate(spark, 300, first, first, str(tmp_path / "raw"), seed=1, labels=(tables, "labels"))
    generate(spark, 200, second, second, str(tmp_path / "raw"), seed=2, append=True,
             labels=(tables, "labels"))

    trips = with_trip_id(read_raw_trips(spark, str(tmp_path / "raw")))
    scored = trips.select(engine.request_id_column().alias(engine.REQUEST_ID),
                          F.col("fare_amount").alias("fare"))
    joined = scored.join(tables.read("labels"), engine.REQUEST_ID, "full_outer")
    assert tables.read("labels").count() == scored.distinct().count() >= 495
    assert joined.where(F.col("fare").isNull() | F.col("fare_amount").isNull()
                        | (F.col("fare") != F.col("fare_amount"))).count() == 0
