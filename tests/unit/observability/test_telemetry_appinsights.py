"""Telemetry through each real Azure Monitor exporter (OpenTelemetry, OpenCensus) to a loopback endpoint."""
import json
import logging
import os

import pytest
from mlops.errors import StageFailed
from mlops.observability.otel_backend import SDK_SWITCHES
from mlops.observability.telemetry import SINK_APPINSIGHTS
from support.appinsights import appinsights  # noqa: F401
from support.appinsights import closed_loopback_port

from .conftest import (
    DATABRICKS_TOKEN,
    PLANTED_VALUES,
    SAS_URL,
    STORAGE_CONNECTION_STRING,
    run_reference_task,
)

ROLE = "taxi_fares_training/train"
BASE_DIMENSIONS = {"job_run_id": "42", "task": "train", "env": "dev"}


def _by_name(envelopes):
    return {envelope["data"]["baseData"]["name"]: envelope for envelope in envelopes}


def _properties(envelope):
    return envelope["data"]["baseData"].get("properties") or {}


def _trace(capture, message):
    matches = [item for item in capture.items("traces")
               if item["data"]["baseData"]["message"] == message]
    assert len(matches) == 1, f"expected one trace {message!r}, got {len(matches)}"
    return matches[0]


@pytest.fixture
def finished_task(appinsights, start_telemetry, mlops_logger, backend):  # noqa: F811
    """The reference task run to completion against the capture server, by each backend."""
    telemetry = start_telemetry(appinsights.connection_string, role_name=ROLE,
                                dimensions=dict(BASE_DIMENSIONS), backend=backend)
    assert telemetry.sink == SINK_APPINSIGHTS
    run_reference_task(telemetry, mlops_logger)
    telemetry.close()
    return telemetry, appinsights


def test_traces_carry_base_dimensions_run_dimensions_and_stage(finished_task):
    _, capture = finished_task
    outside = _properties(_trace(capture, "task started"))
    inside = _properties(_trace(capture, "features built"))
    assert {key: outside[key] for key in BASE_DIMENSIONS} == BASE_DIMENSIONS
    assert outside["mlflow_run_id"] == "run-1" and outside["mlflow_experiment_id"] == "7"
    assert "stage" not in outside and "model_version" not in outside
    assert inside["stage"] == "feature_engineering" and inside["rows"] == "100"
    assert _properties(_trace(capture, "training"))["stage"] == "train"
    assert "stage" not in _properties(_trace(capture, "task finished"))


def test_one_dependency_per_stage_with_duration_and_success_flag(finished_task):
    _, capture = finished_task
    dependencies = _by_name(capture.items("dependencies"))
    assert sorted(dependencies) == ["feature_engineering", "train"]
    features, train = dependencies["feature_engineering"], dependencies["train"]
    assert features["data"]["baseData"]["success"] is True
    assert train["data"]["baseData"]["success"] is False
    for dependency in (features, train):
        assert dependency["data"]["baseData"]["duration"].startswith("0.00:00:")
        assert dependency["data"]["baseData"]["type"] == "InProc"
    assert _properties(features)["feature_table"] == "trip_features"
    assert _properties(features)["stage"] == "feature_engineering"


def test_the_failed_stage_sends_one_exception_item_with_its_stack(finished_task):
    _, capture = finished_task
    exceptions = capture.items("exceptions")
    assert len(exceptions) == 1
    detail = exceptions[0]["data"]["baseData"]["exceptions"][0]
    assert detail["typeName"] == "ValueError"
    assert "training_num_leaves must be > 1" in detail["message"]
    assert detail["hasFullStack"] is True
    assert "run_reference_task" in (detail.get("stack") or json.dumps(detail.get("parsedStack")))
    properties = _properties(exceptions[0])
    assert properties["stage"] == "train" and properties["job_run_id"] == "42"


