"""Feature tables shared by training and scoring: clean trips, zip windows, point-in-time join."""
import logging
from dataclasses import dataclass

from pyspark.sql import functions as F
from taxi_fares import features

from mlops import platform
from mlops.config import RawTripsConfig
from mlops.data.raw_input import read_raw_trips
from mlops.data.tables import TableStore
from mlops.errors import DataError
from mlops.observability.redaction import public_uri
from mlops.serving import online_store
from mlops.stages.run import TaskRun


logger = logging.getLogger(__name__)

REBUILD_HINT = "set execute_feature_engineering=true to build it"


@dataclass(frozen=True)
class FeatureTables:
    """The names of one purpose's tables, e.g. ``training_trips``."""

    purpose: str

    @property
    def trips(self):
        return f"{self.purpose}_trips"

    @property
    def pickup_features(self):
        return f"{self.purpose}_pickup_features"

    @property
    def dropoff_features(self):
        return f"{self.purpose}_dropoff_features"


TRAINING = FeatureTables("training")
SCORING = FeatureTables("scoring")


def build_feature_tables(run: TaskRun[RawTripsConfig], raw_uri, start, end, tables: FeatureTables,
                         parameter_prefix, online_store_path: str = ""):
    """Read raw trips in [start, end], clean them, and write the trip and zip feature tables.

    With ``online_store_path``, each zip's newest window is also published there for serving.
    """
    raw = read_raw_trips(run.spark, raw_uri)
    in_range = features.filter_date_range(raw, start, end).cache()
    try:
        rows_in_range = in_range.count()
        if rows_in_range == 0:
            if raw.limit(1).count() == 0:
                raise DataError(f"input {public_uri(raw_uri)} (parameter 'taxi_fares_raw_data') "
                                "holds no rows")
            raise DataError(
                f"no trips between {start} and {end} in {public_uri(raw_uri)}; check "
                f"{parameter_prefix}_start_date and {parameter_prefix}_end_date")
        clean = features.clean_trips(in_range)
        rows_clean = clean.count()
        lineage = {"source_path": public_uri(raw_uri), "start_date": str(start), "end_date": str(end),
                   "rows_before_cleaning": rows_in_range, "rows_after_cleaning": rows_clean,
                   "rows_dropped_invalid": rows_in_range - rows_clean}
        logger.info("cleaning dropped %d invalid rows of %d", rows_in_range - rows_clean, rows_in_range)
        run.tables.write(features.trip_features(clean), tables.trips, metadata=lineage)
        for name, frame, keys in ((tables.pickup_features, features.pickup_zip_features(clean),
                                   features.PICKUP_FEATURE_KEYS),
                                  (tables.dropoff_features, features.dropoff_zip_features(clean),
                                   features.DROPOFF_FEATURE_KEYS)):
            run.tables.write(frame, name, metadata={"primary_keys": list(keys)})
            run.tables.declare_primary_key(name, keys, timeseries=features.FEATURE_TIMESTAMP)
    finally:
        in_range.unpersist()
    if online_store_path:
        source = f"{tables.purpose} feature tables {start}..{end}"
        publish_online_snapshot(run, tables, online_store_path, source)
    return lineage


def publish_online_snapshot(run: TaskRun[RawTripsConfig], tables: FeatureTables, online_store_path: str,
                            source: str) -> int:
    """Each zip's newest window from the zip feature tables, published to the online store."""
    content = online_store.build_snapshot(run.tables.read(tables.pickup_features),
                                          run.tables.read(tables.dropoff_features))
    return online_store.publish(platform.driver_path(online_store_path), content, source)


def load_feature_set(store: TableStore, start, end, tables: FeatureTables, versions: dict | None = None):
    """The point-in-time feature set (with labels) for trips picked up in [start, end].

    ``versions`` (table name -> Delta version) reads the tables as they were then.
    """
    versions = versions or {}
    trips, pickup, dropoff = (store.read(name, missing_hint=REBUILD_HINT, version=versions.get(name))
                              for name in (tables.trips, tables.pickup_features, tables.dropoff_features))
    trips = features.filter_date_range(trips, start, end)
    return features.build_training_set(trips, pickup, dropoff)


