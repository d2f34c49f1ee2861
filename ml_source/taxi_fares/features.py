"""Cleaning, trip features, zip window features and the point-in-time training set.

Zip features are computed on windows that end on a 15-minute grid and count a trip only once it
has been dropped off (when its fare becomes known). A trip looks up the window that ends at its
pickup time floored to the grid, so the lookup is an exact equi-join and never sees the future.
"""
import datetime
import logging
import numbers
from dataclasses import dataclass

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
# The 1-hour pickup-zip window; a held-out gap at least this long keeps training fares out of its windows.
LONGEST_WINDOW_MINUTES = 60


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


def trip_feature_values(ops, pickup, dropoff) -> dict:
    """The trip features, defined once for Spark columns and for single trips (see the ops classes)."""
    day_of_week = ops.day_of_week(pickup)
    return {
        "pickup_hour": ops.hour(pickup),
        "pickup_day_of_week": day_of_week,
        "is_weekend": ops.is_one_of(day_of_week, (1, 7)),
        "trip_duration_minutes": ops.micros_between(pickup, dropoff) / 60_000_000.0,
    }


class SparkOps:
    """:func:`trip_feature_values` on Spark columns (hour and day in the session time zone)."""

    hour = staticmethod(F.hour)
    day_of_week = staticmethod(F.dayofweek)

    @staticmethod
    def is_one_of(value, choices):
        return value.isin(*choices).cast("int")

    @staticmethod
    def micros_between(start, end):
        return F.unix_micros(end.cast("timestamp")) - F.unix_micros(start.cast("timestamp"))


class TripOps:
    """:func:`trip_feature_values` on one trip's naive UTC datetimes, as online serving computes them."""

    @staticmethod
    def hour(moment: datetime.datetime) -> int:
        return moment.hour

    @staticmethod
    def day_of_week(moment: datetime.datetime) -> int:
        # Spark's dayofweek: 1 = Sunday ... 7 = Saturday.
        return moment.isoweekday() % 7 + 1

    @staticmethod
    def is_one_of(value, choices) -> int:
        return int(value in choices)

    @staticmethod
    def micros_between(start: datetime.datetime, end: datetime.datetime) -> int:
        return (end - start) // datetime.timedelta(microseconds=1)


def trip_features(trips: DataFrame) -> DataFrame:
    """``trips`` with trip_id, pickup_hour, pickup_day_of_week (1 = Sunday), is_weekend and duration.

    Hour and day come from the session time zone, like every Spark date function.
    """
    return trips.withColumns({TRIP_ID: trip_id_column(),
                              **trip_feature_values(SparkOps, F.col(PICKUP), F.col(DROPOFF))})


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


@dataclass(frozen=True)
class TimeSplit:
    """An out-of-time split of a date range: train, then a gap that is neither, then the held-out part.

    The held-out part is the latest ``held_out_fraction`` of the range by pickup time. The gap is
    at least as long as the longest feature window, so no held-out trip's window features come
    from the trips the model trained on.
    """

    train_start: datetime.datetime
    train_end: datetime.datetime
    held_out_start: datetime.datetime
    held_out_end: datetime.datetime

    @classmethod
    def of_range(cls, start_date: datetime.date, end_date: datetime.date, held_out_fraction: float,
                 gap_minutes: int) -> "TimeSplit":
        if isinstance(held_out_fraction, bool) or not isinstance(held_out_fraction, numbers.Real) \
                or not 0.0 < held_out_fraction < 1.0:
            raise ValueError("the held-out fraction must be strictly between 0 and 1, "
                             f"got {held_out_fraction!r}")
        if isinstance(gap_minutes, bool) or not isinstance(gap_minutes, numbers.Integral) \
                or gap_minutes < LONGEST_WINDOW_MINUTES:
            raise ValueError(f"the gap must be a whole number of minutes >= {LONGEST_WINDOW_MINUTES} (the "
                             f"longest feature window), got {gap_minutes!r}")
        range_start = datetime.datetime.combine(start_date, datetime.time())
        range_end = datetime.datetime.combine(end_date + datetime.timedelta(days=1), datetime.time())
        held_out_start = range_end - (range_end - range_start) * held_out_fraction
        held_out_start = held_out_start.replace(second=0, microsecond=0)
        train_end = held_out_start - datetime.timedelta(minutes=int(gap_minutes))
        if train_end <= range_start:
            raise ValueError(f"a held-out fraction of {held_out_fraction} and a gap of {gap_minutes} minutes "
                             f"leave no training time in {start_date}..{end_date}")
        return cls(range_start, train_end, held_out_start, range_end)

    def of_training_part(self, validation_fraction: float, gap_minutes: int) -> "TimeSplit":
        """A split of this split's training part alone: its held-out part ends where training does."""
        start = self.train_start
        span = self.train_end - start
        if not 0.0 < validation_fraction < 1.0:
            raise ValueError("the validation fraction must be strictly between 0 and 1, "
                             f"got {validation_fraction!r}")
        validation_start = (self.train_end - span * validation_fraction).replace(second=0, microsecond=0)
        fit_end = validation_start - datetime.timedelta(minutes=int(gap_minutes))
        if fit_end <= start:
            raise ValueError(f"a validation fraction of {validation_fraction} and a gap of {gap_minutes} "
                             f"minutes leave no time to fit on in {_span(start, self.train_end)}")
        return TimeSplit(start, fit_end, validation_start, self.train_end)

    def describe(self) -> dict:
        """The ranges as text, for tags and messages."""
        return {"train_range": _span(self.train_start, self.train_end),
                "held_out_range": _span(self.held_out_start, self.held_out_end),
                "gap_minutes": str(int((self.held_out_start - self.train_end).total_seconds() // 60))}

    def not_trained_on(self, pickups):
        """For pickup times (a pandas Series), True where this split's model neither trained nor gapped."""
        return (pickups < self.train_start) | (pickups >= self.held_out_start)


def _span(start: datetime.datetime, end: datetime.datetime) -> str:
    return f"{start:%Y-%m-%dT%H:%M}..{end:%Y-%m-%dT%H:%M}"


def split_by_time(df: DataFrame, split: TimeSplit) -> DataFrame:
    """``df`` with a boolean ``is_test``: held-out rows True, training rows False; gap rows dropped."""
    pickup = F.col(PICKUP)
    is_test = (F.when((pickup >= F.lit(split.held_out_start)) & (pickup < F.lit(split.held_out_end)), True)
               .when((pickup >= F.lit(split.train_start)) & (pickup < F.lit(split.train_end)), False))
    return df.withColumn(IS_TEST, is_test).filter(F.col(IS_TEST).isNotNull())
