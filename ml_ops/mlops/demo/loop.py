"""The second half of ``make demo``: monitoring watches the Champion, drift arrives, retraining follows.

February is monitored first (no drift, no retraining). Then March arrives with longer trips
and dearer fares (the generator's distance and fare shifts); it is scored and monitored before
its labels arrive (the estimated rmse), then again once ``merge_labels`` has filled them (the
realized rmse, shown beside the estimate), the violations and the rmse rise are shown, and the
monitoring job's ``retrain`` task runs the training job, whose new version is validated and
judged against the Champion.
"""
import datetime
import json

from pyspark.sql import functions as F
from taxi_fares.data import DriftSettings

from mlops.config import MonitoringConfig
from mlops.data.generator import generate
from mlops.data.tables import TableStore
from mlops.lifecycle.registry import RegistryClient
from mlops.lifecycle.model_admin import format_table
from mlops.monitoring.drift import TABLE_COLUMN
from mlops.monitoring.monitor import metric_table_names
from mlops.platform.home import mlops_home

MONITORING_JOB = "taxi_fares_monitoring"
SCORING_JOB = "taxi_fares_batch_scoring"
MARCH = (datetime.date(2016, 3, 1), datetime.date(2016, 3, 31))
MARCH_DRIFT = DriftSettings(distance_scale=1.5, fare_scale=1.5)


def _monitor(start: datetime.date, end: datetime.date, shared: dict, run, cooldown_days: int = 0):
    record = run(MONITORING_JOB, {**shared, "monitoring_start_date": start.isoformat(),
                                  "monitoring_end_date": end.isoformat(),
                                  # The demo's Champion was trained minutes ago: no cooldown unless asked.
                                  "retrain_cooldown_days": str(cooldown_days)})
    values = record.tasks["monitor"]["task_values"]
    print(f"decision: retrain_required={values['retrain_required']}: {values['reason']}")
    print(f"windows over threshold: {len(values['violated_windows'])} of "
          f"{(end - start).days + 1}; check outcome: {record.tasks['check'].get('outcome')}; "
          f"retrain task: {record.tasks['retrain']['state']}")
    print(f"report: {values['report']}")
    return record


def _print_drift(spark, config: MonitoringConfig, start: datetime.date, end: datetime.date):
    """Windows over threshold per column, from the drift metrics table."""
    tables = TableStore(spark, config.table_location)
    drifted = (tables.read(metric_table_names(config.predictions_table)["drift"])
               .where(F.to_date("window.start").between(F.lit(start), F.lit(end)))
               .where(F.col("status") == "violation")
               .groupBy("column_name").agg(F.count("*").alias("windows"),
                                           F.max("population_stability_index").alias("psi"))
               .orderBy(F.desc("windows"), "column_name").collect())
    print(format_table(["drifted column", "windows", "largest PSI"],
                       [[row.column_name, row.windows, f"{row.psi:.3f}"] for row in drifted]))


def _print_quality(spark, config: MonitoringConfig):
    """Mean rmse and drift of the monitored months, from the metric tables."""
    tables = TableStore(spark, config.table_location)
    names = metric_table_names(config.predictions_table)
    month = F.date_format(F.col("window.start"), "yyyy-MM").alias("month")
    quality = (tables.read(names["profile"]).where(F.col("column_name") == TABLE_COLUMN)
               .groupBy(month).agg(F.count("*").alias("windows"),
                                   F.avg("root_mean_squared_error").alias("rmse"),
                                   F.avg("rmse_ratio").alias("ratio")).orderBy("month").collect())
    print(format_table(["month", "windows", "mean rmse", "rmse / reference"],
                       [[row.month, row.windows, f"{row.rmse:.3f}", f"{row.ratio:.2f}"] for row in quality]))


def _month_quality(spark, config: MonitoringConfig, month: str) -> tuple:
    """(windows, mean estimated rmse, mean realized rmse) of the month's windows; None where there is none."""
    tables = TableStore(spark, config.table_location)
    row = (tables.read(metric_table_names(config.predictions_table)["profile"])
           .where((F.col("column_name") == TABLE_COLUMN)
                  & (F.date_format(F.col("window.start"), "yyyy-MM") == month))
           .agg(F.count("*").alias("windows"), F.avg("estimated_root_mean_squared_error").alias("estimated"),
                F.avg("root_mean_squared_error").alias("realized")).first())
    return row.windows, row.estimated, row.realized


def _print_estimate_against_realized(before: tuple, after: tuple, reference_rmse: float):
    def shown(value):
        return "-" if value is None else f"{value:.3f} ({value / reference_rmse:.2f}x)"
    print(format_table(["March 2016", "windows", "estimated rmse", "realized rmse"],
                       [["before merge_labels", before[0], shown(before[1]), shown(before[2])],
                        ["after merge_labels", after[0], shown(after[1]), shown(after[2])]]))
    print(f"reference rmse {reference_rmse:.3f}. The estimate needs no label: it sees the longer trips. "
          "Only the labels show the dearer fares for the same trips (concept drift), which no estimate can.")


