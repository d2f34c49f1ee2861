"""Monitoring results as Application Insights telemetry, for Azure Monitor alert rules.

Each metric of each window is a ``customMetrics`` item named ``monitoring.<metric>``; each
violation is a ``customEvents`` item named ``monitoring.violation``; the decision is one
``monitoring.decision`` event. All carry the model name and version, the column and the
window in customDimensions, so a log alert can filter and group on them.
"""
import math

from mlops.monitoring.rows import DriftRow, MetricRow, ProfileRow, Status

METRIC_PREFIX = "monitoring."
VIOLATION_EVENT = "monitoring.violation"
DECISION_EVENT = "monitoring.decision"
DRIFT_METRICS = ("population_stability_index", "wasserstein_distance_normalized")
COLUMN_METRICS = ("percent_null", "percent_out_of_range", "avg")
QUALITY_METRICS = ("count", "labelled_count", "root_mean_squared_error", "mean_absolute_error",
                   "mean_absolute_percentage_error", "r2_score", "mean_error", "rmse_ratio",
                   "estimated_root_mean_squared_error", "estimated_mean_absolute_error", "estimated_rmse_low",
                   "estimated_rmse_high", "estimated_rmse_ratio_low")


def _dimensions(row: MetricRow, model_name: str) -> dict:
    return {"model_name": model_name, "model_version": row.model_version, "column_name": row.column_name,
            "window_start": row.window_start_text, "granularity": row.granularity, "arm": row.arm or "",
            "status": str(row.verdict or "")}


def metric_items(profile_rows: list[ProfileRow], drift_rows: list[DriftRow], model_name: str) -> list:
    """(metric name, value, dimensions) for every measured value of the windows."""
    items = []
    for row in drift_rows:
        if row.status == Status.INSUFFICIENT:
            continue
        dimensions = _dimensions(row, model_name)
        values = {name: getattr(row, name) for name in DRIFT_METRICS}
        values |= {"ks_statistic": row.ks_test.statistic, "ks_pvalue": row.ks_test.pvalue}
        items += [(METRIC_PREFIX + name, value, dimensions) for name, value in values.items()]
    for row in profile_rows:
        table = row.is_table
        dimensions = _dimensions(row, model_name)
        items += [(METRIC_PREFIX + name, getattr(row, name), dimensions)
                  for name in (QUALITY_METRICS if table else COLUMN_METRICS)]
    # An undefined value (NaN: no labels, one row) has no place in a metric; the table keeps it.
    return [(name, float(value), dimensions) for name, value, dimensions in items
            if value is not None and math.isfinite(value)]


def send(telemetry, profile_rows: list[ProfileRow], drift_rows: list[DriftRow], decision,
         model_name: str) -> int:
    """Send every metric, violation and the decision; returns the number of items sent."""
    items = metric_items(profile_rows, drift_rows, model_name)
    for name, value, dimensions in items:
        telemetry.track_metric(name, value, **dimensions)
    for violation in decision.violations:
        telemetry.track_event(VIOLATION_EVENT, model_name=model_name, model_version=violation.model_version,
                              column_name=violation.column_name, window_start=violation.window_start,
                              metric=violation.metric, value=f"{violation.value:.6g}",
                              limit=f"{violation.limit:.6g}")
    telemetry.track_event(DECISION_EVENT, model_name=model_name,
                          retrain_required=str(decision.retrain_required).lower(), reason=decision.reason)
    return len(items) + len(decision.violations) + 1
