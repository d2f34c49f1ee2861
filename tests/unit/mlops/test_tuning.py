"""The tuning stage on the local Spark: trials in Spark tasks, the study in the MLflow store."""
import json
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from pyspark import cloudpickle
from pyspark.sql import functions as F
from taxi_fares import features
from taxi_fares.training import TrainingParams
from taxi_fares.tuning import SearchSpace

from mlops.config import TrainingConfig
from mlops.errors import ConfigError, DataError
from mlops.stages import tuning

# The objectives below run in Spark's Python workers, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SPACE = SearchSpace.parse("learning_rate=0.05:0.3:log,num_leaves=4:32:log,num_rounds=20:60")
BASE = TrainingParams(num_rounds=30)
CONFIG = TrainingConfig(training_data_start_date="2016-01-01", training_data_end_date="2016-01-14",
                        seed=7)


def frames(rows: int, seed: int):
    generator = np.random.default_rng(seed)
    values = generator.normal(size=(rows, len(features.FEATURE_COLUMNS)))
    frame = pd.DataFrame(values, columns=list(features.FEATURE_COLUMNS))
    labels = pd.Series(3 * values[:, 0] + values[:, 1] ** 2 + generator.normal(scale=0.3, size=rows))
    return frame, labels


@pytest.fixture
def experiment(mlflow_tracking):
    mlflow.set_experiment("tuning")
    with mlflow.start_run() as run:
        yield run


def objective(deadline=float("inf")):
    return tuning.Objective(SPACE, BASE, frames(600, 1), frames(200, 2), deadline)


def trial_runs(study_name):
    client = mlflow.MlflowClient()
    [study_run] = client.search_runs([mlflow.active_run().info.experiment_id],
                                     f"tags.mlflow.runName = '{study_name}'")
    return study_run, client.search_runs([study_run.info.experiment_id],
                                         f"tags.mlflow.parentRunId = '{study_run.info.run_id}'")


def drawn(trials) -> set:
    return {json.dumps(trial.params, sort_keys=True) for trial in trials}


def test_trials_run_in_spark_as_child_runs_and_a_rerun_continues_the_study(spark, experiment):
    study = tuning.run_study("tune-a", "taxi_fares", objective(), trials=4, parallelism=2,
                             timeout_seconds=600, seed=1)
    assert len(study.trials) == 4 and all(trial.state.is_finished() for trial in study.trials)
    # Two tasks at once draw different trials (one pickled sampler would give both the same draws).
    first_draws = drawn(study.trials)
    assert len(first_draws) == 4
    study_run, children = trial_runs("tune-a")
    assert len(children) == 4
    assert all(set(SPACE.names) <= set(child.data.params) for child in children)
    resumed = tuning.run_study("tune-a", "taxi_fares", objective(), trials=6, parallelism=2,
                               timeout_seconds=600, seed=1)
    assert len(resumed.trials) == 6
    assert first_draws < drawn(resumed.trials)
    default = tuning.default_rmse(objective())
    result = tuning._result(resumed, BASE, CONFIG, "range", default)
    assert result.best_rmse == min(trial.value for trial in resumed.trials if trial.value is not None)
    assert result.best_rmse < default and f"against {default:.3f} with the default params" in result.line()
    [best] = [trial for trial in resumed.trials if trial.number == result.best_trial]
    assert result.params.num_rounds == best.user_attrs["best_round"] <= best.params["num_rounds"]
    assert sorted(trial.number for trial in resumed.trials) == list(range(6))
    assert json.loads(result.tags()[tuning.BEST_PARAMS_TAG])["num_leaves"] == result.params.num_leaves


class FailsOnItsSecondTrial(tuning.Objective):
    def __call__(self, trial):
        if trial.number == 1:
            raise RuntimeError("this trial's data was bad")
        return super().__call__(trial)


