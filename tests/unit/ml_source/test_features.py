import datetime

import pandas as pd
import pytest
from pyspark.sql import functions as F

from taxi_fares.data import generate_trips
from taxi_fares.features import (
    DROPOFF_FEATURE_KEYS, FEATURE_COLUMNS, LABEL_COLUMN, PICKUP, PICKUP_FEATURE_KEYS, TRIP_KEY_COLUMNS,
    TimeSplit, build_training_set, clean_trips, dropoff_zip_features, filter_date_range, pickup_zip_features,
    split_by_time, trip_features)
from taxi_fares.schema import TRIP_ID, raw_schema, with_trip_id

DAY = datetime.date(2016, 2, 13)  # a Saturday


def at(hour, minute, second=0, day=DAY):
    return datetime.datetime(day.year, day.month, day.day, hour, minute, second)


def raw_frame(spark, rows):
    return spark.createDataFrame(rows, raw_schema())


# Hand-built trips: (name, pickup, dropoff, distance, fare, pickup_zip, dropoff_zip).
HAND_TRIPS = [
    ("A", at(10, 0), at(10, 10), 1.0, 10.0, 10001, 10002),
    ("B", at(10, 5), at(10, 20), 2.0, 20.0, 10001, 10002),
    ("C", at(10, 40), at(11, 5), 3.0, 30.0, 10001, 10003),
    ("D", at(10, 1), at(10, 14), 4.0, 7.0, 10002, 10001),
    ("E", at(10, 3), at(10, 15), 5.0, 9.0, 10002, 10001),   # dropoff exactly on a boundary
    ("F", at(11, 20), at(11, 50), 6.0, 12.0, 10001, 10003),
    ("G", at(10, 30), at(10, 50), 7.0, 11.0, 10002, 10001),  # pickup exactly on a boundary
]


@pytest.fixture(scope="module")
def hand_trips(spark):
    return raw_frame(spark, [trip[1:] for trip in HAND_TRIPS])


def test_feature_keys_and_columns():
    assert PICKUP_FEATURE_KEYS == ("pickup_zip", "feature_timestamp")
    assert DROPOFF_FEATURE_KEYS == ("dropoff_zip", "feature_timestamp")
    assert FEATURE_COLUMNS == (
        "trip_distance", "trip_duration_minutes", "pickup_hour", "pickup_day_of_week", "is_weekend",
        "pickup_zip", "dropoff_zip", "mean_fare_window_1h_pickup_zip", "count_trips_window_1h_pickup_zip",
        "count_trips_window_30m_dropoff_zip")
    assert LABEL_COLUMN == "fare_amount"
    assert TRIP_KEY_COLUMNS == ("trip_id", "tpep_pickup_datetime", "pickup_zip", "dropoff_zip")


def test_clean_trips_drops_each_kind_of_bad_row(spark):
    good = (at(9, 0), at(9, 10), 1.2, 8.5, 10001, 10019)
    rows = [
        good,
        (at(9, 1), at(9, 11), 0.4, 4.0, 10003, 10001),
        (None, at(9, 10), 1.2, 8.5, 10001, 10019),
        (at(9, 0), None, 1.2, 8.5, 10001, 10019),
        (at(9, 0), at(9, 10), None, 8.5, 10001, 10019),
        (at(9, 0), at(9, 10), 1.2, None, 10001, 10019),
        (at(9, 0), at(9, 10), 1.2, 8.5, None, 10019),
        (at(9, 0), at(9, 10), 1.2, 8.5, 10001, None),
        (at(9, 0), at(9, 10), 0.0, 8.5, 10001, 10019),
        (at(9, 0), at(9, 10), -1.2, 8.5, 10001, 10019),
        (at(9, 0), at(9, 10), 1.2, 0.0, 10001, 10019),
        (at(9, 0), at(9, 10), 1.2, -8.5, 10001, 10019),
        (at(9, 0), at(9, 0), 1.2, 8.5, 10001, 10019),
        (at(9, 10), at(9, 0), 1.2, 8.5, 10001, 10019),
    ]
    cleaned = clean_trips(raw_frame(spark, rows))
    assert sorted(tuple(row) for row in cleaned.collect()) == sorted(rows[:2])


