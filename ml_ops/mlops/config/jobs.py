"""Typed job configuration, parsed once from job or widget parameters.

Each job has one frozen pydantic model. Field names are the parameter names (the Azure
sample's names where it has them); the field's type, ``Literal`` choices and ``Field`` bounds
say how the string value is parsed and checked. Unknown names, malformed values and missing
required values fail here, before any Spark work starts, with a message that names the
parameter (taken from the validation error's location) and never shows a secret.
"""
import datetime
import re
from typing import Annotated, Any, ClassVar, Iterable, Literal, Mapping, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from taxi_fares import features
from taxi_fares.training import TrainingParams
from taxi_fares.tuning import DEFAULT_SPACE, SearchSpace

from mlops.errors import ConfigError
from mlops.monitoring.settings import MonitoringSettings
from mlops.platform import catalog
from mlops.observability.redaction import redact_params
from mlops.config.messages import DATE_RULE, config_error, shown


# A date, optionally shifted by whole days: a job passes "{{job.start_time.iso_date}}-28d",
# which Databricks (or the local runner) turns into e.g. "2026-11-30-28d" for a rolling range.
_DATE = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})(?:(?P<sign>[+-])(?P<days>\d{1,5})d)?$")


def _shifted_date(raw):
    """``YYYY-MM-DD`` or ``YYYY-MM-DD±Nd`` as a date; dates pass through."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    if "{{" in text:
        raise ValueError("holds an unresolved reference: only a job run resolves {{...}} references "
                         "(on Databricks, or with `mlops job run`)")
    match = _DATE.match(text)
    try:
        date = datetime.date.fromisoformat(match["date"]) if match else None
    except ValueError:
        date = None
    if date is None:
        raise ValueError(DATE_RULE)
    days = int(match["days"] or 0) * (-1 if match["sign"] == "-" else 1)
    return date + datetime.timedelta(days=days)


def _empty_is_none(raw):
    return None if isinstance(raw, str) and not raw.strip() else raw


ShiftedDate = Annotated[datetime.date, BeforeValidator(_shifted_date)]
# Validators run last to first: an empty value becomes None before the date is read.
OptionalDate = Annotated[Optional[datetime.date], BeforeValidator(_shifted_date),
                         BeforeValidator(_empty_is_none)]


def _format(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


class JobConfig(BaseModel):
    """Base class: parsing, validation and widget declaration for one job's parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Parameters every job takes.
    env: Literal["dev", "staging", "prod"] = "dev"
    wheel_path: str = "dist"
    wheel_version: str = "*"
    registered_model_name: str = "taxi_fares"
    registry_uri: str = ""
    experiment_name: str = "/Shared/taxi_fares/dev/experiments/taxi_fares"
    table_location: str = "dev.taxi_fares"
    appinsights_secret_scope: str = ""
    appinsights_secret_key: str = ""
    telemetry_backend: Literal["opentelemetry", "opencensus"] = "opentelemetry"
    git_commit: str = ""

    # Fields a job file deliberately does not declare: name -> why. Every other field is declared.
    NOT_IN_JOB_FILE: ClassVar[dict] = {
        "telemetry_backend": "the default exporter suits every target; a run that must ingest through "
                             "OpenCensus passes it"}

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise config_error(type(self), error) from None

    @classmethod
    def parameter_names(cls):
        return list(cls.model_fields)

    @classmethod
    def default_of(cls, name: str):
        return cls.model_fields[name].default

    @classmethod
    def defaults(cls) -> dict:
        """Parameter defaults as the strings a widget or job file holds."""
        return {name: _format(field.default) for name, field in cls.model_fields.items()}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]):
        """Parse string parameters; an empty value keeps the default."""
        values = {name: raw.strip() if isinstance(raw, str) else raw for name, raw in params.items()}
        return cls(**{name: value for name, value in values.items() if value is not None and value != ""})

    @classmethod
    def from_widgets(cls, dbutils):
        """Read every widget and job parameter once, then parse them."""
        try:
            params = dict(dbutils.widgets.getAll())
        except AttributeError:
            # Older runtimes have no getAll(); read the declared names one by one.
            params = {name: dbutils.widgets.get(name) for name in cls.parameter_names()}
        return cls.from_params(params)

    @classmethod
    def from_notebook(cls, dbutils):
        """Declare this job's widgets, then parse every widget and job parameter once."""
        cls.declare_widgets(dbutils)
        return cls.from_widgets(dbutils)

    @classmethod
    def declare_widgets(cls, dbutils):
        """Declare a text widget per parameter, defaulting to the config's default."""
        for name, default in cls.defaults().items():
            dbutils.widgets.text(name, default, name)

    @model_validator(mode="after")
    def _check_location(self):
        catalog.check_location(self.table_location)
        return self

    def as_params(self) -> dict:
        """All parameters as strings, secrets redacted: safe to log anywhere."""
        return redact_params({name: _format(getattr(self, name)) for name in type(self).model_fields})

    def replace(self, **changes):
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})


