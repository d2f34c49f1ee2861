"""Cleaning, trip features, zip window features and the point-in-time training set.

Zip features are computed on windows that end on a 15-minute grid and count a trip only once it
has been dropped off (when its fare becomes known). A trip looks up the window that ends at its
pickup time floored to the grid, so the lookup is an exact equi-join and never sees the future.
"""
import datetime
import logging
import numbers

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from taxi_fares.schema import RAW_COLUMNS, TRIP_ID, trip_id_column

logger = logging.getLogger(__name__)

PICKUP = "tpep_pickup_datetime"
DROPOFF = "tpep_dropoff_datetime"
FEATURE_TIMESTAMP = "feature_timestamp"
LOOKUP_TIMESTAMP = "lookup_timestamp"
GRID_MICROS = 15 * 60 * 1_000_000

MEAN_FARE_1H_PICKUP_ZIP = "mean_fare_window_1h_pickup_zip"
COUNT_1H_PICKUP_ZIP = "count_trips_window_1h_pickup_zip"
COUNT_30M_DROPOFF_ZIP = "count_trips_window_30m_dropoff_zip"

PICKUP_FEATURE_KEYS = ("pickup_zip", FEATURE_TIMESTAMP)
DROPOFF_FEATURE_KEYS = ("dropoff_zip", FEATURE_TIMESTAMP)

FEATURE_COLUMNS = (
    "trip_distance",
    "trip_duration_minutes",
    "pickup_hour",
    "pickup_day_of_week",
    "is_weekend",
    "pickup_zip",
    "dropoff_zip",
    MEAN_FARE_1H_PICKUP_ZIP,
    COUNT_1H_PICKUP_ZIP,
    COUNT_30M_DROPOFF_ZIP,
)
LABEL_COLUMN = "fare_amount"
TRIP_KEY_COLUMNS = (TRIP_ID, PICKUP, "pickup_zip", "dropoff_zip")

# pickup_zip and dropoff_zip are both keys and features; they appear once.
TRAINING_SET_COLUMNS = tuple(dict.fromkeys(
    (TRIP_ID, PICKUP, DROPOFF, "pickup_zip", "dropoff_zip") + FEATURE_COLUMNS + (LABEL_COLUMN,)))

IS_TEST = "is_test"
_SPLIT_BUCKETS = 1_000_000


def clean_trips(df: DataFrame) -> DataFrame:
    """Rows with all raw columns present, positive distance and fare, and dropoff after pickup."""
    return df.dropna(subset=list(RAW_COLUMNS)).filter(
        (F.col("trip_distance") > 0) & (F.col("fare_amount") > 0) & (F.col(DROPOFF) > F.col(PICKUP)))


def filter_date_range(df: DataFrame, start_date: datetime.date, end_date: datetime.date) -> DataFrame:
    """Rows whose pickup date (in the session time zone) is within [start_date, end_date]."""
    for name, value in (("start_date", start_date), ("end_date", end_date)):
        if not isinstance(value, datetime.date) or isinstance(value, datetime.datetime):
            raise ValueError(f"{name} must be a datetime.date, got {value!r}")
    if start_date > end_date:
        raise ValueError(f"start_date {start_date} is after end_date {end_date}")
    pickup_date = F.to_date(F.col(PICKUP))
    return df.filter((pickup_date >= F.lit(start_date)) & (pickup_date <= F.lit(end_date)))


def pickup_zip_features(trips: DataFrame) -> DataFrame:
    """Per pickup zip and 15-minute boundary T: mean fare and count of trips dropped off in [T - 1h, T)."""
    return (
        trips.filter(F.col("pickup_zip").isNotNull() & F.col(DROPOFF).isNotNull())
        .groupBy("pickup_zip", F.window(DROPOFF, "1 hour", "15 minutes"))
        .agg(F.mean("fare_amount").alias(MEAN_FARE_1H_PICKUP_ZIP),
             F.count(F.lit(1)).alias(COUNT_1H_PICKUP_ZIP))
        .select("pickup_zip", F.col("window.end").alias(FEATURE_TIMESTAMP),
                MEAN_FARE_1H_PICKUP_ZIP, COUNT_1H_PICKUP_ZIP)
    )


