"""The JSON-lines sink used without a connection string, and the fallbacks to it."""
import json
import logging

import pytest

from mlops.observability.settings import SINK_APPINSIGHTS, SINK_DISABLED, SINK_JSONL
from support.appinsights import appinsights  # noqa: F401
from support.appinsights import envelope_summary, jsonl_summary

from .conftest import DATABRICKS_TOKEN, PLANTED_VALUES, SAS_URL, STORAGE_CONNECTION_STRING, run_reference_task

ITEM_FIELDS = {"itemType", "time", "name", "message", "severityLevel", "id", "duration_ms", "success",
               "resultCode", "operation_id", "parent_id", "operation_name", "role", "role_instance",
               "customDimensions", "stack", "value"}


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def jsonl_task(tmp_path, start_telemetry, mlops_logger):
    path = tmp_path / "telemetry" / "train.jsonl"
    telemetry = start_telemetry(None, jsonl_path=path, dimensions={"job_run_id": "42"})
    assert telemetry.sink == SINK_JSONL
    run_reference_task(telemetry, mlops_logger)
    telemetry.close()
    return telemetry, _read(path)


def test_jsonl_items_have_every_field_and_all_kinds(jsonl_task):
    telemetry, items = jsonl_task
    assert all(set(item) == ITEM_FIELDS for item in items)
    kinds = sorted(item["itemType"] for item in items)
    assert kinds == ["dependency"] * 2 + ["exception"] + ["request"] + ["trace"] * 4
    assert {item["operation_id"] for item in items} == {telemetry.operation_id}
    assert {item["role"] for item in items} == {"taxi_fares_training/train"}


def test_jsonl_dependencies_have_duration_success_and_the_root_as_parent(jsonl_task):
    _, items = jsonl_task
    (request,) = [item for item in items if item["itemType"] == "request"]
    dependencies = {item["name"]: item for item in items if item["itemType"] == "dependency"}
    assert dependencies["feature_engineering"]["success"] is True
    assert dependencies["train"]["success"] is False
    for dependency in dependencies.values():
        assert dependency["parent_id"] == request["id"]
        assert isinstance(dependency["duration_ms"], float) and dependency["duration_ms"] >= 0
    assert request["parent_id"] is None and request["success"] is True


def test_jsonl_exception_has_type_message_stack_and_stage(jsonl_task):
    _, items = jsonl_task
    (exception,) = [item for item in items if item["itemType"] == "exception"]
    assert exception["name"] == "ValueError"
    assert "training_num_leaves must be > 1" in exception["message"]
    assert any("in run_reference_task" in line for line in exception["stack"])
    assert exception["customDimensions"]["stage"] == "train"


def test_every_backend_delivers_the_same_items(
        jsonl_task, appinsights, start_telemetry, mlops_logger):  # noqa: F811
    _, jsonl_items = jsonl_task
    delivered = {}
    for backend in ("opentelemetry", "opencensus"):
        appinsights.clear()
        telemetry = start_telemetry(appinsights.connection_string, dimensions={"job_run_id": "42"},
                                    backend=backend)
        assert telemetry.sink == SINK_APPINSIGHTS
        run_reference_task(telemetry, mlops_logger)
        telemetry.track_metric("monitoring.population_stability_index", 0.3, column_name="trip_distance")
        telemetry.track_event("monitoring.violation", column_name="trip_distance")
        telemetry.close()
        delivered[backend] = sorted(envelope_summary(envelope) for envelope in appinsights.envelopes)
    jsonl = sorted(jsonl_summary(item) for item in jsonl_items)
    assert len(delivered["opentelemetry"]) == len(jsonl) + 2 == 10
    assert delivered["opentelemetry"] == delivered["opencensus"]
    assert [summary for summary in delivered["opencensus"]
            if summary[0] not in ("customMetrics", "customEvents")] == jsonl


