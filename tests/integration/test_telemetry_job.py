"""Telemetry of the real training job, as the opencensus exporter sends it to a loopback endpoint.

One run of the whole job feeds the Application Insights assertions; a run that fails in its
training stage feeds the exception assertions; ``mlops job run`` without a connection string
must leave JSONL files covering every stage; and an unreachable endpoint must not fail the job.
"""
import re

import pytest

from mlops.local.jobs import EXCLUDED, SUCCESS, run_job
from support.appinsights import AppInsightsCapture, closed_loopback_port
from support.jobs import (TRAINING_JOB, bundle_job, home_tracking_uri, new_home, only_run_record,
                          run_job_process, task_mlflow_run, task_states, telemetry_items, training_parameters)
from support.jobs import training_trips  # noqa: F401

pytestmark = pytest.mark.slow

JOB_NAME = "taxi_fares_training"
# The tasks that run when no version waits for approval, each sending telemetry.
TASKS = ("train", "validate", "deploy")
MODEL_NAME = "taxi_fares"


# The jobs below turn on every stage the notebooks can run, tuning included (two trials).
EVERY_STAGE = {"execute_tuning": "true", "tuning_trials": "2"}


def notebook_stages() -> dict:
    """task -> the stage names its notebook passes to ``run.stage``, read from the notebooks."""
    stages = {task.task_key: re.findall(r"""run\.stage\(\s*["'](\w+)["']""", task.notebook_path.read_text())
              for task in bundle_job(TRAINING_JOB).tasks if task.task_key in TASKS}
    assert all(stages.values()), f"a notebook calls no stage: {stages}"
    return stages


