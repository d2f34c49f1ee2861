"""mlops serve on loopback: the MLflow protocol, feature lookup, bad input, metrics and the token."""
import datetime
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc.scoring_server.client import ScoringServerClient
from taxi_fares import features

from mlops.errors import ConfigError
from mlops.serving.payload import FEATURE_RULES
from mlops.serving.server import require_token_off_loopback

from .conftest import FEATURES, MODEL, call

RAW_TRIP = {"tpep_pickup_datetime": "2016-02-01T12:07:00", "trip_duration_minutes": 18.5,
            "trip_distance": 3.2, "pickup_zip": 10001, "dropoff_zip": 10002}


def booster(version):
    return mlflow.lightgbm.load_model(f"models:/{MODEL}/{version}")


def feature_rows(count):
    """Valid full feature rows: each value drawn within its feature's rule."""
    generator = np.random.default_rng(count)

    def value(name):
        rule = FEATURE_RULES[name]
        drawn = generator.uniform(rule.low, min(rule.high, rule.low + 30))
        return float(round(drawn)) if rule.whole else float(drawn)
    return [{name: value(name) for name in FEATURES} for _ in range(count)]


def test_every_request_format_gives_the_model_s_predictions_and_names_the_version(serve, registry_home):
    _, versions = registry_home
    server = serve()
    rows = feature_rows(3)
    expected = booster(versions[0]).predict(np.array([[row[name] for name in FEATURES] for row in rows]))
    bodies = {"dataframe_records": rows, "instances": rows,
              "dataframe_split": {"columns": FEATURES,
                                  "data": [[row[name] for name in FEATURES] for row in rows]},
              "inputs": {name: [row[name] for row in rows] for name in FEATURES}}

    for name, body in bodies.items():
        status, headers, answer = call(server, "/invocations", {name: body})
        assert status == 200, answer
        np.testing.assert_allclose(answer["predictions"], expected, rtol=0, atol=1e-9, err_msg=name)
        assert (headers["X-Model-Name"], headers["X-Model-Version"]) == (MODEL, versions[0])
        assert len(headers["X-Request-Id"].split(",")) == 3


def test_mlflow_s_own_scoring_client_works_unchanged(serve, registry_home):
    _, versions = registry_home
    server = serve()
    rows = feature_rows(2)

    answer = ScoringServerClient("127.0.0.1", server.port).invoke(pd.DataFrame(rows))

    expected = booster(versions[0]).predict(np.array([[row[name] for name in FEATURES] for row in rows]))
    np.testing.assert_allclose(answer["predictions"], expected, rtol=0, atol=1e-9)


def test_a_raw_trip_gets_the_batch_trip_features_and_the_looked_up_windows(serve, registry_home):
    _, versions = registry_home
    server = serve()
    pickup = datetime.datetime.fromisoformat(RAW_TRIP["tpep_pickup_datetime"])
    row = {"trip_distance": 3.2, "pickup_zip": 10001, "dropoff_zip": 10002,
           **features.trip_feature_values(features.TripOps, pickup,
                                          pickup + datetime.timedelta(minutes=18.5)),
           features.MEAN_FARE_1H_PICKUP_ZIP: 14.5, features.COUNT_1H_PICKUP_ZIP: 12,
           features.COUNT_30M_DROPOFF_ZIP: 4}

    status, headers, answer = call(server, "/invocations", {"dataframe_records": [RAW_TRIP]})
    unknown = call(server, "/invocations", {"dataframe_records": [{**RAW_TRIP, "pickup_zip": 11111}]})

    assert status == 200 and headers["X-Feature-Fallbacks"] == "0"
    expected = booster(versions[0]).predict(np.array([[row[name] for name in FEATURES]], dtype=float))
    assert answer["predictions"] == pytest.approx(expected.tolist(), abs=1e-9)
    assert unknown[0] == 200 and unknown[1]["X-Feature-Fallbacks"] == "1"
    metrics = call(server, "/metrics")[2]
    assert "mlops_serving_feature_fallbacks_total 1.0" in metrics