def test_filter_date_range_is_inclusive_on_pickup_dates(spark):
    day = datetime.date
    rows = [
        (datetime.datetime(2015, 12, 31, 23, 59, 59), at(0, 10, day=day(2016, 1, 1)), 1.0, 5.0, 10001, 10001),
        (datetime.datetime(2016, 1, 1, 0, 0, 0), at(0, 10, day=day(2016, 1, 1)), 1.0, 6.0, 10001, 10001),
        (datetime.datetime(2016, 1, 31, 23, 59, 59), at(0, 10, day=day(2016, 2, 1)), 1.0, 7.0, 10001, 10001),
        (datetime.datetime(2016, 2, 1, 0, 0, 0), at(0, 10, day=day(2016, 2, 1)), 1.0, 8.0, 10001, 10001),
    ]
    kept = filter_date_range(raw_frame(spark, rows), day(2016, 1, 1), day(2016, 1, 31))
    assert sorted(row["fare_amount"] for row in kept.collect()) == [6.0, 7.0]
    single_day = filter_date_range(raw_frame(spark, rows), day(2016, 2, 1), day(2016, 2, 1))
    assert [row["fare_amount"] for row in single_day.collect()] == [8.0]


@pytest.mark.parametrize("start, end, message", [
    (datetime.date(2016, 2, 1), datetime.date(2016, 1, 1),
     "start_date 2016-02-01 is after end_date 2016-01-01"),
    ("2016-01-01", datetime.date(2016, 1, 1), "start_date must be a datetime.date, got '2016-01-01'"),
    (datetime.date(2016, 1, 1), None, "end_date must be a datetime.date, got None"),
])
def test_filter_date_range_refuses_bad_dates(spark, start, end, message):
    with pytest.raises(ValueError, match=message):
        filter_date_range(raw_frame(spark, []), start, end)


def test_pickup_zip_features_match_hand_computed_windows(hand_trips):
    rows = {(row["pickup_zip"], row["feature_timestamp"]):
            (row["mean_fare_window_1h_pickup_zip"], row["count_trips_window_1h_pickup_zip"])
            for row in pickup_zip_features(hand_trips).collect()}
    # Each value: trips of that pickup zip dropped off in [T - 1h, T).
    expected = {
        (10001, at(10, 15)): (10.0, 1),   # A
        (10001, at(10, 30)): (15.0, 2),   # A, B
        (10001, at(10, 45)): (15.0, 2),   # A, B
        (10001, at(11, 0)): (15.0, 2),    # A, B (C drops off at 11:05)
        (10001, at(11, 15)): (25.0, 2),   # B, C (A dropped off before 10:15)
        (10001, at(11, 30)): (30.0, 1),   # C
        (10001, at(11, 45)): (30.0, 1),   # C
        (10001, at(12, 0)): (21.0, 2),    # C, F
        (10001, at(12, 15)): (12.0, 1),   # F
        (10001, at(12, 30)): (12.0, 1),
        (10001, at(12, 45)): (12.0, 1),
        (10002, at(10, 15)): (7.0, 1),    # D (E drops off at 10:15, not before)
        (10002, at(10, 30)): (8.0, 2),    # D, E
        (10002, at(10, 45)): (8.0, 2),    # D, E
        (10002, at(11, 0)): (9.0, 3),     # D, E, G
        (10002, at(11, 15)): (10.0, 2),   # E, G
        (10002, at(11, 30)): (11.0, 1),   # G
        (10002, at(11, 45)): (11.0, 1),   # G
    }
    assert rows == expected


