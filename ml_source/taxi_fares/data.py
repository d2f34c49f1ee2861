"""Synthetic NYC taxi trips with the raw schema, generated in Spark.

Every random draw is a hash of the row id, the seed and a stream number, so a row's values depend
only on (seed, row id): the output is the same whatever the partitioning or cluster size, and no
row is ever built on the driver.

Prices move by zone and time, as they do in a city: each pickup zip has a demand shock per
three-hour block (a hash of zip, block and seed, so it is shared by every trip there and then).
A shocked zip draws more pickups and its fares surge; the surge averages out to 1 over the day.
Nothing in a trip's own columns reveals the shock, but the fares of the zip's recent trips do:
that is the signal the per-zip window features exist to catch.
"""
import bisect
import calendar
import datetime
import itertools
import logging
import math
import numbers
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from taxi_fares.schema import RAW_COLUMNS

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400
CHOICE_BUCKETS = 1024

# Relative pickup counts per hour of day: quiet before dawn, morning and evening peaks.
HOURLY_PICKUP_WEIGHTS = (
    3.0, 2.2, 1.6, 1.1, 0.9, 1.0, 2.0, 3.6, 4.6, 4.7, 4.5, 4.6,
    4.9, 4.9, 5.2, 5.1, 4.6, 5.4, 6.3, 6.2, 5.6, 5.5, 5.4, 4.4,
)
# Average taxi speed in miles per hour by hour of day: free roads at night, congestion at rush hours.
HOURLY_SPEED_MPH = (
    20.0, 21.0, 22.0, 22.0, 21.0, 19.0, 16.0, 11.0, 10.0, 10.5, 12.0, 12.0,
    12.0, 12.0, 11.5, 11.0, 9.5, 9.0, 9.5, 11.0, 14.0, 15.0, 16.0, 18.0,
)

# NYC zips ordered by popularity, with a fare effect in dollars (tolls, traffic, airport trips).
ZIP_FARE_EFFECTS = {
    10001: 0.4, 10019: 0.6, 10036: 0.8, 10016: 0.2, 10022: 0.5, 10011: 0.1, 10003: 0.0, 10017: 0.7,
    10018: 0.5, 10023: 0.3, 10024: 0.2, 10028: 0.1, 10010: 0.0, 10012: -0.1, 10013: 0.2, 10014: -0.2,
    10021: 0.1, 10025: -0.3, 10002: -0.4, 10009: -0.5, 10065: 0.3, 10128: -0.2, 10029: -0.6,
    10007: 0.9, 10004: 1.1, 11201: -0.8, 11211: -1.0, 11101: -0.7, 11371: 4.5, 11430: 6.0,
}
ZIPS = tuple(ZIP_FARE_EFFECTS)
# Zipf-like popularity: the first zips get most of the trips.
ZIP_WEIGHTS = tuple(1.0 / (rank + 1) ** 0.9 for rank in range(len(ZIPS)))

BASE_FARE = 3.0
FARE_PER_MILE = 2.5
FARE_PER_MINUTE = 0.35
WEEKDAY_PEAK_SURCHARGE = 1.0   # weekdays 16:00-20:00
NIGHT_SURCHARGE = 0.5          # every day 20:00-06:00
MINIMUM_FARE = 2.5
MEDIAN_DISTANCE_MILES = 1.8
DISTANCE_LOG_SIGMA = 0.75
# Airport trips are long and less variable; JFK to or from Manhattan pays a flat fare, not the meter.
LGA_ZIP, JFK_ZIP = 11371, 11430
AIRPORT_MEDIAN_MILES = {JFK_ZIP: 17.0, LGA_ZIP: 9.5}
AIRPORT_DISTANCE_LOG_SIGMA = 0.3
JFK_FLAT_FARE = 52.0
MANHATTAN_ZIPS = (10001, 10282)
MIN_DISTANCE_MILES = 0.1
MAX_DISTANCE_MILES = 40.0
MAX_DURATION_MINUTES = 240.0

# Demand shocks: constant within a block, so the last hour's fares in a zip tell the current surge.
SURGE_BLOCK_SECONDS = 3 * 3600
# The fare multiplier is 1 + SURGE_STRENGTH * (shock^2 - 1/3) for a uniform shock: mean 1, from 0.75 to 1.5.
SURGE_STRENGTH = 0.75

