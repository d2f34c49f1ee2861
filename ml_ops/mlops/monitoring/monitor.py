"""Monitor a date range of the inference log into the two metric tables, and store reference profiles.

Two passes over the monitored range: the model versions scored in it, then one aggregation
(:mod:`mlops.monitoring.window_stats`). The metric rows of a window replace that window's
earlier rows in one commit per table, so recomputing never duplicates.
"""
import datetime
import logging
from dataclasses import dataclass

from pyspark.sql import functions as F
from pyspark.sql import types as T

from mlops.errors import DataError
from mlops.inference import engine
from mlops.monitoring import drift
from mlops.monitoring.reference import PREDICTION_COLUMN, ReferenceProfile
from mlops.monitoring.rows import DRIFT_SCHEMA, PROFILE_SCHEMA, DriftRow, ProfileRow, to_record
from mlops.monitoring.settings import MonitoringSettings
from mlops.monitoring.window_stats import aggregate_windows

logger = logging.getLogger(__name__)

DOUBLE, LONG, STRING = T.DoubleType(), T.LongType(), T.StringType()
DOUBLES = T.ArrayType(DOUBLE)


def _schema(*fields) -> T.StructType:
    return T.StructType([T.StructField(name, data_type) for name, data_type in fields])


BASELINE_SCHEMA = _schema(("model_name", STRING), ("model_version", STRING), ("model_id", STRING),
                          ("created_at", STRING), ("column_name", STRING), ("count", LONG),
                          *[(name, DOUBLE) for name in ("null_rate", "avg", "stddev", "min", "max")],
                          *[(name, DOUBLES) for name in ("bin_edges", "cumulative_share", "quantiles")],
                          ("reference_rmse", DOUBLE), ("reference_mae", DOUBLE), ("profile_json", STRING))
METRIC_KEYS = ("window_start", "model_version", "arm", "column_name")
# Metric tables written before arms were profiled apart, or quality estimated, gain the columns;
# their rows read null.
ADDED_METRIC_COLUMNS = ("arm", *(name for name in PROFILE_SCHEMA.fieldNames()
                                 if name.startswith("estimated_")))
METRIC_PARTITIONS = ("granularity",)


def metric_table_names(predictions_table: str) -> dict:
    return {"profile": f"{predictions_table}_profile_metrics", "drift": f"{predictions_table}_drift_metrics",
            "baseline": f"{predictions_table}_baseline"}


@dataclass
class MonitoringResult:
    profile_rows: list[ProfileRow]
    drift_rows: list[DriftRow]
    profiles: dict

    @property
    def versions(self) -> list:
        return sorted(self.profiles, key=lambda version: (len(version), version))


# ---------------------------------------------------------------- reference profiles

def write_baseline(tables, predictions_table: str, profile: ReferenceProfile) -> None:
    """The version's reference rows into ``<predictions table>_baseline``, replacing earlier ones."""
    text = profile.to_json()
    rows = [{**row, "profile_json": text} for row in profile.baseline_rows()]
    frame = tables.spark.createDataFrame(rows, BASELINE_SCHEMA)
    tables.upsert(frame, metric_table_names(predictions_table)["baseline"], ("model_version", "column_name"),
                  ("model_name",))


def stored_profile(tables, predictions_table: str, version: str) -> ReferenceProfile | None:
    """The reference profile stored for ``version``, or None."""
    baseline = metric_table_names(predictions_table)["baseline"]
    if not tables.exists(baseline):
        return None
    row = tables.read(baseline).where(F.col("model_version") == str(version)).select("profile_json").first()
    return ReferenceProfile.from_json(row.profile_json) if row else None


def load_profiles(tables, predictions_table: str, model_name: str, versions) -> dict:
    """The reference profile of each version; DataError naming the command that builds a missing one."""
    baseline = metric_table_names(predictions_table)["baseline"]
    found = {}
    if tables.exists(baseline):
        rows = (tables.read(baseline).where(F.col("model_version").isin(list(versions)))
                .groupBy("model_version").agg(F.first("profile_json").alias("profile_json")).collect())
        found = {row.model_version: ReferenceProfile.from_json(row.profile_json) for row in rows}
    missing = sorted(set(versions) - set(found), key=lambda version: (len(version), version))
    if missing:
        commands = "; ".join(f"`mlops model profile {model_name} {version}`" for version in missing)
        raise DataError(f"model '{model_name}' version(s) {', '.join(missing)} scored in the inference log "
                        f"have no reference profile in {baseline}; build it with {commands}")
    return found


# ---------------------------------------------------------------- monitoring

def monitored_columns(feature_names) -> list:
    return [*feature_names, PREDICTION_COLUMN]


def monitor_range(tables, predictions_table: str, model_name: str, feature_names,
                  settings: MonitoringSettings, start: datetime.date, end: datetime.date,
                  require_labels: bool = False) -> MonitoringResult:
    """Metrics of every window from ``start`` to ``end`` (event dates, inclusive), written to the tables."""
    if not tables.exists(predictions_table):
        raise DataError(f"the inference log {predictions_table} does not exist; run the scoring job first")
    log = tables.read(predictions_table).where(
        F.col(engine.PICKUP_DATE).between(F.lit(start), F.lit(end)))
    versions = sorted(row[0] for row in log.select(engine.MODEL_VERSION).distinct().collect())
    if not versions:
        logger.warning("no inference log rows between %s and %s: nothing to monitor", start, end)
        return MonitoringResult([], [], {})
    profiles = load_profiles(tables, predictions_table, model_name, versions)
    columns = monitored_columns(feature_names)
    profile_rows, drift_rows = [], []
    for sums in aggregate_windows(log, profiles, columns, settings):
        profile = profiles[sums[engine.MODEL_VERSION]]
        window_profile, window_drift = drift.window_metrics(sums, profile, columns, settings)
        profile_rows += window_profile
        drift_rows += window_drift
    if require_labels:
        check_labels(profile_rows, predictions_table, start, end)
    _write_metrics(tables, predictions_table, profile_rows, drift_rows)
    logger.info("monitored %d window(s) of version(s) %s between %s and %s",
                len({row.window.start for row in profile_rows}), ", ".join(versions), start, end)
    return MonitoringResult(profile_rows, drift_rows, profiles)


def check_labels(profile_rows: list, predictions_table: str, start, end) -> None:
    """DataError naming the label merge when no monitored window has labels."""
    if not any(row.labelled_count for row in profile_rows):
        raise DataError(f"the inference log {predictions_table} has no labels between {start} and {end}, "
                        "and the retraining rule needs model quality; fill them with the scoring job's "
                        "merge_labels task (execute_label_merge=true) first")


def _write_metrics(tables, predictions_table: str, profile_rows: list, drift_rows: list) -> None:
    names = metric_table_names(predictions_table)
    spark = tables.spark
    for name, rows, schema in ((names["profile"], profile_rows, PROFILE_SCHEMA),
                               (names["drift"], drift_rows, DRIFT_SCHEMA)):
        frame = spark.createDataFrame([to_record(row) for row in rows], schema)
        tables.upsert(frame, name, METRIC_KEYS, METRIC_PARTITIONS, added_columns=ADDED_METRIC_COLUMNS)