def dropoff_zip_features(trips: DataFrame) -> DataFrame:
    """Per dropoff zip and 15-minute boundary T: count of trips dropped off in [T - 30min, T)."""
    return (
        trips.filter(F.col("dropoff_zip").isNotNull() & F.col(DROPOFF).isNotNull())
        .groupBy("dropoff_zip", F.window(DROPOFF, "30 minutes", "15 minutes"))
        .agg(F.count(F.lit(1)).alias(COUNT_30M_DROPOFF_ZIP))
        .select("dropoff_zip", F.col("window.end").alias(FEATURE_TIMESTAMP), COUNT_30M_DROPOFF_ZIP)
    )


def trip_features(trips: DataFrame) -> DataFrame:
    """``trips`` with trip_id, pickup_hour, pickup_day_of_week (1 = Sunday), is_weekend and duration.

    Hour and day come from the session time zone, like every Spark date function.
    """
    day_of_week = F.dayofweek(F.col(PICKUP))
    duration_micros = F.unix_micros(F.col(DROPOFF).cast("timestamp")) - F.unix_micros(
        F.col(PICKUP).cast("timestamp"))
    return trips.withColumns({
        TRIP_ID: trip_id_column(),
        "pickup_hour": F.hour(F.col(PICKUP)),
        "pickup_day_of_week": day_of_week,
        "is_weekend": day_of_week.isin(1, 7).cast("int"),
        "trip_duration_minutes": duration_micros / 60_000_000.0,
    })


def floor_to_grid(timestamp: Column) -> Column:
    """The timestamp floored to the 15-minute grid that Spark's windows use (aligned on the epoch)."""
    micros = F.unix_micros(timestamp.cast("timestamp"))
    return F.timestamp_micros(micros - F.pmod(micros, F.lit(GRID_MICROS)))


def build_training_set(trips: DataFrame, pickup_features: DataFrame,
                       dropoff_features: DataFrame) -> DataFrame:
    """Trips with their trip features and the zip features as known at pickup (point-in-time join).

    Missing window counts become 0; a missing mean fare stays null (no trip to average).
    """
    pickup = pickup_features.select(
        "pickup_zip", F.col(FEATURE_TIMESTAMP).alias(LOOKUP_TIMESTAMP), MEAN_FARE_1H_PICKUP_ZIP,
        COUNT_1H_PICKUP_ZIP)
    dropoff = dropoff_features.select(
        "dropoff_zip", F.col(FEATURE_TIMESTAMP).alias(LOOKUP_TIMESTAMP), COUNT_30M_DROPOFF_ZIP)
    joined = (
        trip_features(trips)
        .withColumn(LOOKUP_TIMESTAMP, floor_to_grid(F.col(PICKUP)))
        .join(pickup, on=["pickup_zip", LOOKUP_TIMESTAMP], how="left")
        .join(dropoff, on=["dropoff_zip", LOOKUP_TIMESTAMP], how="left")
        .withColumns({
            COUNT_1H_PICKUP_ZIP: F.coalesce(F.col(COUNT_1H_PICKUP_ZIP), F.lit(0).cast("long")),
            COUNT_30M_DROPOFF_ZIP: F.coalesce(F.col(COUNT_30M_DROPOFF_ZIP), F.lit(0).cast("long")),
        })
    )
    return joined.select(*TRAINING_SET_COLUMNS)


def split_column(df: DataFrame, test_fraction: float, seed: int) -> DataFrame:
    """``df`` with a boolean ``is_test`` from a hash of trip_id and seed: stable across runs and layouts."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) \
            or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if TRIP_ID not in df.columns:
        raise ValueError(f"split_column needs a '{TRIP_ID}' column; found {', '.join(df.columns)}")
    bucket = F.pmod(F.xxhash64(F.col(TRIP_ID), F.lit(int(seed)).cast("long")), F.lit(_SPLIT_BUCKETS))
    return df.withColumn(IS_TEST, bucket < int(round(test_fraction * _SPLIT_BUCKETS)))
