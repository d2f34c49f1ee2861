"""Task ``validate``: gate a registered version before it may become Challenger.

The version's ``model_validation_status`` goes to PENDING first, unless it is PASSED: a PASSED
version (the Champion) keeps serving until the new result is in. The checks then run on the
held-out rows of the version's own out-of-time split (the latest ``test_fraction`` of its training
range, after a gap of ``held_out_gap_minutes``), so they never score rows the model trained on. Every check is
recorded with its value and threshold, in ``validation_results.json`` of the task's MLflow
run and in the version's description. PASSED sets alias Challenger; FAILED sets no alias and
fails the task with ValidationFailed, so ``deploy`` does not run. Validating the Champion
never makes it Challenger; a Champion that fails is tagged ``champion_validation_failed_at``,
reported to telemetry as an error, and scoring refuses it until it is rolled back or replaced.

A validation that crashes (rather than fails a check) leaves the status as it was (PENDING for a
new version): nothing was decided about the model.
"""
import datetime
import logging
from dataclasses import asdict, dataclass, field

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from pyspark.sql import functions as F
from taxi_fares import evaluation, features
from taxi_fares.schema import TRIP_ID

from mlops.config import TrainingConfig
from mlops.data.tables import TableStore
from mlops.errors import ConfigError, DataError, RegistryError, ValidationFailed
from mlops.lifecycle.profiles import store_reference
from mlops.lifecycle.registry import (CHALLENGER, CHAMPION, FAILED, PASSED, PENDING, ModelRef, RegistryClient,
                                      utc_now)
from mlops.monitoring import estimation
from mlops.monitoring.reference import ReferenceProfile, build_reference
from mlops.stages.feature_tables import TRAINING, load_feature_set
from mlops.stages.run import TaskRun


logger = logging.getLogger(__name__)

# A slice this small gives an rmse too noisy to judge; it is skipped and reported instead.
MIN_SLICE_ROWS = 50
REQUIRED_LINEAGE_TAGS = ("lineage.source_path", "lineage.training_range")
SPLIT_PARAMS = ("training_data_start_date", "training_data_end_date", "test_fraction", "held_out_gap_minutes")
# The held-out sample is drawn by a hash of trip_id with this salt: the same rows in every task.
SAMPLE_SALT = 1
PREDICTION = "prediction"
VALIDATED_AT_TAG = "validated_at"
VALIDATION_RUN_TAG = "validation_run_id"
CHAMPION_FAILED_TAG = "champion_validation_failed_at"


# ---------------------------------------------------------------- which model

def resolve_model(run: TaskRun[TrainingConfig], registry: RegistryClient, upstream_task: str,
                  switch_parameter: str) -> ModelRef:
    """The version named by ``model_version``, else the one task ``upstream_task`` passed on."""
    config = run.config
    if config.model_version:
        return registry.resolve(config.model_version)
    version = run.dbutils.jobs.taskValues.get(taskKey=upstream_task, key="model_version",
                                              default="", debugValue="")
    if not version:
        raise ConfigError(
            f"task '{run.task}' has no model version: task '{upstream_task}' passed none on. "
            f"Turn {switch_parameter}=true back on, or set model_version=<version or alias> "
            f"to {run.task} a registered version of '{registry.name}'")
    return registry.resolve(version)


def load_model(model: ModelRef):
    """The version as an MLflow pyfunc model; RegistryError when it cannot be loaded."""
    try:
        return mlflow.pyfunc.load_model(model.uri)
    except (MlflowException, OSError) as error:
        raise RegistryError(f"cannot load model '{model.name}' version {model.version} "
                            f"from {model.uri}: {error}") from error


def predict(loaded_model, frame: pd.DataFrame) -> np.ndarray:
    """Predictions of a pyfunc model, its feature columns cast to the types its signature declares."""
    columns = frame[list(features.FEATURE_COLUMNS)]
    schema = loaded_model.metadata.get_input_schema()
    if schema is not None and schema.has_input_names():
        declared = {spec.name: spec.type.to_pandas() for spec in schema.inputs if spec.name in columns}
        columns = columns.astype(declared)
    return np.asarray(loaded_model.predict(columns), dtype=float).ravel()


# ---------------------------------------------------------------- held-out rows