def log_inputs(run: TaskRun[RawTripsConfig], tables: FeatureTables, context: str):
    """Record each feature table in the MLflow run as a dataset input: its name and Delta version."""
    import hashlib

    import mlflow
    from mlflow.data.delta_dataset_source import DeltaDatasetSource
    from mlflow.data.spark_dataset import SparkDataset

    for name in (tables.trips, tables.pickup_features, tables.dropoff_features):
        version = run.tables.version(name)
        uri = run.tables.uri(name)
        source = DeltaDatasetSource(delta_table_name=uri, delta_table_version=version) \
            if "/" not in uri else DeltaDatasetSource(path=uri, delta_table_version=version)
        # The name and version identify the data exactly; no Spark plan needs hashing.
        digest = hashlib.md5(f"{uri}@{version}".encode()).hexdigest()[:8]
        dataset = SparkDataset(df=run.tables.read(name), source=source, name=name, digest=digest)
        # MLflow drops a version 0 from the source; the input's tags keep every version.
        mlflow.log_input(dataset, context=context, tags={"table": uri, "delta_table_version": str(version)})
        logger.info("input %s: %s version %s", name, uri, version)


def recorded_versions(mlflow_run, tables: FeatureTables) -> dict:
    """table name -> the Delta version ``mlflow_run`` read it at (its inputs; see :func:`log_inputs`)."""
    found = {}
    for dataset_input in mlflow_run.inputs.dataset_inputs if mlflow_run.inputs else []:
        tags = {tag.key: tag.value for tag in dataset_input.tags}
        name = dataset_input.dataset.name
        if name in (tables.trips, tables.pickup_features, tables.dropoff_features) \
                and tags.get("delta_table_version", "None") != "None":
            found[name] = int(tags["delta_table_version"])
    return found


def lineage(run: TaskRun[RawTripsConfig], tables: FeatureTables) -> dict:
    return run.tables.metadata(tables.trips)


# Fewer rows than this on either side of the split give an rmse too noisy to judge a model by.
MIN_HELD_OUT_ROWS = 50


def collect_split(dataset, config, time_split=None, parts=("training", "held-out")):
    """The one sanctioned collect: a bounded sample of both sides of an out-of-time split.

    ``time_split`` defaults to the training range's; ``parts`` names its two sides in messages.
    """
    time_split = time_split or config.time_split()
    split = features.split_by_time(dataset, time_split)
    counts = {row["is_test"]: row["count"] for row in split.groupBy("is_test").count().collect()}
    total = sum(counts.values())
    if total == 0:
        raise DataError(
            f"no training rows between {config.training_data_start_date} and "
            f"{config.training_data_end_date} in the feature tables; rerun with "
            "execute_feature_engineering=true for this range")
    ranges = time_split.describe()
    first, second = parts
    if counts.get(True, 0) < MIN_HELD_OUT_ROWS or counts.get(False, 0) < MIN_HELD_OUT_ROWS:
        raise DataError(
            f"the out-of-time split leaves {counts.get(False, 0)} {first} rows ({ranges['train_range']}) "
            f"and {counts.get(True, 0)} {second} rows ({ranges['held_out_range']}); each needs at least "
            f"{MIN_HELD_OUT_ROWS} to evaluate: widen the training range or change "
            + ("test_fraction" if second == "held-out" else "tuning_validation_fraction"))
    fraction = min(1.0, config.training_sample_rows / total)
    columns = list(features.FEATURE_COLUMNS) + [features.LABEL_COLUMN]
    sampled = split if fraction >= 1.0 else split.sample(fraction=fraction, seed=config.seed)
    train = sampled.filter(~F.col("is_test")).select(*columns).toPandas()
    test = sampled.filter(F.col("is_test")).select(*columns).toPandas()
    logger.info("collected %d %s and %d %s rows (sample fraction %.4f of %d)",
                len(train), first, len(test), second, fraction, total)
    return train, test, {"rows_available": total, "sample_fraction": fraction, **ranges,
                         "train_rows_available": counts.get(False, 0),
                         "held_out_rows_available": counts.get(True, 0)}
