"""No retraining while the training job runs: its task runs in the experiment still say RUNNING."""
import datetime

import mlflow

from mlops.config import MonitoringConfig
from mlops.stages.monitoring import TRAINING_STALE_AFTER, training_in_progress

EXPERIMENT = "/Shared/taxi_fares_monitoring_test"


def config():
    return MonitoringConfig.from_params({"experiment_name": EXPERIMENT})


def now():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def start_task_run(job_name, task, started=None):
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    start_time = int(started.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000) if started else None
    return client.create_run(experiment_id, start_time=start_time, tags={"job_name": job_name, "task": task})


def test_a_running_training_task_is_named(mlflow_tracking):
    running = start_task_run("taxi_fares_training", "validate")

    found = training_in_progress(config(), now())

    assert found == f"MLflow run {running.info.run_id}, task validate of taxi_fares_training"


def test_finished_abandoned_and_other_jobs_runs_do_not_count(mlflow_tracking):
    assert training_in_progress(config(), now()) == ""
    finished = start_task_run("taxi_fares_training", "train")
    mlflow.MlflowClient().set_terminated(finished.info.run_id, "FINISHED")
    start_task_run("taxi_fares_training", "train", started=now() - TRAINING_STALE_AFTER * 2)
    start_task_run("taxi_fares_monitoring", "monitor")

    assert training_in_progress(config(), now()) == ""