def _check_date_range(config, prefix):
    start = getattr(config, f"{prefix}_start_date")
    end = getattr(config, f"{prefix}_end_date")
    if start and end and start > end:
        raise ConfigError(f"parameter '{prefix}_start_date' ({start}) is after "
                          f"'{prefix}_end_date' ({end}); swap them or fix the range")


def parse_assignments(pairs: Iterable[str]) -> dict:
    """Turn ``["name=value", ...]`` into a dict; ConfigError on a malformed or repeated name."""
    assignments = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        name = name.strip()
        if not separator or not name:
            raise ConfigError(f"parameter {shown(pair)} must be written name=value")
        if name in assignments:
            raise ConfigError(f"parameter '{name}' given more than once")
        assignments[name] = value
    return assignments


class RawTripsConfig(JobConfig):
    """Parameters of the jobs that read raw trips and build feature tables."""

    taxi_fares_raw_data: str = "dbfs:/mlops/taxi_fares/raw/trips"
    execute_feature_engineering: bool = True
    # Feature engineering publishes each zip's newest window here for online serving; empty: it does not.
    online_store_path: str = "dbfs:/mlops/taxi_fares/online_store"


class TrainingConfig(RawTripsConfig):
    """Parameters of the training job: train, validate and deploy tasks share them."""

    training_data_start_date: ShiftedDate = datetime.date(2016, 1, 1)
    training_data_end_date: ShiftedDate = datetime.date(2016, 1, 31)
    execute_training: bool = True
    # LightGBM settings default to the ML wheel's own defaults.
    training_num_leaves: int = TrainingParams.num_leaves
    training_objective: str = TrainingParams.objective
    training_metric: str = TrainingParams.metric
    training_num_rounds: int = TrainingParams.num_rounds
    training_learning_rate: float = TrainingParams.learning_rate
    training_sample_rows: int = Field(2_000_000, ge=100)
    # The held-out set: the latest test_fraction of the range by pickup time, after a gap.
    test_fraction: float = Field(0.2, gt=0, lt=0.9)
    held_out_gap_minutes: int = Field(60, ge=features.LONGEST_WINDOW_MINUTES,
                                      description="the longest feature window")
    seed: int = 42
    # Where train takes its hyperparameters: these parameters, or the Champion's last tuning.
    training_params_from: Literal["job", "champion"] = "job"
    # Tuning (stage `tuning` of task `train`): an Optuna study over tuning_space, trials on Spark.
    execute_tuning: bool = False
    tuning_space: str = DEFAULT_SPACE
    tuning_trials: int = Field(16, ge=1)
    tuning_timeout_minutes: float = Field(30.0, gt=0)
    tuning_parallelism: int = Field(2, ge=1)
    # The validation slice: the latest fraction of the training part, cut off by the same gap.
    tuning_validation_fraction: float = Field(0.25, gt=0, lt=0.9)
    # Empty: one study per model and training range, so a rerun of a failed tune resumes it.
    tuning_study_name: str = ""
    # Validation and promotion (tasks `validate` and `deploy`).
    model_version: str = ""
    execute_validation: bool = True
    execute_deployment: bool = True
    validation_max_rmse: float = Field(10.0, gt=0)
    # r2 is at most 1; below -1 a model is worse than twice the mean's error, no gate at all.
    validation_min_r2: float = Field(0.5, ge=-1, le=1)
    validation_slice_factor: float = Field(5.0, ge=1)
    validation_sample_rows: int = Field(200_000, ge=100)
    promotion_tolerance: float = Field(0.0, gt=-1)
    require_approval: bool = False
    # The inference log whose <name>_baseline table receives each validated version's reference profile.
    predictions_table: str = "taxi_fares_predictions"

    @model_validator(mode="after")
    def _check_ranges_and_training_params(self):
        _check_date_range(self, "training_data")
        try:
            self.time_split()
        except ValueError as error:
            raise ConfigError(f"parameters 'test_fraction' and 'held_out_gap_minutes': {error}") from None
        try:
            self.training_params().validate(label=lambda field: f"parameter '{_TRAINING_PARAMETERS[field]}'")
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self.search_space()
        try:
            self.tuning_split()
        except ValueError as error:
            raise ConfigError(f"parameter 'tuning_validation_fraction': {error}") from None
        return self

    def search_space(self) -> SearchSpace:
        try:
            return SearchSpace.parse(self.tuning_space)
        except ValueError as error:
            raise ConfigError(f"parameter 'tuning_space': {error}") from None

    def tuning_split(self) -> "features.TimeSplit":
        """The tuner's split: its validation slice is the end of the training part, never held-out time."""
        return self.time_split().of_training_part(self.tuning_validation_fraction, self.held_out_gap_minutes)

    def study_name(self) -> str:
        return self.tuning_study_name or (f"tune-{self.registered_model_name}-"
                                          f"{self.training_data_start_date}-{self.training_data_end_date}")

    def time_split(self) -> "features.TimeSplit":
        """The out-of-time split of the training range (see :class:`taxi_fares.features.TimeSplit`)."""
        return features.TimeSplit.of_range(self.training_data_start_date, self.training_data_end_date,
                                           self.test_fraction, self.held_out_gap_minutes)

    def training_params(self):
        """The LightGBM parameters; each comes from the job parameter of the same meaning."""
        return TrainingParams(**{field: getattr(self, parameter)
                                 for field, parameter in _TRAINING_PARAMETERS.items()})


