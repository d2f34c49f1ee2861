"""The distributed scoring engine: a LightGBM model applied to a feature DataFrame in Spark.

The driver reads the model file once and ships its text inside a scalar Arrow UDF's
closure, which works on a classic cluster and under Spark Connect alike (no
``sparkContext``, no broadcast). Only the feature columns travel to Python and only the
prediction comes back; the other columns stay in the JVM. Each Python worker builds the
booster on its first batch and keeps it in a module-level cache for every later batch
and task it runs.

This module is imported by every Python worker, so it imports only what scoring needs;
MLflow is imported lazily, on the driver.
"""
import contextlib
import datetime
import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import lightgbm
import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from taxi_fares.features import LABEL_COLUMN, PICKUP, TRIP_KEY_COLUMNS
from taxi_fares.schema import TRIP_ID

from mlops.errors import DataError, RegistryError

logger = logging.getLogger(__name__)

# The inference log's columns; Lakehouse Monitoring's InferenceLog profile reads timestamp,
# model_id, prediction and label.
REQUEST_ID = "request_id"
TIMESTAMP = "timestamp"
PREDICTION = "prediction"
LABEL = "label"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
MODEL_ALIAS = "model_alias"
MODEL_ID = "model_id"
MLFLOW_RUN_ID = "mlflow_run_id"
JOB_RUN_ID = "job_run_id"
SCORED_AT = "scored_at"
PICKUP_DATE = "pickup_date"
# True when the trip reached a stream after its window's watermark: its window features may
# lack trips that arrived before it. Batch scoring, with every window complete, writes False;
# the online server, with no watermark, writes null.
LATE_FEATURES = "late_features"
# Which side of a Champion/Challenger comparison scored the row: the alias it was served under
# (champion, challenger), or shadow for a Challenger scoring beside the Champion; null otherwise.
ARM = "arm"
CHAMPION_ARM, CHALLENGER_ARM, SHADOW_ARM = "champion", "challenger", "shadow"
ARMS = {"Champion": CHAMPION_ARM, "Challenger": CHALLENGER_ARM}
# Columns an inference log created before them gets on its next write.
ADDED_LOG_COLUMNS = (LATE_FEATURES, ARM)
PARTITION_COLUMNS = (PICKUP_DATE,)
LOG_KEYS = (REQUEST_ID, MODEL_VERSION)
SCORING_BATCH_ROWS = 50_000

# Python worker state: booster per model digest, filled on the first batch, never per batch.
_boosters = {}


@dataclass(frozen=True)
class ScoringModel:
    """A LightGBM model as the driver ships it: its text, digest and the feature order it expects.

    With ``load_marker_dir`` set, each worker writes one marker file per load of the model, so
    that a check can count loads per worker process.
    """

    text: str
    feature_names: tuple
    load_marker_dir: str | None = None

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


def _booster(model: ScoringModel, digest: str):
    """This worker's booster for ``digest``, built on first use."""
    booster = _boosters.get(digest)
    if booster is None:
        booster = _boosters[digest] = lightgbm.Booster(model_str=model.text)
        if model.load_marker_dir:
            _write_load_marker(Path(model.load_marker_dir), digest)
    return booster


def _write_load_marker(folder: Path, digest: str):
    """One JSON file per model load, so a caller can count loads per worker process."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = {"pid": os.getpid(), "model_digest": digest,
              "loaded_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    (folder / f"load-{os.getpid()}-{uuid.uuid4().hex[:8]}.json").write_text(json.dumps(marker))


def _prediction_udf(model: ScoringModel):
    """A scalar Arrow UDF: the feature columns in, in model order; the prediction out."""
    import pyarrow

    digest = model.digest

    def predict(*features: pyarrow.Array) -> pyarrow.Array:
        booster = _booster(model, digest)
        # Arrow columns straight into one float64 matrix, with no pandas in between.
        matrix = np.empty((len(features[0]), len(features)), dtype=np.float64)
        for position, column in enumerate(features):
            matrix[:, position] = column.to_numpy(zero_copy_only=False)
        return pyarrow.array(booster.predict(matrix, num_threads=1), type=pyarrow.float64())

    return F.arrow_udf(predict, T.DoubleType())


@dataclass(frozen=True)
class Provenance:
    """Who scored: the model version (and the alias it was resolved from) and the runs doing it."""

    model_name: str
    model_version: str
    job_run_id: str
    mlflow_run_id: str = ""
    model_alias: str = ""
    scored_at: datetime.datetime = None

    def model_id(self) -> str:
        return f"models:/{self.model_name}/{self.model_version}"


@contextlib.contextmanager
def session_settings(spark, settings: dict):
    """``settings`` on the Spark session for the work inside; the session's own values afterwards."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, str(value))
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def log_write_settings(feature_names) -> dict:
    """Session settings for scoring into the log: larger Arrow batches, no doomed dictionaries.

    Fewer, larger batches spend less per batch on Arrow framing and LightGBM's per-call setup
    than the 10,000-row default. Parquet tries a dictionary on every column and drops it once
    it outgrows a page; for near-unique columns that work is wasted, so they skip it.
    """
    near_unique = [REQUEST_ID, TRIP_ID, TIMESTAMP, *feature_names, PREDICTION, LABEL]
    return {"spark.sql.execution.arrow.maxRecordsPerBatch": SCORING_BATCH_ROWS,
            **{f"parquet.enable.dictionary#{column}": "false" for column in near_unique}}


