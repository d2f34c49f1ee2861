"""Planted credentials never leave the job: not in telemetry, MLflow, output or run records.

A fake Databricks token is passed as the free-text ``git_commit`` parameter and in the
environment; a fake storage connection string sits in the environment and in the secret
scope; the Application Insights connection string itself is read from that secret scope.
"""
import json

import mlflow
import pytest

from mlops.local.dbutils import secret_env_name
from support.appinsights import AppInsightsCapture
from support.jobs import (TRAINING_JOB, home_tracking_uri, mlflow_runs, new_home, only_run_record,
                          run_job_process, task_states, training_parameters)
from support.jobs import training_trips  # noqa: F401
from unit.observability.conftest import DATABRICKS_TOKEN, STORAGE_CONNECTION_STRING, STORAGE_KEY

pytestmark = pytest.mark.slow

SCOPE, APPINSIGHTS_KEY, STORAGE_SECRET_KEY = "kv-tests", "appinsights", "storage"


def planted_environment(appinsights_connection_string) -> dict:
    return {
        "AZURE_STORAGE_CONNECTION_STRING": STORAGE_CONNECTION_STRING,
        "DATABRICKS_TOKEN": DATABRICKS_TOKEN,
        secret_env_name(SCOPE, STORAGE_SECRET_KEY): STORAGE_CONNECTION_STRING,
        secret_env_name(SCOPE, APPINSIGHTS_KEY): appinsights_connection_string,
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    }


def planted_parameters(**overrides) -> dict:
    return training_parameters(git_commit=DATABRICKS_TOKEN, appinsights_secret_scope=SCOPE,
                               appinsights_secret_key=APPINSIGHTS_KEY, **overrides)


def leaked(text: str, secrets) -> list:
    """The planted secrets found in ``text`` (named by position, never printed)."""
    return [f"secret #{index}" for index, secret in enumerate(secrets) if secret in text]


def files_text(folder) -> dict:
    return {str(path): path.read_text(encoding="utf-8", errors="replace")
            for path in sorted(folder.rglob("*")) if path.is_file()}


def mlflow_text(home) -> str:
    """Params and tags of every MLflow run in the home's store, as one text."""
    return json.dumps([{"params": run.data.params, "tags": run.data.tags}
                       for run in mlflow_runs(home_tracking_uri(home))])


@pytest.fixture(scope="module")
def planted_job(training_trips, tmp_path_factory):  # noqa: F811
    """The whole training job with planted secrets, telemetry read from the secret scope."""
    home = new_home(tmp_path_factory.mktemp("secret_hygiene"), training_trips)
    with AppInsightsCapture() as capture:
        completed = run_job_process(TRAINING_JOB, home, planted_parameters(),
                                    extra_env=planted_environment(capture.connection_string))
        if completed.returncode != 0:
            # Every check below would pass on a job that never ran.
            pytest.fail(f"the job with planted secrets failed:\n{completed.stderr[-3000:]}")
        secrets = (DATABRICKS_TOKEN, STORAGE_CONNECTION_STRING, STORAGE_KEY, capture.connection_string)
        yield completed, capture, home, secrets


def test_the_job_with_planted_secrets_succeeds_and_sends_telemetry(planted_job):
    _, capture, home, _ = planted_job
    states = task_states(only_run_record(home))
    assert states.pop("request_approval") == "EXCLUDED" and set(states.values()) == {"SUCCESS"}
    assert capture.items("requests"), "no telemetry arrived through the secret-scope connection string"


def test_no_secret_in_telemetry(planted_job):
    _, capture, _, secrets = planted_job
    assert leaked(json.dumps(capture.envelopes), secrets) == []


def test_no_secret_in_mlflow_params_or_tags(planted_job):
    _, _, home, secrets = planted_job
    runs = mlflow_runs(home_tracking_uri(home))
    # One run per task, plus the model's history run, whose events are checked too.
    assert sorted("mlops.history_of" in run.data.tags for run in runs) == [False, False, False, True]
    assert leaked(mlflow_text(home), secrets) == []
    history = mlflow.MlflowClient(home_tracking_uri(home)).list_artifacts(
        next(run.info.run_id for run in runs if "mlops.history_of" in run.data.tags), "events")
    assert history, "the model history recorded no events to check"
    artifacts = files_text(home / "mlartifacts")
    assert {path: leaked(text, secrets) for path, text in artifacts.items() if leaked(text, secrets)} == {}


def test_no_secret_in_stdout_or_stderr(planted_job):
    completed, _, _, secrets = planted_job
    assert leaked(completed.stdout, secrets) == []
    assert leaked(completed.stderr, secrets) == []


def test_no_secret_in_run_records_or_task_output(planted_job):
    _, _, home, secrets = planted_job
    texts = files_text(home / "runs")
    assert {path: leaked(text, secrets) for path, text in texts.items() if leaked(text, secrets)} == {}


def test_a_failing_run_without_telemetry_endpoint_keeps_secrets_out_of_jsonl_and_errors(tmp_path):
    # No raw data: the train task fails, so the error paths (error tag, failure line,
    # traceback, run record error) are covered too; telemetry goes to the JSONL files.
    home = new_home(tmp_path)
    environment = planted_environment("unused")
    environment.pop(secret_env_name(SCOPE, APPINSIGHTS_KEY))
    completed = run_job_process(TRAINING_JOB, home, training_parameters(git_commit=DATABRICKS_TOKEN),
                                extra_env=environment)
    secrets = (DATABRICKS_TOKEN, STORAGE_CONNECTION_STRING, STORAGE_KEY)
    assert completed.returncode != 0
    record = only_run_record(home)
    jsonl = {path: text for path, text in files_text(home / "runs").items() if path.endswith(".jsonl")}
    assert jsonl, "no JSONL telemetry was written"
    assert {path: leaked(text, secrets) for path, text in files_text(home / "runs").items()
            if leaked(text, secrets)} == {}
    assert leaked(completed.stdout + completed.stderr + mlflow_text(home), secrets) == []
    assert record["tasks"]["train"]["state"] == "FAILED"
