"""``monitoring_backend=lakehouse``: Databricks Lakehouse Monitoring computes the metric tables.

The monitor task creates (or updates) an InferenceLog monitor on the inference table through
databricks-sdk (``quality_monitors``), refreshes it, waits for the refresh, and reads the
monitor's ``<table>_profile_metrics`` and ``_drift_metrics`` (whole-table slice, the model's own
windows) for the same decision, report and telemetry as the Spark backend. The judgement stays
ours: each drift row is held to the thresholds and to the chance level at its window's size,
and the rmse is compared with the version's reference profile. Drift is read against the
baseline when the monitor has one, else window against previous window (``CONSECUTIVE``).
"""
import dataclasses
import datetime
import logging
import math
import time

from databricks.sdk.errors import NotFound
from databricks.sdk.service.catalog import (MonitorInferenceLog, MonitorInferenceLogProblemType,
                                            MonitorRefreshInfoState)
from pyspark.sql import functions as F

from mlops.errors import ConfigError, DataError
from mlops.inference import engine
from mlops.monitoring import drift
from mlops.monitoring.monitor import MonitoringResult, load_profiles, metric_table_names
from mlops.monitoring.reference import BINS
from mlops.monitoring.rows import TABLE_COLUMN, DriftRow, KsTest, ProfileRow, Status, Window
from mlops.monitoring.statistics import psi_by_chance

# The profile fields the monitor's table and ours share, by name.
_PROFILE_FIELDS = ("count", "num_nulls", "quantiles", "percent_null", "avg", "stddev", "min", "max",
                   "mean_squared_error", "root_mean_squared_error", "mean_absolute_error",
                   "mean_absolute_percentage_error", "r2_score", "mean_error")

logger = logging.getLogger(__name__)

FINISHED = {MonitorRefreshInfoState.SUCCESS, MonitorRefreshInfoState.FAILED, MonitorRefreshInfoState.CANCELED}
POLL_SECONDS = 10.0


def inference_log(settings) -> MonitorInferenceLog:
    """The InferenceLog settings of our inference log: one row per prediction, keyed by model version."""
    return MonitorInferenceLog(problem_type=MonitorInferenceLogProblemType.PROBLEM_TYPE_REGRESSION,
                               timestamp_col=engine.TIMESTAMP, granularities=[settings.granularity],
                               prediction_col=engine.PREDICTION, model_id_col=engine.MODEL_VERSION,
                               label_col=engine.LABEL)


def full_table_name(table_location: str, table: str) -> str:
    """``catalog.schema.table``; ConfigError unless ``table_location`` is a Unity Catalog schema."""
    parts = table_location.split(".")
    if len(parts) != 2 or not all(part.strip() for part in parts) or "/" in table_location \
            or ":" in table_location:
        raise ConfigError(f"monitoring_backend=lakehouse needs table_location as a Unity Catalog "
                          f"'catalog.schema', got {table_location!r}; Lakehouse Monitoring works on "
                          "Unity Catalog tables only (use monitoring_backend=spark elsewhere)")
    return f"{table_location}.{table}"


def ensure_monitor(client, table_name: str, output_schema: str, assets_dir: str, settings):
    """Create the monitor, or update it when its InferenceLog settings differ; returns its MonitorInfo."""
    wanted = inference_log(settings)
    try:
        existing = client.quality_monitors.get(table_name=table_name)
    except NotFound:
        logger.info("creating the Lakehouse Monitoring InferenceLog monitor on %s", table_name)
        return client.quality_monitors.create(table_name=table_name, output_schema_name=output_schema,
                                              assets_dir=assets_dir, inference_log=wanted)
    if existing.inference_log == wanted and existing.output_schema_name == output_schema:
        return existing
    logger.info("updating the Lakehouse Monitoring monitor on %s to %s", table_name, wanted.as_dict())
    return client.quality_monitors.update(table_name=table_name, output_schema_name=output_schema,
                                          inference_log=wanted)


def refresh(client, table_name: str, timeout_seconds: float, poll_seconds: float = POLL_SECONDS):
    """Start a refresh and wait for it; DataError when it fails or does not finish in time."""
    started = client.quality_monitors.run_refresh(table_name=table_name)
    deadline = time.monotonic() + timeout_seconds
    info = started
    while info.state not in FINISHED:
        if time.monotonic() > deadline:
            raise DataError(f"the Lakehouse Monitoring refresh {started.refresh_id} of {table_name} did not "
                            f"finish within {timeout_seconds:.0f} s (state {info.state.value}); see the "
                            "monitor's refresh history in Catalog Explorer")
        time.sleep(poll_seconds)
        info = client.quality_monitors.get_refresh(table_name=table_name, refresh_id=started.refresh_id)
        logger.info("Lakehouse Monitoring refresh %s of %s: %s", started.refresh_id, table_name,
                    info.state.value)
    if info.state != MonitorRefreshInfoState.SUCCESS:
        raise DataError(f"the Lakehouse Monitoring refresh {started.refresh_id} of {table_name} ended "
                        f"{info.state.value}: {info.message or 'no message'}")
    return info