def test_jsonl_appends_across_runs(tmp_path, start_telemetry, mlops_logger):
    path = tmp_path / "telemetry.jsonl"
    for run in ("first", "second"):
        with start_telemetry(None, jsonl_path=path):
            mlops_logger.info("run %s", run)
    messages = [item["message"] for item in _read(path) if item["itemType"] == "trace"]
    assert messages == ["run first", "run second"]


def test_flush_writes_pending_items_to_the_file(tmp_path, start_telemetry, mlops_logger):
    path = tmp_path / "telemetry.jsonl"
    telemetry = start_telemetry(None, jsonl_path=path, export_interval=60.0)
    mlops_logger.info("pending")
    assert telemetry.flush() is True
    assert [item["message"] for item in _read(path)] == ["pending"]


def test_planted_secrets_appear_nowhere_in_the_file(tmp_path, start_telemetry, mlops_logger):
    path = tmp_path / "telemetry.jsonl"
    telemetry = start_telemetry(None, jsonl_path=path, dimensions={"storage": STORAGE_CONNECTION_STRING})
    telemetry.set_dimensions(databricks_token=DATABRICKS_TOKEN)
    mlops_logger.info("connecting with %s", STORAGE_CONNECTION_STRING)
    with pytest.raises(RuntimeError):
        with telemetry.span("publish", url=SAS_URL):
            raise RuntimeError(f"upload to {SAS_URL} with {DATABRICKS_TOKEN} failed")
    telemetry.close()
    text = path.read_text(encoding="utf-8")
    assert len(_read(path)) == 4
    for planted in PLANTED_VALUES:
        assert planted not in text


def test_an_unwritable_file_never_raises_and_warns_once(tmp_path, start_telemetry, mlops_logger, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="mlops.observability.telemetry"):
        with start_telemetry(None, jsonl_path=blocker / "telemetry.jsonl") as telemetry:
            mlops_logger.info("lost")
            telemetry.flush()
            mlops_logger.info("lost too")
    warnings = [r.getMessage() for r in caplog.records if r.name == "mlops.observability.telemetry"]
    assert len(warnings) == 1 and "cannot write telemetry to" in warnings[0]


@pytest.mark.parametrize("connection_string, problem", [
    ("InstrumentationKey=not-a-guid-SECRETPART", "its InstrumentationKey is not a GUID"),
    ("garbage-SECRETPART", "it is not a list of key=value pairs separated by ';'"),
    ("IngestionEndpoint=https://SECRETPART.example/", "it has no InstrumentationKey"),
    ("InstrumentationKey=11111111-2222-3333-4444-555555555555;Authorization=aad;x=SECRETPART",
     "only Authorization=ikey is supported"),
    ("InstrumentationKey=11111111-2222-3333-4444-555555555555;IngestionEndpoint=ftp://SECRETPART",
     "its IngestionEndpoint is not an http(s) URL"),
    ("   ", "it is empty"),
])
def test_a_malformed_connection_string_falls_back_to_jsonl_without_printing_it(
        tmp_path, start_telemetry, mlops_logger, caplog, connection_string, problem):
    path = tmp_path / "fallback.jsonl"
    with caplog.at_level(logging.WARNING, logger="mlops.observability.telemetry"):
        with start_telemetry(connection_string, jsonl_path=path) as telemetry:
            assert telemetry.sink == SINK_JSONL
            mlops_logger.info("still recorded")
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "mlops.observability.telemetry"]
    assert warning == (f"The Application Insights connection string is malformed ({problem}); "
                       f"writing telemetry to {path}.")
    assert "SECRETPART" not in caplog.text
    assert [item["message"] for item in _read(path) if item["itemType"] == "trace"] == ["still recorded"]


def test_without_connection_string_or_file_telemetry_is_disabled_but_works(
        tmp_path, monkeypatch, start_telemetry, mlops_logger):
    monkeypatch.chdir(tmp_path)
    with start_telemetry(None) as telemetry:
        assert telemetry.sink == SINK_DISABLED
        with telemetry.span("train"):
            mlops_logger.info("nowhere")
        assert telemetry.flush() is True
    assert list(tmp_path.iterdir()) == []