@dataclass(frozen=True)
class Split:
    """The train/held-out split a version was trained with, read from its training run."""

    start_date: datetime.date
    end_date: datetime.date
    test_fraction: float
    gap_minutes: int

    @classmethod
    def of_training_run(cls, training_run) -> "Split":
        params = training_run.data.params
        missing = [name for name in SPLIT_PARAMS if name not in params]
        if missing:
            raise RegistryError(
                f"training run {training_run.info.run_id} has no param {', '.join(missing)}: "
                "it was not logged by the train task, so its held-out rows are unknown")
        return cls(datetime.date.fromisoformat(params["training_data_start_date"]),
                   datetime.date.fromisoformat(params["training_data_end_date"]),
                   float(params["test_fraction"]), int(params["held_out_gap_minutes"]))

    @property
    def by_time(self) -> features.TimeSplit:
        return features.TimeSplit.of_range(self.start_date, self.end_date, self.test_fraction,
                                           self.gap_minutes)


@dataclass
class HeldOutData:
    """A bounded, deterministic sample of held-out rows, and the mean training fare."""

    rows: pd.DataFrame
    train_mean_fare: float
    training_rows: pd.DataFrame | None = None


def _bounded_collect(frame, columns, max_rows: int, salt: int, what: str) -> pd.DataFrame:
    """The ``max_rows`` rows with the smallest hash of trip_id: the same rows in every task and layout."""
    ranked = frame.withColumn("_sample_rank", F.xxhash64(F.col(TRIP_ID), F.lit(salt).cast("long")))
    collected = ranked.orderBy("_sample_rank", TRIP_ID).limit(max_rows).select(*columns).toPandas()
    logger.info("collected %d %s rows (at most %d)", len(collected), what, max_rows)
    return collected


def load_held_out(store: TableStore, split: Split, max_rows: int, with_training_rows: bool = False,
                  table_versions: dict | None = None) -> HeldOutData:
    """The held-out rows of ``split`` (features, label) from the training feature tables.

    ``table_versions`` reads the tables at those Delta versions (time travel).
    """
    dataset = load_feature_set(store, split.start_date, split.end_date, TRAINING, table_versions)
    flagged = features.split_by_time(dataset, split.by_time)
    label = features.LABEL_COLUMN
    held_out = _bounded_collect(flagged.filter(F.col(features.IS_TEST)),
                                [features.PICKUP, *features.FEATURE_COLUMNS, label], max_rows, SAMPLE_SALT,
                                "held-out")
    if held_out.empty:
        raise DataError(
            f"no held-out rows in {split.by_time.describe()['held_out_range']} in the training feature "
            "tables; rebuild them for this range with execute_feature_engineering=true")
    training = flagged.filter(~F.col(features.IS_TEST))
    train_mean = training.agg(F.avg(label).alias("mean")).first()["mean"]
    if train_mean is None:
        raise DataError(f"no training rows between {split.start_date} and {split.end_date} to compare "
                        "with; rebuild the feature tables with execute_feature_engineering=true")
    training_rows = None
    if with_training_rows:
        training_rows = _bounded_collect(training, list(evaluation.HEURISTIC_COLUMNS) + [label],
                                         max_rows, SAMPLE_SALT, "training")
    return HeldOutData(held_out, float(train_mean), training_rows)


# ---------------------------------------------------------------- checks

@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    value: object
    threshold: object
    rule: str

    def line(self) -> str:
        return (f"{'PASS' if self.passed else 'FAIL'} {self.name}: {_shown(self.value)}, "
                f"threshold {_shown(self.threshold)} ({self.rule})")


