"""The loop closed: train, score, monitor a quiet month, then fare inflation triggers a retraining.

One MLOPS_HOME plays the story with the real job files through the local runner: the training
job tunes and makes the Champion (and its reference profile), scoring appends February and then
a March whose fares are inflated, and the monitoring job watches each. Its `retrain` task starts
the training job, which reuses the Champion's tuned hyperparameters; the new version is
validated and judged against the Champion.
"""
import datetime
import json

import mlflow
import pytest
from taxi_fares.data import DriftSettings, generate_trips

from mlops.lifecycle.registry import VALIDATION_STATUS_TAG, RegistryClient
from mlops.local.jobs import EXCLUDED, SUCCESS, run_job
from mlops.platform import driver_path
from support.jobs import bundle_job, in_process_home
from support.spark_cluster import REPO_ROOT

pytestmark = pytest.mark.slow

TRAINING = bundle_job("taxi_fares_training")
SCORING = bundle_job("taxi_fares_batch_scoring")
MONITORING = bundle_job("taxi_fares_monitoring")
RAW = "dbfs:/raw/trips"
# The dev target's Unity Catalog model, which the local platform keeps in its own store.
MODEL = "dev.taxi_fares.taxi_fares_model"


@pytest.fixture(scope="module")
def loop(spark, tmp_path_factory):
    """January and February trips as usual, and a first week of March whose fares are 60% higher."""
    with in_process_home(tmp_path_factory, "monitoring_home") as home:
        usual = generate_trips(spark, 24_000, datetime.date(2016, 1, 1), datetime.date(2016, 2, 14), seed=3)
        inflated = generate_trips(spark, 4_000, datetime.date(2016, 3, 1), datetime.date(2016, 3, 7), seed=4,
                                  drift=DriftSettings(fare_scale=1.6))
        usual.unionByName(inflated).write.mode("overwrite").parquet(str(driver_path(RAW)))
        shared = {"wheel_path": str(REPO_ROOT / "dist"), "taxi_fares_raw_data": RAW}
        trained = run_job(TRAINING, {**shared, "training_data_start_date": "2016-01-01",
                                     "training_data_end_date": "2016-01-31", "execute_tuning": "true",
                                     "tuning_trials": "8"}, spark=spark, progress=print)
        assert trained.state == SUCCESS, trained.summary()
        check_the_tuned_version(trained)
        for start, end in (("2016-02-01", "2016-02-14"), ("2016-03-01", "2016-03-07")):
            scored = run_job(SCORING, {**shared, "scoring_data_start_date": start,
                                       "scoring_data_end_date": end, "publish_results": "false"},
                             spark=spark, progress=print)
            assert scored.state == SUCCESS, scored.summary()
        yield home, shared, spark


def check_the_tuned_version(trained):
    """The version has the best trial's params; MLflow holds the study run and its 8 trial runs."""
    client = mlflow.MlflowClient()
    version = trained.tasks["train"]["task_values"]["model_version"]
    tags = client.get_model_version(MODEL, version).tags
    study_name = tags["tuning.study"]
    [study_run] = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                     f"tags.mlflow.runName = '{study_name}'")
    trials = client.search_runs([study_run.info.experiment_id],
                                f"tags.mlflow.parentRunId = '{study_run.info.run_id}'")
    assert len(trials) == 8
    finished = [trial for trial in trials if "value" in trial.data.metrics]
    best = min(finished, key=lambda trial: trial.data.metrics["value"])
    assert float(tags["tuning.best_validation_rmse"]) == pytest.approx(best.data.metrics["value"], rel=1e-5)
    best_params = json.loads(tags["tuning.best_params"])
    for name, value in best.data.params.items():
        if name != "num_rounds":
            assert float(best_params[name]) == pytest.approx(float(value)), name
    assert best_params["num_rounds"] <= int(best.data.params["num_rounds"])
    training_run = client.get_run(client.get_model_version(MODEL, version).run_id)
    assert int(training_run.data.params["trained.num_leaves"]) == best_params["num_leaves"]
    assert "tuning/optimization_history.png" in {a.path for a in client.list_artifacts(
        training_run.info.run_id, "tuning")}
    assert trained.tasks["train"]["task_values"]["hyperparameters"].startswith("tuned: best trial ")


