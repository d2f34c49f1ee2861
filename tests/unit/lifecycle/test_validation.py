import json
from types import SimpleNamespace

import numpy as np
import pytest
from taxi_fares import features

from mlops.config import TrainingConfig
from mlops.errors import ConfigError, RegistryError
from mlops.local.dbutils import LocalDbutils
from mlops.local.session import LocalSession
from mlops.stages.validation import (MIN_SLICE_ROWS, HeldOutData, Split, check_model, load_model,
                                     resolve_model, sanity_checks, slice_checks)

from .conftest import trips_frame


def held_out(rows=400):
    frame = trips_frame(rows, seed=7)
    return HeldOutData(frame, train_mean_fare=float(frame[features.LABEL_COLUMN].mean()))


def config(**params):
    return TrainingConfig.from_params({name: str(value) for name, value in params.items()})


def checks_by_name(report):
    return {check.name: check for check in report.checks}


def test_a_good_model_passes_every_check(register_version, registry):
    version = register_version(num_rounds=40)
    model = registry.resolve(version)
    report = check_model(model, load_model(model), registry.training_run(version).data.tags, held_out(),
                         config())

    assert report.status == "PASSED", [check.line() for check in report.failed]
    names = set(checks_by_name(report))
    assert {"signature_present", "input_example_present", "lineage_tags_present", "rmse_max", "r2_min",
            "rmse_beats_mean_baseline", "predictions_finite", "predictions_non_negative",
            "slice_rmse_weekday", "slice_rmse_weekend", "slice_rmse_distance_0_2"} <= names
    recorded = json.loads(json.dumps(report.as_dict()))
    assert recorded["status"] == "PASSED"
    assert set(recorded["checks"][0]) == {"name", "passed", "value", "threshold", "rule"}


def test_threshold_failures_are_named_with_value_and_threshold(register_version, registry):
    version = register_version(num_rounds=40)
    model = registry.resolve(version)
    report = check_model(model, load_model(model), registry.training_run(version).data.tags, held_out(),
                         config(validation_max_rmse=0.01, validation_min_r2=0.999))

    assert report.status == "FAILED"
    failed = {check.name: check for check in report.failed}
    assert set(failed) == {"rmse_max", "r2_min"}
    assert failed["rmse_max"].threshold == 0.01
    assert failed["rmse_max"].value > 0.01
    assert "FAIL rmse_max:" in report.description("2026-01-01T00:00:00+00:00", "run123")


def test_missing_input_example_and_lineage_fail_the_format_checks(register_version, registry):
    version = register_version(with_lineage=False, with_example=False)
    model = registry.resolve(version)
    report = check_model(model, load_model(model), registry.training_run(version).data.tags, held_out(),
                         config())

    failed = {check.name: check for check in report.failed}
    assert "input_example_present" in failed
    assert failed["lineage_tags_present"].value == "lineage.source_path, lineage.training_range"


def test_slices_with_too_few_rows_are_skipped_and_reported():
    scored = trips_frame(300, seed=3)
    scored["prediction"] = scored[features.LABEL_COLUMN] + 0.5
    scored.loc[scored.index[:5], "trip_distance"] = 12.0

    checks, skipped = slice_checks(scored, overall_rmse=0.5, factor=2.0)

    assert {item["name"] for item in skipped} == {"slice_rmse_distance_10_plus"}
    assert skipped[0]["reason"] == f"{skipped[0]['rows']} rows, fewer than {MIN_SLICE_ROWS}"
    assert all(check.passed for check in checks)


def test_a_slice_worse_than_the_factor_fails():
    scored = trips_frame(400, seed=3)
    scored["prediction"] = scored[features.LABEL_COLUMN]
    weekend = scored["is_weekend"] == 1
    scored.loc[weekend, "prediction"] += 5.0

    checks, _ = slice_checks(scored, overall_rmse=1.0, factor=2.0)

    failed = [check.name for check in checks if not check.passed]
    assert failed[0] == "slice_rmse_weekend"
    assert "slice_rmse_weekday" not in failed