def _rows(tables, name: str, start: datetime.date, end: datetime.date, **equal):
    frame = tables.read(name, missing_hint="the Lakehouse Monitoring refresh did not write it")
    frame = frame.where(F.col("slice_key").isNull()).where(
        F.to_date("window.start").between(F.lit(start), F.lit(end)))
    for column, value in equal.items():
        frame = frame.where(F.col(column) == value)
    return [row.asDict(recursive=True) for row in frame.collect()]


def _key(row: dict) -> tuple:
    return row["window"]["start"], str(row["model_id"]), row["column_name"]


def _model_id(profiles: dict, version: str) -> str:
    return f"models:/{profiles[version].model_name}/{version}"


def _metric_key(row: dict, profiles: dict) -> dict:
    version = str(row["model_id"])
    window = row["window"]
    return {"window": Window(window["start"], window["end"]), "granularity": row["granularity"],
            "model_id": _model_id(profiles, version), "model_version": version,
            "column_name": row["column_name"]}


def _profile_row(row: dict, profiles: dict, settings) -> ProfileRow:
    """Our profile row from the monitor's; on the ``:table`` row, its rmse judged by our rule."""
    shared = {name: row.get(name) for name in _PROFILE_FIELDS}
    ours = ProfileRow(**_metric_key(row, profiles), **shared)
    if not ours.is_table:
        return ours
    rmse, reference = row.get("root_mean_squared_error"), profiles[ours.model_version].error.get("rmse")
    labelled = row.get("count") or 0
    ours = dataclasses.replace(ours, labelled_count=labelled, quality_status=Status.INSUFFICIENT)
    if rmse is None or not reference or labelled < settings.min_rows:
        return ours
    ratio = rmse / reference
    status, by_chance = drift.quality_status(ratio, labelled, settings)
    return dataclasses.replace(ours, rmse_ratio=ratio, rmse_ratio_by_chance=by_chance, quality_status=status)


def _drift_row(row: dict, present: int, profiles: dict, settings) -> DriftRow:
    """Our drift row from the monitor's, held to the thresholds and the chance level at its size."""
    key = _metric_key(row, profiles)
    reference = profiles[key["model_version"]].column(key["column_name"])
    psi, ks = row.get("population_stability_index"), row.get("ks_test") or {}
    ours = DriftRow(**key, drift_type=row.get("drift_type") or "BASELINE", count=present,
                    population_stability_index=psi, wasserstein_distance=row.get("wasserstein_distance"),
                    ks_test=KsTest(ks["statistic"], ks["pvalue"]) if ks.get("pvalue") is not None else None)
    if present < settings.min_rows or psi is None or ours.ks_test is None:
        return ours
    by_chance = psi_by_chance(BINS, present, reference.count, settings.alpha)
    distance = ours.wasserstein_distance or 0.0
    normalized = distance / reference.std if reference.std > 0 else (0.0 if distance == 0 else math.inf)
    status = drift.drift_status(key["column_name"], psi, by_chance, ours.ks_test.pvalue, normalized, settings)
    return dataclasses.replace(ours, psi_by_chance=by_chance, wasserstein_distance_normalized=normalized,
                               status=status)


def judged_rows(profile_table: list[dict], drift_table: list[dict], profiles: dict, settings):
    """Our typed profile and drift rows from the monitor's rows, judged by our rules."""
    counts = {_key(row): row.get("count") or 0 for row in profile_table}
    profile_rows = [_profile_row(row, profiles, settings) for row in profile_table]
    drift_rows = [_drift_row(row, counts.get(_key(row), 0), profiles, settings) for row in drift_table
                  if row["column_name"] != TABLE_COLUMN
                  and row["column_name"] in profiles[str(row["model_id"])].columns]
    return profile_rows, drift_rows


def monitor_with_lakehouse(client, tables, config, settings, start: datetime.date, end: datetime.date,
                           poll_seconds: float = POLL_SECONDS) -> MonitoringResult:
    """Create or update the monitor, refresh it, and judge its metric rows for ``start``..``end``."""
    table_name = full_table_name(config.table_location, config.predictions_table)
    ensure_monitor(client, table_name, config.table_location, config.lakehouse_assets_dir, settings)
    refresh(client, table_name, config.lakehouse_refresh_timeout_minutes * 60, poll_seconds)
    names = metric_table_names(config.predictions_table)
    profile_table = _rows(tables, names["profile"], start, end, log_type="INPUT",
                          granularity=settings.granularity)
    drift_table = _rows(tables, names["drift"], start, end, granularity=settings.granularity)
    baseline = [row for row in drift_table if row.get("drift_type") == "BASELINE"]
    drift_table = baseline or [row for row in drift_table if row.get("drift_type") == "CONSECUTIVE"]
    versions = sorted({str(row["model_id"]) for row in profile_table})
    profiles = load_profiles(tables, config.predictions_table, config.registered_model_name, versions)
    profile_rows, drift_rows = judged_rows(profile_table, drift_table, profiles, settings)
    logger.info("Lakehouse Monitoring: %d profile and %d drift rows of version(s) %s between %s and %s",
                len(profile_rows), len(drift_rows), ", ".join(versions) or "none", start, end)
    return MonitoringResult(profile_rows, drift_rows, profiles)