def monitor(loop, start, end, **overrides):
    _, shared, spark = loop
    return run_job(MONITORING, {**shared, "monitoring_start_date": start, "monitoring_end_date": end,
                                **overrides}, spark=spark, progress=print)


def test_a_quiet_fortnight_needs_no_retraining(loop):
    record = monitor(loop, "2016-02-01", "2016-02-14")

    values = record.tasks["monitor"]["task_values"]
    assert record.state == SUCCESS
    # The first model is tuned, and trials drawn in parallel Spark tasks differ from run to run:
    # a day may stray over a threshold, never as often as the retraining rule asks.
    assert values["retrain_required"] == "false" and len(values["violated_windows"]) <= 1
    assert record.tasks["check"]["outcome"] == "false" and record.tasks["retrain"]["state"] == EXCLUDED
    # No Challenger yet: the online comparison has nothing to judge, and says so.
    assert record.tasks["compare_online"]["task_values"]["online_verdict"] == "no challenger"


def test_inflated_fares_within_the_cooldown_do_not_retrain(loop):
    record = monitor(loop, "2016-03-01", "2016-03-07")

    values = record.tasks["monitor"]["task_values"]
    assert values["retrain_required"] == "false"
    assert values["reason"].startswith("cooldown: a version was trained at")
    assert len(values["violated_windows"]) == 7
    assert record.tasks["retrain"]["state"] == EXCLUDED


def test_inflated_fares_retrain_and_the_new_version_is_judged(loop):
    home, _, _ = loop
    registry = RegistryClient(MODEL, "databricks-uc")
    versions_before = {str(version.version) for version in registry.list_versions()}

    record = monitor(loop, "2016-03-01", "2016-03-07", retrain_cooldown_days="0")

    values = record.tasks["monitor"]["task_values"]
    retrain = record.tasks["retrain"]
    assert values["retrain_required"] == "true", values["reason"]
    assert any(":table: rmse_ratio" in line for line in values["violations"])
    assert retrain["job_parameters"]["training_data_start_date"] == "2016-02-07"
    assert retrain["job_parameters"]["training_data_end_date"] == "2016-03-07"
    child = json.loads((home / "runs" / f"{retrain['child_run_id']}.json").read_text())
    assert child["job_name"] == "taxi_fares_training"
    [new_version] = {str(version.version) for version in registry.list_versions()} - versions_before
    status = registry.client.get_model_version(MODEL, new_version).tags.get(VALIDATION_STATUS_TAG)
    # The lifecycle judges it: a PASSED version meets the Champion in deploy, a FAILED one stops at validate.
    if status == "PASSED":
        assert child["tasks"]["deploy"]["task_values"]["promotion_decision"] in ("promoted", "not_promoted")
    else:
        assert status == "FAILED" and child["tasks"]["validate"]["state"] == "FAILED"
    assert record.tasks["retrain"]["state"] == child["state"] == record.state
    # Restricted tuning: the retraining reused the Champion's tuned params, and says so.
    assert retrain["job_parameters"]["training_params_from"] == "champion"
    assert retrain["job_parameters"]["execute_tuning"] == "false"
    champion = registry.client.get_model_version(MODEL, "1").tags
    new_tags = registry.client.get_model_version(MODEL, new_version).tags
    assert new_tags["tuning.reused_from_version"] == "1"
    assert new_tags["tuning.best_params"] == champion["tuning.best_params"]
    assert child["tasks"]["train"]["task_values"]["hyperparameters"].startswith(
        "reused the tuned params of Champion version 1")