BAD_INPUTS = [
    (b"{not json", 400, "not valid JSON"),
    (b'{"dataframe_records": [], "inputs": []}', 400, "exactly one of dataframe_split"),
    (b'{"dataframe_records": [{"tpep_pickup_datetime": "2016-02-01T12:00:00"}]}', 400,
     "row 0: missing field(s) pickup_zip, dropoff_zip, trip_distance"),
    (b'{"dataframe_records": [{"tpep_pickup_datetime": "2016-02-01T12:00:00", "pickup_zip": 10001, '
     b'"dropoff_zip": 10002, "trip_distance": "far", "trip_duration_minutes": 5}]}', 400,
     "row 0: 'trip_distance' must be a number, got \"far\""),
    (b'{"dataframe_records": [{"tpep_pickup_datetime": "2016-02-01T12:00:00", "pickup_zip": 10001, '
     b'"dropoff_zip": 10002, "trip_distance": 3, "trip_duration_minutes": -5}]}', 400,
     "row 0: 'trip_duration_minutes' must be between 0.001 and 1440, got -5"),
    (b'{"dataframe_records": [{"tpep_pickup_datetime": "yesterday", "pickup_zip": 10001, '
     b'"dropoff_zip": 10002, "trip_distance": 3, "trip_duration_minutes": 5}]}', 400,
     "row 0: 'tpep_pickup_datetime' must be an ISO 8601 date-time"),
    (b'{"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}', 400,
     "'dataframe_split.data[0]' must be a list of 1 values"),
    (b'{"dataframe_records": [{"tpep_pickup_datetime": "9999-12-31T23:59:00", "pickup_zip": 10001, '
     b'"dropoff_zip": 10002, "trip_distance": 3, "trip_duration_minutes": 5}]}', 400,
     "row 0: 'tpep_pickup_datetime' must be between 1970-01-01 and 2100-01-01, got 9999-12-31T23:59:00"),
    (b'{"dataframe_records": [{"tpep_pickup_datetime": "2016-02-01T12:00:00", "pickup_zip": 10001, '
     b'"dropoff_zip": 10002, "trip_distance": 3, "tpep_dropoff_datetime": "2017-02-01T12:00:00"}]}', 400,
     "row 0: 'tpep_dropoff_datetime' must be at most 24 hours after 'tpep_pickup_datetime'"),
    (b'{"inputs": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", 400, "not valid JSON"),
    (b'{"inputs": [{"trip_distance": ' + b"7" * 5000 + b"}]}", 400, "not valid JSON"),
]


def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(serve):
    server = serve(max_body_bytes=16_384)

    for body, status, message in BAD_INPUTS:
        answer = call(server, "/invocations", raw=body, method="POST")
        assert (answer[0], message in answer[2]["message"]) == (status, True), (body, answer)
    too_large = call(server, "/invocations", raw=b"{" + b" " * 20_000 + b"}", method="POST")
    unknown_route = call(server, "/predict", {"inputs": []})
    wrong_method = call(server, "/invocations")

    assert too_large[0] == 413 and "the limit is 16384" in too_large[2]["message"]
    assert unknown_route[0] == 404 and "/invocations" in unknown_route[2]["message"]
    assert wrong_method[0] == 405 and wrong_method[1]["Allow"] == "POST"
    assert call(server, "/invocations", {"dataframe_records": [RAW_TRIP]})[0] == 200
    assert f'mlops_serving_errors_total{{code="400"}} {len(BAD_INPUTS)}.0' in call(server, "/metrics")[2]


def full_row(**changes):
    row = {name: 1.0 for name in FEATURES}
    row.update(pickup_day_of_week=3, pickup_zip=10001, dropoff_zip=10002, pickup_hour=8)
    return {**row, **changes}


@pytest.mark.parametrize("changes, message", [
    ({"pickup_zip": 2.5}, "row 0: 'pickup_zip' must be a whole number, got 2.5"),
    ({"pickup_hour": 1e10}, "row 0: 'pickup_hour' must be between 0 and 23, got 10000000000.0"),
    ({features.COUNT_1H_PICKUP_ZIP: None}, f"row 0: '{features.COUNT_1H_PICKUP_ZIP}' must not be null"),
    ({"is_weekend": -1}, "row 0: 'is_weekend' must be between 0 and 1, got -1"),
])
def test_a_full_feature_row_is_checked_against_the_log_s_columns(serve, changes, message):
    server = serve()
    answer = call(server, "/invocations", {"dataframe_records": [full_row(), full_row(**changes)]})
    assert answer[0] == 400 and answer[2]["message"] == message.replace("row 0", "row 1")


def test_a_null_window_feature_is_accepted_and_csv_bodies_are_read(serve, registry_home):
    server = serve()
    nullable = full_row(**{features.MEAN_FARE_1H_PICKUP_ZIP: None})
    answer = call(server, "/invocations", {"dataframe_records": [nullable]})
    header = ",".join(nullable)
    line = ",".join("" if value is None else str(value) for value in nullable.values())
    as_csv = call(server, "/invocations", raw=f"{header}\n{line}\n".encode(), method="POST",
                  headers={"Content-Type": "text/csv"})
    xml = call(server, "/invocations", raw=b"<trip/>", method="POST", headers={"Content-Type": "text/xml"})

    assert answer[0] == 200 and len(answer[2]["predictions"]) == 1
    assert as_csv[0] == 200 and as_csv[2]["predictions"] == answer[2]["predictions"]
    assert xml[0] == 415 and "send application/json (or text/csv)" in xml[2]["message"]


def test_health_version_and_metrics_say_what_is_served(serve, registry_home):
    _, versions = registry_home
    server = serve()

    assert call(server, "/ping")[0] == 200
    health = call(server, "/health")[2]
    assert (health["model_version"], health["alias"], health["feature_snapshot_version"]) == (
        versions[0], "Champion", 1)
    assert call(server, "/version")[2] == {"model_name": MODEL, "model_version": versions[0],
                                           "alias": "Champion"}
    metrics = call(server, "/metrics")[2]
    assert f'mlops_serving_model_version{{model="{MODEL}",version="{versions[0]}"}} 1.0' in metrics
    assert 'mlops_serving_requests_total{code="200",route="/ping"} 1.0' in metrics


def test_a_token_is_required_off_loopback_and_wrong_tokens_are_refused(serve):
    with pytest.raises(ConfigError, match="serving on 0.0.0.0 \\(not loopback\\) needs a bearer token: set "
                                          "MLOPS_SERVING_TOKEN"):
        require_token_off_loopback("0.0.0.0", "")
    server = serve(token="s3cret-token-value")

    assert call(server, "/ping")[0] == 200
    assert call(server, "/health")[0] == 401
    assert call(server, "/health", headers={"Authorization": "Bearer s3cret-token-valuf"})[0] == 401
    assert call(server, "/health", headers={"Authorization": "Bearer s3cret-token-value"})[0] == 200


def test_a_missing_model_or_alias_names_the_command_that_creates_it(serve):
    with pytest.raises(ConfigError, match="model 'no_such_model' is not registered; train and promote one "
                                          "with `mlops job run taxi_fares_training --target dev`"):
        serve(model_name="no_such_model")
    with pytest.raises(ConfigError, match="has no alias 'Gold'"):
        serve(alias="Gold")


def test_the_token_can_come_from_a_secret_scope_and_a_malformed_name_is_refused(monkeypatch):
    from mlops.cli.serve import _token
    from mlops.observability.redaction import redact_text

    monkeypatch.setenv("MLOPS_SECRET_SERVING_TOKEN", "scope-token-value-123456")
    assert _token("serving/token") == "scope-token-value-123456"
    assert "scope-token-value-123456" not in redact_text("token is scope-token-value-123456")
    with pytest.raises(ConfigError, match="--token-secret must be SCOPE/KEY, got 'serving'"):
        _token("serving")
    with pytest.raises(ConfigError, match="set the environment variable MLOPS_SECRET_SERVING_MISSING"):
        _token("serving/missing")


def test_a_newer_snapshot_is_picked_up_on_the_next_poll(serve, tmp_path):
    from mlops.serving import online_store

    from .conftest import SNAPSHOT

    online_store.publish(tmp_path, SNAPSHOT)
    server = serve(online_store=tmp_path, poll_seconds=0.05)
    later = {**SNAPSHOT, "as_of": "2016-02-01T12:15:00"}
    assert call(server, "/health")[2]["feature_snapshot_version"] == 1

    online_store.publish(tmp_path, later)

    deadline = time.monotonic() + 10
    while call(server, "/health")[2]["feature_snapshot_version"] != 2:
        assert time.monotonic() < deadline, "the server did not load the newer snapshot"
        time.sleep(0.05)
