"""Two passes over the inference log: per window, model version, arm and column, the sums drift needs.

Each comparison arm of the log (champion, challenger, shadow) is profiled apart: a version that
answers as Challenger and shadows the Champion's traffic gets one set of rows for each.
The first groups the log by window start, model version and arm and computes, in one aggregation:
counts, nulls, moments, the range check (against the version's reference range, chosen by a
CASE on the model version) and the error sums of the labelled rows. The second counts each
window's rows per reference bin **exactly**: each Python worker bins its partition's values with
NumPy (``searchsorted`` over the reference edges, one ``bincount`` per column) and hands back a
few rows of partial counts, which Spark adds up. PSI and the KS statistic come from those
counts, and so do the window's quantiles (rows spread evenly within a bin), read the same way for
window and reference, for the Wasserstein distance and the profile rows. Spark has no exact
small-integer histogram aggregate: conditional sums per bin, or stacking (column, bin) pairs and
grouping them, each took longer than scoring the same rows. Both passes return a few rows per
window, version and arm, so nothing of the data's size reaches the driver.
"""
import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from mlops.errors import DataError
from mlops.inference import engine
from mlops.monitoring.estimation import ErrorModel
from mlops.monitoring.reference import BINS, ReferenceProfile
from mlops.monitoring.settings import MonitoringSettings
from mlops.monitoring.statistics import bin_of

WINDOW_START = "window_start"
BIN_COUNTS = "bin_counts"
ESTIMATED_ABSOLUTE = "estimated_absolute_error_sum"
ESTIMATED_SQUARED = "estimated_squared_error_sum"
ESTIMATED_ROWS = "estimated_rows"
# The column index of the rows that carry a window's error estimates in the binning pass.
ESTIMATES = -1
# The error model reads about this many rows of a window, spread evenly: their mean estimated
# error is within a fraction of a percent of all rows', at a fraction of the cost on big windows.
ROWS_TO_ESTIMATE = 200_000
# Rows logged without an arm are grouped under this key inside the binning pass, which needs text.
_NO_ARM = ""


def _arm(log: DataFrame):
    """The log's arm column; null for a log written before it had one."""
    return F.col(engine.ARM) if engine.ARM in log.columns else F.lit(None).cast("string")


def _per_version(profiles: dict[str, ReferenceProfile], value_of):
    """A column expression taking ``value_of(profile)`` for each row's model version (null if none)."""
    if len(profiles) == 1:
        # The usual case: every monitored row has the one version, so no per-row comparison is needed.
        return F.lit(value_of(next(iter(profiles.values()))))
    expression = None
    for version, profile in sorted(profiles.items()):
        condition = F.col(engine.MODEL_VERSION) == F.lit(version)
        value = F.lit(value_of(profile))
        expression = F.when(condition, value) if expression is None else expression.when(condition, value)
    return expression


