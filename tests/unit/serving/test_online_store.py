"""The online feature store: published atomically, reloaded when newer, and equal to the batch join."""
import datetime
import json
import math

import numpy as np
import pytest
from pyspark.sql import functions as F
from taxi_fares import features
from taxi_fares.data import generate_trips

from mlops.errors import DataError
from mlops.inference import engine
from mlops.serving import online_store
from mlops.serving.online_store import DEFAULTS, OnlineFeatureStore

from .conftest import MODEL, call

DAY = datetime.date(2016, 2, 1)
HOUR = datetime.timedelta(hours=1)
# The module's training set as a Spark DataFrame, for the batch scoring path.
SPARK_ROWS = {}


@pytest.fixture(scope="module")
def feature_tables(spark):
    """One day of trips, its zip feature tables, and the batch point-in-time training set."""
    trips = features.clean_trips(generate_trips(spark, 4000, DAY, DAY, seed=11)).cache()
    pickup = features.pickup_zip_features(trips).cache()
    dropoff = features.dropoff_zip_features(trips).cache()
    training_set = features.build_training_set(trips, pickup, dropoff).cache()
    SPARK_ROWS["training_set"] = training_set
    return pickup, dropoff, training_set.toPandas()


def store_at(tmp_path, content, max_age=HOUR):
    online_store.publish(tmp_path, content)
    store = OnlineFeatureStore(tmp_path, max_age)
    assert store.refresh()
    return store


def same(left, right):
    return (left is None and (right is None or math.isnan(right))) or left == pytest.approx(right, abs=1e-9)


@pytest.mark.parametrize("hour", [7, 12, 18])
def test_a_lookup_gives_the_batch_join_s_values_for_the_same_timestamp(feature_tables, tmp_path, hour):
    pickup, dropoff, batch = feature_tables
    grid_point = datetime.datetime.combine(DAY, datetime.time(hour))
    store = store_at(tmp_path, online_store.build_snapshot(pickup, dropoff, as_of=grid_point))
    trips = batch[(batch[features.PICKUP] >= grid_point)
                  & (batch[features.PICKUP] < grid_point + online_store.GRID)]

    assert len(trips) > 10
    for trip in trips.itertuples(index=False):
        trip = trip._asdict()
        found = store.lookup(trip["pickup_zip"], trip["dropoff_zip"], trip[features.PICKUP].to_pydatetime())
        assert found.fell_back == []
        assert all(same(found.values[name], trip[name]) for name in DEFAULTS), (found.values, trip)


def test_unknown_zips_stale_snapshots_and_past_pickups_fall_back_and_are_counted(feature_tables, tmp_path):
    pickup, dropoff, _ = feature_tables
    noon = datetime.datetime.combine(DAY, datetime.time(12))
    store = store_at(tmp_path, online_store.build_snapshot(pickup, dropoff, as_of=noon), max_age=HOUR)
    known_pickup = pickup.where(F.col(features.FEATURE_TIMESTAMP) == noon).first()["pickup_zip"]

    unknown = store.lookup(99999, 99998, noon)
    stale = store.lookup(known_pickup, 99998, noon + 2 * HOUR)
    recent = store.lookup(known_pickup, 99998, noon + HOUR - datetime.timedelta(minutes=1))

    assert unknown.fell_back == list(DEFAULTS) and unknown.values == DEFAULTS
    assert stale.fell_back == list(DEFAULTS) and stale.values == DEFAULTS
    # Within max_age a later pickup reads the snapshot's newest windows; only the dropoff zip is unknown.
    assert recent.fell_back == [features.COUNT_30M_DROPOFF_ZIP]
    assert recent.values[features.COUNT_1H_PICKUP_ZIP] > 0
    assert store.fallbacks == 3