# Kinds of deliberately invalid rows, chosen uniformly among invalid rows.
INVALID_KINDS = (
    "zero_distance", "negative_distance", "zero_fare", "negative_fare",
    "dropoff_before_pickup", "null_pickup_zip", "null_dropoff_zip",
)


@dataclass(frozen=True)
class DriftSettings:
    """Shifts of the generated distribution, to simulate covariate and concept drift."""

    distance_scale: float = 1.0   # multiplies trip distances
    fare_scale: float = 1.0       # multiplies fares for the same trip (concept drift)
    hour_shift: int = 0           # moves the hour-of-day profile later by this many hours
    zip_shift: int = 0            # rotates which zips are popular

    def validate(self) -> None:
        for name in ("distance_scale", "fare_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"drift setting {name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"drift setting {name} must be a positive finite number, got {value}")
        for name in ("hour_shift", "zip_shift"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"drift setting {name} must be an integer, got {value!r}")


def generate_trips(
    spark: SparkSession,
    rows: int,
    start_date: datetime.date,
    end_date: datetime.date,
    seed: int = 0,
    drift: DriftSettings | None = None,
    invalid_fraction: float = 0.005,
) -> DataFrame:
    """``rows`` synthetic trips picked up in [start_date 00:00, end_date 24:00) UTC, raw schema."""
    _validate_arguments(rows, start_date, end_date, seed, invalid_fraction)
    rows, seed = int(rows), int(seed)
    drift = drift or DriftSettings()
    drift.validate()
    logger.info("generating %d trips from %s to %s (seed %d, %s, invalid fraction %.4f)",
                rows, start_date, end_date, seed, drift, invalid_fraction)

    def uniform(stream: int) -> Column:
        return _uniform(seed, stream)

    def normal(stream: int) -> Column:
        return _standard_normal(seed, stream)

    days = (end_date - start_date).days + 1
    start_epoch_day = calendar.timegm(start_date.timetuple()) // SECONDS_PER_DAY
    hours = [(hour + drift.hour_shift) % 24 for hour in range(24)]
    zips = [ZIPS[(rank + drift.zip_shift) % len(ZIPS)] for rank in range(len(ZIPS))]
    zip_effect = F.create_map(*[F.lit(value) for item in ZIP_FARE_EFFECTS.items() for value in item])

    trips = (
        spark.range(rows)
        .withColumn("epoch_day", F.lit(start_epoch_day) + F.floor(uniform(1) * days))
        .withColumn("hour", _weighted_choice(uniform(2), hours, HOURLY_PICKUP_WEIGHTS))
        .withColumn("pickup_seconds", F.col("epoch_day") * SECONDS_PER_DAY + F.col("hour") * 3600
                    + F.floor(uniform(3) * 3600))
        # 1970-01-01 was a Thursday: index 0 = Sunday, 6 = Saturday, whatever the session time zone.
        .withColumn("weekday", F.pmod(F.col("epoch_day") + 4, F.lit(7)))
        .withColumn("surge_block", F.floor(F.col("pickup_seconds") / SURGE_BLOCK_SECONDS))
        .withColumn("pickup_zip", _demand_weighted_zip(seed, zips, uniform(4), uniform(11), uniform(12)))
        .withColumn("surge", 1.0 + SURGE_STRENGTH * (F.pow(_shock(seed, F.col("pickup_zip")), 2) - 1.0 / 3))
        .withColumn("dropoff_zip", _weighted_choice(uniform(5), zips, ZIP_WEIGHTS))
        .withColumn("trip_distance", F.round(F.least(F.greatest(
            _lognormal_distance(normal(6)) * drift.distance_scale, F.lit(MIN_DISTANCE_MILES)),
            F.lit(MAX_DISTANCE_MILES)), 2))
        .withColumn("speed_mph", _lookup(F.col("hour"), HOURLY_SPEED_MPH))
        # Lights and stops add a couple of minutes; traffic varies trip to trip.
        .withColumn("duration_minutes", F.least(
            F.lit(1.5) + F.col("trip_distance") / F.col("speed_mph") * 60 * F.exp(0.2 * normal(7)),
            F.lit(MAX_DURATION_MINUTES)))
        .withColumn("duration_seconds", F.round(F.col("duration_minutes") * 60).cast("long"))
        .withColumn("surcharge", _surcharge(F.col("hour"), F.col("weekday")))
        .withColumn("metered_fare", (F.lit(BASE_FARE) + FARE_PER_MILE * F.col("trip_distance")
                                     + FARE_PER_MINUTE * F.col("duration_seconds") / 60) * F.col("surge")
                    + F.col("surcharge")
                    + F.try_element_at(zip_effect, F.col("pickup_zip"))
                    + 0.5 * F.try_element_at(zip_effect, F.col("dropoff_zip"))
                    + (0.8 + 0.05 * F.col("trip_distance")) * normal(8))
        .withColumn("fare", F.when(_is_jfk_manhattan(F.col("pickup_zip"), F.col("dropoff_zip")),
                                   JFK_FLAT_FARE + F.col("surcharge") + 0.3 * normal(8))
                    .otherwise(F.col("metered_fare")))
        .withColumn("fare", F.round(F.greatest(F.col("fare"), F.lit(MINIMUM_FARE)) * drift.fare_scale, 2))
    )
    trips = _corrupt(trips, uniform(9) < invalid_fraction, uniform(10))
    columns = {
        "tpep_pickup_datetime": F.timestamp_seconds(F.col("pickup_seconds")),
        "tpep_dropoff_datetime": F.timestamp_seconds(F.col("dropoff_seconds")),
        "trip_distance": F.col("trip_distance"),
        "fare_amount": F.col("fare"),
        "pickup_zip": F.col("pickup_zip"),
        "dropoff_zip": F.col("dropoff_zip"),
    }
    return trips.select(*[columns[name].cast(kind).alias(name) for name, kind in RAW_COLUMNS.items()])


def _validate_arguments(rows, start_date, end_date, seed, invalid_fraction) -> None:
    if isinstance(rows, bool) or not isinstance(rows, numbers.Integral) or rows <= 0:
        raise ValueError(f"rows must be a positive integer, got {rows!r}")
    for name, value in (("start_date", start_date), ("end_date", end_date)):
        if not isinstance(value, datetime.date) or isinstance(value, datetime.datetime):
            raise ValueError(f"{name} must be a datetime.date, got {value!r}")
    if start_date > end_date:
        raise ValueError(f"start_date {start_date} is after end_date {end_date}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not 0.0 <= invalid_fraction < 0.5:
        raise ValueError(f"invalid_fraction must be in [0, 0.5), got {invalid_fraction}")


def _uniform(seed: int, stream: int) -> Column:
    """A uniform draw in [0, 1) from a 53-bit hash of (row id, seed, stream)."""
    bits = F.pmod(F.xxhash64(F.col("id"), F.lit(seed).cast("long"), F.lit(stream)), F.lit(1 << 53))
    return bits.cast("double") / float(1 << 53)


def _standard_normal(seed: int, stream: int) -> Column:
    """A standard normal draw by Box-Muller from two uniform streams (1 - u keeps the log finite)."""
    radius = F.sqrt(-2.0 * F.log(1.0 - _uniform(seed, stream * 1000 + 1)))
    return radius * F.cos(2.0 * math.pi * _uniform(seed, stream * 1000 + 2))


def _shock(seed: int, zip_code: Column) -> Column:
    """The demand shock of a zip in the row's surge block: uniform in [0, 1), shared by all its trips."""
    salted = F.xxhash64(zip_code.cast("long"), F.col("surge_block"), F.lit(seed).cast("long"), F.lit(99))
    bits = F.pmod(salted, F.lit(1 << 53))
    return bits.cast("double") / float(1 << 53)


def _demand_weighted_zip(seed: int, zips, first_draw: Column, second_draw: Column,
                         pick_draw: Column) -> Column:
    """Of two zips drawn by popularity, the more shocked one is likelier: demand follows the surge."""
    first = _weighted_choice(first_draw, zips, ZIP_WEIGHTS)
    second = _weighted_choice(second_draw, zips, ZIP_WEIGHTS)
    first_wins = pick_draw < 0.5 + 0.5 * (_shock(seed, first) - _shock(seed, second))
    return F.when(first_wins, first).otherwise(second)


def _weighted_choice(draw: Column, values, weights) -> Column:
    """``values[i]`` with probability close to ``weights[i] / sum(weights)``, given a uniform draw.

    The draw indexes a constant table of quantiles: one array lookup, however many values, which keeps
    the generated code small when Spark inlines it into later expressions and pushed-down filters.
    """
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    positions = [bisect.bisect_right(cumulative, (bucket + 0.5) / CHOICE_BUCKETS * total)
                 for bucket in range(CHOICE_BUCKETS)]
    table = F.array(*[F.lit(values[min(position, len(values) - 1)]) for position in positions])
    return F.element_at(table, F.floor(draw * CHOICE_BUCKETS).cast("int") + 1)


def _lognormal_distance(standard_normal: Column) -> Column:
    """Trip distance in miles: short city hops, or longer and steadier trips to and from airports."""
    airport_medians = F.create_map(*[F.lit(value) for item in AIRPORT_MEDIAN_MILES.items() for value in item])
    # greatest skips nulls: the farther airport wins when a trip joins two airports.
    airport_median = F.greatest(F.try_element_at(airport_medians, F.col("pickup_zip")),
                                F.try_element_at(airport_medians, F.col("dropoff_zip")))
    median = F.coalesce(airport_median, F.lit(MEDIAN_DISTANCE_MILES))
    sigma = F.when(airport_median.isNotNull(), AIRPORT_DISTANCE_LOG_SIGMA).otherwise(DISTANCE_LOG_SIGMA)
    return F.exp(F.log(median) + sigma * standard_normal)


def _is_jfk_manhattan(pickup_zip: Column, dropoff_zip: Column) -> Column:
    def in_manhattan(zip_code: Column) -> Column:
        return zip_code.between(*MANHATTAN_ZIPS)

    return (((pickup_zip == JFK_ZIP) & in_manhattan(dropoff_zip))
            | ((dropoff_zip == JFK_ZIP) & in_manhattan(pickup_zip)))


def _lookup(index: Column, values) -> Column:
    """``values[index]`` for a small constant tuple."""
    return F.element_at(F.array(*[F.lit(float(value)) for value in values]), index + 1)


def _surcharge(hour: Column, weekday: Column) -> Column:
    is_weekday = (weekday >= 1) & (weekday <= 5)
    return (F.when(is_weekday & (hour >= 16) & (hour < 20), WEEKDAY_PEAK_SURCHARGE)
            .when((hour >= 20) | (hour < 6), NIGHT_SURCHARGE)
            .otherwise(0.0))


def _corrupt(trips: DataFrame, is_invalid: Column, kind_draw: Column) -> DataFrame:
    """Break the rows selected by ``is_invalid`` in one of INVALID_KINDS each."""
    kind = F.when(is_invalid, F.floor(kind_draw * len(INVALID_KINDS)))

    def is_kind(name: str) -> Column:
        return F.coalesce(kind == INVALID_KINDS.index(name), F.lit(False))

    return (
        trips
        .withColumn("trip_distance", F.when(is_kind("zero_distance"), 0.0)
                    .when(is_kind("negative_distance"), -F.col("trip_distance"))
                    .otherwise(F.col("trip_distance")))
        .withColumn("fare", F.when(is_kind("zero_fare"), 0.0)
                    .when(is_kind("negative_fare"), -F.col("fare"))
                    .otherwise(F.col("fare")))
        .withColumn("dropoff_seconds", F.when(
            is_kind("dropoff_before_pickup"), F.col("pickup_seconds") - F.col("duration_seconds"))
            .otherwise(F.col("pickup_seconds") + F.col("duration_seconds")))
        .withColumn("pickup_zip", F.when(~is_kind("null_pickup_zip"), F.col("pickup_zip")))
        .withColumn("dropoff_zip", F.when(~is_kind("null_dropoff_zip"), F.col("dropoff_zip")))
    )
