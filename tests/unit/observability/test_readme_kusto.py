"""The README's Kusto queries use only fields that the orchestration layer really sends."""
import datetime
import logging
import re
from pathlib import Path

import pytest

from mlops.config import TrainingConfig
from mlops.errors import StageFailed
from mlops.monitoring import signals
from mlops.monitoring.decision import Decision, Violation
from mlops.monitoring.rows import DriftRow, KsTest, Status, Window
from mlops.local.dbutils import LocalDbutils
from mlops.orchestration import CONNECTION_STRING_ENV, task_run
from support.appinsights import appinsights  # noqa: F401

README = Path(__file__).resolve().parents[3] / "README.md"

TABLES = {"traces": "traces", "dependencies": "dependencies", "requests": "requests",
          "exceptions": "exceptions", "customMetrics": "customMetrics", "customEvents": "customEvents"}
COMMON_COLUMNS = {
    "timestamp": ("time",),
    "cloud_RoleName": ("tags", "ai.cloud.role"),
    "operation_Id": ("tags", "ai.operation.id"),
    "operation_ParentId": ("tags", "ai.operation.parentId"),
}
TABLE_COLUMNS = {
    "traces": {"message": ("message",), "severityLevel": ("severityLevel",)},
    "dependencies": {"name": ("name",), "duration": ("duration",), "success": ("success",)},
    "requests": {"name": ("name",), "duration": ("duration",), "success": ("success",)},
    # Application Insights derives these exception columns from the first exception detail.
    "exceptions": {"type": ("exceptions", 0, "typeName"), "outerMessage": ("exceptions", 0, "message"),
                   "details": ("exceptions",), "severityLevel": ("severityLevel",)},
    "customMetrics": {"name": ("metrics", 0, "name"), "value": ("metrics", 0, "value")},
    "customEvents": {"name": ("name",)},
}
ALL_COLUMNS = set(COMMON_COLUMNS) | {column for columns in TABLE_COLUMNS.values() for column in columns}


# The Kusto operators, functions and keywords the README's queries may use.
KUSTO_WORDS = {"where", "project", "order", "by", "asc", "desc", "summarize", "count", "percentile", "bin",
               "tostring", "join", "kind", "inner", "on", "startswith", "and", "or", "not", "extend",
               "take", "top", "distinct", "has", "contains", "ago", "now", "avg", "max", "min", "sum",
               "todynamic", "toint", "tolong", "todouble", "true", "false", "customDimensions"}


def query_identifiers(query: str) -> set:
    """The identifiers of a query, without string literals, customDimensions fields and timespans."""
    query = re.sub(r'"[^"]*"', " ", query)
    query = re.sub(r"customDimensions\.\w+", " ", query)
    query = re.sub(r"\b\d+\w*\b", " ", query)
    return set(re.findall(r"\b[A-Za-z_]\w*\b", query))


def query_aliases(query: str) -> set:
    """Names the query defines itself, e.g. ``stage = name``."""
    return set(re.findall(r"\b([A-Za-z_]\w*)\s*=(?!=)", re.sub(r'"[^"]*"', " ", query)))


def test_an_identifier_no_envelope_explains_is_caught():
    query = "traces | where madeUpColumn == 1 | project stage = name"
    assert query_identifiers(query) - ALL_COLUMNS - set(TABLES) - KUSTO_WORDS - query_aliases(query) == {
        "madeUpColumn"}


def kusto_queries():
    return re.findall(r"```kusto\n(.*?)```", README.read_text(), flags=re.S)


def _lookup(value, path):
    for key in path:
        value = value[key]
    return value


def _has(envelope, column, table):
    if column in COMMON_COLUMNS:
        path = COMMON_COLUMNS[column]
        target = envelope
    elif column in TABLE_COLUMNS[table]:
        path = TABLE_COLUMNS[table][column]
        target = envelope["data"]["baseData"]
    else:
        return False
    try:
        _lookup(target, path)
        return True
    except (KeyError, IndexError):
        return False