def _clear_labels(spark, config: MonitoringConfig):
    """March's fares are unknown when its trips are scored at pickup: no label until they arrive."""
    # The generated trips carry their fares, so scoring wrote them as labels at once; a real
    # pickup has none.
    tables = TableStore(spark, config.table_location)
    spark.sql(f"UPDATE {tables.target(config.predictions_table).identifier} SET label = NULL "
              f"WHERE pickup_date BETWEEN '{MARCH[0]}' AND '{MARCH[1]}'")
    print("March's trips were scored at pickup, before their fares were known: the log has no label yet")


def _reference_rmse(spark, config: MonitoringConfig) -> float:
    """The held-out rmse of the version the Champion alias names now."""
    tables = TableStore(spark, config.table_location)
    champion = RegistryClient.from_config(config).alias_version("Champion")
    row = (tables.read(metric_table_names(config.predictions_table)["baseline"])
           .where(F.col("model_version") == str(champion)).select("reference_rmse").first())
    return row.reference_rmse


def _print_retraining(record):
    retrain = record.tasks["retrain"]
    child_id = retrain.get("child_run_id")
    if not child_id:
        print("the retrain task did not start the training job")
        return
    child = json.loads((mlops_home() / "runs" / f"{child_id}.json").read_text())
    parameters = retrain["job_parameters"]
    span = f"{parameters['training_data_start_date']}..{parameters['training_data_end_date']}"
    print(f"retrain started {child['job_name']} run {child_id} on {span}: {child['state']}")
    hyperparameters = child["tasks"].get("train", {}).get("task_values", {}).get("hyperparameters")
    print(f"hyperparameters: {hyperparameters or 'the job parameters'}")
    validate = child["tasks"].get("validate", {}).get("task_values", {})
    deploy = child["tasks"].get("deploy", {}).get("task_values", {})
    print(f"new version {validate.get('model_version', '?')}: "
          f"validation {validate.get('validation_status', '?')}")
    if deploy:
        print(f"promotion: {deploy.get('promotion_decision')}: {deploy.get('promotion_reason')}")
        registry_uri = child["tasks"]["deploy"]["parameters"]["registry_uri"]
        registry = RegistryClient(deploy["model_name"], registry_uri)
        version = registry.get_version(deploy["model_version"])
        print(f"compared on pickups {version.tags.get('promotion_compared_on', '?')}: the new version's "
              "out-of-time held-out rows, none of them in the Champion's training range")
        print(f"Champion is now version {deploy.get('champion_version') or 'unchanged'}")


def close_the_loop(spark, raw_data: str, rows: int, run, banner, labels):
    """Monitor February, add a drifted March, score it, merge its late labels, monitor it, and retrain.

    ``labels`` is the (TableStore, table name) the generator writes late labels to.
    """
    shared = {"taxi_fares_raw_data": raw_data}
    banner("Monitoring February 2016 (the Champion's first scored month)")
    february = _monitor(datetime.date(2016, 2, 1), datetime.date(2016, 2, 29), shared, run)
    config = MonitoringConfig.from_params(february.tasks["monitor"]["parameters"])
    banner(f"March 2016 arrives with drift: trips x{MARCH_DRIFT.distance_scale} longer, "
           f"fares x{MARCH_DRIFT.fare_scale}")
    generate(spark, rows // 2, *MARCH, raw_data, seed=8, drift=MARCH_DRIFT, append=True, labels=labels)
    march_scoring = {**shared, "scoring_data_start_date": MARCH[0].isoformat(),
                     "scoring_data_end_date": MARCH[1].isoformat(), "publish_results": "false"}
    run(SCORING_JOB, {**march_scoring, "execute_label_merge": "false"})
    _clear_labels(spark, config)
    banner("Monitoring March 2016 before its labels arrive: the estimated rmse")
    print("(a long cooldown for this look: retraining waits for the labels)")
    _monitor(*MARCH, shared, run, cooldown_days=3650)
    before = _month_quality(spark, config, "2016-03")
    reference_rmse = _reference_rmse(spark, config)
    banner("March's labels arrive (task merge_labels)")
    scoring = run(SCORING_JOB, {**march_scoring, "execute_label_merge": "true"})
    labelled = scoring.tasks["merge_labels"].get("task_values", {}).get("rows_labelled", "?")
    print(f"late labels merged from {labels[1]} (task merge_labels): {labelled} inference log rows "
          "have a fare")
    banner("Monitoring March 2016")
    march = _monitor(*MARCH, shared, run)
    _print_drift(spark, config, *MARCH)
    _print_quality(spark, config)
    _print_estimate_against_realized(before, _month_quality(spark, config, "2016-03"), reference_rmse)
    banner("Retraining (the monitoring job's retrain task)")
    _print_retraining(march)
    return march
