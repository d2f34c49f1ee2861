"""monitoring_backend=lakehouse: the real databricks-sdk against a loopback workspace.

The workspace plays Lakehouse Monitoring's API (monitor get/create/update, refreshes). The
metric tables a refresh would write are planted as Delta tables with Lakehouse Monitoring's
columns, and the backend's judgement of them is checked.
"""
import datetime

import pytest
from databricks.sdk import WorkspaceClient
from pyspark.sql import types as T

from mlops.config import MonitoringConfig
from mlops.data.tables import TableStore
from mlops.errors import ConfigError, DataError
from mlops.monitoring import monitor
from mlops.monitoring.rows import Status, TABLE_COLUMN
from mlops.monitoring.lakehouse import monitor_with_lakehouse
from support.databricks_api import databricks_api  # noqa: F401

from .conftest import FIRST_DAY, reference_profile

SCHEMA = "main.taxi_fares"
TABLE = "predictions"
FULL_NAME = f"{SCHEMA}.{TABLE}"
DAYS = [FIRST_DAY + datetime.timedelta(days=offset) for offset in range(3)]
WINDOW = T.StructType([T.StructField("start", T.TimestampType()), T.StructField("end", T.TimestampType())])
KS = T.StructType([T.StructField("statistic", T.DoubleType()), T.StructField("pvalue", T.DoubleType())])
PROFILE = T.StructType([T.StructField(name, kind) for name, kind in (
    ("window", WINDOW), ("granularity", T.StringType()), ("model_id", T.StringType()),
    ("slice_key", T.StringType()), ("slice_value", T.StringType()), ("column_name", T.StringType()),
    ("log_type", T.StringType()), ("count", T.LongType()), ("avg", T.DoubleType()),
    ("quantiles", T.ArrayType(T.DoubleType())), ("root_mean_squared_error", T.DoubleType()))])
DRIFT = T.StructType([T.StructField(name, kind) for name, kind in (
    ("window", WINDOW), ("granularity", T.StringType()), ("model_id", T.StringType()),
    ("slice_key", T.StringType()), ("slice_value", T.StringType()), ("column_name", T.StringType()),
    ("drift_type", T.StringType()), ("population_stability_index", T.DoubleType()), ("ks_test", KS),
    ("wasserstein_distance", T.DoubleType()))])


def window(day):
    start = datetime.datetime.combine(day, datetime.time())
    return {"start": start, "end": start + datetime.timedelta(days=1)}


@pytest.fixture
def workspace(databricks_api, spark, mlops_home):  # noqa: F811
    """A loopback workspace, and the metric tables a refresh of its monitor would have written.

    Day 1 is quiet; on days 2 and 3 distance drifts and the rmse doubles; a slice row and a
    day-3 window of 40 rows are there to be ignored and judged insufficient.
    """
    tables = TableStore(spark, SCHEMA)
    profile = reference_profile()
    monitor.write_baseline(tables, TABLE, profile)
    reference_rmse = profile.error["rmse"]
    profile_rows, drift_rows = [], []
    for index, day in enumerate(DAYS):
        rows = 40 if index == 2 else 2000
        for column in ("distance", "hour", TABLE_COLUMN):
            rmse = reference_rmse * (2.0 if index else 1.0) if column == TABLE_COLUMN else None
            profile_rows.append((window(day), "1 day", "1", None, None, column, "INPUT", rows, 1.0, None,
                                 rmse))
        for column in ("distance", "hour"):
            drifted = index and column == "distance"
            drift_rows.append((window(day), "1 day", "1", None, None, column, "CONSECUTIVE",
                               0.9 if drifted else 0.001, {"statistic": 0.3 if drifted else 0.01,
                                                           "pvalue": 1e-12 if drifted else 0.9},
                               2.0 if drifted else 0.01))
    # A slice row says drift, but only the whole table counts.
    drift_rows.append((window(DAYS[0]), "1 day", "1", "hour > 12", "true", "hour", "CONSECUTIVE", 5.0,
                       {"statistic": 0.9, "pvalue": 0.0}, 9.0))
    names = monitor.metric_table_names(TABLE)
    tables.write(spark.createDataFrame(profile_rows, PROFILE), names["profile"])
    tables.write(spark.createDataFrame(drift_rows, DRIFT), names["drift"])
    client = WorkspaceClient(host=databricks_api.url, token=databricks_api.token)
    return databricks_api, client, tables


