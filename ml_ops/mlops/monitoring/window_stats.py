"""Two passes over the inference log: per window, model version and column, the sums drift needs.

The first groups the log by window start and model version and computes, in one aggregation:
counts, nulls, moments, the range check (against the version's reference range, chosen by a
CASE on the model version), one quantile sketch per column (for the Wasserstein distance and the
profile's quantiles), and the error sums of the labelled rows. The second counts each window's
rows per reference bin exactly: every value is given its bin by a binary search over the
reference edges (a nested CASE, about five comparisons), the columns are stacked into
(column, bin) pairs, and one grouped count gives every bin of every column. PSI and the KS
statistic are computed from those exact counts. Both results have a few rows per window and
version, so nothing of the data's size reaches the driver.
"""
import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from mlops.errors import DataError
from mlops.inference import engine
from mlops.monitoring.reference import QUANTILE_LEVELS, ReferenceProfile
from mlops.monitoring.settings import MonitoringSettings

WINDOW_START = "window_start"
# percentile_approx accuracy: 1/accuracy is its relative rank error, here only in the quantiles
# behind the Wasserstein distance (a guard against tiny but "significant" shifts) and the profile.
QUANTILE_ACCURACY = 1000
BIN_COUNTS = "bin_counts"


def _per_version(profiles: dict[str, ReferenceProfile], value_of):
    """A column expression taking ``value_of(profile)`` for each row's model version (null if none)."""
    if len(profiles) == 1:
        # The usual case: every monitored row has the one version, so no per-row comparison is needed.
        only = value_of(next(iter(profiles.values())))
        return only if isinstance(only, Column) else F.lit(only)
    expression = None
    for version, profile in sorted(profiles.items()):
        condition = F.col(engine.MODEL_VERSION) == F.lit(version)
        value = value_of(profile)
        value = value if isinstance(value, Column) else F.lit(value)
        expression = F.when(condition, value) if expression is None else expression.when(condition, value)
    return expression


def bin_index(value: Column, edges) -> Column:
    """The reference bin of ``value``, the number of edges below it: bin i holds (edge[i-1], edge[i]].

    Null and NaN values have no bin (they are counted as nulls).
    """
    edges = [float(edge) for edge in edges]

    def search(low: int, high: int) -> Column:
        if low == high:
            return F.lit(low)
        middle = (low + high) // 2
        return F.when(value > F.lit(edges[middle]), search(middle + 1, high)).otherwise(search(low, middle))
    return F.when(value.isNotNull() & ~F.isnan(value), search(0, len(edges)))


def _windowed(log: DataFrame, settings: MonitoringSettings) -> DataFrame:
    return log.withColumn(WINDOW_START, F.date_trunc(settings.window_unit, F.col(engine.TIMESTAMP)))


def count_bins(log: DataFrame, profiles: dict[str, ReferenceProfile], columns,
               settings: MonitoringSettings) -> dict:
    """{(window start, version): {column: exact row count per reference bin}}, from one grouped count."""
    binned = _windowed(log, settings).select(WINDOW_START, engine.MODEL_VERSION, *[
        _per_version(profiles, lambda profile, name=name: bin_index(F.col(name).cast("double"),
                                                                    profile.column(name).edges))
        .alias(f"_bin_{index}") for index, name in enumerate(columns)])
    pairs = ", ".join(f"{index}, _bin_{index}" for index in range(len(columns)))
    stacked = binned.selectExpr(WINDOW_START, engine.MODEL_VERSION,
                                f"stack({len(columns)}, {pairs}) AS (column_index, bin)")
    counted = stacked.where(F.col("bin").isNotNull()) \
        .groupBy(WINDOW_START, engine.MODEL_VERSION, "column_index", "bin").count().collect()
    counts: dict = {}
    for row in counted:
        version, name = row[engine.MODEL_VERSION], columns[row["column_index"]]
        per_column = counts.setdefault((row[WINDOW_START], version), {})
        if name not in per_column:
            per_column[name] = np.zeros(len(profiles[version].column(name).edges) + 1, dtype=np.int64)
        per_column[name][row["bin"]] += row["count"]
    return counts


def aggregate_windows(log: DataFrame, profiles: dict[str, ReferenceProfile], columns,
                      settings: MonitoringSettings) -> list[dict]:
    """The per-window, per-version sums of ``log`` (already limited to the monitored range).

    Each window's ``bin_counts`` maps a column to its exact row count per reference bin.
    """
    missing = [name for name in (*columns, engine.TIMESTAMP, engine.MODEL_VERSION, engine.LABEL)
               if name not in log.columns]
    if missing:
        raise DataError(f"the inference log lacks column(s) {', '.join(missing)}; "
                        f"found {', '.join(log.columns)}")
    windowed = _windowed(log, settings)
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
    sums = [row.asDict(recursive=True) for row in ordered.collect()]
    bins = count_bins(log, profiles, columns, settings)
    empty = {}
    for window in sums:
        window[BIN_COUNTS] = bins.get((window[WINDOW_START], window[engine.MODEL_VERSION]), empty)
    return sums
