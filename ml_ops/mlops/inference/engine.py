"""The distributed scoring engine: a LightGBM model applied to a feature DataFrame in Spark.

The driver reads the model file once and ships its text inside the ``mapInPandas``
closure, which works on a classic cluster and under Spark Connect alike (no
``sparkContext``, no broadcast). Each Python worker builds the booster on its first
batch and keeps it in a module-level cache for every later batch and task it runs.

This module is imported by every Python worker, so it imports only what scoring needs;
MLflow is imported lazily, on the driver.
"""
import datetime
import functools
import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import lightgbm
import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from taxi_fares.features import LABEL_COLUMN, PICKUP, TRIP_KEY_COLUMNS

from mlops.errors import DataError, RegistryError

logger = logging.getLogger(__name__)

PREDICTION = "prediction"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
SCORING_RUN_ID = "scoring_run_id"
SCORED_AT = "scored_at"
PICKUP_DATE = "pickup_date"
PARTITION_COLUMNS = (PICKUP_DATE,)

# Timestamps cross into Python as epoch microseconds: plain int64, no pandas time zone work.
_PICKUP_MICROS = "_pickup_micros"

# Python worker state: booster per model digest, filled on the first batch, never per batch.
_boosters = {}


@dataclass(frozen=True)
class ScoringModel:
    """A LightGBM model as the driver ships it: its text, digest and the feature order it expects."""

    text: str
    feature_names: tuple

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @classmethod
    def from_text(cls, text: str) -> "ScoringModel":
        booster = lightgbm.Booster(model_str=text)
        return cls(text=text, feature_names=tuple(booster.feature_name()))


def model_file(model_dir: Path) -> Path:
    """The LightGBM file inside an MLflow model folder (from its MLmodel), or the path itself."""
    model_dir = Path(model_dir)
    if model_dir.is_file():
        return model_dir
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.exists():
        raise RegistryError(f"{model_dir} is neither a LightGBM model file nor an MLflow model folder")
    from mlflow.models import Model

    flavors = Model.load(str(mlmodel)).flavors
    if "lightgbm" not in flavors:
        raise RegistryError(f"the model at {model_dir} has no lightgbm flavor; "
                            f"found {', '.join(sorted(flavors))}")
    return model_dir / flavors["lightgbm"]["data"]


def load_scoring_model(model_uri_or_path: str, download_dir: Path | None = None) -> ScoringModel:
    """Download the model's artifacts once, on the driver, and read its LightGBM text."""
    local = Path(model_uri_or_path)
    if not local.exists():
        import mlflow

        try:
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri_or_path, dst_path=str(download_dir) if download_dir else None))
        except Exception as error:
            raise RegistryError(f"cannot download model {model_uri_or_path}: "
                                f"{type(error).__name__}: {error}") from error
    return ScoringModel.from_text(model_file(local).read_text())


def _booster(model: ScoringModel, digest: str, load_marker_dir: str | None):
    """This worker's booster for ``digest``, built on first use."""
    booster = _boosters.get(digest)
    if booster is None:
        booster = _boosters[digest] = lightgbm.Booster(model_str=model.text)
        if load_marker_dir:
            _write_load_marker(Path(load_marker_dir), digest)
    return booster


def _write_load_marker(folder: Path, digest: str):
    """One JSON file per model load, so a caller can count loads per worker process."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = {"pid": os.getpid(), "model_digest": digest,
              "loaded_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    (folder / f"load-{os.getpid()}-{uuid.uuid4().hex[:8]}.json").write_text(json.dumps(marker))


def _predict_batches(batches, model: ScoringModel, digest: str, passthrough: tuple,
                     load_marker_dir: str | None):
    """mapInPandas body: keys and actuals pass through; the prediction is added."""
    booster = None
    for batch in batches:
        if booster is None:
            booster = _booster(model, digest, load_marker_dir)
        matrix = np.ascontiguousarray(batch[list(model.feature_names)].to_numpy(dtype=np.float64))
        columns = {name: batch[name] for name in passthrough}
        columns[PREDICTION] = booster.predict(matrix, num_threads=1)
        yield pd.DataFrame(columns, copy=False)


def output_columns(has_actuals: bool) -> list:
    """The columns of the predictions table, in order."""
    return ([*TRIP_KEY_COLUMNS, PREDICTION] + ([LABEL_COLUMN] if has_actuals else [])
            + [MODEL_NAME, MODEL_VERSION, SCORING_RUN_ID, SCORED_AT, PICKUP_DATE])


def score_features(features_df: DataFrame, model_uri_or_path, model_name: str, model_version: str,
                   scoring_run_id: str, scored_at: datetime.datetime, *,
                   load_marker_dir: str | None = None) -> DataFrame:
    """Predictions for every row of ``features_df``, computed on the executors.

    ``model_uri_or_path`` is an MLflow model URI, a local model folder or LightGBM file, or
    a :class:`ScoringModel` already read on the driver. Output: the trip keys, ``prediction``,
    ``fare_amount`` when the input has it, model name and version, scoring run id,
    ``scored_at`` and ``pickup_date`` (the partition column). ``load_marker_dir`` makes each
    worker write one marker file per model load, to check that models load once per worker.
    """
    model = model_uri_or_path if isinstance(model_uri_or_path, ScoringModel) \
        else load_scoring_model(str(model_uri_or_path))
    missing = [name for name in (*TRIP_KEY_COLUMNS, *model.feature_names) if name not in features_df.columns]
    if missing:
        raise DataError(f"the feature set lacks column(s) {', '.join(missing)} needed for scoring; "
                        f"found {', '.join(features_df.columns)}")
    has_actuals = LABEL_COLUMN in features_df.columns
    keys = [_PICKUP_MICROS if name == PICKUP else name for name in TRIP_KEY_COLUMNS]
    passthrough = tuple(keys + ([LABEL_COLUMN] if has_actuals else []))
    # pickup_zip and dropoff_zip are keys and features: select each column once.
    inputs = list(dict.fromkeys([*passthrough, *model.feature_names]))
    prepared = features_df.withColumn(_PICKUP_MICROS, F.unix_micros(F.col(PICKUP))).select(*inputs)
    fields = {field.name: field.dataType.simpleString() for field in prepared.schema.fields}
    schema = ", ".join(f"`{name}` {fields[name]}" for name in passthrough) + f", `{PREDICTION}` double"
    predict = functools.partial(_predict_batches, model=model, digest=model.digest,
                                passthrough=passthrough, load_marker_dir=load_marker_dir)
    scored = prepared.mapInPandas(predict, schema)
    # A naive scored_at means UTC; Spark would otherwise read it in the Python process's zone.
    scored_at_utc = scored_at if scored_at.tzinfo else scored_at.replace(tzinfo=datetime.timezone.utc)
    return scored.withColumns({
        PICKUP: F.timestamp_micros(F.col(_PICKUP_MICROS)),
        MODEL_NAME: F.lit(model_name),
        MODEL_VERSION: F.lit(str(model_version)),
        SCORING_RUN_ID: F.lit(scoring_run_id),
        SCORED_AT: F.lit(scored_at_utc).cast("timestamp"),
    }).withColumn(PICKUP_DATE, F.to_date(F.col(PICKUP))).select(*output_columns(has_actuals))
