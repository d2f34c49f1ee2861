import datetime

import numpy as np
import pandas as pd
import pytest

from taxi_fares.data import JFK_FLAT_FARE, JFK_ZIP, ZIPS, DriftSettings, generate_trips
from taxi_fares.evaluation import fit_fare_heuristic
from taxi_fares.features import clean_trips
from taxi_fares.schema import RAW_COLUMNS

START = datetime.date(2016, 1, 4)
END = datetime.date(2016, 1, 17)
ROWS = 5000


def generate(spark, rows=ROWS, **kwargs):
    kwargs.setdefault("seed", 7)
    return generate_trips(spark, rows, START, END, **kwargs)


def to_pandas(frame) -> pd.DataFrame:
    data = frame.toPandas()
    data["duration_minutes"] = (
        data["tpep_dropoff_datetime"] - data["tpep_pickup_datetime"]).dt.total_seconds() / 60
    return data


@pytest.fixture(scope="module")
def valid_trips(spark):
    return to_pandas(generate(spark, invalid_fraction=0.0))


def test_generated_trips_have_exactly_the_raw_schema_and_row_count(spark):
    trips = generate(spark, rows=1234)
    assert [(field.name, field.dataType.simpleString()) for field in trips.schema.fields] == list(
        RAW_COLUMNS.items())
    assert trips.count() == 1234


def test_same_seed_gives_the_same_trips_and_another_seed_does_not(spark):
    first = generate(spark, rows=500, seed=3).toPandas()
    again = generate(spark, rows=500, seed=3).toPandas()
    other = generate(spark, rows=500, seed=4).toPandas()
    pd.testing.assert_frame_equal(first, again)
    assert (first["fare_amount"] != other["fare_amount"]).mean() > 0.9


def test_a_row_does_not_depend_on_how_many_rows_are_generated(spark):
    # Different row counts split spark.range into different partitions.
    small = generate(spark, rows=300).toPandas()
    large = generate(spark, rows=900).toPandas()
    pd.testing.assert_frame_equal(small, large.iloc[:300])


def test_pickups_cover_the_date_range_with_a_daily_profile(valid_trips):
    pickups = valid_trips["tpep_pickup_datetime"]
    assert pickups.min() >= pd.Timestamp(START)
    assert pickups.max() < pd.Timestamp(END + datetime.timedelta(days=1))
    assert pickups.dt.date.nunique() == (END - START).days + 1
    per_hour = pickups.dt.hour.value_counts().reindex(range(24), fill_value=0)
    assert per_hour[3:6].sum() * 3 < per_hour[17:20].sum()
    assert per_hour[7:10].sum() > 2 * per_hour[2:5].sum()


def test_distances_durations_and_fares_are_in_realistic_ranges(valid_trips):
    assert valid_trips["trip_distance"].between(0.1, 40.0).all()
    assert 1.5 < valid_trips["trip_distance"].median() < 2.2
    assert valid_trips["duration_minutes"].between(1.0, 240.0).all()
    assert 6 < valid_trips["duration_minutes"].median() < 20
    assert valid_trips["fare_amount"].between(2.5, 250.0).all()
    assert 7 < valid_trips["fare_amount"].median() < 16
    cents = valid_trips["fare_amount"] * 100
    assert np.allclose(cents, cents.round())


def is_jfk_manhattan(trips):
    return (((trips["pickup_zip"] == JFK_ZIP) & trips["dropoff_zip"].between(10001, 10282))
            | ((trips["dropoff_zip"] == JFK_ZIP) & trips["pickup_zip"].between(10001, 10282)))


def test_metered_fares_follow_the_meter(valid_trips):
    metered = valid_trips[~is_jfk_manhattan(valid_trips)]
    heuristic = fit_fare_heuristic(metered.rename(columns={"duration_minutes": "trip_duration_minutes"}))
    # Demand follows the surge, so more trips pay above the meter: the fitted rate sits above 2.5.
    assert 2.5 < heuristic.per_mile < 3.2
    assert 0.25 < heuristic.per_minute < 0.45
    assert 2.5 < heuristic.base < 5.0


def test_jfk_trips_are_long_and_pay_the_flat_fare_to_manhattan(valid_trips):
    touches_jfk = (valid_trips["pickup_zip"] == JFK_ZIP) | (valid_trips["dropoff_zip"] == JFK_ZIP)
    assert touches_jfk.sum() > 50
    assert 13 < valid_trips.loc[touches_jfk, "trip_distance"].median() < 22
    flat = valid_trips.loc[is_jfk_manhattan(valid_trips), "fare_amount"]
    assert len(flat) > 30
    assert flat.between(JFK_FLAT_FARE - 2, JFK_FLAT_FARE + 3).all()


def test_zips_are_nyc_zips_with_skewed_popularity(valid_trips):
    for column in ("pickup_zip", "dropoff_zip"):
        counts = valid_trips[column].value_counts()
        assert set(counts.index) <= set(ZIPS)
        assert 25 <= len(counts) <= 30
        assert counts.index.min() >= 10001 and counts.index.max() <= 11697
        assert counts.iloc[0] > 5 * counts.iloc[-5:].mean()


def test_no_invalid_rows_when_the_fraction_is_zero(spark):
    trips = generate(spark, rows=2000, invalid_fraction=0.0)
    assert clean_trips(trips).count() == 2000


