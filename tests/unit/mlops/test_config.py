import datetime

import pytest

from mlops.config import MonitoringConfig, StreamingConfig, TrainingConfig
from mlops.errors import ConfigError
from mlops.lifecycle.tracking import validate_model_name


def test_defaults_parse_and_hyperparameters_take_effect():
    config = TrainingConfig.from_params({"training_num_leaves": "7", "training_num_rounds": "12",
                                         "training_objective": "huber", "seed": "3"})
    params = config.training_params()
    assert (params.num_leaves, params.num_rounds, params.objective, params.seed) == (7, 12, "huber", 3)
    assert config.training_data_start_date == datetime.date(2016, 1, 1)
    assert config.execute_feature_engineering is True


def test_unknown_parameter_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown parameter.*training_num_leafs") as caught:
        TrainingConfig.from_params({"training_num_leafs": "3"})
    assert "training_num_leaves" in str(caught.value)
    assert "taxi_fares_raw_data" in str(caught.value)


@pytest.mark.parametrize("name, value, message", [
    ("training_data_start_date", "2016/01/01", "training_data_start_date' must be a date as YYYY-MM-DD"),
    ("training_num_leaves", "many", "training_num_leaves' must be an integer"),
    ("training_learning_rate", "fast", "training_learning_rate' must be a number"),
    ("execute_feature_engineering", "maybe", "execute_feature_engineering' must be true or false"),
    ("env", "qa", "env' must be one of dev, staging, prod"),
    ("telemetry_backend", "statsd", "telemetry_backend' must be one of opentelemetry, opencensus"),
    ("test_fraction", "0.95", "test_fraction' must be between 0 and 0.9"),
    ("training_sample_rows", "5", "training_sample_rows' must be at least 100"),
    ("validation_sample_rows", "5", "validation_sample_rows' must be at least 100"),
    ("validation_slice_factor", "0.5", "validation_slice_factor' must be at least 1"),
    ("validation_max_rmse", "0", "validation_max_rmse' must be above 0"),
    ("promotion_tolerance", "-1", "promotion_tolerance' must be above -1"),
    ("validation_min_r2", "7", "validation_min_r2' must be between -1 and 1, got 7.0"),
    ("validation_min_r2", "-100", "validation_min_r2' must be between -1 and 1, got -100.0"),
    # The tuning budget, with tuning on.
    ("tuning_trials", "0", "parameter 'tuning_trials' must be at least 1, got 0"),
    ("tuning_timeout_minutes", "0", "parameter 'tuning_timeout_minutes' must be above 0, got 0.0"),
    ("tuning_parallelism", "0", "parameter 'tuning_parallelism' must be at least 1, got 0"),
    ("training_params_from", "latest", "parameter 'training_params_from' must be one of"),
    # The streaming job's.
    ("stream_trigger", "continuous", "'stream_trigger' must be one of available_now, processing_time"),
    ("trigger_interval_seconds", "0", "parameter 'trigger_interval_seconds' must be above 0, got 0.0"),
    ("stream_run_minutes", "-1", "parameter 'stream_run_minutes' must be at least 0, got -1.0"),
    ("max_files_per_trigger", "-1", "parameter 'max_files_per_trigger' must be at least 0, got -1"),
    ("watermark_minutes", "soon", "parameter 'watermark_minutes' must be an integer"),
    # The monitoring job's online comparison.
    ("online_comparison_alpha", "1.5", "'online_comparison_alpha' must be between 0 and 1, got 1.5"),
    ("online_comparison_margin", "-0.1", "'online_comparison_margin' must be between 0 and 1, got -0.1"),
    ("rollout_plan", "10,5,100", "parameter 'rollout_plan': a rollout plan rises from above 0 to 100, "
                                 "such as 10,50,100; got '10,5,100'"),
    ("rollout_plan", "ten", "parameter 'rollout_plan': a rollout plan is percentages separated by commas"),
    ("rollout_rows_per_step", "0", "parameter 'rollout_rows_per_step' must be at least 1, got 0"),
])
def test_bad_values_name_the_parameter(name, value, message):
    config = next(job for job in (TrainingConfig, StreamingConfig, MonitoringConfig)
                  if name in job.model_fields)
    params = {"execute_tuning": "true", name: value} if config is TrainingConfig else {name: value}
    with pytest.raises(ConfigError, match=message):
        config.from_params(params)


def test_start_after_end_is_rejected():
    with pytest.raises(ConfigError, match="start_date' \\(2016-02-01\\) is after"):
        TrainingConfig.from_params({"training_data_start_date": "2016-02-01",
                                    "training_data_end_date": "2016-01-01"})


def test_invalid_training_params_are_config_errors():
    with pytest.raises(ConfigError, match="num_leaves"):
        TrainingConfig.from_params({"training_num_leaves": "1"})


def test_empty_value_keeps_default():
    config = TrainingConfig.from_params({"training_num_rounds": ""})
    assert config.training_num_rounds == TrainingConfig.default_of("training_num_rounds")


def test_as_params_redacts_secret_looking_values():
    sas_path = ("https://acct.blob.core.windows.net/c/trips"
                "?sv=2022-11-02&sig=abcdefghijklmnopqrstuvwxyz0123456789ABCD%3D")
    config = TrainingConfig.from_params({"taxi_fares_raw_data": sas_path})
    params = config.as_params()
    assert "abcdefghijklmnopqrstuvwxyz0123456789" not in str(params)
    assert params["training_num_leaves"] == "32"


def test_defaults_round_trip_through_parsing():
    defaults = TrainingConfig.defaults()
    assert TrainingConfig.from_params(defaults) == TrainingConfig()


@pytest.mark.parametrize("name, registry, message", [
    ("taxi_fares", "databricks-uc", "must be catalog.schema.model"),
    ("main..taxi_fares", "databricks-uc", "must be catalog.schema.model"),
    ("models:/taxi", "", "must be a plain model name"),
])
def test_model_name_rules(name, registry, message):
    with pytest.raises(ConfigError, match=message):
        validate_model_name(name, registry)


def test_unity_catalog_three_level_name_is_accepted():
    validate_model_name("main.ml.taxi_fares", "databricks-uc")
    validate_model_name("taxi_fares", "")