def run_in_process(spark, home, connection_string, **parameters):
    """Run the training job in this process, sending telemetry to ``connection_string``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(home))
        patch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", connection_string)
        patch.setenv("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "true")
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return run_job(bundle_job(TRAINING_JOB), training_parameters(**parameters), spark=spark)


def base(envelope) -> dict:
    return envelope["data"]["baseData"]


def dimensions(envelope) -> dict:
    return base(envelope).get("properties") or {}


def tags(envelope) -> dict:
    return envelope["tags"]


def of_task(items, task):
    return [item for item in items if tags(item)["ai.cloud.role"] == f"{JOB_NAME}/{task}"]


@pytest.fixture(scope="module")
def captured_job(spark, training_trips, tmp_path_factory):  # noqa: F811
    """The whole training job, run once, and everything its telemetry sent."""
    home = new_home(tmp_path_factory.mktemp("telemetry_job"), training_trips)
    with AppInsightsCapture() as capture:
        record = run_in_process(spark, home, capture.connection_string, **EVERY_STAGE)
        yield record, capture, home


@pytest.fixture(scope="module")
def captured_failure(spark, tmp_path_factory):
    """The training job failing in its training stage: the feature tables were never built."""
    home = new_home(tmp_path_factory.mktemp("telemetry_failure"))
    with AppInsightsCapture() as capture:
        record = run_in_process(spark, home, capture.connection_string, execute_feature_engineering="false")
        yield record, capture, home


def test_the_captured_job_succeeds(captured_job):
    record, _, _ = captured_job
    # The approval gate's condition runs; the request it guards is excluded: nothing waits.
    assert task_states(record.to_json()) == {**{task: SUCCESS for task in TASKS}, "approval_needed": SUCCESS,
                                             "request_approval": EXCLUDED}, record.tasks


def test_each_task_sends_one_request_as_the_root_of_its_own_operation(captured_job):
    _, capture, _ = captured_job
    requests = capture.items("requests")
    assert sorted(tags(item)["ai.cloud.role"] for item in requests) == sorted(
        f"{JOB_NAME}/{task}" for task in TASKS)
    assert all(base(item)["success"] for item in requests)
    operations = {tags(item)["ai.operation.id"] for item in requests}
    assert len(operations) == len(TASKS)
    for task in TASKS:
        (request,) = of_task(requests, task)
        task_items = of_task(capture.envelopes, task)
        assert {tags(item)["ai.operation.id"] for item in task_items} == {tags(request)["ai.operation.id"]}


def test_one_successful_dependency_per_stage_each_a_child_of_its_task_request(captured_job):
    _, capture, _ = captured_job
    for task, stages in notebook_stages().items():
        (request,) = of_task(capture.items("requests"), task)
        dependencies = of_task(capture.items("dependencies"), task)
        assert sorted(base(item)["name"] for item in dependencies) == sorted(stages)
        for dependency in dependencies:
            assert base(dependency)["success"] is True
            assert tags(dependency)["ai.operation.parentId"] == base(request)["id"]
            assert dimensions(dependency)["stage"] == base(dependency)["name"]


def test_traces_carry_run_job_task_stage_env_and_model_dimensions(captured_job):
    record, capture, home = captured_job
    uri = home_tracking_uri(home)
    for task in TASKS:
        run = task_mlflow_run(uri, task)
        traces = of_task(capture.items("traces"), task)
        assert traces, f"no traces from task {task}"
        expected = {"job_run_id": record.run_id, "task": task, "env": "dev", "model_name": MODEL_NAME}
        for trace in traces:
            assert {key: dimensions(trace).get(key) for key in expected} == expected
        after_run_started = [trace for trace in traces if "mlflow_run_id" in dimensions(trace)]
        assert after_run_started, f"no trace of task {task} carries the MLflow run id"
        assert {(dimensions(trace)["mlflow_run_id"], dimensions(trace)["mlflow_experiment_id"])
                for trace in after_run_started} == {(run.info.run_id, run.info.experiment_id)}
        in_stages = [trace for trace in traces if "stage" in dimensions(trace)]
        assert in_stages, f"no trace of task {task} was logged inside a stage"
        assert {dimensions(trace)["stage"] for trace in in_stages} <= set(notebook_stages()[task])


def test_the_model_version_is_a_dimension_once_it_is_known(captured_job):
    _, capture, _ = captured_job
    train_traces = of_task(capture.items("traces"), "train")
    before = [trace for trace in train_traces if base(trace)["message"].startswith("MLflow run ")]
    after = [trace for trace in train_traces if base(trace)["message"].startswith("stage training finished")]
    assert [dimensions(trace).get("model_version") for trace in before + after] == [None, "1"]
    # The last stage of each task registers, validates or promotes the model version.
    for task, stages in notebook_stages().items():
        (last,) = [item for item in of_task(capture.items("dependencies"), task)
                   if base(item)["name"] == stages[-1]]
        assert dimensions(last).get("model_version") == "1", task


def test_a_trace_logged_inside_a_stage_is_a_child_of_that_stage(captured_job):
    _, capture, _ = captured_job
    # Both stages collect a split and say so; each trace belongs to the stage that logged it.
    for stage, parts in (("training", "training and"), ("tuning", "fit and")):
        (span,) = [item for item in of_task(capture.items("dependencies"), "train")
                   if base(item)["name"] == stage]
        collected = [trace for trace in of_task(capture.items("traces"), "train")
                     if base(trace)["message"].startswith("collected ") and parts in base(trace)["message"]]
        assert collected, stage
        assert {tags(trace)["ai.operation.parentId"] for trace in collected} == {base(span)["id"]}


def test_a_failed_stage_sends_its_exception_and_a_failed_dependency_and_request(captured_failure):
    record, capture, home = captured_failure
    assert record.tasks["train"]["state"] == "FAILED"
    (exception,) = of_task(capture.items("exceptions"), "train")
    (detail,) = base(exception)["exceptions"][:1]
    assert "DataError: table 'training_trips' does not exist" in detail["message"]
    assert detail["hasFullStack"] and "Traceback" in detail["stack"], "the exception item has no stack"
    run = task_mlflow_run(home_tracking_uri(home), "train")
    expected = {"stage": "training", "task": "train", "job_run_id": record.run_id,
                "mlflow_run_id": run.info.run_id}
    assert {key: dimensions(exception).get(key) for key in expected} == expected
    (training,) = of_task(capture.items("dependencies"), "train")
    assert (base(training)["name"], base(training)["success"]) == ("training", False)
    (request,) = of_task(capture.items("requests"), "train")
    assert base(request)["success"] is False
    assert tags(exception)["ai.operation.id"] == tags(request)["ai.operation.id"]


def test_job_run_without_a_connection_string_leaves_jsonl_spans_for_every_stage(
        training_trips, tmp_path):  # noqa: F811
    home = new_home(tmp_path, training_trips)
    completed = run_job_process(TRAINING_JOB, home, training_parameters(**EVERY_STAGE))
    assert completed.returncode == 0, completed.stderr[-3000:]
    record = only_run_record(home)
    for task, stages in notebook_stages().items():
        items = telemetry_items(home, record["run_id"], task)
        spans = {item["name"]: item for item in items if item["itemType"] == "dependency"}
        assert sorted(spans) == sorted(stages), f"task {task}"
        assert all(span["success"] and span["duration_ms"] is not None for span in spans.values())
        (request,) = [item for item in items if item["itemType"] == "request"]
        assert request["role"] == f"{JOB_NAME}/{task}"
        assert {span["parent_id"] for span in spans.values()} == {request["id"]}


def test_an_unreachable_telemetry_endpoint_does_not_fail_the_job(
        spark, training_trips, tmp_path, caplog):  # noqa: F811
    home = new_home(tmp_path, training_trips)
    unreachable = f"InstrumentationKey=11111111-2222-3333-4444-555555555555;" \
                  f"IngestionEndpoint=http://127.0.0.1:{closed_loopback_port()}/"
    # Feature engineering alone: enough stages and logs to export, without training a model.
    record = run_in_process(spark, home, unreachable, execute_training="false", execute_validation="false",
                            execute_deployment="false")
    assert record.state == SUCCESS, record.tasks
    assert any("Application Insights export problem" in message for message in caplog.messages)
