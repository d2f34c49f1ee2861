"""Four weeks of unchanged trips, monitored hourly, daily and weekly: no retraining, almost no false alarm.

The trips come from the generator, their features from the batch feature code, the model is a
real LightGBM booster trained on earlier weeks, and the reference is built from a later week of
held-out rows, as validation builds it. Every monitored trip is drawn from the same
distribution, so every violation is a false one.
"""
import datetime

import pytest
from taxi_fares import features
from taxi_fares.data import generate_trips
from taxi_fares.training import TrainingParams, train_model

from mlops.config import MonitoringConfig
from mlops.data.tables import TableStore
from mlops.inference import engine
from mlops.monitoring import monitor
from mlops.monitoring.decision import decide
from mlops.monitoring.rows import Status, TABLE_COLUMN
from mlops.monitoring.reference import build_reference
from mlops.monitoring.settings import MonitoringSettings

MODEL = "soak"
TRAINING = (datetime.date(2016, 1, 4), datetime.date(2016, 1, 17))
REFERENCE = (datetime.date(2016, 1, 18), datetime.date(2016, 1, 24))
MONITORED = (datetime.date(2016, 1, 25), datetime.date(2016, 2, 21))
TRIPS_PER_DAY = 3_000
MAX_FALSE_SHARE = 0.01


def feature_rows(spark, start, end, seed):
    """The batch feature rows (features, label, pickup time) of generated trips picked up in [start, end]."""
    days = (end - start).days + 1
    clean = features.clean_trips(generate_trips(spark, days * TRIPS_PER_DAY, start, end, seed=seed))
    dataset = features.build_training_set(clean, features.pickup_zip_features(clean),
                                          features.dropoff_zip_features(clean))
    columns = [features.PICKUP, *features.FEATURE_COLUMNS, features.LABEL_COLUMN]
    return dataset.select(*columns).toPandas().sort_values(features.PICKUP, ignore_index=True)


def between(rows, start, end):
    dates = rows[features.PICKUP].dt.date
    return rows[(dates >= start) & (dates <= end)].reset_index(drop=True)


@pytest.fixture(scope="module")
def soak(spark, tmp_path_factory):
    """The monitored log written to a Delta table, with the reference of the model that scored it."""
    trips = feature_rows(spark, TRAINING[0], MONITORED[1], seed=11)
    training, held_out, log = (between(trips, *period) for period in (TRAINING, REFERENCE, MONITORED))
    columns = list(features.FEATURE_COLUMNS)
    booster = train_model(training[columns], training[features.LABEL_COLUMN], TrainingParams(), num_threads=2)
    reference = build_reference(MODEL, "1", held_out, columns, booster.predict(held_out[columns]),
                                held_out[features.LABEL_COLUMN].to_numpy(dtype=float),
                                timestamps=held_out[features.PICKUP])
    log[engine.PREDICTION] = booster.predict(log[columns])
    log = log.rename(columns={features.PICKUP: engine.TIMESTAMP, features.LABEL_COLUMN: engine.LABEL})
    log[engine.PICKUP_DATE] = log[engine.TIMESTAMP].dt.date
    log[engine.MODEL_VERSION] = "1"
    log[engine.MODEL_ID] = f"models:/{MODEL}/1"
    log[engine.REQUEST_ID] = [f"{index:012d}" for index in range(len(log))]
    tables = TableStore(spark, str(tmp_path_factory.mktemp("soak") / "tables"))
    tables.upsert(spark.createDataFrame(log), "log", engine.LOG_KEYS, engine.PARTITION_COLUMNS)
    monitor.write_baseline(tables, "log", reference)
    return tables, len(log)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_four_weeks_of_unchanged_data_raise_no_retraining_and_few_false_alarms(soak, capsys):
    tables, rows = soak
    exempt = tuple(MonitoringConfig().drift_exempt_columns.split(","))
    figures = []
    for granularity in ("1 hour", "1 day", "1 week"):
        settings = MonitoringSettings(granularity=granularity, min_rows=30, exempt_columns=exempt)
        result = monitor.monitor_range(tables, "log", MODEL, features.FEATURE_COLUMNS, settings, *MONITORED)
        statuses = [row.status for row in result.drift_rows] + [
            row.quality_status for row in result.profile_rows if row.column_name == TABLE_COLUMN]
        judged = sum(status in (Status.OK, Status.VIOLATION) for status in statuses)
        false = statuses.count(Status.VIOLATION)
        decision = decide(result.profile_rows, result.drift_rows, settings, None,
                          datetime.datetime(2016, 3, 1), serving_versions=["1"])
        windows = len({row.window.start for row in result.profile_rows})
        figures.append((granularity, windows, judged, false, decision))
    with capsys.disabled():  # the figures belong in every run's output
        print(f"\nsoak: {rows} unchanged trips over {MONITORED[0]}..{MONITORED[1]}")
        for granularity, windows, judged, false, decision in figures:
            print(f"  {granularity:>6}: {windows} windows, {judged} judged column-windows, {false} false "
                  f"violations ({false / judged:.2%}), retrain_required={decision.retrain_required}")
    for granularity, windows, judged, false, decision in figures:
        assert judged > 0 and false <= MAX_FALSE_SHARE * judged, (granularity, false, judged)
        assert not decision.retrain_required, (granularity, decision.reason)
    assert figures[0][1] >= 24 * 27, "hourly windows cover the four weeks"
