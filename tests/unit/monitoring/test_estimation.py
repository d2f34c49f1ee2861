"""Estimated quality before labels: the error model's accuracy under drift, and the monitor's estimate."""
import dataclasses
import datetime
import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from taxi_fares import features
from taxi_fares.data import DriftSettings, generate_trips

from mlops.data.tables import TableStore
from mlops.errors import DataError
from mlops.inference import engine
from mlops.monitoring import estimation, monitor, report, signals, window_stats
from mlops.monitoring.decision import ESTIMATED_RATIO, decide
from mlops.monitoring.reference import build_reference
from mlops.monitoring.rows import Status
from mlops.monitoring.settings import MonitoringSettings
from mlops.observability import plots
from mlops.stages.monitoring import rows_the_rule_uses

COLUMNS = list(features.FEATURE_COLUMNS)
SETTINGS = MonitoringSettings()
# Windows a week after the trips the model was trained and profiled on.
MARCH = datetime.date(2016, 3, 15)
WINDOWS_PER_CASE = 3
CASES = {"no drift": DriftSettings(), "longer trips (distance x1.5)": DriftSettings(distance_scale=1.5),
         "other zips popular (zip_shift 3)": DriftSettings(zip_shift=3),
         "concept drift (fares x1.5)": DriftSettings(fare_scale=1.5)}


def feature_rows(spark, trips: int, start: datetime.date, days: int, seed: int, drift=None) -> pd.DataFrame:
    raw = features.clean_trips(generate_trips(spark, trips, start, start + datetime.timedelta(days=days - 1),
                                              seed=seed, drift=drift))
    return features.build_training_set(raw, features.pickup_zip_features(raw),
                                       features.dropoff_zip_features(raw)).toPandas()


@pytest.fixture(scope="module")
def fare_reference(fare_model):
    """The fare model, and its reference with the error model of its held-out rows."""
    booster, held_out, predictions = fare_model
    labels = held_out[features.LABEL_COLUMN].to_numpy()
    reference = estimation.with_error_model(
        build_reference("fares", "1", held_out, COLUMNS, predictions, labels), held_out, COLUMNS, predictions,
        labels)
    return booster, reference


def estimate(reference, window: pd.DataFrame, predictions) -> tuple[float, float]:
    """(estimated rmse, its lower bound) of a window, as the monitor computes them."""
    model = estimation.ErrorModel.from_dict(reference.error_model)
    _, squared = model.predict(np.column_stack([window[COLUMNS].to_numpy(dtype=float), predictions]))
    estimated = math.sqrt(squared.mean())
    z = NormalDist().inv_cdf(1 - SETTINGS.alpha / 2)
    return estimated, estimation.rmse_interval(model.calibration, estimated, len(window), z)[0]


