"""Feature tables shared by training and scoring: clean trips, zip windows, point-in-time join."""
import logging
from dataclasses import dataclass

from taxi_fares import features

from mlops.data.raw_input import read_raw_trips
from mlops.errors import DataError
from mlops.observability.redaction import public_uri

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


def build_feature_tables(run, raw_uri, start, end, tables: FeatureTables, parameter_prefix):
    """Read raw trips in [start, end], clean them, and write the trip and zip feature tables."""
    raw = read_raw_trips(run.spark, raw_uri)
    in_range = features.filter_date_range(raw, start, end).cache()
    try:
        rows_in_range = in_range.count()
        if rows_in_range == 0:
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
        run.tables.write(features.pickup_zip_features(clean), tables.pickup_features,
                         metadata={"primary_keys": list(features.PICKUP_FEATURE_KEYS)})
        run.tables.write(features.dropoff_zip_features(clean), tables.dropoff_features,
                         metadata={"primary_keys": list(features.DROPOFF_FEATURE_KEYS)})
    finally:
        in_range.unpersist()
    return lineage


def load_feature_set(run, start, end, tables: FeatureTables):
    """The point-in-time feature set (with labels) for trips picked up in [start, end]."""
    trips = run.tables.read(tables.trips, missing_hint=REBUILD_HINT)
    pickup = run.tables.read(tables.pickup_features, missing_hint=REBUILD_HINT)
    dropoff = run.tables.read(tables.dropoff_features, missing_hint=REBUILD_HINT)
    trips = features.filter_date_range(trips, start, end)
    return features.build_training_set(trips, pickup, dropoff)


def lineage(run, tables: FeatureTables) -> dict:
    return run.tables.metadata(tables.trips)
