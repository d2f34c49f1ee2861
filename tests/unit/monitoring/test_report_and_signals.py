"""What a monitoring run shows people (the HTML report and its figures) and alert rules (telemetry)."""
import base64
import dataclasses
import datetime
import html
import json
import re
from pathlib import Path
from urllib.parse import urlparse

import matplotlib.colors
import mlflow
import numpy as np
import pandas as pd
import pytest

from mlops.data.tables import TableStore
from mlops.inference import engine
from mlops.monitoring import monitor, report, signals
from mlops.monitoring.decision import decide
from mlops.monitoring.online_comparison import ArmErrors, ComparisonSettings, compare
from mlops.monitoring.rows import Status
from mlops.monitoring.settings import MonitoringSettings
from mlops.observability.telemetry import Telemetry, TelemetrySettings
from mlops.stages.online_comparison import JudgedArms
from support.appinsights import appinsights  # noqa: F401

from .conftest import FEATURES, FIRST_DAY, LOG_TABLE, MODEL_NAME, log_rows, reference_profile

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SETTINGS = MonitoringSettings()


@pytest.fixture(scope="module")
def shifted(spark, tmp_path_factory):
    """Two quiet days, then two days whose distance moved and whose fares are inflated."""
    tables = TableStore(spark, str(tmp_path_factory.mktemp("report_tables")))
    frames = [log_rows(FIRST_DAY + datetime.timedelta(days=offset), 1000, seed=offset,
                       **({"distance_shift": 1.5, "label_scale": 1.5} if offset >= 2 else {}))
              for offset in range(4)]
    tables.upsert(spark.createDataFrame(pd.concat(frames, ignore_index=True)), LOG_TABLE, engine.LOG_KEYS,
                  engine.PARTITION_COLUMNS)
    monitor.write_baseline(tables, LOG_TABLE, reference_profile())
    result = monitor.monitor_range(tables, LOG_TABLE, MODEL_NAME, FEATURES, SETTINGS, FIRST_DAY,
                                   FIRST_DAY + datetime.timedelta(days=3))
    decision = decide(result.profile_rows, result.drift_rows, SETTINGS, None, datetime.datetime(2016, 4, 1))
    return result, decision


def test_the_psi_chart_marks_exactly_the_violated_columns_red(shifted):
    result, _ = shifted
    figure = report.psi_figure(result.drift_rows, SETTINGS.psi_threshold)
    axes = figure.axes[0]
    red = matplotlib.colors.to_rgba(report.COLORS["violation"])
    labels = [label.get_text() for label in axes.get_yticklabels()]
    colored = {label for label, bar in zip(labels, axes.patches) if bar.get_facecolor() == red}
    report.plots.close(figure)
    assert colored == {"distance", "prediction"}
    assert sorted(labels) == sorted([*FEATURES, "prediction"])


def test_exempt_columns_stay_out_of_the_psi_chart_and_the_caption_names_them(shifted):
    result, _ = shifted
    exempted = [dataclasses.replace(row, status=Status.EXEMPT, population_stability_index=50.0)
                for row in result.drift_rows if row.column_name == "hour"]
    others = [row for row in result.drift_rows if row.column_name != "hour"]
    figure = report.psi_figure(others + exempted, SETTINGS.psi_threshold)
    axes = figure.axes[0]
    labels = [label.get_text() for label in axes.get_yticklabels()]
    limit, title = axes.get_xlim()[1], axes.get_title()
    report.plots.close(figure)
    assert "hour" not in labels and limit < 50
    assert title == "Not judged (exempt): hour"


def test_the_status_heat_map_has_a_row_per_column_and_a_cell_per_window(shifted):
    result, _ = shifted
    figure = report.status_figure(result.profile_rows, result.drift_rows)
    axes = figure.axes[0]
    grid = axes.images[0].get_array()
    labels = [label.get_text() for label in axes.get_yticklabels()]
    report.plots.close(figure)
    assert labels == [report.QUALITY_ROW, *sorted([*FEATURES, "prediction"])]
    assert grid.shape == (len(FEATURES) + 2, 4)
    # The two shifted days: distance and prediction are violations (3), the quiet days ok (2).
    assert list(grid[labels.index("distance")]) == [2, 2, 3, 3]


