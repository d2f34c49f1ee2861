"""A real sqlite MLflow registry shared by the lifecycle tests, and small real LightGBM versions.

Creating an MLflow sqlite store runs its schema migrations (seconds each), so the tests share
one store and isolate themselves by registering under a model name of their own.
"""
import itertools
import uuid

import lightgbm
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from taxi_fares import features

from mlops.lifecycle.registry import RegistryClient

LINEAGE_TAGS = {"lineage.source_path": "dbfs:/raw/trips", "lineage.training_range": "2016-01-01..2016-01-31"}
SPLIT_PARAMS = {"training_data_start_date": "2016-01-01", "training_data_end_date": "2016-01-31",
                "test_fraction": "0.2", "held_out_gap_minutes": "60", "seed": "42"}


def trips_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """Feature rows whose fare follows a per-mile plus per-minute rule with noise."""
    random = np.random.default_rng(seed)
    distance = random.gamma(2.0, 1.5, rows) + 0.1
    duration = distance * random.uniform(2.5, 5.0, rows) + random.uniform(1, 5, rows)
    day = random.integers(1, 8, rows)
    frame = pd.DataFrame({
        "trip_distance": distance,
        "trip_duration_minutes": duration,
        "pickup_hour": random.integers(0, 24, rows).astype("int32"),
        "pickup_day_of_week": day.astype("int32"),
        "is_weekend": np.isin(day, (1, 7)).astype("int32"),
        "pickup_zip": random.integers(10001, 10040, rows).astype("int32"),
        "dropoff_zip": random.integers(10001, 10040, rows).astype("int32"),
        features.MEAN_FARE_1H_PICKUP_ZIP: random.uniform(8, 20, rows),
        features.COUNT_1H_PICKUP_ZIP: random.integers(0, 30, rows).astype("int64"),
        features.COUNT_30M_DROPOFF_ZIP: random.integers(0, 30, rows).astype("int64"),
    })
    frame[features.LABEL_COLUMN] = 2.5 + 2.0 * distance + 0.3 * duration + random.normal(0, 1.0, rows)
    return frame


@pytest.fixture(scope="session")
def lifecycle_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lifecycle_registry")
    return f"sqlite:///{folder / 'mlflow.db'}", folder


@pytest.fixture
def registry_store(lifecycle_store, tmp_path, monkeypatch):
    """Point MLflow (and MLOPS_HOME) at the shared store for one test."""
    uri, folder = lifecycle_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLOPS_HOME", str(folder / "mlops_home"))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment("/lifecycle-tests")
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def model_name(registry_store):
    return f"taxi_fares_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def registry(model_name):
    return RegistryClient(model_name)


@pytest.fixture(scope="session")
def training_frame():
    return trips_frame(600, seed=1)


@pytest.fixture
def register_version(registry_store, model_name, training_frame):
    """Train a small real LightGBM booster, log it like the train task does, and register it."""
    counter = itertools.count(1)

    def register(num_rounds=10, with_lineage=True, with_example=True, name=None):
        columns = list(features.FEATURE_COLUMNS)
        booster = lightgbm.train({"objective": "regression", "num_leaves": 8, "verbosity": -1, "seed": 0,
                                  "deterministic": True, "num_threads": 1},
                                 lightgbm.Dataset(training_frame[columns],
                                                  label=training_frame[features.LABEL_COLUMN]),
                                 num_boost_round=num_rounds)
        # Float features, as the train task logs them, so the signature accepts missing values.
        example = training_frame[columns].astype("float64").head(5)
        with mlflow.start_run(run_name=f"train {next(counter)}"):
            mlflow.log_params(SPLIT_PARAMS | {"training_num_rounds": num_rounds})
            mlflow.log_metric("rmse", 1.0 + 10.0 / num_rounds)
            if with_lineage:
                mlflow.set_tags(LINEAGE_TAGS)
            info = mlflow.lightgbm.log_model(
                booster, name="model", signature=infer_signature(example, booster.predict(example)),
                input_example=example if with_example else None,
                registered_model_name=name or model_name,
                # Given rather than inferred: inference imports the model in a subprocess (~10 s).
                pip_requirements=[f"lightgbm=={lightgbm.__version__}"])
        return str(info.registered_model_version)

    return register


@pytest.fixture
def passed_version(register_version, registry):
    """Register a version and tag it PASSED, as validation would."""
    def make(num_rounds=10):
        version = register_version(num_rounds)
        registry.set_validation_status(version, "PASSED")
        return version

    return make
