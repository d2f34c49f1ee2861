"""One pass over the inference log: per window, model version and column, the sums drift needs.

Spark groups the log by window start and model version and computes, in a single
aggregation: counts, nulls, moments, the range check, approximate quantiles, and for each
edge of the version's reference bins the number of rows at or below it; plus the error sums
of the labelled rows. The result has one row per window and version, so nothing of the
data's size reaches the driver. The edges differ per version, so each is chosen by a CASE
on the model version inside the same aggregation.
"""
import math

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from mlops.errors import DataError
from mlops.inference import engine
from mlops.monitoring.reference import BINS, QUANTILE_LEVELS, ReferenceProfile
from mlops.monitoring.settings import MonitoringSettings

WINDOW_START = "window_start"
# percentile_approx accuracy: 1/accuracy is its relative rank error.
QUANTILE_ACCURACY = 2000


def _per_version(profiles: dict[str, ReferenceProfile], value_of):
    """A column expression taking ``value_of(profile)`` for each row's model version (null if none)."""
    expression = None
    for version, profile in sorted(profiles.items()):
        condition = F.col(engine.MODEL_VERSION) == F.lit(version)
        value = F.lit(value_of(profile))
        expression = F.when(condition, value) if expression is None else expression.when(condition, value)
    return expression


def _edge(profiles, column: str, index: int):
    """The version's ``index``-th reference edge of ``column``; +inf where it has fewer edges."""
    def value_of(profile):
        edges = profile.column(column).edges
        return float(edges[index]) if index < len(edges) else math.inf
    return _per_version(profiles, value_of).cast("double")


def aggregate_windows(log: DataFrame, profiles: dict[str, ReferenceProfile], columns,
                      settings: MonitoringSettings) -> list[dict]:
    """The per-window, per-version sums of ``log`` (already limited to the monitored range)."""
    missing = [name for name in (*columns, engine.TIMESTAMP, engine.MODEL_VERSION, engine.LABEL)
               if name not in log.columns]
    if missing:
        raise DataError(f"the inference log lacks column(s) {', '.join(missing)}; "
                        f"found {', '.join(log.columns)}")
    windowed = log.withColumn(WINDOW_START, F.date_trunc(settings.window_unit, F.col(engine.TIMESTAMP)))
    aggregations = [F.count(F.lit(1)).alias("rows"),
                    F.first(engine.MODEL_ID, ignorenulls=True).alias("model_id")]
    for name in columns:
        value = F.col(name).cast("double")
        low = _per_version(profiles, lambda profile: profile.column(name).min).cast("double")
        high = _per_version(profiles, lambda profile: profile.column(name).max).cast("double")
        aggregations += [
            F.count(value).alias(f"{name}__count"),
            F.avg(value).alias(f"{name}__avg"),
            F.stddev_samp(value).alias(f"{name}__stddev"),
            F.min(value).alias(f"{name}__min"),
            F.max(value).alias(f"{name}__max"),
            F.sum(F.when((value < low) | (value > high), 1).otherwise(0)).alias(f"{name}__out_of_range"),
            F.percentile_approx(value, list(QUANTILE_LEVELS), QUANTILE_ACCURACY).alias(f"{name}__quantiles"),
            *[F.sum(F.when(value <= _edge(profiles, name, index), 1).otherwise(0)).alias(f"{name}__le{index}")
              for index in range(BINS - 1)],
        ]
    label = F.col(engine.LABEL).cast("double")
    # A NaN label is as unknown as a null one.
    error = F.when(label.isNotNull() & ~F.isnan(label), F.col(engine.PREDICTION) - label)
    aggregations += [
        F.count(error).alias("labelled"),
        F.sum(error).alias("error_sum"),
        F.sum(error * error).alias("squared_error_sum"),
        F.sum(F.abs(error)).alias("absolute_error_sum"),
        F.sum(F.when(label != 0, F.abs(error) / F.abs(label))).alias("percentage_error_sum"),
        F.count(F.when(label != 0, error)).alias("percentage_rows"),
        F.sum(F.when(error.isNotNull(), label)).alias("label_sum"),
        F.sum(F.when(error.isNotNull(), label * label)).alias("label_square_sum"),
    ]
    grouped = windowed.groupBy(WINDOW_START, engine.MODEL_VERSION).agg(*aggregations)
    ordered = grouped.orderBy(WINDOW_START, engine.MODEL_VERSION)
    return [row.asDict(recursive=True) for row in ordered.collect()]