def _partial_counts(edges_by_version: dict, columns: int, error_models: dict):
    """What a Python worker runs on its Arrow batches: rows per (window, version, arm, column, bin).

    For a version with an error model it also sums the estimated absolute and squared errors of
    every ``stride``-th row of the window (``error_models`` holds the stride per version and arm),
    and counts them, in a row of column index ``ESTIMATES``: one more prediction, on the values
    already in hand.
    """
    def count(batches):
        import pyarrow

        totals: dict = {}
        estimates: dict = {}
        models = {version: (positions, ErrorModel.from_dict(raw), strides)
                  for version, (positions, raw, strides) in error_models.items()}
        for batch in batches:
            windows = batch.column(0).cast(pyarrow.int64()).to_numpy(zero_copy_only=False)
            versions = batch.column(1).to_numpy(zero_copy_only=False)
            arms = batch.column(2).to_numpy(zero_copy_only=False)
            for version, arm in {(version, arm) for version, arm in zip(versions, arms)}:
                chosen = (versions == version) & (arms == arm)
                edges = edges_by_version.get(version)
                if edges is None:
                    continue
                starts, slot = np.unique(windows[chosen], return_inverse=True)
                values = [batch.column(3 + index).to_numpy(zero_copy_only=False)[chosen].astype(float)
                          for index in range(columns)]
                for index in range(columns):
                    present = ~np.isnan(values[index])
                    bins = len(edges[index]) + 1
                    flat = np.bincount(slot[present] * bins + bin_of(values[index][present], edges[index]),
                                       minlength=len(starts) * bins).reshape(len(starts), bins)
                    for row, start in enumerate(starts):
                        key = (int(start), str(version), str(arm), index)
                        totals[key] = totals.get(key, 0) + flat[row]
                if version in models:
                    positions, model, strides = models[version]
                    sums = _estimate(model, [values[index] for index in positions], slot, len(starts),
                                     strides.get(str(arm), 1))
                    for row, start in enumerate(starts):
                        key = (int(start), str(version), str(arm), ESTIMATES)
                        before = estimates.get(key, (0.0, 0.0, 0.0))
                        estimates[key] = tuple(total + part[row] for total, part in zip(before, sums))
        keys = list(totals) + list(estimates)
        yield pyarrow.RecordBatch.from_arrays([
            pyarrow.array([key[0] for key in keys], pyarrow.int64()),
            pyarrow.array([key[1] for key in keys], pyarrow.string()),
            pyarrow.array([key[2] for key in keys], pyarrow.string()),
            pyarrow.array([key[3] for key in keys], pyarrow.int32()),
            pyarrow.array([totals[key].tolist() if key in totals else [] for key in keys],
                          pyarrow.list_(pyarrow.int64())),
            *[pyarrow.array([estimates[key][part] if key in estimates else None for key in keys],
                            pyarrow.float64()) for part in (0, 1, 2)]],
            names=["window_micros", engine.MODEL_VERSION, engine.ARM, "column_index", "counts",
                   ESTIMATED_ABSOLUTE, ESTIMATED_SQUARED, ESTIMATED_ROWS])
    return count


def _estimate(model: ErrorModel, inputs: list, slot: np.ndarray, windows: int, stride: int) -> list:
    """Per window: estimated absolute and squared errors of every ``stride``-th row, summed; and how many."""
    read = np.arange(len(slot)) % stride == 0
    absolute, squared = model.predict(np.column_stack([values[read] for values in inputs]))
    return [np.bincount(slot[read], weights, windows) for weights in (absolute, squared, None)]