def test_dropoff_zip_features_match_hand_computed_windows(hand_trips):
    rows = {(row["dropoff_zip"], row["feature_timestamp"]): row["count_trips_window_30m_dropoff_zip"]
            for row in dropoff_zip_features(hand_trips).collect()}
    # Each value: trips of that dropoff zip dropped off in [T - 30min, T).
    expected = {
        (10002, at(10, 15)): 1, (10002, at(10, 30)): 2, (10002, at(10, 45)): 1,          # A, B
        (10003, at(11, 15)): 1, (10003, at(11, 30)): 1,                                  # C
        (10003, at(12, 0)): 1, (10003, at(12, 15)): 1,                                   # F
        (10001, at(10, 15)): 1, (10001, at(10, 30)): 2, (10001, at(10, 45)): 1,          # D, E
        (10001, at(11, 0)): 1, (10001, at(11, 15)): 1,                                   # G
    }
    assert rows == expected


def test_trip_features_add_calendar_and_duration(spark):
    monday = datetime.date(2016, 2, 15)
    trips = raw_frame(spark, [
        (at(23, 50, day=monday), at(0, 5, 30, day=datetime.date(2016, 2, 16)), 3.0, 14.0, 10001, 10019),
        (at(8, 0), at(8, 12, 45), 1.0, 7.0, 10019, 10001),
    ])
    rows = sorted(trip_features(trips).collect(), key=lambda row: row["fare_amount"])
    assert [(row["pickup_hour"], row["pickup_day_of_week"], row["is_weekend"]) for row in rows] == [
        (8, 7, 1), (23, 2, 0)]
    assert [row["trip_duration_minutes"] for row in rows] == [12.75, 15.5]
    ids = {row["fare_amount"]: row[TRIP_ID] for row in with_trip_id(trips).collect()}
    assert [row[TRIP_ID] for row in rows] == [ids[7.0], ids[14.0]]


def test_training_set_joins_features_known_at_pickup(hand_trips):
    training = build_training_set(
        hand_trips, pickup_zip_features(hand_trips), dropoff_zip_features(hand_trips))
    assert tuple(training.columns) == (
        "trip_id", "tpep_pickup_datetime", "tpep_dropoff_datetime", "pickup_zip", "dropoff_zip",
        "trip_distance", "trip_duration_minutes", "pickup_hour", "pickup_day_of_week", "is_weekend",
        "mean_fare_window_1h_pickup_zip", "count_trips_window_1h_pickup_zip",
        "count_trips_window_30m_dropoff_zip", "fare_amount")
    names = {trip[3]: trip[0] for trip in HAND_TRIPS}   # distances are unique
    rows = {names[row["trip_distance"]]: (
        row["mean_fare_window_1h_pickup_zip"], row["count_trips_window_1h_pickup_zip"],
        row["count_trips_window_30m_dropoff_zip"]) for row in training.collect()}
    assert rows == {
        "A": (None, 0, 0),      # lookup 10:00: nothing dropped off yet
        "B": (None, 0, 0),
        "C": (15.0, 2, 0),      # lookup 10:30: A, B from 10001; nothing into 10003
        "D": (None, 0, 0),
        "E": (None, 0, 0),
        "F": (25.0, 2, 1),      # lookup 11:15: B, C from 10001; C into 10003
        "G": (8.0, 2, 2),       # lookup 10:30 (pickup on the boundary): D, E from 10002; D, E into 10001
    }
    trip_c = training.filter(F.col("trip_distance") == 3.0).first()
    assert (trip_c["pickup_hour"], trip_c["pickup_day_of_week"], trip_c["is_weekend"],
            trip_c["trip_duration_minutes"]) == (10, 7, 1, 25.0)


def zip_features_by_trip(trips):
    """Zip features of every trip, keyed by what identifies a trip without its fare."""
    training = build_training_set(trips, pickup_zip_features(trips), dropoff_zip_features(trips))
    key = ["tpep_pickup_datetime", "tpep_dropoff_datetime", "trip_distance", "pickup_zip", "dropoff_zip"]
    return (training.select(*key, *FEATURE_COLUMNS[7:]).toPandas()
            .sort_values(key).reset_index(drop=True))


