import math

import numpy as np
import pandas as pd
import pytest

from taxi_fares.evaluation import (
    FareHeuristic, feature_importance, fit_fare_heuristic, mean_baseline_rmse, regression_metrics,
    slice_metrics)
from taxi_fares.training import TrainingParams, train_model


def test_regression_metrics_match_hand_computed_values():
    metrics = regression_metrics([3.0, 5.0, 7.0, 9.0], np.array([2.0, 5.0, 8.0, 11.0]))
    # residuals 1, 0, -1, -2; squares sum to 6; labels vary by 20 around their mean 6.
    assert metrics == pytest.approx({"rmse": math.sqrt(1.5), "mae": 1.0, "r2": 1 - 6 / 20})


def test_r2_of_constant_labels_is_finite():
    assert regression_metrics([4.0, 4.0], [4.0, 4.0])["r2"] == 1.0
    assert regression_metrics([4.0, 4.0], [3.0, 5.0])["r2"] == 0.0


@pytest.mark.parametrize("truth, predicted, message", [
    ([1.0, 2.0], [1.0], "y_true has 2 values but y_pred has 1"),
    ([], [], "cannot compute metrics on zero rows"),
    ([1.0, float("nan")], [1.0, 2.0], "y_true contains 1 missing or infinite values"),
    ([1.0, 2.0], [np.inf, 2.0], "y_pred contains 1 missing or infinite values"),
])
def test_regression_metrics_refuse_bad_inputs(truth, predicted, message):
    with pytest.raises(ValueError, match=message):
        regression_metrics(truth, predicted)


def test_mean_baseline_predicts_the_training_mean():
    # Training mean 15; test errors -3, 3, 0.
    baseline = mean_baseline_rmse(pd.Series([10.0, 20.0]), pd.Series([12.0, 18.0, 15.0]))
    assert baseline == pytest.approx(math.sqrt(6))


def test_mean_baseline_refuses_empty_training_labels():
    with pytest.raises(ValueError, match="train_labels is empty"):
        mean_baseline_rmse([], [1.0])


def test_feature_importance_is_gain_sorted_by_feature_name():
    generator = np.random.default_rng(1)
    features = pd.DataFrame({"noise": generator.normal(size=800),
                             "trip_distance": generator.uniform(0, 10, 800),
                             "small": generator.normal(size=800)})
    labels = 2.5 * features["trip_distance"] + 0.3 * features["small"]
    booster = train_model(features, labels, TrainingParams(num_rounds=20), num_threads=1)
    importance = feature_importance(booster)
    assert list(importance.index[:2]) == ["trip_distance", "small"]
    assert importance.is_monotonic_decreasing
    gains = dict(zip(booster.feature_name(), booster.feature_importance(importance_type="gain")))
    assert importance.to_dict() == pytest.approx(gains)


def test_slice_metrics_match_hand_computed_values():
    frame = pd.DataFrame({
        "is_weekend": [0, 0, 1, 1, 0],
        "trip_distance": [1.0, 3.0, 1.5, 12.0, 2.0],
        "fare_amount": [10.0, 20.0, 8.0, 50.0, 15.0],
        "prediction": [11.0, 17.0, 8.0, 54.0, 15.0],
    })
    metrics = slice_metrics(frame)
    assert list(metrics) == ["weekday", "weekend", "distance_0_2", "distance_2_5", "distance_10_plus"]
    assert metrics["weekday"] == {"rmse": pytest.approx(math.sqrt(10 / 3)), "rows": 3}
    assert metrics["weekend"] == {"rmse": pytest.approx(math.sqrt(8)), "rows": 2}
    assert metrics["distance_0_2"] == {"rmse": pytest.approx(math.sqrt(0.5)), "rows": 2}
    assert metrics["distance_2_5"] == {"rmse": pytest.approx(math.sqrt(4.5)), "rows": 2}   # 2.0 is in 2-5
    assert metrics["distance_10_plus"] == {"rmse": pytest.approx(4.0), "rows": 1}


def test_slice_metrics_name_missing_columns():
    with pytest.raises(ValueError, match="slice_metrics needs columns prediction; found is_weekend"):
        slice_metrics(pd.DataFrame({"is_weekend": [0], "trip_distance": [1.0], "fare_amount": [5.0]}))


def test_heuristic_recovers_known_coefficients():
    generator = np.random.default_rng(2)
    frame = pd.DataFrame({"trip_distance": generator.uniform(0.2, 20, 200),
                          "trip_duration_minutes": generator.uniform(2, 60, 200)})
    frame["fare_amount"] = 2.75 + 2.3 * frame["trip_distance"] + 0.4 * frame["trip_duration_minutes"]
    heuristic = fit_fare_heuristic(frame)
    coefficients = (heuristic.base, heuristic.per_mile, heuristic.per_minute)
    assert coefficients == pytest.approx((2.75, 2.3, 0.4), abs=1e-9)
    np.testing.assert_allclose(heuristic.predict(frame), frame["fare_amount"], atol=1e-9)


def test_heuristic_predicts_from_its_coefficients():
    heuristic = FareHeuristic(base=3.0, per_mile=2.5, per_minute=0.5)
    frame = pd.DataFrame({"trip_distance": [0.0, 2.0], "trip_duration_minutes": [0.0, 10.0]})
    np.testing.assert_allclose(heuristic.predict(frame), [3.0, 13.0])


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"trip_distance": [1.0], "fare_amount": [5.0]}),
     "fit_fare_heuristic needs columns trip_duration_minutes"),
    (pd.DataFrame({"trip_distance": [1.0, 2.0], "trip_duration_minutes": [3.0, 4.0],
                   "fare_amount": [5.0, 6.0]}),
     "fit_fare_heuristic needs at least 3 rows, got 2"),
    (pd.DataFrame({"trip_distance": [1.0, None, 3.0], "trip_duration_minutes": [3.0, 4.0, 5.0],
                   "fare_amount": [5.0, 6.0, 7.0]}),
     "trip_distance contains 1 missing or infinite values"),
])
def test_heuristic_fit_refuses_bad_frames(frame, message):
    with pytest.raises(ValueError, match=message):
        fit_fare_heuristic(frame)


def test_heuristic_predict_names_missing_columns():
    with pytest.raises(ValueError, match="FareHeuristic.predict needs columns trip_duration_minutes"):
        FareHeuristic(1.0, 1.0, 1.0).predict(pd.DataFrame({"trip_distance": [1.0]}))
