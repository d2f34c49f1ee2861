"""Task ``monitor``: drift and model quality of the inference log, and whether to retrain.

The monitored windows' metrics go to ``<predictions table>_profile_metrics`` and
``_drift_metrics``; the decision goes out as task values for the job's ``check`` condition:
``retrain_required`` ("true"/"false"), ``reason``, ``violated_windows``, ``violations``, ``report``
(the HTML report's artifact URI; with a Challenger set, the report shows the online comparison), and
the training range a retraining would use (``training_data_start_date``,
``training_data_end_date``: the ``retraining_range_days`` up to the last monitored day).
"""
import dataclasses
import datetime
import logging

import mlflow
from taxi_fares import features

from mlops.config import MonitoringConfig, TrainingConfig
from mlops.errors import DataError
from mlops.lifecycle.registry import CHAMPION, RegistryClient
from mlops.monitoring import report, signals
from mlops.monitoring.decision import ESTIMATED_RATIO, Decision, decide
from mlops.monitoring.lakehouse import monitor_with_lakehouse
from mlops.monitoring.monitor import check_labels, monitor_range
from mlops.monitoring.rows import Status
from mlops.stages import online_comparison
from mlops.stages.run import TaskRun


logger = logging.getLogger(__name__)

LAKEHOUSE = "lakehouse"
ESTIMATED_QUALITY = "estimated_quality"
# Three times the training job's timeout (2 hours): a run this old that still says RUNNING was abandoned.
TRAINING_STALE_AFTER = datetime.timedelta(hours=6)


def _last_trained_at(registry: RegistryClient) -> datetime.datetime | None:
    """When the newest version was registered: the start of the cooldown."""
    versions = registry.list_versions()
    if not versions:
        return None
    newest = max(int(version.creation_timestamp or 0) for version in versions)
    return datetime.datetime.fromtimestamp(newest / 1000, datetime.timezone.utc).replace(tzinfo=None)


def training_in_progress(config, now: datetime.datetime) -> str:
    """The running training task's MLflow run, if any; empty when none is running.

    A run still RUNNING after TRAINING_STALE_AFTER is taken as abandoned (a killed driver
    never ends its run), so it cannot block retraining forever.
    """
    experiment = mlflow.get_experiment_by_name(config.experiment_name)
    if experiment is None:
        return ""
    since = int((now - TRAINING_STALE_AFTER).replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)
    running = mlflow.search_runs(
        [experiment.experiment_id], max_results=1, output_format="list",
        filter_string=f"attributes.status = 'RUNNING' and attributes.start_time > {since} "
                      f"and tags.job_name = '{config.training_job_name}'")
    if not running:
        return ""
    task = running[0].data.tags.get("task", "?")
    return f"MLflow run {running[0].info.run_id}, task {task} of {config.training_job_name}"


def retraining_tuning(config: MonitoringConfig) -> dict:
    """How a retraining gets its hyperparameters: the Champion's tuned ones, or a tuning budget of its own."""
    budget = config.retraining_tuning_trials
    return {"training_params_from": "job" if budget else "champion",
            "execute_tuning": "true" if budget else "false",
            "tuning_trials": str(budget or TrainingConfig.default_of("tuning_trials"))}


def rows_the_rule_uses(result, retrain_on: str) -> tuple[list, list]:
    """(profile rows, drift rows) the retraining rule judges; ``estimated_quality`` judges the estimates."""
    tables = [row for row in result.profile_rows if row.is_table]
    if retrain_on == ESTIMATED_QUALITY:
        # Judged on the estimate's lower bound, which needs no label.
        profile_rows = [dataclasses.replace(row, quality_status=row.estimated_quality_status
                                            or Status.INSUFFICIENT) for row in tables]
    else:
        profile_rows = tables if retrain_on in ("quality", "drift_or_quality") else []
    drift_rows = result.drift_rows if retrain_on in ("drift", "drift_or_quality") else []
    return profile_rows, drift_rows


def monitor_inference_log(run: TaskRun[MonitoringConfig]) -> tuple[Decision, str]:
    """Monitor the configured range, write the metric tables, decide, and hand the decision on.

    Returns the decision and the URI of the HTML report logged to the task's MLflow run.
    """
    config = run.config
    settings = config.settings()
    start, end = config.monitoring_range()
    needs_labels = config.retrain_on == "quality"
    if config.monitoring_backend == LAKEHOUSE:
        from databricks.sdk import WorkspaceClient

        result = monitor_with_lakehouse(WorkspaceClient(), run.tables, config, settings, start, end)
        if needs_labels:
            check_labels(result.profile_rows, config.predictions_table, start, end)
    else:
        result = monitor_range(run.tables, config.predictions_table, config.registered_model_name,
                               features.FEATURE_COLUMNS, settings, start, end, require_labels=needs_labels)
    registry = RegistryClient.from_config(config)
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    versions = online_comparison.serving_versions(config)
    champion = versions.get(CHAMPION)
    decision = decide(*rows_the_rule_uses(result, config.retrain_on), settings, _last_trained_at(registry),
                      now, training_in_progress=training_in_progress(config, now),
                      serving_versions=[champion] if champion else None,
                      quality_metric=(ESTIMATED_RATIO if config.retrain_on == ESTIMATED_QUALITY
                                      else "rmse_ratio"))
    training_start = end - datetime.timedelta(days=config.retraining_range_days - 1)
    values = {**decision.task_values(), "monitoring_start_date": start.isoformat(),
              "monitoring_end_date": end.isoformat(), "training_data_start_date": training_start.isoformat(),
              "training_data_end_date": end.isoformat(), **retraining_tuning(config)}
    for key, value in values.items():
        run.set_task_value(key, value)
    mlflow.log_dict({**values, "windows": decision.windows}, "monitoring_decision.json")
    mlflow.log_metrics({"windows_monitored": len(decision.windows),
                        "windows_violated": len(values["violated_windows"]),
                        "violations": len(decision.violations)})
    mlflow.set_tags({"retrain_required": values["retrain_required"], "monitoring.reason": decision.reason})
    sent = signals.send(run.telemetry, result.profile_rows, result.drift_rows, decision,
                        config.registered_model_name)
    # With a Challenger serving beside the Champion, the report shows their online comparison too.
    try:
        comparison = online_comparison.judge_arms(config, run.tables, versions)
    except DataError as error:  # a log written before arms were recorded: the drift report still stands
        comparison = None
        logger.warning("no online comparison in the report: %s", error)
    report_uri = report.log_report(mlflow, result, settings, decision,
                                   f"{config.registered_model_name}: monitoring {start} to {end}", comparison)
    run.set_task_value("report", report_uri)
    logger.info("monitoring %s to %s: %s", start, end, decision.reason)
    for violation in decision.violations[:20]:
        logger.warning("violation: %s", violation.line())
    logger.info("%d metrics and events sent to telemetry; report: %s", sent, report_uri)
    return decision, report_uri