def test_features_never_use_trips_dropped_off_after_the_pickup(spark):
    # Cached so the branches below share one copy instead of each regenerating the trips.
    trips = generate_trips(spark, 3000, DAY, DAY, seed=11, invalid_fraction=0.0).cache()
    cutoff = pd.Timestamp(at(14, 7, 30))
    after = F.col("tpep_dropoff_datetime") >= F.lit(cutoff.to_pydatetime())
    # The future: fares of trips that end after the cutoff change, and more such trips appear,
    # some of them already under way at the cutoff. Added trips are marked by a distance over 100.
    changed = trips.withColumn("fare_amount", F.when(after, F.col("fare_amount") * 3 + 50)
                               .otherwise(F.col("fare_amount")))
    extra = (trips.filter(after).limit(400)
             .withColumn("tpep_pickup_datetime",
                         F.col("tpep_pickup_datetime") - F.expr("INTERVAL 20 MINUTES"))
             .withColumn("trip_distance", F.col("trip_distance") + 100.0))

    before = zip_features_by_trip(trips)
    with_future = zip_features_by_trip(changed.unionByName(extra))
    with_future = with_future[with_future["trip_distance"] < 100].reset_index(drop=True)
    assert len(before) == len(with_future) == 3000

    known = before["tpep_pickup_datetime"] <= cutoff
    assert known.sum() > 1000
    pd.testing.assert_frame_equal(before[known], with_future[known])
    # The same change does alter features of later trips, so the comparison above can fail.
    mean_fare = "mean_fare_window_1h_pickup_zip"
    changed_later = before[mean_fare].fillna(-1.0) != with_future[mean_fare].fillna(-1.0)
    assert changed_later[~known].sum() > 100
    trips.unpersist()


def test_the_held_out_set_is_the_latest_part_of_the_range_after_a_gap(spark):
    trips = with_trip_id(generate_trips(spark, 3000, DAY, DAY + datetime.timedelta(days=3), seed=5,
                                        invalid_fraction=0.0)).cache()
    split = TimeSplit.of_range(DAY, DAY + datetime.timedelta(days=3), 0.25, 90)
    flagged = split_by_time(trips, split).cache()
    train = flagged.filter(~F.col("is_test")).agg(F.max(PICKUP).alias("last"), F.count("*").alias("n"))
    train = train.first()
    test = flagged.filter("is_test").agg(F.min(PICKUP).alias("first"), F.count("*").alias("n")).first()

    day_start = datetime.datetime.combine(DAY, datetime.time())
    assert split.held_out_start == day_start + datetime.timedelta(days=3)
    assert train["last"] < split.train_end and test["first"] >= split.held_out_start
    assert (test["first"] - train["last"]) >= datetime.timedelta(minutes=90)
    pickup = F.col(PICKUP)
    in_gap = trips.filter((pickup >= F.lit(split.train_end)) & (pickup < F.lit(split.held_out_start)))
    assert train["n"] + test["n"] + in_gap.count() == 3000
    assert split_by_time(trips.repartition(3), split).filter("is_test").count() == test["n"]
    assert split.describe()["gap_minutes"] == "90"
    flagged.unpersist()
    trips.unpersist()


@pytest.mark.parametrize("fraction, gap, message", [
    (0.0, 60, "the held-out fraction must be strictly between 0 and 1, got 0.0"),
    (1.0, 60, "the held-out fraction must be strictly between 0 and 1, got 1.0"),
    (0.2, 30, r"the gap must be a whole number of minutes >= 60 \(the longest feature window\), got 30"),
    (0.99, 60, "a held-out fraction of 0.99 and a gap of 60 minutes leave no training time"),
])
def test_a_split_that_cannot_evaluate_is_refused(fraction, gap, message):
    with pytest.raises(ValueError, match=message):
        TimeSplit.of_range(DAY, DAY, fraction, gap)