def _error_models(profiles: dict[str, ReferenceProfile], columns, window_rows: dict) -> dict:
    """{version: (its error model's inputs' positions in ``columns``, the model, {arm: stride})}.

    Only versions with an error model; the stride lets the smallest window of the version and arm
    (``window_rows``: (version, arm) -> its windows' row counts) still give ``ROWS_TO_ESTIMATE`` rows.
    """
    found = {}
    for version, profile in profiles.items():
        names = profile.error_model.get("feature_names") if profile.error_model else None
        if names and all(name in columns for name in names):
            strides = {(arm or _NO_ARM): max(1, min(counts) // ROWS_TO_ESTIMATE)
                       for (owner, arm), counts in window_rows.items() if owner == version}
            found[version] = ([list(columns).index(name) for name in names], profile.error_model, strides)
    return found


def count_bins(log: DataFrame, profiles: dict[str, ReferenceProfile], columns,
               settings: MonitoringSettings, window_rows: dict | None = None) -> tuple[dict, dict]:
    """{(window start, version, arm): {column: exact row count per reference bin}}, and the estimates.

    The estimates map the same keys to (sum of estimated absolute errors, of squared errors, rows
    estimated), for the versions with an error model; ``window_rows`` ((version, arm) -> the row
    counts of its windows) sets how many rows of each window the error model reads.
    """
    edges = {version: [np.asarray(profile.column(name).edges, dtype=float) for name in columns]
             for version, profile in profiles.items()}
    windowed = log.select(F.unix_micros(F.date_trunc(settings.window_unit, F.col(engine.TIMESTAMP))),
                          F.col(engine.MODEL_VERSION).cast("string"),
                          F.coalesce(_arm(log), F.lit(_NO_ARM)),
                          *[F.col(name).cast("double") for name in columns])
    schema = (f"window_micros long, {engine.MODEL_VERSION} string, {engine.ARM} string, column_index int, "
              f"counts array<long>, {ESTIMATED_ABSOLUTE} double, {ESTIMATED_SQUARED} double, "
              f"{ESTIMATED_ROWS} double")
    counting = _partial_counts(edges, len(columns), _error_models(profiles, columns, window_rows or {}))
    partial = windowed.mapInArrow(counting, schema)
    added = partial.groupBy("window_micros", engine.MODEL_VERSION, engine.ARM, "column_index").agg(
        *[F.sum(F.get("counts", position)).alias(f"bin_{position}") for position in range(BINS)],
        *[F.sum(name).alias(name) for name in (ESTIMATED_ABSOLUTE, ESTIMATED_SQUARED, ESTIMATED_ROWS)])
    counts: dict = {}
    estimates: dict = {}
    for row in added.withColumn(WINDOW_START, F.timestamp_micros("window_micros")).collect():
        version = row[engine.MODEL_VERSION]
        arm = row[engine.ARM] if row[engine.ARM] != _NO_ARM else None
        key = (row[WINDOW_START], version, arm)
        if row["column_index"] == ESTIMATES:
            estimates[key] = (row[ESTIMATED_ABSOLUTE], row[ESTIMATED_SQUARED], row[ESTIMATED_ROWS])
            continue
        name = columns[row["column_index"]]
        bins = len(profiles[version].column(name).edges) + 1
        counts.setdefault(key, {})[name] = np.array(
            [row[f"bin_{position}"] for position in range(bins)], dtype=np.int64)
    return counts, estimates


def aggregate_windows(log: DataFrame, profiles: dict[str, ReferenceProfile], columns,
                      settings: MonitoringSettings) -> list[dict]:
    """The per-window, per-version, per-arm sums of ``log`` (already limited to the monitored range).

    Each window's ``bin_counts`` maps a column to its exact row count per reference bin.
    """
    missing = [name for name in (*columns, engine.TIMESTAMP, engine.MODEL_VERSION, engine.LABEL)
               if name not in log.columns]
    if missing:
        raise DataError(f"the inference log lacks column(s) {', '.join(missing)}; "
                        f"found {', '.join(log.columns)}")
    windowed = (log.withColumn(WINDOW_START, F.date_trunc(settings.window_unit, F.col(engine.TIMESTAMP)))
                .withColumn(engine.ARM, _arm(log)))
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
    grouped = windowed.groupBy(WINDOW_START, engine.MODEL_VERSION, engine.ARM).agg(*aggregations)
    ordered = grouped.orderBy(WINDOW_START, engine.MODEL_VERSION, engine.ARM)
    sums = [row.asDict(recursive=True) for row in ordered.collect()]
    window_rows: dict = {}
    for window in sums:
        window_rows.setdefault((window[engine.MODEL_VERSION], window[engine.ARM]), []).append(window["rows"])
    bins, estimates = count_bins(log, profiles, columns, settings, window_rows)
    for window in sums:
        key = (window[WINDOW_START], window[engine.MODEL_VERSION], window[engine.ARM])
        window[BIN_COUNTS] = bins.get(key, {})
        absolute, squared, estimated_rows = estimates.get(key, (None, None, None))
        # The rows read stand for all the window's rows.
        scale = window["rows"] / estimated_rows if estimated_rows else None
        window[ESTIMATED_ABSOLUTE] = absolute * scale if scale else None
        window[ESTIMATED_SQUARED] = squared * scale if scale else None
        window[ESTIMATED_ROWS] = estimated_rows
    return sums
