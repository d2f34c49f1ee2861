"""Each stage of the training job fails on honest bad input, and the failure is handled once.

For every stage: the task's MLflow run ends FAILED with an ``error`` tag, ``mlops job run``
exits non-zero with one line naming the stage and the cause followed by the traceback, the
task's temp folder is gone, and the run record marks the task FAILED and skips the rest.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest

from mlops.local.jobs import FAILED, SUCCESS, UPSTREAM_FAILED
from support.jobs import (TRAINING_JOB, dbfs_path, home_tracking_uri, new_home, only_run_record,
                          run_job_process, task_mlflow_run, task_states, training_parameters)
from support.jobs import training_trips  # noqa: F401

pytestmark = pytest.mark.slow

TASKS = ("train", "validate", "deploy", "approval_needed", "request_approval")
TRIPS_WITHOUT_FARES = "dbfs:/raw/trips_without_fares"


def write_trips_without_fares(spark, home, trips):
    """Raw trips from an export that lost its fare_amount column."""
    spark.read.parquet(str(trips)).drop("fare_amount").write.parquet(
        str(dbfs_path(home, TRIPS_WITHOUT_FARES)))


@dataclass(frozen=True)
class ForcedFailure:
    stage: str
    task: str
    parameters: dict
    cause: str
    with_trips: bool = True
    prepare: Optional[Callable] = None
    details: tuple = field(default_factory=tuple)


FAILURES = [
    ForcedFailure(
        "feature_engineering", "train", {"taxi_fares_raw_data": TRIPS_WITHOUT_FARES},
        f"DataError: input {TRIPS_WITHOUT_FARES} (parameter 'taxi_fares_raw_data') does not have the "
        "raw trip schema", prepare=write_trips_without_fares, details=("fare_amount",)),
    ForcedFailure(
        "training", "train", {"execute_feature_engineering": "false"},
        "DataError: table 'training_trips' does not exist", with_trips=False,
        details=("set execute_feature_engineering=true to build it",)),
    ForcedFailure(
        "validation", "validate", {"validation_max_rmse": "0.001"},
        "ValidationFailed: model 'taxi_fares' version 1 failed validation",
        details=("(rmse <= validation_max_rmse)",)),
    # A rerun of deploy alone that names a version nobody registered.
    ForcedFailure(
        "promotion", "deploy", {"execute_feature_engineering": "false", "execute_training": "false",
                                "execute_validation": "false", "model_version": "7"},
        "RegistryError: model 'taxi_fares' version 7 does not exist in the registry", with_trips=False),
]


@pytest.fixture(scope="module", params=FAILURES, ids=lambda failure: failure.stage)
def failed_job(request, spark, training_trips, tmp_path_factory):  # noqa: F811
    """The training job run once as ``mlops job run`` with one stage forced to fail."""
    failure = request.param
    root = tmp_path_factory.mktemp(failure.stage)
    home = new_home(root, training_trips if failure.with_trips else None)
    if failure.prepare:
        failure.prepare(spark, home, training_trips)
    temp_root = root / "tmp"
    temp_root.mkdir()
    completed = run_job_process(TRAINING_JOB, home, training_parameters(**failure.parameters),
                                extra_env={"TMPDIR": str(temp_root)})
    return failure, home, temp_root, completed


def test_the_job_exits_non_zero(failed_job):
    _, _, _, completed = failed_job
    assert completed.returncode != 0, completed.stdout[-2000:]


def test_one_line_names_the_task_the_stage_and_the_cause_and_the_traceback_follows(failed_job):
    failure, _, _, completed = failed_job
    lines = completed.stderr.splitlines()
    heading = f"task {failure.task} failed in stage '{failure.stage}': {failure.cause}"
    matching = [index for index, line in enumerate(lines) if heading in line]
    assert len(matching) == 1, completed.stdout + completed.stderr[-4000:]
    line = lines[matching[0]]
    assert all(detail in line for detail in failure.details), line
    after = lines[matching[0] + 1:]
    assert after and after[0] == "Traceback (most recent call last):", completed.stderr[-4000:]
    cause_type = failure.cause.split(":")[0]
    assert any(f"{cause_type}: " in line for line in after), "\n".join(after[-20:])


def test_the_run_record_marks_the_task_failed_and_skips_the_tasks_after_it(failed_job):
    failure, home, _, completed = failed_job
    record = only_run_record(home)
    position = TASKS.index(failure.task)
    expected = {task: SUCCESS for task in TASKS[:position]}
    expected[failure.task] = FAILED
    expected.update({task: UPSTREAM_FAILED for task in TASKS[position + 1:]})
    assert record["state"] == FAILED
    assert task_states(record) == expected
    assert f"stage '{failure.stage}' failed: {failure.cause}" in record["tasks"][failure.task]["error"]


def test_the_mlflow_run_of_the_task_ends_failed_with_an_error_tag(failed_job):
    failure, home, _, _ = failed_job
    run = task_mlflow_run(home_tracking_uri(home), failure.task)
    assert run.info.status == "FAILED"
    assert failure.cause in run.data.tags["error"]
    assert all(detail in run.data.tags["error"] for detail in failure.details)
    assert run.data.tags["error_stage"] == failure.stage


def test_the_task_temp_folder_is_removed(failed_job):
    _, _, temp_root, _ = failed_job
    assert not list(temp_root.glob("mlops-*")), sorted(path.name for path in temp_root.iterdir())