def test_nan_and_negative_predictions_fail_sanity():
    checks = {check.name: check for check in sanity_checks(np.array([3.0, np.nan, -1.0, -2.0]))}
    assert (checks["predictions_finite"].passed, checks["predictions_finite"].value) == (False, 1)
    assert (checks["predictions_non_negative"].passed, checks["predictions_non_negative"].value) == (False, 2)


def test_split_comes_from_the_training_run(register_version, registry):
    version = register_version()
    split = Split.of_training_run(registry.training_run(version))
    assert (str(split.start_date), str(split.end_date), split.test_fraction, split.gap_minutes) == (
        "2016-01-01", "2016-01-31", 0.2, 60)
    # The latest fifth of January by pickup time, after a one-hour gap.
    assert split.by_time.describe() == {"train_range": "2016-01-01T00:00..2016-01-25T18:12",
                                        "held_out_range": "2016-01-25T19:12..2016-02-01T00:00",
                                        "gap_minutes": "60"}


def test_a_training_run_without_split_params_is_reported(registry_store, registry):
    import mlflow

    with mlflow.start_run() as run:
        mlflow.log_param("seed", "1")
    expected = (f"training run {run.info.run_id} has no param "
                "training_data_start_date, training_data_end_date, test_fraction, held_out_gap_minutes")
    with pytest.raises(RegistryError, match=expected):
        Split.of_training_run(mlflow.get_run(run.info.run_id))


def task_in_job(task, upstream_values, **params):
    """A task of a local job run, whose upstream tasks set ``upstream_values``."""
    session = LocalSession(job_name="taxi_fares_training", job_run_id="run-1")
    session.task_values.update(upstream_values)
    session.task_key = task
    return SimpleNamespace(task=task, config=config(**params), dbutils=LocalDbutils(session))


def test_model_version_parameter_wins_over_task_values(register_version, registry):
    first, second = register_version(), register_version()
    run = task_in_job("validate", {"train": {"model_version": second}}, model_version=first)
    assert resolve_model(run, registry, "train", "execute_training").version == first


def test_model_version_parameter_may_be_an_alias(register_version, registry):
    version = register_version()
    registry.set_alias("Challenger", version)
    run = task_in_job("deploy", {}, model_version="Challenger")
    assert resolve_model(run, registry, "validate", "execute_validation").version == version


def test_version_comes_from_the_upstream_task(register_version, registry):
    version = register_version()
    run = task_in_job("validate", {"train": {"model_name": registry.name, "model_version": version}})
    assert resolve_model(run, registry, "train", "execute_training").version == version


def test_switched_off_upstream_names_the_parameter_to_turn_back_on(registry):
    run = task_in_job("deploy", {"train": {"model_version": "1"}})
    expected = ("task 'deploy' has no model version: task 'validate' passed none on\\. "
                "Turn execute_validation=true back on, or set model_version=")
    with pytest.raises(ConfigError, match=expected):
        resolve_model(run, registry, "validate", "execute_validation")


def test_unknown_model_version_parameter_is_reported(register_version, registry):
    register_version()
    run = task_in_job("validate", {}, model_version="42")
    with pytest.raises(RegistryError, match="version 42 does not exist"):
        resolve_model(run, registry, "train", "execute_training")


def test_a_crashed_revalidation_keeps_a_passed_champion_passed(passed_version, registry, spark, tmp_path):
    from mlops.data.tables import TableStore
    from mlops.errors import DataError
    from mlops.stages.validation import validate_model

    version = passed_version()
    registry.set_alias("Champion", version)
    run = task_in_job("validate", {}, model_version=version, registered_model_name=registry.name)
    run.annotate = lambda **values: None
    # No feature tables: validation stops while reading its held-out rows.
    run.tables = TableStore(spark, str(tmp_path / "no_tables"))

    with pytest.raises(DataError, match="does not exist"):
        validate_model(run)

    assert registry.validation_status(version) == "PASSED"