def test_every_item_has_the_role_name_one_operation_id_and_a_parent(finished_task):
    telemetry, capture = finished_task
    (request,) = capture.items("requests")
    root_id = request["data"]["baseData"]["id"]
    assert request["data"]["baseData"]["name"] == ROLE
    assert "ai.operation.parentId" not in request["tags"]
    assert request["tags"]["ai.operation.name"] == ROLE
    for envelope in capture.envelopes:
        assert envelope["tags"]["ai.cloud.role"] == ROLE
        assert envelope["tags"]["ai.operation.id"] == telemetry.operation_id
    dependencies = _by_name(capture.items("dependencies"))
    assert {dep["tags"]["ai.operation.parentId"] for dep in dependencies.values()} == {root_id}
    assert _trace(capture, "task started")["tags"]["ai.operation.parentId"] == root_id
    features_id = dependencies["feature_engineering"]["data"]["baseData"]["id"]
    assert _trace(capture, "features built")["tags"]["ai.operation.parentId"] == features_id
    train_id = dependencies["train"]["data"]["baseData"]["id"]
    assert capture.items("exceptions")[0]["tags"]["ai.operation.parentId"] == train_id


def test_a_task_that_ends_normally_is_a_successful_request(finished_task):
    _, capture = finished_task
    (request,) = capture.items("requests")
    assert request["data"]["baseData"]["success"] is True
    assert _properties(request)["job_run_id"] == "42"


def test_nested_spans_are_children_of_the_enclosing_span(appinsights, start_telemetry, backend):  # noqa: F811
    telemetry = start_telemetry(appinsights.connection_string, backend=backend)
    with telemetry.span("score") as outer:
        with telemetry.span("score_partition"):
            pass
    telemetry.close()
    inner = _by_name(appinsights.items("dependencies"))["score_partition"]
    assert inner["tags"]["ai.operation.parentId"] == outer.span_id
    assert _properties(inner)["stage"] == "score_partition"


def test_an_exception_escaping_the_context_manager_fails_the_request_once(
        appinsights, start_telemetry, mlops_logger):  # noqa: F811
    with pytest.raises(StageFailed):
        with start_telemetry(appinsights.connection_string) as telemetry:
            try:
                with telemetry.span("validate"):
                    raise KeyError("metric rmse missing")
            except KeyError as error:
                raise StageFailed("validate", error) from error
    (request,) = appinsights.items("requests")
    assert request["data"]["baseData"]["success"] is False
    exceptions = appinsights.items("exceptions")
    assert [e["data"]["baseData"]["exceptions"][0]["typeName"] for e in exceptions] == ["KeyError"]


def test_record_exception_outside_a_stage_marks_the_task_failed(
        appinsights, start_telemetry):  # noqa: F811
    telemetry = start_telemetry(appinsights.connection_string)
    try:
        raise RuntimeError("registry unavailable")
    except RuntimeError as error:
        telemetry.record_exception(error, model_name="taxi_fares")
        telemetry.record_exception(error)
    telemetry.close()
    (exception,) = appinsights.items("exceptions")
    assert _properties(exception)["model_name"] == "taxi_fares"
    assert appinsights.items("requests")[0]["data"]["baseData"]["success"] is False


def test_logger_exception_becomes_an_exception_item(appinsights, start_telemetry, mlops_logger):  # noqa: F811
    telemetry = start_telemetry(appinsights.connection_string)
    try:
        {}["rmse"]
    except KeyError:
        mlops_logger.exception("validation failed")
    telemetry.flush()
    (exception,) = appinsights.items("exceptions")
    detail = exception["data"]["baseData"]["exceptions"][0]
    assert detail["typeName"] == "KeyError" and detail["message"].startswith("validation failed")


def test_flush_delivers_the_last_items_before_close(appinsights, start_telemetry, mlops_logger):  # noqa: F811
    telemetry = start_telemetry(appinsights.connection_string, export_interval=60.0)
    mlops_logger.info("last words")
    with telemetry.span("publish"):
        pass
    assert telemetry.flush() is True
    assert _trace(appinsights, "last words")
    assert [d["data"]["baseData"]["name"] for d in appinsights.items("dependencies")] == ["publish"]
    assert appinsights.items("requests") == [], "the task's request is sent at close"


def test_only_the_configured_loggers_at_info_and_above_become_traces(
        appinsights, start_telemetry):  # noqa: F811
    telemetry = start_telemetry(appinsights.connection_string)
    logging.getLogger("taxi_fares.training").info("from the ML wheel")
    logging.getLogger("__main__").warning("from the notebook")
    logging.getLogger("mlops.stages").debug("too detailed")
    logging.getLogger("py4j.clientserver").warning("not ours")
    logging.getLogger("mlopsextra").warning("only a prefix of the name")
    telemetry.flush()
    messages = sorted(item["data"]["baseData"]["message"] for item in appinsights.items("traces"))
    assert messages == ["from the ML wheel", "from the notebook"]