def test_a_trial_that_raises_is_recorded_as_failed_and_the_study_goes_on(spark, experiment):
    failing = FailsOnItsSecondTrial(SPACE, BASE, frames(600, 1), frames(200, 2), float("inf"))
    study = tuning.run_study("tune-b", "taxi_fares", failing, trials=3, parallelism=1,
                             timeout_seconds=600, seed=1)
    states = [trial.state.name for trial in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
    _, children = trial_runs("tune-b")
    assert sorted(child.info.status for child in children) == ["FAILED", "FINISHED", "FINISHED"]


def test_a_timeout_that_ends_before_any_trial_finishes_is_named(spark, experiment):
    study = tuning.run_study("tune-c", "taxi_fares", objective(deadline=0.0), trials=2, parallelism=1,
                             timeout_seconds=600, seed=1)
    with pytest.raises(DataError, match="no tuning trial finished \\(2 fail\\): the tuning_timeout_minutes "
                                        "of 30 ran out first"):
        tuning._result(study, BASE, CONFIG, "range", None)


def test_a_study_of_another_model_is_not_continued(spark, experiment):
    tuning.run_study("tune-shared", "taxi_fares", objective(), trials=1, parallelism=1, timeout_seconds=600,
                     seed=1)
    with pytest.raises(ConfigError, match="parameter 'tuning_study_name': the study 'tune-shared' belongs to "
                                          "model 'taxi_fares', not 'other_model'; choose another study name"):
        tuning.run_study("tune-shared", "other_model", objective(), trials=2, parallelism=1,
                         timeout_seconds=600, seed=1)


class RecordsItsRows(tuning.Objective):
    """Writes the labels it was handed, as a trial on the executor sees them, to ``seen``."""

    def __init__(self, seen, *args):
        super().__init__(*args)
        self.seen = str(seen)

    def __call__(self, trial):
        labels = np.concatenate([self.fit[1].to_numpy(), self.validation[1].to_numpy()])
        np.save(f"{self.seen}/trial-{trial.number}.npy", labels)
        return super().__call__(trial)


def test_no_held_out_row_reaches_an_objective_call(spark, experiment, tmp_path):
    config = TrainingConfig(training_data_start_date="2016-01-01", training_data_end_date="2016-01-10",
                            seed=7)
    # One row every 5 minutes across the range; a row's label is its number, so rows can be traced.
    minutes = 10 * 24 * 12
    dataset = spark.range(minutes).select(
        (F.lit("2016-01-01").cast("timestamp") + F.make_interval(mins=F.col("id") * 5))
        .alias(features.PICKUP),
        F.col("id").cast("double").alias(features.LABEL_COLUMN),
        *[(F.col("id") % (index + 7)).cast("double").alias(name)
          for index, name in enumerate(features.FEATURE_COLUMNS)])
    fit, validation, sampling = tuning.tuning_sets(dataset, config)
    seen = tmp_path / "seen"
    seen.mkdir()
    recording = RecordsItsRows(seen, SPACE, BASE, fit, validation, float("inf"))
    tuning.run_study("tune-d", "taxi_fares", recording, trials=2, parallelism=2, timeout_seconds=600, seed=1)
    labels = np.concatenate([np.load(path) for path in sorted(seen.glob("*.npy"))])
    assert len(list(seen.glob("*.npy"))) == 2 and len(labels) > 0
    held_out = dataset.filter(F.col(features.PICKUP) >= F.lit(config.time_split().held_out_start))
    held_out_labels = {row[0] for row in held_out.select(features.LABEL_COLUMN).collect()}
    assert held_out_labels and not held_out_labels & set(labels.tolist())
    gap_start = config.time_split().train_end
    last_seen = dataset.filter(F.col(features.LABEL_COLUMN) == float(labels.max())).first()[features.PICKUP]
    assert last_seen < gap_start
    assert sampling["held_out_range"].endswith(f"{gap_start:%Y-%m-%dT%H:%M}")
