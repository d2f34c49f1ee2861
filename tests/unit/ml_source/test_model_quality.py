"""The whole pure pipeline on generated data: the model must clearly beat the naive baselines."""
import datetime

import pytest

from taxi_fares.data import generate_trips
from taxi_fares.evaluation import (
    feature_importance, fit_fare_heuristic, mean_baseline_rmse, regression_metrics, slice_metrics)
from taxi_fares.features import (
    COUNT_1H_PICKUP_ZIP, COUNT_30M_DROPOFF_ZIP, FEATURE_COLUMNS, LABEL_COLUMN, MEAN_FARE_1H_PICKUP_ZIP,
    TimeSplit, build_training_set, clean_trips, dropoff_zip_features, pickup_zip_features, split_by_time)
from taxi_fares.training import TrainingParams, predict, train_model


@pytest.fixture(scope="module")
def split_training_set(spark):
    raw = generate_trips(spark, 20_000, datetime.date(2016, 1, 4), datetime.date(2016, 1, 11), seed=21)
    trips = clean_trips(raw).cache()
    training = build_training_set(trips, pickup_zip_features(trips), dropoff_zip_features(trips))
    # The held-out part, Sunday 10 and Monday 11 January, has weekend and weekday trips.
    split = TimeSplit.of_range(datetime.date(2016, 1, 4), datetime.date(2016, 1, 11), 0.2, 60)
    frame = split_by_time(training, split).toPandas()
    trips.unpersist()
    return frame[~frame["is_test"]], frame[frame["is_test"]]


def test_model_beats_the_mean_baseline_and_the_heuristic(split_training_set):
    train, test = split_training_set
    assert 15_000 < len(train) < 17_000
    features = list(FEATURE_COLUMNS)
    booster = train_model(train[features], train[LABEL_COLUMN], TrainingParams(num_rounds=100), num_threads=2)
    predictions = predict(booster, test[features])
    metrics = regression_metrics(test[LABEL_COLUMN], predictions)
    baseline = mean_baseline_rmse(train[LABEL_COLUMN], test[LABEL_COLUMN])
    heuristic = fit_fare_heuristic(train)
    heuristic_rmse = regression_metrics(test[LABEL_COLUMN], heuristic.predict(test))["rmse"]
    assert metrics["rmse"] < 0.6 * baseline
    assert metrics["r2"] > 0.8
    assert metrics["rmse"] < heuristic_rmse

    slices = slice_metrics(test.assign(prediction=predictions))
    assert {"weekday", "weekend", "distance_0_2", "distance_2_5", "distance_5_10"} <= set(slices)
    assert sum(slices[name]["rows"] for name in ("weekday", "weekend")) == len(test)


def test_the_zip_window_features_carry_real_signal(split_training_set):
    train, test = split_training_set
    windows = [MEAN_FARE_1H_PICKUP_ZIP, COUNT_1H_PICKUP_ZIP, COUNT_30M_DROPOFF_ZIP]
    rmse = {}
    for name, columns in (("with", list(FEATURE_COLUMNS)),
                          ("without", [column for column in FEATURE_COLUMNS if column not in windows])):
        booster = train_model(train[columns], train[LABEL_COLUMN], TrainingParams(num_rounds=100),
                              num_threads=2)
        rmse[name] = regression_metrics(test[LABEL_COLUMN], predict(booster, test[columns]))["rmse"]
        if name == "with":
            importance = feature_importance(booster)
    assert rmse["with"] < 0.95 * rmse["without"], rmse
    assert importance[MEAN_FARE_1H_PICKUP_ZIP] / importance.sum() > 0.01
