"""A registry with served versions, an online snapshot, and a started server; all on loopback."""
import datetime
import json
import urllib.error
import urllib.request

import lightgbm
import mlflow
import numpy as np
import pandas as pd
import pytest
from taxi_fares import features

from mlops.lifecycle.registry import VALIDATION_STATUS_TAG
from mlops.serving import online_store
from mlops.serving.start import ServeSettings, close_server, open_server

MODEL = "fares_online"
FEATURES = list(features.FEATURE_COLUMNS)
NOON = datetime.datetime(2016, 2, 1, 12, 0)
SNAPSHOT = {"as_of": NOON.isoformat(),
            "pickup_zip": {"10001": {"window_end": NOON.isoformat(), features.MEAN_FARE_1H_PICKUP_ZIP: 14.5,
                                     features.COUNT_1H_PICKUP_ZIP: 12}},
            "dropoff_zip": {"10002": {"window_end": NOON.isoformat(), features.COUNT_30M_DROPOFF_ZIP: 4}}}


def training_rows(rows: int, seed: int) -> pd.DataFrame:
    generator = np.random.default_rng(seed)
    frame = pd.DataFrame({name: generator.uniform(0, 30, rows) for name in FEATURES})
    frame["fare"] = 2.5 + 2.0 * frame["trip_distance"] + 0.3 * frame["trip_duration_minutes"]
    return frame


def register(rounds: int, status: str) -> str:
    """Train a small model, register it, and tag its validation status; returns the version."""
    frame = training_rows(400, rounds)
    booster = lightgbm.train({"objective": "regression", "verbose": -1, "num_leaves": 8},
                             lightgbm.Dataset(frame[FEATURES], frame["fare"]), num_boost_round=rounds)
    with mlflow.start_run():
        info = mlflow.lightgbm.log_model(booster, name="model", registered_model_name=MODEL,
                                         pip_requirements=mlflow.lightgbm.get_default_pip_requirements())
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_model_version_tag(MODEL, version, VALIDATION_STATUS_TAG, status)
    return version


@pytest.fixture(scope="module")
def registry_home(tmp_path_factory):
    """Versions 1 and 2 PASSED, 3 FAILED; Champion on 1; a published snapshot."""
    home = tmp_path_factory.mktemp("serving")
    patch = pytest.MonkeyPatch()
    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment("serving")
    versions = [register(20, "PASSED"), register(40, "PASSED"), register(5, "FAILED")]
    mlflow.MlflowClient().set_registered_model_alias(MODEL, "Champion", versions[0])
    online_store.publish(home / "online_store", SNAPSHOT)
    yield home, versions
    patch.undo()
    mlflow.set_tracking_uri(previous)
    mlflow.set_registry_uri(previous)


@pytest.fixture
def serve(registry_home):
    """``serve(**settings)`` -> a started server (stopped at teardown) on 127.0.0.1."""
    home, _ = registry_home
    started = []

    def start(telemetry=None, **overrides):
        settings = ServeSettings(**{"model_name": MODEL, "port": 0, "online_store": home / "online_store",
                                    "poll_seconds": 0.1, **overrides})
        started.append(open_server(settings, telemetry))
        return started[-1][0]

    yield start
    for server, watcher in started:
        close_server(server, watcher)


def call(server, path, body=None, method=None, headers=None, raw: bytes | None = None):
    """(status, headers, parsed JSON or text) of one request to ``server``; header names ignore case."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(server.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, answer_headers, text = response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        status, answer_headers, text = error.code, error.headers, error.read().decode()
    try:
        return status, answer_headers, json.loads(text)
    except ValueError:
        return status, answer_headers, text
