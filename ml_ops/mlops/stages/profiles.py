"""``mlops model profile``: the reference profile of a registered version, rebuilt from its own rows."""
import numpy as np
from taxi_fares import features

from mlops.config import TrainingConfig
from mlops.data.tables import TableStore
from mlops.errors import ConfigError, RegistryError, ValidationFailed
from mlops.lifecycle.profiles import store_reference
from mlops.lifecycle.registry import RegistryClient
from mlops.monitoring import estimation
from mlops.monitoring.monitor import stored_profile
from mlops.monitoring.reference import ReferenceProfile, build_reference
from mlops.stages.feature_tables import TRAINING, recorded_versions
from mlops.stages.validation import Split, load_held_out, load_model, pickups_of, predict


def profile_version(config: TrainingConfig, tables: TableStore, registry: RegistryClient, version: str,
                    force: bool = False, by: str = "") -> ReferenceProfile:
    """Build the reference profile and error model of a registered ``version`` from its held-out rows.

    The rows are read at the feature tables' versions its training run recorded (Delta time
    travel), over its recorded held-out range, so later training runs that rewrote the tables do
    not change it. A version that has a profile keeps it unless ``force``; a forced rebuild is
    recorded in the model's history with the old and new row counts.
    """
    model = registry.resolve(version)
    existing = stored_profile(tables, config.predictions_table, model.version)
    # A version profiled before error models were fitted gets one without --force.
    if existing is not None and existing.error_model and not force:
        raise ConfigError(f"model '{model.name}' version {model.version} already has a reference profile "
                          f"({existing.rows} held-out rows, built {existing.created_at}); monitoring judges "
                          "against it. Pass --force to rebuild it from the same rows")
    training_run = registry.training_run(model.version)
    versions = recorded_versions(training_run, TRAINING)
    missing = [name for name in (TRAINING.trips, TRAINING.pickup_features, TRAINING.dropoff_features)
               if name not in versions]
    if missing:
        raise RegistryError(f"training run {training_run.info.run_id} of version {model.version} recorded no "
                            f"Delta version of {', '.join(missing)}, so its held-out rows cannot be read as "
                            "they were; validate a version trained with table versions recorded instead")
    data = load_held_out(tables, Split.of_training_run(training_run), config.validation_sample_rows,
                         table_versions=versions)
    predictions = predict(load_model(model), data.rows)
    if not np.isfinite(predictions).all():
        raise ValidationFailed(f"model '{model.name}' version {model.version} gives predictions that are "
                               "not all finite on its held-out rows; it has no usable reference")
    labels = data.rows[features.LABEL_COLUMN].to_numpy(dtype=float)
    reference = estimation.with_error_model(
        build_reference(model.name, model.version, data.rows, features.FEATURE_COLUMNS, predictions, labels,
                        timestamps=pickups_of(data.rows)),
        data.rows, features.FEATURE_COLUMNS, predictions, labels)
    store_reference(tables, config.predictions_table, reference, training_run.info.run_id)
    if existing is not None:
        registry.history.append("profile_rebuilt", model.version, by, old_rows=existing.rows,
                                new_rows=reference.rows, table_versions=versions)
    return reference
