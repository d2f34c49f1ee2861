"""A synthetic inference log with known distributions, and the reference profile of its model."""
import datetime

import numpy as np
import pandas as pd
import pytest

from mlops.data.tables import TableStore
from mlops.inference import engine
from mlops.monitoring.reference import build_reference

MODEL_NAME = "fares"
FEATURES = ("distance", "hour", "duration")
LOG_TABLE = "predictions"
FIRST_DAY = datetime.date(2016, 3, 1)


def draw(rows: int, seed: int, distance_shift: float = 0.0, label_scale: float = 1.0) -> pd.DataFrame:
    """Trips of one fixed distribution; ``distance_shift`` moves distance, ``label_scale`` inflates fares."""
    generator = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "distance": generator.lognormal(1.0, 0.6, rows) + distance_shift,
        "hour": generator.integers(0, 24, rows).astype(float),
        "duration": generator.normal(15.0, 4.0, rows),
    })
    frame["prediction"] = 2.5 + 2.0 * frame["distance"] + 0.1 * frame["duration"]
    frame["label"] = (frame["prediction"] + generator.normal(0.0, 1.0, rows)) * label_scale
    return frame


def reference_profile(version: str = "1", rows: int = 5000):
    frame = draw(rows, seed=1000)
    return build_reference(MODEL_NAME, version, frame, FEATURES, frame["prediction"], frame["label"])


def log_rows(day: datetime.date, rows: int, seed: int, version: str = "1", with_labels: bool = True,
             **shifts) -> pd.DataFrame:
    """Inference log rows of one day: every column monitoring reads."""
    frame = draw(rows, seed, **shifts)
    seconds = np.random.default_rng(seed + 1).integers(0, 86_400, rows)
    frame[engine.TIMESTAMP] = pd.Timestamp(day) + pd.to_timedelta(seconds, unit="s")
    frame[engine.PICKUP_DATE] = day
    frame[engine.MODEL_VERSION] = version
    frame[engine.MODEL_ID] = f"models:/{MODEL_NAME}/{version}"
    frame[engine.REQUEST_ID] = [f"{seed:06d}-{index:08d}" for index in range(rows)]
    if not with_labels:
        frame["label"] = np.nan
    return frame


@pytest.fixture
def tables(spark, tmp_path):
    return TableStore(spark, str(tmp_path / "tables"))


@pytest.fixture
def write_log(spark, tables):
    """Append days of rows to the inference log table."""
    def write(frames: list[pd.DataFrame]):
        frame = pd.concat(frames, ignore_index=True)
        tables.upsert(spark.createDataFrame(frame), LOG_TABLE, engine.LOG_KEYS, engine.PARTITION_COLUMNS)
    return write


@pytest.fixture(scope="package")
def fare_model(spark):
    """A fare model trained on half of a generated March week: (booster, the other half, its predictions)."""
    from taxi_fares import features, training
    from taxi_fares.data import generate_trips

    week = (datetime.date(2016, 3, 1), datetime.date(2016, 3, 7))
    trips = features.clean_trips(generate_trips(spark, 30_000, *week, seed=11))
    frame = features.build_training_set(trips, features.pickup_zip_features(trips),
                                        features.dropoff_zip_features(trips)).toPandas()
    train, held_out = frame.iloc[: len(frame) // 2], frame.iloc[len(frame) // 2:]
    columns = list(features.FEATURE_COLUMNS)
    booster = training.train_model(train[columns], train[features.LABEL_COLUMN],
                                   training.TrainingParams(num_rounds=60), num_threads=1)
    return booster, held_out, booster.predict(held_out[columns])