def _shown(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@dataclass
class ValidationReport:
    model: ModelRef
    checks: list[Check]
    skipped: list[dict] = field(default_factory=list)
    held_out_rows: int = 0
    # The version's reference for monitoring; None when its predictions were not all finite.
    reference: ReferenceProfile | None = None

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    @property
    def status(self) -> str:
        return FAILED if self.failed else PASSED

    def as_dict(self) -> dict:
        return {"model_name": self.model.name, "model_version": self.model.version,
                "status": self.status, "held_out_rows": self.held_out_rows,
                "checks": [asdict(check) for check in self.checks],
                "skipped": self.skipped}

    def description(self, when: str, mlflow_run_id: str) -> str:
        """The readable summary written to the version's description."""
        lines = [f"Validation {self.status} at {when} on {self.held_out_rows} held-out rows "
                 f"(MLflow run {mlflow_run_id}).", ""]
        lines += [f"- {check.line()}" for check in self.checks]
        lines += [f"- SKIP {item['name']}: {item['reason']}" for item in self.skipped]
        return "\n".join(lines)


def metadata_checks(model_metadata, training_run_tags: dict) -> list[Check]:
    """Signature, input example and lineage tags: what makes a version reproducible and servable."""
    missing_lineage = [tag for tag in REQUIRED_LINEAGE_TAGS if not training_run_tags.get(tag)]
    return [
        Check("signature_present", model_metadata.signature is not None,
              model_metadata.signature is not None, True, "model has an input/output signature"),
        Check("input_example_present", model_metadata.saved_input_example_info is not None,
              model_metadata.saved_input_example_info is not None, True, "model has an input example"),
        Check("lineage_tags_present", not missing_lineage, ", ".join(missing_lineage) or "all",
              ", ".join(REQUIRED_LINEAGE_TAGS), "training run has the lineage tags (value: missing ones)"),
    ]


def threshold_checks(metrics: dict, baseline_rmse: float, config) -> list[Check]:
    return [
        Check("rmse_max", metrics["rmse"] <= config.validation_max_rmse, metrics["rmse"],
              config.validation_max_rmse, "rmse <= validation_max_rmse"),
        Check("r2_min", metrics["r2"] >= config.validation_min_r2, metrics["r2"],
              config.validation_min_r2, "r2 >= validation_min_r2"),
        Check("rmse_beats_mean_baseline", metrics["rmse"] < baseline_rmse, metrics["rmse"],
              baseline_rmse, "rmse < rmse of predicting the mean training fare"),
    ]


def slice_checks(scored: pd.DataFrame, overall_rmse: float, factor: float) -> tuple[list[Check], list[dict]]:
    """Each slice's rmse against ``factor`` x overall rmse; too-small slices are skipped."""
    limit = factor * overall_rmse
    checks, skipped = [], []
    for name, result in evaluation.slice_metrics(scored).items():
        check_name = f"slice_rmse_{name}"
        if result["rows"] < MIN_SLICE_ROWS:
            skipped.append({"name": check_name, "rows": result["rows"],
                            "reason": f"{result['rows']} rows, fewer than {MIN_SLICE_ROWS}"})
            continue
        checks.append(Check(check_name, result["rmse"] <= limit, result["rmse"], limit,
                            f"rmse on {result['rows']} rows <= validation_slice_factor x overall rmse"))
    return checks, skipped


def sanity_checks(predictions: np.ndarray) -> list[Check]:
    not_finite = int((~np.isfinite(predictions)).sum())
    negative = int((predictions < 0).sum())
    return [
        Check("predictions_finite", not_finite == 0, not_finite, 0,
              "count of NaN or infinite predictions == 0"),
        Check("predictions_non_negative", negative == 0, negative, 0, "count of negative fares == 0"),
    ]


def pickups_of(rows: pd.DataFrame):
    """The rows' pickup times, for the reference's hour-of-day slices (None when not collected)."""
    return rows[features.PICKUP] if features.PICKUP in rows else None


def check_model(model: ModelRef, loaded_model, training_run_tags: dict, data: HeldOutData,
                config) -> ValidationReport:
    """Every validation check of one loaded model on its held-out rows."""
    rows = data.rows
    label = rows[features.LABEL_COLUMN].to_numpy(dtype=float)
    predictions = predict(loaded_model, rows)
    checks = metadata_checks(loaded_model.metadata, training_run_tags) + sanity_checks(predictions)
    skipped = []
    reference = None
    if np.isfinite(predictions).all():
        reference = estimation.with_error_model(
            build_reference(model.name, model.version, rows, features.FEATURE_COLUMNS, predictions, label,
                            timestamps=pickups_of(rows)),
            rows, features.FEATURE_COLUMNS, predictions, label)
        metrics = evaluation.regression_metrics(label, predictions)
        baseline = evaluation.rmse(label, np.full(len(label), data.train_mean_fare))
        scored = rows.assign(**{PREDICTION: predictions})
        slices, skipped = slice_checks(scored, metrics["rmse"], config.validation_slice_factor)
        checks += threshold_checks(metrics, baseline, config) + slices
    else:
        skipped.append({"name": "metrics", "reason": "predictions are not all finite"})
    return ValidationReport(model, checks, skipped, held_out_rows=len(rows), reference=reference)


# ---------------------------------------------------------------- the stage

def validate_model(run: TaskRun[TrainingConfig]) -> ValidationReport:
    """Validate the version trained upstream (or ``model_version``); see the module docstring."""
    config = run.config
    registry = RegistryClient.from_config(config)
    model = resolve_model(run, registry, upstream_task="train", switch_parameter="execute_training")
    run.annotate(model_version=model.version)
    previous_status = registry.validation_status(model.version)
    if previous_status != PASSED:
        # A PASSED version (the Champion, say) keeps serving while it is re-validated.
        registry.set_validation_status(model.version, PENDING)
    training_run = registry.training_run(model.version)
    data = load_held_out(run.tables, Split.of_training_run(training_run), config.validation_sample_rows)
    report = check_model(model, load_model(model), training_run.data.tags, data, config)
    alias_set = _record(run, registry, report, previous_status)
    for key, value in {**model.task_values(), "validation_status": report.status}.items():
        run.set_task_value(key, value)
    if report.failed:
        raise ValidationFailed(
            f"model '{model.name}' version {model.version} failed validation: "
            + "; ".join(check.line()[len("FAIL "):] for check in report.failed))
    logger.info("model %s version %s passed %d checks; %s", model.name, model.version, len(report.checks),
                f"alias {alias_set} set" if alias_set else "no alias set (it is the Champion)")
    return report


def _record(run: TaskRun[TrainingConfig], registry: RegistryClient, report: ValidationReport,
            previous_status: str | None):
    """Results to the task's MLflow run and the version; then the status tag and alias (returned, if set)."""
    model = report.model
    when = utc_now()
    mlflow.log_dict(report.as_dict(), "validation_results.json")
    if report.reference is not None:
        # Monitoring compares every later window of the inference log with this reference.
        store_reference(run.tables, run.config.predictions_table, report.reference, run.mlflow_run_id)
    mlflow.log_metrics({"held_out_rows": report.held_out_rows, "checks_failed": len(report.failed)}
                       | {f"check.{check.name}": check.value for check in report.checks
                          if isinstance(check.value, float)})
    mlflow.set_tags({"model_name": model.name, "model_version": model.version,
                     "validation_status": report.status,
                     "failed_checks": ", ".join(check.name for check in report.failed) or "none"})
    registry.describe(model.version, report.description(when, run.mlflow_run_id))
    registry.set_tags(model.version, {VALIDATED_AT_TAG: when, VALIDATION_RUN_TAG: run.mlflow_run_id})
    registry.set_validation_status(model.version, report.status)
    registry.history.append("revalidated" if previous_status in (PASSED, FAILED) else "validated",
                            model.version, f"job {run.job.job_name} run {run.job.job_run_id}",
                            model_validation_status=report.status, previous_status=previous_status or None,
                            failed_checks=", ".join(check.name for check in report.failed) or None)
    is_champion = registry.alias_version(CHAMPION) == model.version
    alias_set = None
    if report.status == PASSED and not is_champion:
        registry.set_alias(CHALLENGER, model.version)
        alias_set = CHALLENGER
    elif report.status == FAILED and registry.alias_version(CHALLENGER) == model.version:
        # A version that fails a re-validation must not stay the one awaiting promotion.
        registry.delete_alias(CHALLENGER)
    if report.status == FAILED and is_champion:
        _champion_failed(run, registry, report, when)
    return alias_set


def _champion_failed(run: TaskRun[TrainingConfig], registry: RegistryClient, report: ValidationReport,
                     when: str):
    """The serving Champion failed a re-validation: tag it, tell telemetry, and say what to do."""
    model = report.model
    registry.set_tags(model.version, {CHAMPION_FAILED_TAG: when})
    mlflow.set_tag(CHAMPION_FAILED_TAG, when)
    run.annotate(champion_validation_failed="true")
    logger.error("the Champion, model %s version %s, failed re-validation (%s): scoring now refuses it. "
                 "Roll back with `mlops model rollback %s <earlier version> --reason ...`, or promote a "
                 "PASSED version with `mlops model promote`", model.name, model.version,
                 ", ".join(check.name for check in report.failed), model.name)