def test_logger_names_are_configurable(appinsights, start_telemetry):  # noqa: F811
    telemetry = start_telemetry(appinsights.connection_string, logger_names=("custom",))
    logging.getLogger("custom.module").info("wanted")
    logging.getLogger("mlops").warning("not configured now")
    telemetry.flush()
    assert [item["data"]["baseData"]["message"] for item in appinsights.items("traces")] == ["wanted"]


def test_a_second_start_replaces_the_first_handler(appinsights, start_telemetry, mlops_logger):  # noqa: F811
    first = start_telemetry(appinsights.connection_string, role_name="job/first")
    second = start_telemetry(appinsights.connection_string, role_name="job/second")
    root = logging.getLogger()
    assert second._log_handler in root.handlers and first._log_handler not in root.handlers
    mlops_logger.info("after the second start")
    second.flush()
    assert _trace(appinsights, "after the second start")["tags"]["ai.cloud.role"] == "job/second"
    first_requests = [r for r in appinsights.items("requests") if r["tags"]["ai.cloud.role"] == "job/first"]
    assert len(first_requests) == 1, "the first telemetry was closed and sent its request"


def test_close_detaches_the_handler_and_restores_logger_levels(appinsights, start_telemetry):  # noqa: F811
    logger = logging.getLogger("taxi_fares")
    logger.setLevel(logging.NOTSET)
    before = len(logging.getLogger().handlers)
    telemetry = start_telemetry(appinsights.connection_string)
    assert len(logging.getLogger().handlers) == before + 1
    telemetry.close()
    telemetry.close()
    assert len(logging.getLogger().handlers) == before
    assert logger.level == logging.NOTSET


def test_no_sdk_statistics_no_remote_configuration_and_no_local_storage(
        appinsights, start_telemetry, tmp_path, monkeypatch, backend):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    for name in SDK_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    telemetry = start_telemetry(appinsights.connection_string, backend=backend)
    with telemetry.span("train"):
        pass
    telemetry.close()
    assert {name: os.environ.get(name) for name in SDK_SWITCHES} == SDK_SWITCHES
    assert list(tmp_path.iterdir()) == []
    assert {path for _, path in appinsights.requests} == {"/v2.1/track"}


@pytest.mark.timeout(60)
def test_an_unreachable_endpoint_never_raises_nor_hangs_and_warns_once(
        start_telemetry, mlops_logger, caplog, backend):
    port = closed_loopback_port()
    connection_string = f"InstrumentationKey=11111111-2222-3333-4444-555555555555;" \
                        f"IngestionEndpoint=http://127.0.0.1:{port}"
    with caplog.at_level(logging.WARNING):
        with start_telemetry(connection_string, backend=backend) as telemetry:
            for index in range(3):
                mlops_logger.info("message %d", index)
                with telemetry.span(f"stage_{index}"):
                    pass
                telemetry.flush()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING
                and r.name.startswith(("opencensus", "opentelemetry", "azure", "mlops.observability"))]
    assert len(warnings) == 1
    assert "Application Insights export problem" in warnings[0].getMessage()
    assert "11111111-2222-3333-4444-555555555555" not in caplog.text


def test_an_endpoint_answering_503_never_raises(
        appinsights, start_telemetry, mlops_logger, caplog, backend):  # noqa: F811
    appinsights.status_code = 503
    with caplog.at_level(logging.WARNING):
        telemetry = start_telemetry(appinsights.connection_string, backend=backend)
        mlops_logger.info("dropped")
        telemetry.close()
    assert appinsights.envelopes == [] and appinsights.requests
    (warning,) = [r.getMessage() for r in caplog.records if "export problem" in r.getMessage()]
    assert "503" in warning or "did not deliver" in warning