def test_the_estimate_follows_covariate_shift_and_cannot_see_concept_drift(spark, fare_reference, tmp_path,
                                                                           monkeypatch):
    booster, reference = fare_reference
    assert reference.error_model["calibration"]["mean_absolute_relative_error"] < 0.15
    measured, windows_by_case = {}, {}
    for seed, (case, drift) in enumerate(CASES.items(), start=101):
        # As many trips a day as the model was trained on (the window features count them): a window a day.
        frame = feature_rows(spark, 13_000, MARCH, WINDOWS_PER_CASE, seed, drift)
        days = frame[features.PICKUP].dt.date
        windows_by_case[case] = frame[days == MARCH]
        results = []
        for _, window in frame.groupby(days):
            predictions = booster.predict(window[COLUMNS])
            realized = math.sqrt(np.mean((predictions - window[features.LABEL_COLUMN].to_numpy()) ** 2))
            estimated, low = estimate(reference, window, predictions)
            results.append((len(window), estimated, realized, low / reference.error["rmse"]))
        measured[case] = results
    print("\ncase | windows (rows) | estimated rmse | realized rmse | mean abs relative error | violations")
    relative_errors, means = {}, {}
    for case, results in measured.items():
        rows, estimated, realized, ratio_low = (np.array(values) for values in zip(*results))
        relative_errors[case] = float(np.mean(np.abs(estimated / realized - 1)))
        means[case] = (estimated.mean(), realized.mean())
        violations = int((ratio_low > SETTINGS.rmse_ratio_threshold).sum())
        print(f"{case} | {len(rows)} ({rows.min()}-{rows.max()}) | {estimated.mean():.3f} "
              f"| {realized.mean():.3f} | {relative_errors[case]:.1%} | {violations}")
        assert rows.min() >= 1_000
        # Only the shift that raised the error for real crosses the rule's bound; no drift never does.
        assert violations == (len(rows) if case == "longer trips (distance x1.5)" else 0), case
    for case in list(CASES)[:3]:
        assert relative_errors[case] <= 0.15, case
    # Concept drift: the trips are those of the reference, so the estimate stays near flat (it moves only
    # through the window features that average recent fares) while the realized rmse nearly triples.
    (flat_estimate, flat_realized), (concept_estimate, concept_realized) = (
        means["no drift"], means["concept drift (fares x1.5)"])
    assert abs(concept_estimate / flat_estimate - 1) < 0.2
    assert concept_realized > 1.5 * flat_realized
    assert relative_errors["concept drift (fares x1.5)"] > 0.4

    # The monitor makes the same estimate in its Spark pass, before and beside the labels.
    longer = windows_by_case["longer trips (distance x1.5)"]
    predictions = booster.predict(longer[COLUMNS])
    tables = TableStore(spark, str(tmp_path / "tables"))
    log = longer[COLUMNS].assign(**{
        engine.PREDICTION: predictions, engine.LABEL: longer[features.LABEL_COLUMN].to_numpy(),
        engine.TIMESTAMP: longer[features.PICKUP], engine.PICKUP_DATE: MARCH, engine.MODEL_VERSION: "1",
        engine.MODEL_ID: "models:/fares/1", engine.REQUEST_ID: [f"r{index}" for index in range(len(longer))]})
    tables.upsert(spark.createDataFrame(log), "predictions", engine.LOG_KEYS, engine.PARTITION_COLUMNS)
    monitor.write_baseline(tables, "predictions", reference)
    result = monitor.monitor_range(tables, "predictions", "fares", COLUMNS, SETTINGS, MARCH, MARCH)
    [row] = [row for row in result.profile_rows if row.is_table]
    estimated, low = estimate(reference, longer, predictions)
    assert row.estimated_root_mean_squared_error == pytest.approx(estimated, rel=1e-9)
    assert row.estimated_rmse_low == pytest.approx(low, rel=1e-9)
    assert row.estimated_rmse_low < row.estimated_root_mean_squared_error < row.estimated_rmse_high
    assert row.estimated_mean_absolute_error > 0 and row.root_mean_squared_error is not None
    assert row.estimated_quality_status == Status.VIOLATION and row.quality_status == Status.VIOLATION
    stored = tables.read("predictions_profile_metrics").where("column_name = ':table'").first()
    assert stored.estimated_root_mean_squared_error == pytest.approx(estimated, rel=1e-9)
    # A big window is estimated from an even share of its rows: every 4th here, as if 1,000 were enough.
    monkeypatch.setattr(window_stats, "ROWS_TO_ESTIMATE", 1_000)
    sampled = monitor.monitor_range(tables, "predictions", "fares", COLUMNS, SETTINGS, MARCH, MARCH)
    [sampled_row] = [row for row in sampled.profile_rows if row.is_table]
    # Its interval is wider, for the fewer rows, and holds the estimate from every row.
    assert sampled_row.estimated_root_mean_squared_error != estimated
    assert sampled_row.estimated_rmse_low < min(estimated, row.estimated_rmse_low)
    assert sampled_row.estimated_rmse_high > estimated
    # retrain_on=estimated_quality judges the estimate's lower bound, labels or not.
    before_labels = [dataclasses.replace(row, quality_status=Status.INSUFFICIENT,
                                         root_mean_squared_error=None) for row in result.profile_rows]
    unlabelled = monitor.MonitoringResult(before_labels, result.drift_rows, result.profiles)
    one_window = MonitoringSettings(retrain_min_violations=1)
    decision = decide(*rows_the_rule_uses(unlabelled, "estimated_quality"), one_window, None,
                      datetime.datetime(2016, 4, 1), quality_metric=ESTIMATED_RATIO)
    assert decision.retrain_required, decision.reason
    [violation] = decision.violations
    assert violation.line() == (f"{row.window_start_text} version 1 :table: estimated_rmse_ratio_low "
                                f"{row.estimated_rmse_ratio_low:.4g} > {SETTINGS.rmse_ratio_threshold:.4g}")
    assert not decide(*rows_the_rule_uses(unlabelled, "quality"), one_window, None,
                      datetime.datetime(2016, 4, 1)).retrain_required
    sent = {name for name, _, _ in signals.metric_items(result.profile_rows, [], "fares")}
    assert {"monitoring.estimated_root_mean_squared_error", "monitoring.root_mean_squared_error"} <= sent
    figure = report.rmse_figure(unlabelled.profile_rows, result.profiles, SETTINGS.rmse_ratio_threshold,
                                decision)
    try:
        labels = [line.get_label() for line in figure.axes[0].get_lines()]
    finally:
        plots.close(figure)
    assert "version 1 estimated rmse (no labels needed)" in labels


def test_too_few_held_out_rows_for_an_error_model_are_named():
    rows = pd.DataFrame({"distance": np.arange(100.0)})
    with pytest.raises(DataError, match="an error model needs at least 500 labelled held-out rows, got 100"):
        estimation.fit_error_model(rows, np.ones(100), np.ones(100))


def test_the_error_model_travels_with_the_reference_and_a_reference_may_lack_one(fare_reference):
    _, reference = fare_reference
    plain = dataclasses.replace(reference, error_model={})
    assert plain.error_model == {} and reference.error_model["feature_names"] == [*COLUMNS, "prediction"]
    assert type(plain).from_json(plain.to_json()).error_model == {}
    assert type(reference).from_json(reference.to_json()).error_model == reference.error_model