def config(**overrides):
    values = {"table_location": SCHEMA, "predictions_table": TABLE, "registered_model_name": "fares",
              "monitoring_backend": "lakehouse", "lakehouse_assets_dir": "/Shared/fares/monitoring",
              "monitoring_start_date": str(DAYS[0]), "monitoring_end_date": str(DAYS[-1]), **overrides}
    return MonitoringConfig.from_params(values)


def run(workspace, **overrides):
    _, client, tables = workspace
    settings = config(**overrides).settings()
    return monitor_with_lakehouse(client, tables, config(**overrides), settings, DAYS[0], DAYS[-1],
                                  poll_seconds=0.01)


def test_the_monitor_is_created_refreshed_and_its_rows_judged(workspace):
    api, _, _ = workspace

    result = run(workspace)

    [created] = api.calls(f"unity-catalog/tables/{FULL_NAME}/monitor", "POST")
    body = created.json()
    assert body["output_schema_name"] == SCHEMA and body["assets_dir"] == "/Shared/fares/monitoring"
    assert body["inference_log"] == {"problem_type": "PROBLEM_TYPE_REGRESSION", "timestamp_col": "timestamp",
                                     "granularities": ["1 day"], "prediction_col": "prediction",
                                     "model_id_col": "model_version", "label_col": "label"}
    assert len(api.calls("/monitor/refreshes", "POST")) == 1
    assert api.refreshes[FULL_NAME][0]["state"] == "SUCCESS"
    statuses = {(row.window.start.date(), row.column_name): row.status
                for row in result.drift_rows}
    assert statuses == {(DAYS[0], "distance"): Status.OK, (DAYS[0], "hour"): Status.OK,
                        (DAYS[1], "distance"): Status.VIOLATION, (DAYS[1], "hour"): Status.OK,
                        (DAYS[2], "distance"): Status.INSUFFICIENT, (DAYS[2], "hour"): Status.INSUFFICIENT}
    quality = {row.window.start.date(): row for row in result.profile_rows
               if row.column_name == TABLE_COLUMN}
    assert [quality[day].quality_status for day in DAYS] == [Status.OK, Status.VIOLATION, Status.INSUFFICIENT]
    assert quality[DAYS[1]].rmse_ratio == pytest.approx(2.0)
    assert {row.model_id for row in result.drift_rows} == {"models:/fares/1"}


def test_a_second_run_updates_only_a_monitor_whose_settings_differ(workspace):
    api, _, _ = workspace
    run(workspace)
    run(workspace)
    assert not api.calls(f"unity-catalog/tables/{FULL_NAME}/monitor", "PUT")

    run(workspace, monitoring_granularity="1 hour")

    [update] = api.calls(f"unity-catalog/tables/{FULL_NAME}/monitor", "PUT")
    assert update.json()["inference_log"]["granularities"] == ["1 hour"]
    assert len(api.calls(f"unity-catalog/tables/{FULL_NAME}/monitor", "POST")) == 1


def test_a_failed_refresh_fails_with_the_monitor_s_message(workspace):
    api, _, _ = workspace
    api.refresh_outcome = ("FAILED", "column label not found in table main.taxi_fares.predictions")

    with pytest.raises(DataError, match=r"refresh \d+ of main.taxi_fares.predictions ended FAILED: column "
                                        r"label not found"):
        run(workspace)


def test_a_table_location_that_is_not_a_unity_catalog_schema_is_refused(workspace):
    with pytest.raises(ConfigError, match=r"needs table_location as a Unity Catalog 'catalog.schema', got "
                                          r"'dbfs:/tables'"):
        run(workspace, table_location="dbfs:/tables")


def test_an_unknown_backend_is_refused():
    with pytest.raises(ConfigError, match="monitoring_backend"):
        config(monitoring_backend="evidently")