def test_planted_secrets_appear_nowhere_in_the_envelopes(
        appinsights, start_telemetry, mlops_logger, backend):  # noqa: F811
    telemetry = start_telemetry(appinsights.connection_string, backend=backend,
                                dimensions={"storage": STORAGE_CONNECTION_STRING})
    telemetry.set_dimensions(databricks_token=DATABRICKS_TOKEN, output=SAS_URL)
    mlops_logger.info("connecting with %s", STORAGE_CONNECTION_STRING)
    mlops_logger.warning(f"publishing to {SAS_URL}",
                         extra={"custom_dimensions": {"token": DATABRICKS_TOKEN}})
    with pytest.raises(RuntimeError):
        with telemetry.span("publish", sas_url=SAS_URL):
            raise RuntimeError(f"upload to {SAS_URL} with {DATABRICKS_TOKEN} failed")
    with telemetry.span(f"download {SAS_URL}"):
        pass
    try:
        raise ConnectionError(f"cannot reach {STORAGE_CONNECTION_STRING}")
    except ConnectionError:
        mlops_logger.exception("storage down, key %s", STORAGE_CONNECTION_STRING)
    telemetry.close()
    kinds = {kind: len(appinsights.items(kind)) for kind in ("traces", "dependencies", "exceptions")}
    assert kinds == {"traces": 2, "dependencies": 2, "exceptions": 2}
    sent = json.dumps(appinsights.envelopes)
    for planted in PLANTED_VALUES:
        assert planted not in sent
    assert "AccountKey=***" in sent and "sig=***" in sent


# Where each Kusto column of the README's queries comes from in what the exporter sends.
KUSTO_COLUMNS = {
    "timestamp": ("time",),
    "cloud_RoleName": ("tags", "ai.cloud.role"),
    "cloud_RoleInstance": ("tags", "ai.cloud.roleInstance"),
    "operation_Id": ("tags", "ai.operation.id"),
    "operation_ParentId": ("tags", "ai.operation.parentId"),
    "operation_Name": ("tags", "ai.operation.name"),
    "customDimensions": ("data", "baseData", "properties"),
}
KUSTO_COLUMNS_BY_TABLE = {
    "traces": {"message": "message", "severityLevel": "severityLevel"},
    "dependencies": {"name": "name", "id": "id", "duration": "duration", "success": "success",
                     "resultCode": "resultCode", "type": "type"},
    "requests": {"name": "name", "id": "id", "duration": "duration", "success": "success",
                 "resultCode": "responseCode"},
    "exceptions": {"severityLevel": "severityLevel", "type": "exceptions"},
}


def _path(envelope, path):
    value = envelope
    for key in path:
        value = value[key]
    return value


def test_field_names_the_exporter_sends_for_kusto_queries(finished_task):
    _, capture = finished_task
    for table, columns in KUSTO_COLUMNS_BY_TABLE.items():
        items = capture.items(table)
        assert items, f"no {table} captured"
        for envelope in items:
            assert {"iKey", "tags", "time", "name", "data"} <= set(envelope) <= {
                "iKey", "tags", "time", "name", "data", "sampleRate"}
            for column, path in KUSTO_COLUMNS.items():
                if table == "requests" and column == "operation_ParentId":
                    continue
                # OpenTelemetry names the operation on spans; logs carry only its id.
                if table in ("traces", "exceptions") and column == "operation_Name":
                    continue
                _path(envelope, path)
            base = envelope["data"]["baseData"]
            missing = {field for field in columns.values() if field not in base}
            assert not missing, f"{table}: {missing} not sent"
    trace_keys = set(_properties(_trace(capture, "features built")))
    own_keys = {"job_run_id", "task", "env", "mlflow_run_id", "mlflow_experiment_id", "rows", "stage"}
    # Each exporter adds where the record came from: the logger, or the module, file and line.
    origin = trace_keys - own_keys
    assert origin in ({"logger_name"}, {"process", "module", "fileName", "lineNumber", "level"})
    assert own_keys <= trace_keys
    dependency = _by_name(capture.items("dependencies"))["feature_engineering"]
    assert set(_properties(dependency)) == {"job_run_id", "task", "env", "mlflow_run_id",
                                            "mlflow_experiment_id", "rows", "feature_table", "stage"}
    exception_detail = capture.items("exceptions")[0]["data"]["baseData"]["exceptions"][0]
    assert {"typeName", "message", "hasFullStack"} <= set(exception_detail)
    assert "stack" in exception_detail or {"level", "method", "fileName", "line"} == set(
        exception_detail["parsedStack"][0])