def test_publishing_is_versioned_and_the_store_reloads_only_a_newer_snapshot(feature_tables, tmp_path):
    pickup, dropoff, _ = feature_tables
    nine = datetime.datetime.combine(DAY, datetime.time(9))
    morning = online_store.build_snapshot(pickup, dropoff, as_of=nine)
    store = store_at(tmp_path, morning)
    assert (store.version, store.refresh()) == (1, False)

    # A writer that died mid-write leaves only a temporary file: readers never see it.
    (tmp_path / ".snapshot-2.json.half").write_text('{"pickup_zip": {')
    assert online_store.publish(tmp_path, online_store.build_snapshot(pickup, dropoff)) == 2

    assert store.refresh() and store.version == 2
    assert json.loads((tmp_path / "snapshot-2.json").read_text())["as_of"] > morning["as_of"]


def test_a_broken_pointer_and_an_empty_feature_table_are_named(feature_tables, tmp_path):
    pickup, dropoff, _ = feature_tables
    (tmp_path / online_store.LATEST).write_text("seven")
    with pytest.raises(DataError, match=r"online store pointer .*LATEST is not a version number"):
        OnlineFeatureStore(tmp_path, HOUR).refresh()
    before = datetime.datetime(2000, 1, 1)
    with pytest.raises(DataError, match="hold no window to publish to the online store"):
        online_store.build_snapshot(pickup, dropoff, as_of=before)


def test_the_same_trips_give_the_same_predictions_online_as_from_the_batch_rows(
        feature_tables, tmp_path, serve, registry_home):
    pickup, dropoff, batch = feature_tables
    _, versions = registry_home
    grid_point = datetime.datetime.combine(DAY, datetime.time(15))
    online_store.publish(tmp_path, online_store.build_snapshot(pickup, dropoff, as_of=grid_point))
    server = serve(online_store=tmp_path)
    pickups = batch[features.PICKUP]
    trips = batch[(pickups >= grid_point) & (pickups < grid_point + online_store.GRID)]
    raw = [{"tpep_pickup_datetime": trip[features.PICKUP].isoformat(),
            "tpep_dropoff_datetime": trip[features.DROPOFF].isoformat(),
            "trip_distance": trip["trip_distance"], "pickup_zip": int(trip["pickup_zip"]),
            "dropoff_zip": int(trip["dropoff_zip"])} for _, trip in trips.iterrows()]

    status, headers, answer = call(server, "/invocations", {"dataframe_records": raw})

    assert status == 200 and headers["X-Feature-Fallbacks"] == "0" and len(raw) > 10
    # The batch scoring path itself (the Arrow UDF on the executors) scores the same trips.
    scoring_model = engine.load_scoring_model(f"models:/{MODEL}/{versions[0]}")
    pickup_time = F.col(features.PICKUP)
    in_window = SPARK_ROWS["training_set"].where(
        (pickup_time >= F.lit(grid_point)) & (pickup_time < F.lit(grid_point + online_store.GRID)))
    scored = engine.score_features(in_window, scoring_model, engine.Provenance(MODEL, versions[0], "parity"))
    batch_predictions = {row[features.TRIP_ID]: row[engine.PREDICTION]
                         for row in scored.select(features.TRIP_ID, engine.PREDICTION).collect()}
    expected = [batch_predictions[trip_id] for trip_id in trips[features.TRIP_ID]]
    np.testing.assert_allclose(answer["predictions"], expected, rtol=0, atol=1e-9)


def test_online_log_rows_have_the_batch_log_s_columns_and_types(spark):
    from pyspark.sql.pandas.types import to_arrow_schema

    from mlops.inference import engine
    from mlops.serving.request_log import log_schema

    trips = features.clean_trips(generate_trips(spark, 200, DAY, DAY, seed=5))
    training_set = features.build_training_set(trips, features.pickup_zip_features(trips),
                                               features.dropoff_zip_features(trips))
    scored = (training_set
              .select(features.TRIP_ID, *features.FEATURE_COLUMNS,
                      F.col(features.PICKUP).alias(engine.TIMESTAMP),
                      F.col(features.LABEL_COLUMN).alias(engine.LABEL), F.lit(1.0).alias(engine.PREDICTION)))
    batch_log = engine.log_rows(scored, engine.Provenance("fares", "1", "job"), features.FEATURE_COLUMNS)

    expected = to_arrow_schema(batch_log.schema)
    online = log_schema(features.FEATURE_COLUMNS)
    assert [(field.name, field.type) for field in online] == [(field.name, field.type) for field in expected]