def log_columns(feature_names) -> list:
    """The columns of the inference log, in order."""
    return [REQUEST_ID, TRIP_ID, TIMESTAMP, *feature_names, PREDICTION, LABEL, MODEL_NAME, MODEL_VERSION,
            MODEL_ALIAS, MODEL_ID, MLFLOW_RUN_ID, JOB_RUN_ID, SCORED_AT, PICKUP_DATE, LATE_FEATURES, ARM]


def arm_of(alias: str) -> str | None:
    """The comparison arm of rows scored under ``alias``; None for other aliases and versions."""
    return ARMS.get(alias)


def request_id_column():
    """A stable request id from the trip's keys: its trip id (a hash of the raw trip) as 16 hex digits."""
    return F.lpad(F.lower(F.hex(F.col(TRIP_ID))), 16, "0")


def score_features(features_df: DataFrame, model_uri_or_path, provenance: Provenance) -> DataFrame:
    """Inference log rows for every row of ``features_df``, predicted on the executors.

    ``model_uri_or_path`` is an MLflow model URI, a local model folder or LightGBM file, or
    a :class:`ScoringModel` already read on the driver. Output: :func:`log_columns`, with
    ``label`` null when the input has no ``fare_amount``, and ``late_features`` from the input's
    own column, or False.
    """
    model = model_uri_or_path if isinstance(model_uri_or_path, ScoringModel) \
        else load_scoring_model(str(model_uri_or_path))
    missing = [name for name in (*TRIP_KEY_COLUMNS, *model.feature_names) if name not in features_df.columns]
    if missing:
        raise DataError(f"the feature set lacks column(s) {', '.join(missing)} needed for scoring; "
                        f"found {', '.join(features_df.columns)}")
    label = F.col(LABEL_COLUMN).cast("double") if LABEL_COLUMN in features_df.columns \
        else F.lit(None).cast("double")
    late = [F.col(LATE_FEATURES).cast("boolean")] if LATE_FEATURES in features_df.columns else []
    # pickup_zip and dropoff_zip are keys and features: select each column once.
    inputs = features_df.select(*dict.fromkeys([TRIP_ID, *model.feature_names]),
                                F.col(PICKUP).alias(TIMESTAMP), label.alias(LABEL), *late)
    predict = _prediction_udf(model)
    scored = inputs.withColumn(PREDICTION, predict(*[F.col(name) for name in model.feature_names]))
    return log_rows(scored, provenance, model.feature_names)


def log_rows(scored: DataFrame, provenance: Provenance, feature_names) -> DataFrame:
    """Scored rows (trip_id, timestamp, features, label, prediction) as inference log rows.

    ``late_features`` is taken from ``scored`` when it has the column, else False.
    """
    scored_at = provenance.scored_at or datetime.datetime.now(datetime.timezone.utc)
    # A naive scored_at means UTC; Spark would otherwise read it in the Python process's zone.
    scored_at_utc = scored_at if scored_at.tzinfo else scored_at.replace(tzinfo=datetime.timezone.utc)
    return scored.withColumns({
        REQUEST_ID: request_id_column(),
        MODEL_NAME: F.lit(provenance.model_name),
        MODEL_VERSION: F.lit(str(provenance.model_version)),
        MODEL_ALIAS: F.lit(provenance.model_alias),
        MODEL_ID: F.lit(provenance.model_id()),
        MLFLOW_RUN_ID: F.lit(provenance.mlflow_run_id),
        JOB_RUN_ID: F.lit(provenance.job_run_id),
        SCORED_AT: F.lit(scored_at_utc).cast("timestamp"),
        PICKUP_DATE: F.to_date(F.col(TIMESTAMP)),
        LATE_FEATURES: F.col(LATE_FEATURES) if LATE_FEATURES in scored.columns else F.lit(False),
        ARM: F.lit(arm_of(provenance.model_alias)).cast("string"),
    }).select(*log_columns(feature_names))