class ScoringConfig(RawTripsConfig):
    """Parameters of the batch scoring job."""

    scoring_data_start_date: ShiftedDate = datetime.date(2016, 2, 1)
    scoring_data_end_date: ShiftedDate = datetime.date(2016, 2, 29)
    trained_model_version: str = ""
    model_alias: str = "Champion"
    allow_unvalidated_model: bool = False
    predictions_table: str = "taxi_fares_predictions"
    execute_label_merge: bool = False
    labels_table: str = "taxi_fares_labels"
    publish_results: bool = True
    blob_container: str = "taxi-fares-scores"
    blob_prefix: str = "batch-scores"
    storage_secret_scope: str = ""
    storage_secret_key: str = ""
    publish_folder: str = "dbfs:/mlops/taxi_fares/published"

    @model_validator(mode="after")
    def _check_range(self):
        _check_date_range(self, "scoring_data")
        return self


class MonitoringConfig(JobConfig):
    """Parameters of the monitoring job: the windows to watch, the thresholds, and the retraining rule."""

    predictions_table: str = "taxi_fares_predictions"
    # Passed on to the training job when monitoring starts a retraining.
    taxi_fares_raw_data: str = "dbfs:/mlops/taxi_fares/raw/trips"
    # Empty: the last monitoring_windows windows up to monitoring_end_date; empty end: today (UTC).
    monitoring_start_date: OptionalDate = None
    monitoring_end_date: OptionalDate = None
    monitoring_windows: int = Field(7, ge=1)
    # Calendar features: a daily window holds one weekday, so these always differ from the reference.
    drift_exempt_columns: str = "pickup_day_of_week,is_weekend"
    retrain_on: Literal["drift", "quality", "drift_or_quality", "estimated_quality"] = "drift_or_quality"
    retraining_range_days: int = Field(30, ge=1)
    # 0: a retraining reuses the Champion's tuned hyperparameters; N: it tunes again with N trials.
    retraining_tuning_trials: int = Field(0, ge=0)
    # No retraining while a run of this job is in progress (its task runs in the experiment say RUNNING).
    training_job_name: str = "taxi_fares_training"
    # "spark" runs everywhere; "lakehouse" has Databricks Lakehouse Monitoring compute the tables.
    monitoring_backend: Literal["spark", "lakehouse"] = "spark"
    lakehouse_assets_dir: str = "/Shared/taxi_fares/dev/monitoring"
    lakehouse_refresh_timeout_minutes: int = Field(60, ge=1)
    # The online comparison: how much worse the Challenger's rmse may be and still be promoted, and
    # the chance of rolling back a Challenger that is no worse.
    online_comparison_margin: float = Field(0.05, ge=0, lt=1)
    online_comparison_alpha: float = Field(0.05, gt=0, lt=1)
    # A gradual rollout of the Challenger, such as 10,50,100 (empty: its share is left alone), and
    # the labelled rows each step waits for before it is judged.
    rollout_plan: str = ""
    rollout_rows_per_step: int = Field(5000, ge=1)
    # On Databricks, the Model Serving endpoint whose traffic the rollout sets (empty: none).
    serving_endpoint_name: str = ""
    # Thresholds and the rule default to the monitor's own defaults, which check them.
    monitoring_granularity: str = MonitoringSettings.granularity
    monitoring_min_rows: int = MonitoringSettings.min_rows
    psi_threshold: float = MonitoringSettings.psi_threshold
    wasserstein_threshold: float = MonitoringSettings.wasserstein_threshold
    rmse_ratio_threshold: float = MonitoringSettings.rmse_ratio_threshold
    drift_alpha: float = MonitoringSettings.alpha
    retrain_windows: int = MonitoringSettings.retrain_windows
    retrain_min_violations: int = MonitoringSettings.retrain_min_violations
    retrain_cooldown_days: int = MonitoringSettings.cooldown_days

    @model_validator(mode="after")
    def _check_settings_and_range(self):
        self.settings()
        if self.rollout_plan:
            from mlops.monitoring.online_comparison import RolloutPlan
            try:
                RolloutPlan.parse(self.rollout_plan, self.rollout_rows_per_step)
            except ConfigError as error:
                raise ConfigError(f"parameter 'rollout_plan': {error}") from None
        start, end = self.monitoring_range()
        if start > end:
            raise ConfigError(f"parameter 'monitoring_start_date' ({start}) is after 'monitoring_end_date' "
                              f"({end}); swap them or fix the range")
        return self

    def settings(self):
        """The monitor's thresholds and rule; ConfigError naming the parameter when one is out of range."""
        values = {field: getattr(self, parameter) for field, parameter in _MONITORING_PARAMETERS.items()}
        exempt = tuple(name.strip() for name in self.drift_exempt_columns.split(",") if name.strip())
        unknown = sorted(set(exempt) - set(features.FEATURE_COLUMNS) - {"prediction"})
        if unknown:
            raise ConfigError(f"parameter 'drift_exempt_columns' names {', '.join(unknown)}, which the "
                              "model does not use; monitored columns: "
                              f"{', '.join(features.FEATURE_COLUMNS)}, prediction")
        try:
            return MonitoringSettings(**values, exempt_columns=exempt)
        except ConfigError as error:
            parameter = _MONITORING_PARAMETERS.get(error.field)
            raise ConfigError(f"parameter '{parameter}': {error}" if parameter else str(error)) from None

    def monitoring_range(self, today: datetime.date | None = None) -> tuple[datetime.date, datetime.date]:
        """The event dates monitored (inclusive): explicit, or the last windows up to the end date."""
        end = self.monitoring_end_date or today or datetime.datetime.now(datetime.timezone.utc).date()
        if self.monitoring_start_date:
            return self.monitoring_start_date, end
        length = self.settings().window_length * self.monitoring_windows
        return end - datetime.timedelta(days=max(length.days, 1) - 1), end


# MonitoringSettings field -> the job parameter that sets it.
_MONITORING_PARAMETERS = {"granularity": "monitoring_granularity", "psi_threshold": "psi_threshold",
                          "wasserstein_threshold": "wasserstein_threshold",
                          "rmse_ratio_threshold": "rmse_ratio_threshold", "alpha": "drift_alpha",
                          "min_rows": "monitoring_min_rows", "retrain_windows": "retrain_windows",
                          "retrain_min_violations": "retrain_min_violations",
                          "cooldown_days": "retrain_cooldown_days"}

# LightGBM parameter -> the job parameter that sets it.
_TRAINING_PARAMETERS = {"num_leaves": "training_num_leaves", "objective": "training_objective",
                        "metric": "training_metric", "num_rounds": "training_num_rounds",
                        "learning_rate": "training_learning_rate", "seed": "seed"}
