import numpy as np
import pandas as pd
import pytest

from taxi_fares.training import TrainingParams, predict, train_model


@pytest.fixture(scope="module")
def fare_data():
    generator = np.random.default_rng(0)
    rows = 1500
    features = pd.DataFrame({
        "trip_distance": generator.lognormal(0.6, 0.7, rows),
        "trip_duration_minutes": generator.uniform(2, 40, rows),
        "pickup_hour": generator.integers(0, 24, rows),
    })
    labels = pd.Series(3.0 + 2.5 * features["trip_distance"] + 0.35 * features["trip_duration_minutes"]
                       + generator.normal(0, 0.5, rows), name="fare_amount")
    return features, labels


def leaves_per_tree(booster):
    return [tree["num_leaves"] for tree in booster.dump_model()["tree_info"]]


def test_defaults():
    assert TrainingParams() == TrainingParams(
        num_leaves=32, objective="regression", metric="rmse", num_rounds=100, learning_rate=0.1, seed=0)
    TrainingParams().validate()


def test_num_leaves_and_num_rounds_take_effect(fare_data):
    features, labels = fare_data
    small = train_model(features, labels, TrainingParams(num_leaves=2, num_rounds=7), num_threads=1)
    large = train_model(features, labels, TrainingParams(num_leaves=24, num_rounds=13), num_threads=1)
    assert small.num_trees() == 7
    assert large.num_trees() == 13
    assert set(leaves_per_tree(small)) == {2}
    assert max(leaves_per_tree(large)) > 2
    assert max(leaves_per_tree(large)) <= 24


def test_objective_metric_and_learning_rate_reach_lightgbm(fare_data):
    features, labels = fare_data
    params = TrainingParams(objective="huber", metric="mae", learning_rate=0.05, num_rounds=3)
    booster = train_model(features, labels, params, num_threads=1)
    assert booster.params["objective"] == "huber"
    assert booster.params["metric"] == "mae"
    assert booster.params["learning_rate"] == 0.05
    assert "objective=huber" in booster.model_to_string()
    slower = predict(booster, features)
    faster = predict(train_model(features, labels, TrainingParams(objective="huber", learning_rate=0.5,
                                                                  num_rounds=3), num_threads=1), features)
    # A larger learning rate moves further from the initial score in the same number of rounds.
    assert np.std(faster) > np.std(slower)


def test_training_is_deterministic_for_a_seed(fare_data):
    features, labels = fare_data
    params = TrainingParams(num_rounds=20, seed=3)
    first = train_model(features, labels, params, num_threads=1)
    second = train_model(features, labels, params, num_threads=1)
    np.testing.assert_array_equal(predict(first, features), predict(second, features))


def test_model_learns_the_fare(fare_data):
    features, labels = fare_data
    booster = train_model(features, labels, TrainingParams(num_rounds=100), num_threads=1)
    residual = labels.to_numpy() - predict(booster, features)
    assert np.sqrt(np.mean(residual ** 2)) < 0.25 * labels.std()


def test_predict_matches_columns_by_name(fare_data):
    features, labels = fare_data
    booster = train_model(features, labels, TrainingParams(num_rounds=10), num_threads=1)
    shuffled = features[list(reversed(features.columns))].assign(unused=1.0)
    np.testing.assert_array_equal(predict(booster, shuffled), predict(booster, features))
    assert predict(booster, features).dtype == np.float64


def test_predict_names_missing_columns(fare_data):
    features, labels = fare_data
    booster = train_model(features, labels, TrainingParams(num_rounds=2), num_threads=1)
    with pytest.raises(ValueError, match="features lack columns the model was trained on: pickup_hour"):
        predict(booster, features.drop(columns=["pickup_hour"]))


@pytest.mark.parametrize("params, message", [
    (TrainingParams(num_leaves=1), "num_leaves must be an integer >= 2, got 1"),
    (TrainingParams(num_leaves=8.5), "num_leaves must be an integer >= 2, got 8.5"),
    (TrainingParams(num_rounds=0), "num_rounds must be an integer >= 1, got 0"),
    (TrainingParams(objective="binary"), "objective must be one of regression, .*tweedie; got 'binary'"),
    (TrainingParams(metric="auc"), "metric must be one of rmse, .*; got 'auc'"),
    (TrainingParams(learning_rate=0.0), "learning_rate must be a positive number, got 0.0"),
    (TrainingParams(learning_rate=float("inf")), "learning_rate must be a positive number, got inf"),
    (TrainingParams(seed=-1), "seed must be a non-negative integer, got -1"),
])
def test_bad_params_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        params.validate()


def test_train_model_validates_params_before_training(fare_data):
    features, labels = fare_data
    with pytest.raises(ValueError, match="num_leaves must be an integer >= 2, got 0"):
        train_model(features, labels, TrainingParams(num_leaves=0))


@pytest.mark.parametrize("change, message", [
    (lambda x, y: (x.iloc[:0], y.iloc[:0]), "cannot train on an empty feature frame"),
    (lambda x, y: (x, y.iloc[:-1]), "features have 1500 rows but labels have 1499"),
    (lambda x, y: (x, y.where(y.index % 100 != 0)), "labels contain 15 missing or infinite values"),
])
def test_bad_training_data_is_refused(fare_data, change, message):
    features, labels = change(*fare_data)
    with pytest.raises(ValueError, match=message):
        train_model(features, labels, TrainingParams(num_rounds=2))


@pytest.mark.parametrize("threads", [-1, 1.5])
def test_bad_thread_count_is_refused(fare_data, threads):
    with pytest.raises(ValueError, match=f"num_threads must be a non-negative integer, got {threads}"):
        train_model(*fare_data, TrainingParams(num_rounds=2), num_threads=threads)