@pytest.fixture
def captured(appinsights, mlflow_tracking, mlops_home, monkeypatch, backend):  # noqa: F811
    """One orchestrated task with a passing and a failing stage, sent to the capture server."""
    monkeypatch.setenv(CONNECTION_STRING_ENV, appinsights.connection_string)
    monkeypatch.setenv("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "true")
    dbutils = LocalDbutils(None, {})

    def build(run):
        logging.getLogger("mlops.stages.example").info("features built")

    def fail(run):
        raise ValueError("planted failure")

    with pytest.raises(StageFailed, match="stage 'training' failed"):
        with task_run("train", TrainingConfig(telemetry_backend=backend), None, dbutils) as run:
            run.stage("feature_engineering", build)
            signals.send(run.telemetry, [], [DRIFTED_COLUMN], MONITORING_DECISION, "taxi_fares")
            run.stage("training", fail)
    assert appinsights.wait_for(lambda capture: capture.items("exceptions"), timeout=10)
    return appinsights


# One monitored column that drifted, as the monitoring job sends it.
WINDOW_START = datetime.datetime(2016, 3, 1)
DRIFTED_COLUMN = DriftRow(Window(WINDOW_START, WINDOW_START + datetime.timedelta(days=1)), "1 day",
                          "models:/taxi_fares/3", "3", "trip_distance", status=Status.VIOLATION,
                          population_stability_index=0.6, wasserstein_distance_normalized=0.4,
                          ks_test=KsTest(0.3, 1e-9))
MONITORING_DECISION = Decision(True, "retrain: 2 of the last 5 windows with data over threshold", [], [
    Violation("2016-03-01T00:00:00", "3", "trip_distance", "population_stability_index", 0.6, 0.2)])


def test_readme_has_the_queries():
    queries = kusto_queries()
    assert len(queries) == 5
    assert any("mlflow_run_id" in query for query in queries)
    assert any("success == false" in query and "exceptions" in query for query in queries)


def test_every_field_in_the_readme_queries_is_sent(captured):
    for query in kusto_queries():
        tables = [table for table in re.findall(r"(?:^|\()\s*(\w+)\s*\n?\s*\|", query, flags=re.M)
                  if table in TABLES]
        assert tables, f"no table in query:\n{query}"
        main = tables[0]
        items = captured.items(main)
        assert items, f"nothing captured for {main}"
        for dimension in re.findall(r"customDimensions\.(\w+)", query):
            assert any(dimension in item["data"]["baseData"].get("properties", {}) for item in items), \
                f"customDimensions.{dimension} is never sent on {main}"
        words = query_identifiers(query)
        unknown = words - ALL_COLUMNS - set(TABLES) - KUSTO_WORDS - query_aliases(query)
        assert not unknown, f"the query names {sorted(unknown)}, which no envelope field explains"
        for column in words & ALL_COLUMNS:
            assert any(_has(item, column, table) for table in tables for item in captured.items(table)), \
                f"column {column} is not sent on any of {tables}"


def test_dimensions_the_readme_promises_are_on_stage_items(captured):
    stages = {item["data"]["baseData"]["name"]: item["data"]["baseData"]
              for item in captured.items("dependencies")}
    assert set(stages) == {"feature_engineering", "training"}
    assert stages["feature_engineering"]["success"] is True
    assert stages["training"]["success"] is False
    for stage in stages.values():
        assert {"mlflow_run_id", "mlflow_experiment_id", "job_run_id", "task", "stage", "env",
                "model_name"} <= set(stage["properties"])
    roles = {item["tags"]["ai.cloud.role"] for item in captured.envelopes}
    assert roles == {"notebook/train"}
    # Metrics are aggregated over an export interval, so they belong to no single operation.
    operations = {item["tags"].get("ai.operation.id") for item in captured.envelopes
                  if item["data"]["baseType"] != "MetricData"}
    assert len(operations) == 1 and None not in operations