def test_the_invalid_fraction_of_rows_is_broken_in_every_way(spark):
    trips = to_pandas(generate(spark, invalid_fraction=0.1))
    invalid = {
        "zero or negative distance": trips["trip_distance"] <= 0,
        "zero or negative fare": trips["fare_amount"] <= 0,
        "dropoff before pickup": trips["duration_minutes"] < 0,
        "null pickup zip": trips["pickup_zip"].isna(),
        "null dropoff zip": trips["dropoff_zip"].isna(),
    }
    for kind, mask in invalid.items():
        assert mask.sum() > 20, kind
    any_invalid = pd.concat(invalid, axis=1).any(axis=1)
    assert 0.08 * ROWS < any_invalid.sum() < 0.12 * ROWS


def test_fare_scale_multiplies_fares_of_the_same_trips(spark, valid_trips):
    drifted = to_pandas(generate(spark, invalid_fraction=0.0, drift=DriftSettings(fare_scale=1.5)))
    pd.testing.assert_series_equal(drifted["trip_distance"], valid_trips["trip_distance"])
    ratio = drifted["fare_amount"] / valid_trips["fare_amount"]
    assert ratio.between(1.49, 1.51).all()


def test_distance_scale_stretches_distances(spark, valid_trips):
    drifted = to_pandas(generate(spark, invalid_fraction=0.0, drift=DriftSettings(distance_scale=2.0)))
    assert 1.9 < drifted["trip_distance"].median() / valid_trips["trip_distance"].median() < 2.1
    assert drifted["fare_amount"].mean() > 1.5 * valid_trips["fare_amount"].mean()


def test_hour_shift_moves_every_pickup_hour(spark, valid_trips):
    drifted = to_pandas(generate(spark, invalid_fraction=0.0, drift=DriftSettings(hour_shift=6)))
    shift = (drifted["tpep_pickup_datetime"].dt.hour - valid_trips["tpep_pickup_datetime"].dt.hour) % 24
    assert (shift == 6).all()


def test_zip_shift_changes_which_zips_are_popular(spark, valid_trips):
    drifted = to_pandas(generate(spark, invalid_fraction=0.0, drift=DriftSettings(zip_shift=1)))
    assert valid_trips["pickup_zip"].mode()[0] == ZIPS[0]
    assert drifted["pickup_zip"].mode()[0] == ZIPS[1]
    assert (drifted["dropoff_zip"] != valid_trips["dropoff_zip"]).all()


@pytest.mark.parametrize("settings, message", [
    (DriftSettings(distance_scale=0.0), "distance_scale must be a positive finite number, got 0.0"),
    (DriftSettings(fare_scale=-1.0), "fare_scale must be a positive finite number, got -1.0"),
    (DriftSettings(fare_scale=float("nan")), "fare_scale must be a positive finite number, got nan"),
    (DriftSettings(distance_scale="2"), "distance_scale must be a number, got '2'"),
    (DriftSettings(hour_shift=1.5), "hour_shift must be an integer, got 1.5"),
    (DriftSettings(zip_shift=None), "zip_shift must be an integer, got None"),
])
def test_bad_drift_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        settings.validate()


def test_generate_trips_validates_the_drift_settings(spark):
    with pytest.raises(ValueError, match="fare_scale must be a positive finite number, got 0"):
        generate(spark, drift=DriftSettings(fare_scale=0))


@pytest.mark.parametrize("arguments, message", [
    (dict(rows=0), "rows must be a positive integer, got 0"),
    (dict(rows=-5), "rows must be a positive integer, got -5"),
    (dict(rows=10.0), "rows must be a positive integer, got 10.0"),
    (dict(start_date=END, end_date=START), "start_date 2016-01-17 is after end_date 2016-01-04"),
    (dict(start_date="2016-01-01"), "start_date must be a datetime.date, got '2016-01-01'"),
    (dict(end_date=datetime.datetime(2016, 1, 5)),
     r"end_date must be a datetime.date, got datetime.datetime"),
    (dict(invalid_fraction=0.5), r"invalid_fraction must be in \[0, 0.5\), got 0.5"),
    (dict(invalid_fraction=-0.01), r"invalid_fraction must be in \[0, 0.5\), got -0.01"),
    (dict(seed="1"), "seed must be an integer, got '1'"),
])
def test_bad_generator_arguments_are_refused(spark, arguments, message):
    values = dict(rows=100, start_date=START, end_date=END) | arguments
    with pytest.raises(ValueError, match=message):
        generate_trips(spark, **values)


def test_fares_surge_by_zone_and_time_and_recent_fares_reveal_it(spark):
    from taxi_fares.data import SURGE_BLOCK_SECONDS

    trips = to_pandas(generate(spark, rows=40_000, invalid_fraction=0.0))
    trips = trips[trips["trip_distance"].between(1.0, 3.0)].copy()
    trips["block"] = trips["tpep_pickup_datetime"].astype("int64") // 10**9 // SURGE_BLOCK_SECONDS
    trips["per_mile"] = trips["fare_amount"] / trips["trip_distance"]
    by_zone_and_block = trips.groupby(["pickup_zip", "block"])["per_mile"]
    busy = by_zone_and_block.transform("size") >= 6
    # Within a zone and block prices move together: the block mean explains much of the spread.
    explained = 1 - (trips["per_mile"] - by_zone_and_block.transform("mean"))[busy].var() \
        / trips["per_mile"][busy].var()
    assert explained > 0.3
    # Shocked blocks draw more trips: demand and price rise together.
    blocks = trips.groupby(["pickup_zip", "block"]).agg(trips=("per_mile", "size"),
                                                        price=("per_mile", "mean"))
    assert blocks[blocks["trips"] >= 3].corr().loc["trips", "price"] > 0.05