def test_the_report_is_logged_with_its_figures_and_names_the_decision(shifted, tmp_path, mlflow_tracking):
    result, decision = shifted
    experiment = mlflow.create_experiment("monitoring_report", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        uri = report.log_report(mlflow, result, SETTINGS, decision, "fares: monitoring")

    page = Path(urlparse(uri).path)
    text = page.read_text()
    assert decision.retrain_required and "retraining required" in text and decision.reason in text
    # The decision first, then the heat map and the figures, the violations last, as a table.
    assert text.index(decision.reason) < text.index('alt="status"') < text.index('alt="psi"') \
        < text.index("<h2>Violations</h2>")
    violations = text[text.index("<h2>Violations</h2>"):]
    assert all(f"<td>{html.escape(violation.column_name)}</td><td>{violation.metric}</td>" in violations
               for violation in decision.violations)
    assert violations.count("<tr>") == len(decision.violations) + 1
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == len(report.FIGURE_NAMES)
    assert all(base64.b64decode(image).startswith(PNG_MAGIC) for image in images)
    assert sorted(path.name for path in page.parent.glob("*.png")) == sorted(
        f"{name}.png" for name in report.FIGURE_NAMES)
    # The quality table lists every window, the inflated ones as violations.
    assert text.count("<td>violation</td>") == 2 and text.count("<td>ok</td>") == 2


def test_a_challenger_judged_online_adds_its_verdict_and_figure_to_the_report(shifted, tmp_path,
                                                                              mlflow_tracking):
    result, decision = shifted
    rng = np.random.default_rng(3)
    settings = ComparisonSettings()
    judged = JudgedArms("1", "2", settings, compare(ArmErrors.of(rng.normal(0, 4, 4000)),
                                                    ArmErrors.of(rng.normal(0, 6, 1000)), settings))
    experiment = mlflow.create_experiment("online_report", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        uri = report.log_report(mlflow, result, SETTINGS, decision, "fares: monitoring", judged)

    page = Path(urlparse(uri).path)
    text = page.read_text()
    assert judged.result.verdict == "keep"
    assert f"<strong>Online comparison</strong>: {html.escape(judged.line)}" in text
    assert judged.line.startswith("challenger version 2 against champion version 1: keep")
    assert text.index(decision.reason) < text.index(html.escape(judged.line)) < text.index('alt="status"')
    assert f'alt="{report.ONLINE_FIGURE}"' in text
    assert len(re.findall(r'src="data:image/png;base64,', text)) == len(report.FIGURE_NAMES) + 1
    assert (page.parent / f"{report.ONLINE_FIGURE}.png").read_bytes().startswith(PNG_MAGIC)


def test_each_metric_is_a_custom_metric_and_each_violation_a_custom_event(shifted, appinsights):  # noqa: F811
    result, decision = shifted
    telemetry = Telemetry.start(TelemetrySettings(connection_string=appinsights.connection_string,
                                                  role_name="taxi_fares_monitoring/monitor"))
    try:
        sent = signals.send(telemetry, result.profile_rows, result.drift_rows, decision, MODEL_NAME)
    finally:
        telemetry.close()

    metrics = appinsights.items("customMetrics")
    events = appinsights.items("customEvents")
    assert len(metrics) + len(events) == sent
    psi = {(item["data"]["baseData"]["properties"]["column_name"],
            item["data"]["baseData"]["properties"]["window_start"]): item["data"]["baseData"]["metrics"][0]
           for item in metrics
           if item["data"]["baseData"]["metrics"][0]["name"] == "monitoring.population_stability_index"}
    expected = {(row.column_name, row.window.start.isoformat()): row.population_stability_index
                for row in result.drift_rows}
    assert {key: point["value"] for key, point in psi.items()} == pytest.approx(expected)
    violations = [item["data"]["baseData"] for item in events
                  if item["data"]["baseData"]["name"] == signals.VIOLATION_EVENT]
    assert len(violations) == len(decision.violations) > 0
    assert all((event["properties"]["model_name"], event["properties"]["model_version"]) == (MODEL_NAME, "1")
               for event in violations)
    flagged = {event["properties"]["column_name"] for event in violations}
    assert flagged == {"distance", "prediction", ":table"}
    [verdict] = [item["data"]["baseData"] for item in events
                 if item["data"]["baseData"]["name"] == signals.DECISION_EVENT]
    assert verdict["properties"]["retrain_required"] == "true"
    assert {item["tags"]["ai.cloud.role"] for item in metrics + events} == {"taxi_fares_monitoring/monitor"}


def test_offline_telemetry_keeps_metric_values(tmp_path):
    path = tmp_path / "telemetry.jsonl"
    settings = TelemetrySettings(connection_string=None, jsonl_path=path, role_name="monitor")
    telemetry = Telemetry.start(settings)
    try:
        telemetry.track_metric("monitoring.rmse_ratio", 1.75, model_version="4")
        telemetry.track_event("monitoring.violation", metric="rmse_ratio")
    finally:
        telemetry.close()

    items = [json.loads(line) for line in path.read_text().splitlines()]
    metric = next(item for item in items if item["itemType"] == "customMetric")
    event = next(item for item in items if item["itemType"] == "customEvent")
    assert (metric["name"], metric["value"], metric["customDimensions"]["model_version"]) == (
        "monitoring.rmse_ratio", 1.75, "4")
    assert (event["name"], event["customDimensions"]["metric"]) == ("monitoring.violation", "rmse_ratio")
